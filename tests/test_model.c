/* test_model.c: opening model directories, good and broken. Each broken
 * checkpoint gives its own clear error naming the file, tensor or field. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsv32.h"
#include "format/safetensors.h"
#include "test.h"

#define SRC "conformance/public_sparse_bf16/hf"

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *d = test_read_file(from, &n);
    REQUIRE(d);
    test_write_file(to, d, n);
    free(d);
}

/* Writes dir/config.json (the source's, or `config` text) and
 * dir/model.safetensors from the source tensors, where mutate may change
 * (or drop, by returning 0) each one. */
typedef int (*mutate_fn)(const char *name, dsv_dtype *dt, int *nd, int64_t *shape, const void **data);

static const char *make_model(const char *sub, mutate_fn mutate, const char *config) {
    static char dir[1024];
    char path[1200];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), sub);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config) {
        FILE *f = fopen(path, "w");
        REQUIRE(f);
        fputs(config, f);
        fclose(f);
    } else {
        copy_file(test_shared(SRC "/config.json"), path);
    }
    dsv_st *st;
    REQUIRE(dsv_st_open(&st, test_shared(SRC "/model.safetensors")) == DSV_OK);
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        dsv_dtype dt = t->dtype;
        int nd = t->n_dims;
        int64_t shape[DSV_ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        const void *data = t->data;
        if (mutate && !mutate(t->name, &dt, &nd, shape, &data)) continue;
        REQUIRE(dsv_st_writer_add(w, t->name, dt, nd, shape, data) == DSV_OK);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIREF(dsv_st_writer_write(w, path) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer_free(w);
    dsv_st_close(st);
    return dir;
}

static int expect_error(const char *dir, int status, const char *needle) {
    dsv_model *m = NULL;
    int st = dsv_model_open(&m, dir, NULL);
    CHECKF(st == status, "status %d (%s), expected %d", st, dsv_errmsg(), status);
    CHECKF(strstr(dsv_errmsg(), needle) != NULL, "message '%s' lacks '%s'", dsv_errmsg(), needle);
    CHECK(m == NULL);
    return st;
}

TEST(model_open_ok) {
    dsv_model *m;
    REQUIRE(dsv_model_open(&m, test_shared(SRC), NULL) == DSV_OK);
    const dsv_config *c = dsv_model_config(m);
    CHECK_EQ_INT(c->dim, 256);
    CHECK_EQ_INT(c->n_layers, 2);
    CHECK_EQ_INT(c->index_topk, 24);
    CHECK(c->yarn);
    CHECK_NEAR(c->softmax_scale, 0.16313559049534113, 1e-7); /* the manifest's mla_softmax_scale */
    CHECK_EQ_INT(c->scale_fmt, DSV_SCALE_FMT_NONE);
    CHECK(dsv_model_weight_bytes(m) > 1000000);
    dsv_model_close(m);
    dsv_model_close(NULL);
    REQUIRE(dsv_model_open(&m, test_shared("conformance/public_sparse_fp8/hf"), NULL) == DSV_OK);
    c = dsv_model_config(m);
    CHECK(c->fp8 && c->scale_fmt == DSV_SCALE_FMT_UE8M0);
    CHECK_NEAR(c->softmax_scale, 0.13232112898211335, 1e-7); /* the manifest's mla_softmax_scale */
    dsv_model_close(m);
    /* A rewritten copy (same tensors) opens too: the test's writer is sound. */
    dsv_model *m2;
    CHECK(dsv_model_open(&m2, make_model("copy", NULL, NULL), NULL) == DSV_OK);
    dsv_model_close(m2);
}

static int drop_wkv_b(const char *name, dsv_dtype *dt, int *nd, int64_t *shape, const void **data) {
    (void)dt; (void)nd; (void)shape; (void)data;
    return strcmp(name, "model.layers.1.self_attn.kv_b_proj.weight") != 0;
}
static int wrong_dtype(const char *name, dsv_dtype *dt, int *nd, int64_t *shape, const void **data) {
    (void)nd; (void)shape; (void)data;
    if (!strcmp(name, "model.layers.0.self_attn.q_a_proj.weight")) *dt = DSV_DT_I16; /* same size as BF16 */
    return 1;
}
static int wrong_shape(const char *name, dsv_dtype *dt, int *nd, int64_t *shape, const void **data) {
    (void)dt; (void)nd; (void)data;
    if (!strcmp(name, "model.layers.0.self_attn.indexer.wk.weight")) { shape[0] = 64; shape[1] = 512; }
    return 1;
}
static int wrong_rank(const char *name, dsv_dtype *dt, int *nd, int64_t *shape, const void **data) {
    (void)dt; (void)data;
    if (!strcmp(name, "model.norm.weight")) { *nd = 2; shape[0] = 16; shape[1] = 16; }
    return 1;
}

TEST(model_missing_tensor) {
    expect_error(make_model("missing", drop_wkv_b, NULL), DSV_ERR_MODEL,
                 "tensor 'model.layers.1.self_attn.kv_b_proj.weight' is missing");
}
TEST(model_wrong_dtype) {
    expect_error(make_model("dtype", wrong_dtype, NULL), DSV_ERR_MODEL,
                 "'model.layers.0.self_attn.q_a_proj.weight': expected F8_E4M3|BF16|F16|F32 [128, 256], actual I16 [128, 256]");
}
TEST(model_wrong_shape) {
    expect_error(make_model("shape", wrong_shape, NULL), DSV_ERR_MODEL,
                 "'model.layers.0.self_attn.indexer.wk.weight': expected F8_E4M3|BF16|F16|F32 [128, 256], actual BF16 [64, 512]");
    expect_error(make_model("rank", wrong_rank, NULL), DSV_ERR_MODEL, "'model.norm.weight': expected BF16|F16|F32 [256], actual BF16 [16, 16]");
}

static char *config_with(const char *from, const char *to) {
    char *c = test_read_file(test_shared(SRC "/config.json"), NULL);
    REQUIRE(c);
    char *p = strstr(c, from);
    REQUIREF(p, "config lacks '%s'", from);
    char *out = malloc(strlen(c) + strlen(to) + 1);
    memcpy(out, c, (size_t)(p - c));
    strcpy(out + (p - c), to);
    strcat(out, p + strlen(from));
    free(c);
    return out;
}

TEST(model_bad_config) {
    char *c;
    c = config_with("\"hidden_size\": 256,", "\"hidden_size\": 256");
    expect_error(make_model("json", NULL, c), DSV_ERR_FORMAT, "config.json: invalid JSON near line");
    free(c);
    c = config_with("\"index_topk\": 24,", "");
    expect_error(make_model("field", NULL, c), DSV_ERR_CONFIG, "missing field 'index_topk'");
    free(c);
    c = config_with("\"DeepseekV32ForCausalLM\"", "\"DeepseekV3ForCausalLM\"");
    char *c2 = strstr(c, "\"deepseek_v32\"");
    REQUIRE(c2);
    memcpy(c2, "\"deepseek_v3\" ", 14);
    expect_error(make_model("arch", NULL, c), DSV_ERR_CONFIG, "unsupported architecture 'DeepseekV3ForCausalLM'");
    free(c);
    c = config_with("\"n_group\": 4,", "\"n_group\": 3,");
    expect_error(make_model("groups", NULL, c), DSV_ERR_CONFIG, "n_routed_experts (8) must be a multiple of n_group (3)");
    free(c);
    c = config_with("\"kv_lora_rank\": 128,", "\"kv_lora_rank\": 100,");
    expect_error(make_model("kvlora", NULL, c), DSV_ERR_CONFIG, "kv_lora_rank (100) must be a positive multiple of 128");
    free(c);
    c = config_with("\"vocab_size\": 777,", "\"vocab_size\": \"777\",");
    expect_error(make_model("type", NULL, c), DSV_ERR_CONFIG, "field 'vocab_size' must be an integer");
    free(c);
}

TEST(model_missing_and_truncated_files) {
    char dir[1100], path[1200];
    expect_error("/nonexistent-dsv32-model", DSV_ERR_IO, "config.json: cannot open");
    snprintf(dir, sizeof dir, "%s", make_model("trunc", NULL, NULL));
    /* Truncated data section: the header promises more bytes than the file has. */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    REQUIRE(stat(path, &sb) == 0);
    REQUIRE(truncate(path, sb.st_size - 1000) == 0);
    dsv_model *m = NULL;
    CHECK_EQ_INT(dsv_model_open(&m, dir, NULL), DSV_ERR_FORMAT);
    CHECKF(strstr(dsv_errmsg(), "model.safetensors") != NULL, "%s", dsv_errmsg());
    /* Header length beyond the file. */
    REQUIRE(truncate(path, 100) == 0);
    CHECK_EQ_INT(dsv_model_open(&m, dir, NULL), DSV_ERR_FORMAT);
    CHECKF(strstr(dsv_errmsg(), "model.safetensors") != NULL, "%s", dsv_errmsg());
    /* No weights at all. */
    unlink(path);
    CHECK(dsv_model_open(&m, dir, NULL) != DSV_OK);
    CHECK(m == NULL);
}

TEST(model_scale_fmt_override) {
    dsv_model_params p = dsv_model_default_params();
    p.scale_fmt = DSV_SCALE_FMT_UE8M0;
    dsv_model *m;
    REQUIRE(dsv_model_open(&m, test_shared(SRC), &p) == DSV_OK);
    CHECK_EQ_INT(dsv_model_config(m)->scale_fmt, DSV_SCALE_FMT_UE8M0);
    dsv_model_close(m);
}
