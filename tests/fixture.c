/* fixture.c: test model directories with a tokenizer (see fixture.h). */
#include "fixture.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "format/safetensors.h"
#include "test.h"

/* ---- Tokenizer ------------------------------------------------------------ */

/* GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves,
 * the others for U+0100 onwards, in order. */
static unsigned byte_char(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (unsigned)b;
    unsigned n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256 + n;
}

/* Appends the byte-level spelling of s[0..n), JSON-escaped. */
static void spell(char *out, size_t cap, const char *s, size_t n) {
    size_t o = strlen(out);
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        unsigned cp = byte_char((unsigned char)s[i]);
        if (cp == '"' || cp == '\\') { out[o++] = '\\'; out[o++] = (char)cp; }
        else if (cp < 0x80) out[o++] = (char)cp;
        else { out[o++] = (char)(0xC0 | (cp >> 6)); out[o++] = (char)(0x80 | (cp & 0x3F)); }
    }
    out[o] = 0;
}

/* Words that become single tokens (each prefix a token too). The scripted
 * model speaks in them. */
static const char *const words[] = {
    "Hello", " world", "Greeting", " detected", "Sunny", " and", " warm", "weather", "{\"", "city", "\":", " \"",
    "Paris", "\"}", " the", " is", " in", "What", " What", " weather", " hello", "Hi", " you", " are", " a", " of",
    " to", " it", " that", " for", " on", " with", " as", " be", " this", " at", " or", " from", " by", " not",
    " sparse", " attention", " model", " tokens", " story", " about", " cache", " page", " prefix", " test",
    "Tell", " me", " long", " please", " count", " one", " two", " three", " four", " five", " six",
};

/* Chat markers (ids from MARKER0), as the V3.2-Exp tokenizer has them. */
enum { MARKER0 = 758 };
static const char *const markers[] = {
    "<｜search▁begin｜>", "<｜search▁end｜>", "<think>", "</think>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
    "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
};
enum { N_MARKERS = sizeof markers / sizeof *markers };

/* The BPE part: tokens of merged word prefixes, ids from 259. */
struct vocab {
    char tok[400][64];   /* byte-level spellings (JSON-escaped) */
    char merge[400][96];
    int n_tok, n_merge;
};

static int vocab_find(const struct vocab *v, const char *t) {
    for (int i = 0; i < v->n_tok; i++)
        if (!strcmp(v->tok[i], t)) return 259 + i;
    return -1;
}

static void build_vocab(struct vocab *v) {
    memset(v, 0, sizeof *v);
    for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
        const char *s = words[w];
        for (size_t k = 2; k <= strlen(s); k++) {
            char whole[64] = "", left[64] = "", right[16] = "";
            spell(whole, sizeof whole, s, k);
            if (vocab_find(v, whole) >= 0) continue;
            spell(left, sizeof left, s, k - 1);
            spell(right, sizeof right, s + k - 1, 1);
            REQUIRE(v->n_tok < 400);
            snprintf(v->tok[v->n_tok++], 64, "%s", whole);
            snprintf(v->merge[v->n_merge++], 96, "%s %s", left, right);
        }
    }
    REQUIRE(259 + v->n_tok <= MARKER0);
}

/* The id of a token of the fixture: a marker, a word or a single byte. */
static const char *const specials[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};

static int fx_id(const struct vocab *v, const char *text) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(specials[i], text)) return i;
    for (int i = 0; i < N_MARKERS; i++)
        if (!strcmp(markers[i], text)) return MARKER0 + i;
    if (strlen(text) == 1) return 3 + (unsigned char)text[0];
    char sp[64] = "";
    spell(sp, sizeof sp, text, strlen(text));
    int id = vocab_find(v, sp);
    REQUIREF(id >= 0, "no fixture token for '%s'", text);
    return id;
}

static void write_tokenizer(const char *dir, const struct vocab *v) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (int i = 0; i < 3; i++)
        fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"special\":true}", i ? "," : "", i, specials[i]);
    for (int i = 0; i < N_MARKERS; i++)
        fprintf(f, ",{\"id\":%d,\"content\":\"%s\",\"special\":%s}", MARKER0 + i, markers[i],
                !strcmp(markers[i], "<|EOT|>") ? "true" : "false");
    fprintf(f, "],\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},"
               "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
               "\"use_regex\":true},\"post_processor\":null,"
               "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
               "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
               "\"byte_fallback\":false,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char s[16] = "";
        char c = (char)b;
        spell(s, sizeof s, &c, 1);
        fprintf(f, "%s\"%s\":%d", b ? "," : "", s, 3 + b);
    }
    for (int i = 0; i < v->n_tok; i++) fprintf(f, ",\"%s\":%d", v->tok[i], 259 + i);
    fprintf(f, "},\"merges\":[");
    for (int i = 0; i < v->n_merge; i++) fprintf(f, "%s\"%s\"", i ? "," : "", v->merge[i]);
    fprintf(f, "]}}\n");
    REQUIRE(fclose(f) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    REQUIRE(f);
    /* A chat_template marks a V3.2-Exp model (dsv_chat_format_detect); the
     * fixtures speak its format (their vocabulary has its tool markers). */
    fprintf(f, "{\"add_bos_token\":true,\"bos_token\":\"%s\",\"eos_token\":\"%s\",\"chat_template\":\"%s\"}\n",
            specials[0], specials[1], "(the DeepSeek-V3.2-Exp template)");
    REQUIRE(fclose(f) == 0);
}

/* ---- Scripted weights ----------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

enum { BF16_ONE = 0x3F80, BF16_TWO = 0x4000 };

/* Token -> next token. Each "current" token gets an embedding dimension of
 * its own (1, 2, ...) beside dimension 0, which every token has; the head
 * row of `next` reads that dimension with weight 2, the row of `alt` with
 * weight 1, and the EOS row reads dimension 0 with weight 1. After the final
 * RMS norm that gives logits 22.6 (next), 11.3 (EOS, alt) and 0 (others)
 * for a scripted token, and 16 for EOS after any other token. */
static const struct { const char *cur, *next, *alt; } script[] = {
    {"<think>", "Greeting", NULL},
    {"Greeting", " detected", NULL},
    {" detected", "</think>", NULL},
    {"</think>", "Hello", "<｜tool▁calls▁begin｜>"},
    {"Hello", " world", NULL},
    {" world", "!", NULL},
    {"<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", NULL},
    {"<｜tool▁call▁begin｜>", "weather", NULL},
    {"weather", "<｜tool▁sep｜>", NULL},
    {"<｜tool▁sep｜>", "{\"", NULL},
    {"{\"", "city", NULL},
    {"city", "\":", NULL},
    {"\":", " \"", NULL},
    {" \"", "Paris", NULL},
    {"Paris", "\"}", NULL},
    {"\"}", "<｜tool▁call▁end｜>", NULL},
    {"<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", NULL},
    /* Explicit, so that a logit_bias towards a tool call cannot reopen one. */
    {"<｜tool▁calls▁end｜>", "<｜end▁of▁sentence｜>", NULL},
    {"<｜tool▁output▁end｜>", "Sunny", NULL},
    {"Sunny", " and", NULL},
    {" and", " warm", NULL},
    {" warm", ".", NULL},
};

static void write_scripted_weights(const char *dir, const struct vocab *v) {
    dsv_st *st = NULL;
    REQUIREF(dsv_st_open(&st, test_shared("conformance/public_sparse_bf16/hf/model.safetensors")) == DSV_OK, "%s",
             dsv_errmsg());
    dsv_st_writer *w = NULL;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    void *owned[64];
    int n_owned = 0;
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        const void *data = t->data;
        int zero = ends_with(t->name, "o_proj.weight") || ends_with(t->name, "down_proj.weight");
        int embed = !strcmp(t->name, "model.embed_tokens.weight"), head = !strcmp(t->name, "lm_head.weight");
        int norm = !strcmp(t->name, "model.norm.weight");
        if (zero || embed || head || norm) {
            REQUIRE(t->dtype == DSV_DT_BF16 && n_owned < 64);
            uint16_t *x = calloc(t->nbytes / 2, 2);
            REQUIRE(x);
            owned[n_owned++] = x;
            data = x;
            const int64_t dim = t->n_dims == 2 ? t->shape[1] : t->shape[0];
            if (norm)
                for (int64_t d = 0; d < dim; d++) x[d] = BF16_ONE;
            if (embed)
                for (int64_t r = 0; r < t->shape[0]; r++) x[r * dim] = BF16_ONE;
            if (head) x[(int64_t)FX_EOS * dim] = BF16_ONE;
            for (size_t k = 0; (embed || head) && k < sizeof script / sizeof *script; k++) {
                int64_t slot = 1 + (int64_t)k, cur = fx_id(v, script[k].cur);
                REQUIRE(slot < dim);
                if (embed) x[cur * dim + slot] = BF16_ONE;
                if (head) {
                    x[fx_id(v, script[k].next) * dim + slot] = BF16_TWO;
                    if (script[k].alt) x[fx_id(v, script[k].alt) * dim + slot] = BF16_ONE;
                }
            }
        }
        REQUIRE(dsv_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, data) == DSV_OK);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIREF(dsv_st_writer_write(w, path) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer_free(w);
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    dsv_st_close(st);
}

void fixture_write(const char *dir, int scripted) {
    static struct vocab v;
    build_vocab(&v);
    REQUIRE(fx_id(&v, "<｜tool▁calls▁begin｜>") == FX_TOOL_CALLS_BEGIN);
    char cmd[2048];
    const char *src = test_shared("conformance/public_sparse_bf16/hf");
    if (scripted)
        snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", src, dir);
    else
        snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/' && ln -sf \"$(realpath '%s/model.safetensors')\" '%s/'",
                 src, dir, src, dir);
    REQUIREF(system(cmd) == 0, "cannot copy the conformance model into %s", dir);
    if (scripted) write_scripted_weights(dir, &v);
    write_tokenizer(dir, &v);
}

static const char *fixture(const char *name, int scripted) {
    static char dir[2][1024];
    char *d = dir[scripted];
    if (!d[0]) {
        snprintf(d, sizeof dir[0], "%s/%s", test_tmpdir(), name);
        REQUIRE(mkdir(d, 0700) == 0);
        fixture_write(d, scripted);
    }
    return d;
}

const char *fixture_random(void) { return fixture("random", 0); }
const char *fixture_scripted(void) { return fixture("scripted", 1); }

const char fixture_full_config[] =
    "{\"architectures\": [\"DeepseekV32ForCausalLM\"], \"model_type\": \"deepseek_v32\", \"vocab_size\": 129280,\n"
    " \"hidden_size\": 7168, \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048,\n"
    " \"num_hidden_layers\": 61, \"first_k_dense_replace\": 3, \"num_attention_heads\": 128,\n"
    " \"n_routed_experts\": 256, \"n_shared_experts\": 1, \"num_experts_per_tok\": 8, \"n_group\": 8,\n"
    " \"topk_group\": 4, \"routed_scaling_factor\": 2.5, \"q_lora_rank\": 1536, \"kv_lora_rank\": 512,\n"
    " \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"index_n_heads\": 64,\n"
    " \"index_head_dim\": 128, \"index_topk\": 2048, \"max_position_embeddings\": 163840,\n"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096},\n"
    " \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"weight_block_size\": [128, 128],\n"
    "   \"scale_fmt\": \"ue8m0\"}}\n";
