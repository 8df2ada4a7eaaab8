/* test_edges.c: the library at the edges of its input (issue 12): config
 * values far past any real model are errors naming the field before any size
 * arithmetic (no signed overflow in products of fields, no out-of-range
 * double converted to int); dsv_forward refuses a NULL logits pointer when
 * rows are asked for; paths longer than the buffers are errors, not
 * truncations that would open another file. */
#include <cjson/cJSON.h>
#include <string.h>

#include "base/util.h"
#include "format/shard.h"
#include "dsv32.h"
#include "test.h"
#include "train/train.h"

#define CONFIG "conformance/public_sparse_bf16/hf/config.json"

/* The bf16 conformance config with `key` set to the JSON number text `num`
 * (placed first, so it wins over the file's own entry; nested keys "a.b"
 * are replaced inside their object). */
static int parse_with(const char *key, const char *num, dsv_config *c) {
    char *base = test_read_file(test_shared(CONFIG), NULL);
    REQUIRE(base);
    const char *dot = strchr(key, '.');
    char *text;
    if (!dot) {
        size_t n = strlen(base) + strlen(key) + strlen(num) + 16;
        text = malloc(n);
        REQUIRE(text);
        snprintf(text, n, "{\"%s\": %s, %s", key, num, strchr(base, '{') + 1);
    } else {
        /* Nested: after the object's opening brace. */
        char obj[64], pat[80];
        snprintf(obj, sizeof obj, "%.*s", (int)(dot - key), key);
        snprintf(pat, sizeof pat, "\"%s\": {", obj);
        char *at = strstr(base, pat);
        REQUIREF(at, "no object %s", obj);
        at += strlen(pat);
        size_t n = strlen(base) + strlen(key) + strlen(num) + 16;
        text = malloc(n);
        REQUIRE(text);
        snprintf(text, n, "%.*s\"%s\": %s, %s", (int)(at - base), base, dot + 1, num, at);
    }
    int st = dsv_config_parse(c, text, "config.json");
    free(text);
    free(base);
    return st;
}

static void expect_field_error(const char *key, const char *num) {
    dsv_config c;
    int st = parse_with(key, num, &c);
    CHECKF(st == DSV_ERR_CONFIG, "%s = %s: status %d (%s)", key, num, st, dsv_errmsg());
    const char *field = strrchr(key, '.') ? strrchr(key, '.') + 1 : key;
    CHECKF(strstr(dsv_errmsg(), field) && strstr(dsv_errmsg(), "config.json"), "%s = %s: message '%s'", key, num,
           dsv_errmsg());
}

TEST(config_fields_have_upper_bounds) {
    dsv_config c;
    REQUIREF(parse_with("vocab_size", "777", &c) == DSV_OK, "%s", dsv_errmsg());
    static const char *fields[] = {
        "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
        "first_k_dense_replace", "num_attention_heads", "n_routed_experts", "n_shared_experts",
        "num_experts_per_tok", "n_group", "topk_group", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
        "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim", "index_topk",
        "max_position_embeddings", "num_nextn_predict_layers", "bos_token_id", "moe_layer_freq"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        expect_field_error(fields[i], "2147483647");
        expect_field_error(fields[i], "2147483648");
        expect_field_error(fields[i], "-2147483649");
        expect_field_error(fields[i], "1e400");
        expect_field_error(fields[i], "-1");
    }
    /* The message says what is supported. */
    REQUIRE(parse_with("num_attention_heads", "2147483647", &c) == DSV_ERR_CONFIG);
    CHECK_STR(dsv_errmsg(), "config.json: field 'num_attention_heads' = 2147483647 is out of the supported range "
                            "[0, 4096]");
    /* A large but reachable product: 4096 heads of 4096 + 4096 dims; dense
     * layers only, so n_shared_experts of 256 x 1M-wide experts is read too. */
    REQUIRE(parse_with("num_attention_heads", "4096", &c) == DSV_OK);
    CHECK_EQ_INT(c.n_heads, 4096);
}

/* Every field at its upper bound at once (consistently): the config parses
 * and the split plan's products (heads x head dims, shared experts x expert
 * width, vocabulary) are exact, at every split size. Under `make asan` any
 * signed overflow on the way stops the test. */
TEST(config_at_upper_bounds_plans_exactly) {
    static const char json[] =
        "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"vocab_size\": 16777216, \"hidden_size\": 65536,"
        " \"intermediate_size\": 1048576, \"moe_intermediate_size\": 1048576, \"num_hidden_layers\": 4096,"
        " \"first_k_dense_replace\": 1, \"num_attention_heads\": 4096, \"n_routed_experts\": 65536,"
        " \"n_shared_experts\": 256, \"num_experts_per_tok\": 65536, \"q_lora_rank\": 65536,"
        " \"kv_lora_rank\": 65536, \"qk_nope_head_dim\": 4096, \"qk_rope_head_dim\": 128, \"v_head_dim\": 4096,"
        " \"index_n_heads\": 4096, \"index_head_dim\": 128, \"index_topk\": 16777216,"
        " \"max_position_embeddings\": 16777216, \"eos_token_id\": 16777215,"
        " \"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}}";
    dsv_config c;
    REQUIREF(dsv_config_parse(&c, json, "max.json") == DSV_OK, "%s", dsv_errmsg());
    const long long shared = (long long)c.n_shared_experts * c.moe_inter_dim;
    for (int size = 1; size <= 16; size++) {
        dsv_shard prev = {0};
        for (int r = 0; r < size; r++) {
            dsv_shard sh;
            dsv_shard_plan(&sh, &c, r, size);
            CHECK(sh.head0 == prev.head1 && sh.shared0 == prev.shared1 && sh.vocab0 == prev.vocab1);
            CHECK(sh.head1 >= sh.head0 && sh.shared1 >= sh.shared0 && sh.inter1 >= sh.inter0);
            prev = sh;
        }
        CHECK_EQ_INT(prev.head1, c.n_heads);
        CHECK_EQ_INT(prev.shared1, shared);
        CHECK_EQ_INT(prev.inter1, c.inter_dim);
        CHECK_EQ_INT(prev.expert1, c.n_routed_experts);
        CHECK_EQ_INT(prev.vocab1, c.vocab_size);
    }
    CHECK(dsv_kv_page_bytes(&c) > 0);
}

TEST(config_eos_and_floats_range_checked_before_conversion) {
    static const char *bad[] = {"1e20", "-1e20", "2147483648", "-2147483649", "1e400", "0.5", "-1", "16777216"};
    dsv_config c;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) expect_field_error("eos_token_id", bad[i]);
    REQUIRE(parse_with("eos_token_id", "[1e20, 1]", &c) == DSV_ERR_CONFIG);
    CHECK(strstr(dsv_errmsg(), "eos_token_id") != NULL);
    REQUIRE(parse_with("eos_token_id", "[5, 1e20]", &c) == DSV_OK);
    CHECK_EQ_INT(c.eos_id, 5);
    expect_field_error("rope_scaling.original_max_position_embeddings", "1e20");
    expect_field_error("rope_scaling.original_max_position_embeddings", "-1e20");
    expect_field_error("rope_scaling.original_max_position_embeddings", "1e400");
    expect_field_error("rope_scaling.factor", "1e300");
    expect_field_error("rms_norm_eps", "1e400");
    expect_field_error("rope_theta", "-1e39");
}

TEST(forward_refuses_null_logits_when_rows_are_asked_for) {
    dsv_model *m = NULL;
    REQUIREF(dsv_model_open(&m, test_shared("conformance/public_sparse_bf16/hf"), NULL) == DSV_OK, "%s",
             dsv_errmsg());
    dsv_context_params p = dsv_context_default_params();
    p.n_seq = 1;
    p.n_ctx = 16;
    p.n_batch = 16;
    p.n_threads = 1;
    dsv_context *ctx = NULL;
    REQUIREF(dsv_context_open(&ctx, m, &p) == DSV_OK, "%s", dsv_errmsg());
    const int32_t toks[3] = {1, 2, 3};
    dsv_batch_entry e = {.seq = 0, .n_tokens = 3, .tokens = toks, .logits = DSV_LOGITS_LAST};
    CHECK_EQ_INT(dsv_forward(ctx, &e, 1, NULL), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "logits is NULL") != NULL);
    CHECK_EQ_INT(dsv_seq_len(ctx, 0), 0); /* nothing changed */
    e.logits = DSV_LOGITS_ALL;
    CHECK_EQ_INT(dsv_forward(ctx, &e, 1, NULL), DSV_ERR_ARG);
    /* No rows asked for: NULL is fine (a prefill that wants no logits). */
    e.logits = DSV_LOGITS_NONE;
    CHECK_EQ_INT(dsv_forward(ctx, &e, 1, NULL), DSV_OK);
    CHECK_EQ_INT(dsv_seq_len(ctx, 0), 3);
    dsv_context_close(ctx);
    dsv_model_close(m);
}

/* A directory name of n bytes: "<tmpdir>/aaaa...". */
static char *long_dir(size_t n) {
    const char *t = test_tmpdir();
    char *d = malloc(n + 1);
    REQUIRE(d && strlen(t) + 2 < n);
    memset(d, 'a', n);
    memcpy(d, t, strlen(t));
    d[strlen(t)] = '/';
    d[n] = 0;
    return d;
}

TEST(paths_longer_than_buffers_are_errors) {
    char buf[16];
    CHECK_EQ_INT(dsv_path_join(buf, sizeof buf, "0123456789", "abcde"), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "path too long") != NULL);
    CHECK_EQ_INT(dsv_path_join(buf, sizeof buf, "0123456789", "abcd"), DSV_OK);
    CHECK_STR(buf, "0123456789/abcd");
    CHECK_EQ_INT(dsv_path_join(buf, sizeof buf, "0123456789abcdef", NULL), DSV_ERR_ARG);
    /* Near the 4096-byte buffers: the directory fits, dir/config.json does
     * not. Truncated, it would name another file. */
    static const size_t lens[] = {4090, 4095, 4100, 9000};
    for (int i = 0; i < 4; i++) {
        const size_t n = lens[i];
        char *d = long_dir(n);
        dsv_config c;
        CHECK_EQ_INT(dsv_config_load(&c, d), DSV_ERR_ARG);
        CHECKF(strstr(dsv_errmsg(), "path too long"), "%zu: %.300s", n, dsv_errmsg());
        dsv_model *m = NULL;
        CHECK(dsv_model_open(&m, d, NULL) != DSV_OK);
        CHECKF(strstr(dsv_errmsg(), "path too long"), "%zu: %.300s", n, dsv_errmsg());
        CHECK_EQ_INT(dsv_bpe_train(d, "abc", 3, 300, NULL), DSV_ERR_ARG);
        CHECKF(strstr(dsv_errmsg(), "path too long"), "%zu: %.300s", n, dsv_errmsg());
        free(d);
    }
}

/* The same in the commands: `convert` into a directory whose name fits but
 * whose shard file name would not. */
TEST(cli_convert_refuses_a_path_too_long) {
    const char *bin = test_bin();
    char dir[4200], cmd[8600], *out = NULL;
    int n = snprintf(dir, sizeof dir, "%s", test_tmpdir());
    while (n < 4060) {
        char part[202];
        memset(part, 'b', 200);
        part[0] = '/';
        part[200] = 0;
        n += snprintf(dir + n, sizeof dir - (size_t)n, "%s", part);
    }
    dir[4080] = 0;
    snprintf(cmd, sizeof cmd, "p='%s'; mkdir -p \"$(dirname \"$p\")\" && %s convert -m models/tiny --model-parallel 1 -o \"$p\" 2>&1",
             dir, bin);
    int rc = test_run(cmd, &out);
    CHECK_EQ_INT(rc, 1);
    CHECKF(out && strstr(out, "model0-mp1.safetensors: path too long"), "%.200s", out ? out + strlen(out) - 120 : "");
    free(out);
}
