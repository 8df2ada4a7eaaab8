/* quantize.c: dsv_quantize (include/dsv32_quantize.h): a Hugging Face
 * DeepSeek-V3.2 checkpoint -> a llama.cpp-compatible GGUF file.
 *
 * In the order it runs: config.json and the safetensors (mapped); the list
 * of output tensors in llama.cpp's order with their sources and the type the
 * policy (and --tensor-type rules, and row-length fallbacks) gives each; the
 * metadata (model keys as llama.cpp's DeepseekV32 converter names them, and
 * the tokenizer from tokenizer.json); then per output file the header and
 * the tensors, each produced a row at a time: a source row widened to fp32
 * (fp8 codes times their 128x128 block scale), then encoded (kernels/quant.h).
 *
 * Layout changes from the Hugging Face checkpoint (all of them): GGUF extents
 * are the row-major shape reversed; kv_b_proj [H*(nope+v), kv_lora] becomes
 * attn_k_b [H][kv_lora][nope] (each head's key half transposed) and
 * attn_v_b [H][v][kv_lora]; the routed experts of a layer are stacked into
 * ffn_*_exps [E][out][in]. MTP layers are not written. */
#include "dsv32_quantize.h"

#include <cjson/cJSON.h>
#include <regex.h>
#include <strings.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "format/safetensors.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "base/util.h"

enum { K_VEC, K_MAT, K_EXPS, K_KB, K_VB };
enum { G_EMBD, G_OUTPUT, G_NORM, G_ATTN, G_INDEXER, G_F32, G_DENSE, G_SHARED, G_EXPERTS, G_EXPERTS_DOWN, G_N };
static const char *const group_names[G_N] = {
    "token embedding", "output", "norms and biases", "attention", "indexer projections",
    "router and indexer weights_proj", "dense layers' MLP", "shared experts", "routed experts (gate, up)",
    "routed experts (down)"};

typedef struct item {
    char name[DSV_GGUF_MAX_NAME + 1];
    char src[160];      /* HF tensor (K_VEC) or prefix of "<prefix>.weight" (a %d for the expert) */
    int kind, group, n_dims;
    int64_t ne[3];      /* GGUF order */
    uint32_t type;
} item;

typedef struct qplan {
    item *it;
    int n, cap;
} qplan;

static int plan_add(qplan *p, int kind, int group, const char *name, const char *src, int64_t e0, int64_t e1, int64_t e2) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 256;
        item *it = realloc(p->it, (size_t)cap * sizeof *it);
        if (!it) return dsv_error(DSV_ERR_NOMEM, "out of memory");
        p->it = it;
        p->cap = cap;
    }
    item *t = &p->it[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->src, sizeof t->src, "%s", src);
    t->kind = kind;
    t->group = group;
    t->ne[0] = e0;
    t->ne[1] = e1;
    t->ne[2] = e2;
    t->n_dims = e2 > 1 || kind == K_EXPS || kind == K_KB || kind == K_VB ? 3 : e1 > 1 || kind != K_VEC ? 2 : 1;
    return DSV_OK;
}

/* Every output tensor of the model, in the order llama.cpp's converter
 * writes them (per layer: norms, attention, indexer, FFN). */
static int build_plan(qplan *p, const dsv_config *c, const dsv_st *st, int indexer) {
    char n[96], s[160];
    int rc;
    const int64_t D = c->dim, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int64_t C = c->kv_lora_rank, Q = c->q_lora_rank;
#define ADD(kind, group, e0, e1, e2) do { if ((rc = plan_add(p, kind, group, n, s, e0, e1, e2))) return rc; } while (0)
    snprintf(n, sizeof n, "token_embd.weight");
    snprintf(s, sizeof s, "model.embed_tokens");
    ADD(K_MAT, G_EMBD, D, c->vocab_size, 1);
    for (int il = 0; il < c->n_layers; il++) {
#define L(gname, hname, kind, group, e0, e1, e2) do { snprintf(n, sizeof n, "blk.%d.%s", il, gname); \
        snprintf(s, sizeof s, "model.layers.%d.%s", il, hname); ADD(kind, group, e0, e1, e2); } while (0)
        L("attn_norm.weight", "input_layernorm.weight", K_VEC, G_NORM, D, 1, 1);
        L("attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight", K_VEC, G_NORM, Q, 1, 1);
        L("attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight", K_VEC, G_NORM, C, 1, 1);
        L("attn_q_a.weight", "self_attn.q_a_proj", K_MAT, G_ATTN, D, Q, 1);
        L("attn_q_b.weight", "self_attn.q_b_proj", K_MAT, G_ATTN, Q, H * (N + R), 1);
        L("attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa", K_MAT, G_ATTN, D, C + R, 1);
        L("attn_k_b.weight", "self_attn.kv_b_proj", K_KB, G_ATTN, N, C, H);
        L("attn_v_b.weight", "self_attn.kv_b_proj", K_VB, G_ATTN, C, V, H);
        L("attn_output.weight", "self_attn.o_proj", K_MAT, G_ATTN, H * V, D, 1);
        L("ffn_norm.weight", "post_attention_layernorm.weight", K_VEC, G_NORM, D, 1, 1);
        if (indexer) {
            L("indexer.k_norm.weight", "self_attn.indexer.k_norm.weight", K_VEC, G_NORM, c->index_head_dim, 1, 1);
            L("indexer.k_norm.bias", "self_attn.indexer.k_norm.bias", K_VEC, G_NORM, c->index_head_dim, 1, 1);
            L("indexer.proj.weight", "self_attn.indexer.weights_proj", K_MAT, G_F32, D, c->index_n_heads, 1);
            L("indexer.attn_k.weight", "self_attn.indexer.wk", K_MAT, G_INDEXER, D, c->index_head_dim, 1);
            L("indexer.attn_q_b.weight", "self_attn.indexer.wq_b", K_MAT, G_INDEXER, Q,
              (int64_t)c->index_n_heads * c->index_head_dim, 1);
        }
        if (il < c->n_dense_layers) {
            L("ffn_gate.weight", "mlp.gate_proj", K_MAT, G_DENSE, D, c->inter_dim, 1);
            L("ffn_down.weight", "mlp.down_proj", K_MAT, G_DENSE, c->inter_dim, D, 1);
            L("ffn_up.weight", "mlp.up_proj", K_MAT, G_DENSE, D, c->inter_dim, 1);
            continue;
        }
        const int64_t E = c->n_routed_experts, F = c->moe_inter_dim, FS = (int64_t)c->n_shared_experts * F;
        L("ffn_gate_inp.weight", "mlp.gate", K_MAT, G_F32, D, E, 1);
        snprintf(s, sizeof s, "model.layers.%d.mlp.gate.e_score_correction_bias", il);
        if (dsv_st_find(st, s)) L("exp_probs_b.bias", "mlp.gate.e_score_correction_bias", K_VEC, G_NORM, E, 1, 1);
        L("ffn_gate_exps.weight", "mlp.experts.%d.gate_proj", K_EXPS, G_EXPERTS, D, F, E);
        L("ffn_down_exps.weight", "mlp.experts.%d.down_proj", K_EXPS, G_EXPERTS_DOWN, F, D, E);
        L("ffn_up_exps.weight", "mlp.experts.%d.up_proj", K_EXPS, G_EXPERTS, D, F, E);
        if (FS > 0) {
            L("ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj", K_MAT, G_SHARED, D, FS, 1);
            L("ffn_down_shexp.weight", "mlp.shared_experts.down_proj", K_MAT, G_SHARED, FS, D, 1);
            L("ffn_up_shexp.weight", "mlp.shared_experts.up_proj", K_MAT, G_SHARED, D, FS, 1);
        }
#undef L
    }
    snprintf(n, sizeof n, "output_norm.weight");
    snprintf(s, sizeof s, "model.norm.weight");
    ADD(K_VEC, G_NORM, D, 1, 1);
    snprintf(n, sizeof n, "output.weight");
    snprintf(s, sizeof s, "lm_head");
    ADD(K_MAT, G_OUTPUT, D, c->vocab_size, 1);
#undef ADD
    return DSV_OK;
}

/* ---- types ------------------------------------------------------------- */

static const uint32_t LADDER[] = {DSV_GGML_Q2_K, DSV_GGML_Q3_K, DSV_GGML_Q4_K, DSV_GGML_Q5_K, DSV_GGML_Q6_K, DSV_GGML_Q8_0};
enum { N_LADDER = 6 };

/* A type's rung: the K-quant of the same bits for the legacy 32-blocks. */
static int rung(uint32_t t) {
    switch (t) {
    case DSV_GGML_Q2_K: return 0;
    case DSV_GGML_Q3_K: return 1;
    case DSV_GGML_Q4_K: case DSV_GGML_Q4_0: case DSV_GGML_Q4_1: case DSV_GGML_IQ4_NL: return 2;
    case DSV_GGML_Q5_K: case DSV_GGML_Q5_0: case DSV_GGML_Q5_1: return 3;
    case DSV_GGML_Q6_K: return 4;
    default: return 5;
    }
}
static uint32_t up(uint32_t t, int k) { return LADDER[DSV_MIN(rung(t) + k, N_LADDER - 1)]; }

/* llama.cpp's fallbacks for rows a block type cannot hold. */
static uint32_t fallback(uint32_t t, int64_t n_in) {
    if (n_in % dsv_ggml_blck(t) == 0) return t;
    switch (t) {
    case DSV_GGML_Q2_K: case DSV_GGML_Q3_K: t = DSV_GGML_IQ4_NL; break;
    case DSV_GGML_Q4_K: t = DSV_GGML_Q5_0; break;
    case DSV_GGML_Q5_K: t = DSV_GGML_Q5_1; break;
    case DSV_GGML_Q6_K: t = DSV_GGML_Q8_0; break;
    }
    return n_in % dsv_ggml_blck(t) == 0 ? t : DSV_GGML_BF16;
}

static int is_float(uint32_t t) { return t == DSV_GGML_F32 || t == DSV_GGML_F16 || t == DSV_GGML_BF16; }

static uint32_t policy(int group, uint32_t base) {
    if (group == G_NORM || group == G_F32) return DSV_GGML_F32;
    if (is_float(base)) return base;
    switch (group) {
    case G_INDEXER: return DSV_GGML_BF16;
    case G_EXPERTS: return base;
    case G_EXPERTS_DOWN: case G_EMBD: return up(base, 1);
    case G_OUTPUT: return rung(up(base, 2)) < 4 ? DSV_GGML_Q6_K : up(base, 2);
    default: return up(base, 2); /* attention, shared experts, dense MLP */
    }
}

/* The llama.cpp file type (general.file_type) of a preset. */
static uint32_t file_type(const char *preset, uint32_t base) {
    if (!strcasecmp(preset, "Q4_K_M")) return 15;
    switch (base) {
    case DSV_GGML_F32: return 0;
    case DSV_GGML_F16: return 1;
    case DSV_GGML_Q4_0: return 2;
    case DSV_GGML_Q4_1: return 3;
    case DSV_GGML_Q8_0: return 7;
    case DSV_GGML_Q5_0: return 8;
    case DSV_GGML_Q5_1: return 9;
    case DSV_GGML_Q2_K: return 10;
    case DSV_GGML_Q3_K: return 12; /* Q3_K_M */
    case DSV_GGML_Q4_K: return 15;
    case DSV_GGML_Q5_K: return 17; /* Q5_K_M */
    case DSV_GGML_Q6_K: return 18;
    case DSV_GGML_IQ4_NL: return 25;
    case DSV_GGML_BF16: return 32;
    }
    return 0;
}

static int parse_preset(const char *preset, uint32_t *base) {
    int t = !strcasecmp(preset, "Q4_K_M") ? DSV_GGML_Q4_K : dsv_ggml_from_name(preset);
    if (t < 0 || !dsv_q_supported((uint32_t)t))
        return dsv_error(DSV_ERR_ARG, "--type %s: expected Q8_0, Q4_K_M, Q2_K, F32, F16, BF16 or a type among Q4_0 Q4_1 "
                         "Q5_0 Q5_1 IQ4_NL Q3_K Q4_K Q5_K Q6_K", preset);
    *base = (uint32_t)t;
    return DSV_OK;
}

struct rule { regex_t re; uint32_t type; };

static int parse_rules(const dsv_quantize_params *p, struct rule *r) {
    for (int i = 0; i < p->n_overrides; i++) {
        const char *eq = strrchr(p->overrides[i], '=');
        if (!eq || eq == p->overrides[i])
            return dsv_error(DSV_ERR_ARG, "--tensor-type '%s': expected REGEX=TYPE", p->overrides[i]);
        char *pat = strndup(p->overrides[i], (size_t)(eq - p->overrides[i]));
        int t = dsv_ggml_from_name(eq + 1);
        int bad = !pat || regcomp(&r[i].re, pat, REG_EXTENDED | REG_NOSUB);
        free(pat);
        if (bad) {
            for (int k = 0; k < i; k++) regfree(&r[k].re);
            return dsv_error(DSV_ERR_ARG, "--tensor-type '%s': not a valid regular expression", p->overrides[i]);
        }
        if (t < 0 || !dsv_q_supported((uint32_t)t)) {
            for (int k = 0; k <= i; k++) regfree(&r[k].re);
            return dsv_error(DSV_ERR_ARG, "--tensor-type '%s': unknown or unsupported type '%s'", p->overrides[i], eq + 1);
        }
        r[i].type = (uint32_t)t;
    }
    return DSV_OK;
}

/* ---- reading source rows ------------------------------------------------- */

typedef struct src { dsv_linear w; const char *name; } src;

static int src_open(const dsv_st *st, const char *prefix, int64_t n_out, int64_t n_in, src *s) {
    char name[200];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const dsv_st_tensor *t = dsv_st_find(st, name);
    if (!t) return dsv_error(DSV_ERR_MODEL, "tensor '%s' is missing", name);
    if (t->n_dims != 2 || t->shape[0] != n_out || t->shape[1] != n_in)
        return dsv_error(DSV_ERR_MODEL, "tensor '%s': expected shape [%lld, %lld]", name, (long long)n_out, (long long)n_in);
    if (t->dtype != DSV_DT_F8_E4M3 && t->dtype != DSV_DT_BF16 && t->dtype != DSV_DT_F16 && t->dtype != DSV_DT_F32)
        return dsv_error(DSV_ERR_MODEL, "tensor '%s': dtype %s is not F8_E4M3, BF16, F16 or F32", name,
                         dsv_dtype_name(t->dtype));
    memset(s, 0, sizeof *s);
    s->w = (dsv_linear){.dtype = t->dtype, .n_out = (int)n_out, .n_in = (int)n_in, .ld = (int)n_in, .w = t->data};
    s->name = t->name;
    if (t->dtype == DSV_DT_F8_E4M3) {
        snprintf(name, sizeof name, "%s.weight_scale_inv", prefix);
        const dsv_st_tensor *sc = dsv_st_find(st, name);
        const int64_t sr = (n_out + DSV_QBLOCK - 1) / DSV_QBLOCK, scn = (n_in + DSV_QBLOCK - 1) / DSV_QBLOCK;
        if (!sc || sc->dtype != DSV_DT_F32 || sc->n_dims != 2 || sc->shape[0] != sr || sc->shape[1] != scn)
            return dsv_error(DSV_ERR_MODEL, "tensor '%s': missing, or not F32 [%lld, %lld]", name, (long long)sr,
                             (long long)scn);
        s->w.scale = sc->data;
        s->w.scale_ld = (int)scn;
    }
    return DSV_OK;
}

/* Row r as fp32: the stored value (fp8: its code's value times the block's
 * scale, the dequantization of the reference's weight_dequant). */
static void src_row(const src *s, int64_t r, float *out) {
    const int K = s->w.n_in;
    for (int k = 0; k < K; k++) {
        float v = dsv_weight_at(&s->w, (long)(r * K + k), 0);
        if (s->w.scale) v *= s->w.scale[(r / DSV_QBLOCK) * s->w.scale_ld + k / DSV_QBLOCK];
        out[k] = v;
    }
}

/* ---- metadata ------------------------------------------------------------ */

const char *const dsv_deepseek_v3_pretok[3] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

static cJSON *read_json(const char *path, int *st) {
    FILE *f = fopen(path, "rb");
    if (!f) { *st = dsv_error(DSV_ERR_IO, "%s: cannot open", path); return NULL; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 && n < (1L << 30) ? malloc((size_t)n + 1) : NULL;
    if (!b) { fclose(f); *st = dsv_error(DSV_ERR_NOMEM, "%s: cannot read", path); return NULL; }
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = 0;
    cJSON *j = cJSON_ParseWithLength(b, got);
    free(b);
    *st = j ? DSV_OK : dsv_error(DSV_ERR_FORMAT, "%s: invalid JSON", path);
    return j;
}

/* The tokenizer as llama.cpp's converter writes it (gpt2 model, deepseek-v3
 * pre-tokenizer): tokens by id with [PAD<id>] for ids without one (type
 * UNUSED), types NORMAL / CONTROL (special added tokens) / USER_DEFINED
 * (other added tokens), the merges as "a b", special ids and the chat
 * template from tokenizer_config.json. */
static int write_tokenizer(dsv_gguf_writer *w, const char *dir, int vocab_size) {
    char path[4096];
    int st;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    /* A checkpoint without a tokenizer (a test model) gets llama.cpp's
     * "none" model: placeholder tokens. */
    if (access(path, F_OK) != 0) return dsv_gguf_set_str(w, "tokenizer.ggml.model", "none");
    cJSON *j = read_json(path, &st);
    if (!j) return st;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges) || (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "BPE")))) {
        cJSON_Delete(j);
        return dsv_error(DSV_ERR_FORMAT, "%s: not a BPE tokenizer with model.vocab and model.merges", path);
    }
    /* The pre-tokenizer must be DeepSeek-V3's: that is what the name says. */
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    int ok = cJSON_IsArray(list) && cJSON_GetArraySize(list) == 4;
    for (int i = 0; ok && i < 3; i++) {
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(list, i), "pattern"), "Regex");
        ok = cJSON_IsString(re) && !strcmp(re->valuestring, dsv_deepseek_v3_pretok[i]);
    }
    if (!ok) {
        cJSON_Delete(j);
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: the pre-tokenizer is not DeepSeek-V3's, which is the only one written", path);
    }
    int n = vocab_size;
    for (const cJSON *v = vocab->child; v; v = v->next)
        if (cJSON_IsNumber(v) && v->valuedouble >= n && v->valuedouble < (1 << 24)) n = (int)v->valuedouble + 1;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (cJSON_IsNumber(id) && id->valuedouble >= n && id->valuedouble < (1 << 24)) n = (int)id->valuedouble + 1;
    }
    const char **tok = calloc((size_t)n, sizeof *tok);
    int32_t *tt = malloc((size_t)n * sizeof *tt);
    char (*pad)[24] = malloc((size_t)n * sizeof *pad);
    int n_m = cJSON_GetArraySize(merges);
    char **mg = calloc((size_t)n_m + 1, sizeof *mg);
    st = tok && tt && pad && mg ? DSV_OK : dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; !st && i < n; i++) tt[i] = 1;
    for (const cJSON *v = vocab->child; !st && v; v = v->next) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= n)
            st = dsv_error(DSV_ERR_FORMAT, "%s: vocab entry has a bad id", path);
        else tok[(int)v->valuedouble] = v->string;
    }
    for (const cJSON *a = added ? added->child : NULL; !st && a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id"), *ct = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= n || !cJSON_IsString(ct)) {
            st = dsv_error(DSV_ERR_FORMAT, "%s: added token without id or content", path);
            break;
        }
        tok[(int)id->valuedouble] = ct->valuestring;
        tt[(int)id->valuedouble] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special")) ? 3 : 4;
    }
    for (int i = 0; !st && i < n; i++)
        if (!tok[i]) {
            snprintf(pad[i], sizeof pad[i], "[PAD%d]", i);
            tok[i] = pad[i];
            tt[i] = 5;
        }
    int i = 0;
    for (const cJSON *m = merges->child; !st && m; m = m->next, i++) {
        if (cJSON_IsString(m)) mg[i] = strdup(m->valuestring);
        else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
            size_t a = strlen(m->child->valuestring), b = strlen(m->child->next->valuestring);
            if ((mg[i] = malloc(a + b + 2))) sprintf(mg[i], "%s %s", m->child->valuestring, m->child->next->valuestring);
        } else st = dsv_error(DSV_ERR_FORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        if (!st && !mg[i]) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    }
    if (!st) st = dsv_gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (!st) st = dsv_gguf_set_str(w, "tokenizer.ggml.pre", "deepseek-v3");
    if (!st) st = dsv_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok, (uint64_t)n);
    if (!st) st = dsv_gguf_set_arr(w, "tokenizer.ggml.token_type", DSV_GGUF_I32, tt, (uint64_t)n);
    if (!st) st = dsv_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mg, (uint64_t)n_m);
    /* Special tokens and the template from tokenizer_config.json. */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    cJSON *cfg = NULL;
    if (!st && access(path, R_OK) == 0 && !(cfg = read_json(path, &st))) { /* st set */ }
    static const char *const specials[2][2] = {{"bos_token", "tokenizer.ggml.bos_token_id"},
                                               {"eos_token", "tokenizer.ggml.eos_token_id"}};
    for (int k = 0; !st && cfg && k < 2; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, specials[k][0]);
        if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (!cJSON_IsString(v)) continue;
        for (int id = 0; id < n; id++)
            if (!strcmp(tok[id], v->valuestring)) {
                st = dsv_gguf_set_u32(w, specials[k][1], (uint32_t)id);
                break;
            }
    }
    if (!st && cfg) {
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
        const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        st = dsv_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", cJSON_IsTrue(ab));
        if (!st) st = dsv_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(ae));
        if (!st && cJSON_IsString(tpl)) st = dsv_gguf_set_str(w, "tokenizer.chat_template", tpl->valuestring);
    }
    for (int k = 0; k < n_m && mg; k++) free(mg[k]);
    free(mg);
    free(tok);
    free(tt);
    free(pad);
    cJSON_Delete(cfg);
    cJSON_Delete(j);
    return st;
}

/* The model keys, as llama.cpp's DeepseekV32 converter names them. */
static int write_model_kv(dsv_gguf_writer *w, const dsv_config *c, const char *dir, uint32_t ftype, const char *arch) {
    int st = DSV_OK;
    char k[128];
    const char *base = strrchr(dir, '/');
    base = base && base[1] ? base + 1 : dir;
#define A(key) (snprintf(k, sizeof k, "%s.%s", arch, key), k)
#define U(key, v) if (!st) st = dsv_gguf_set_u32(w, A(key), (uint32_t)(v))
#define F(key, v) if (!st) st = dsv_gguf_set_f32(w, A(key), (float)(v))
    st = dsv_gguf_set_str(w, "general.architecture", arch);
    if (!st) st = dsv_gguf_set_str(w, "general.type", "model");
    if (!st) st = dsv_gguf_set_str(w, "general.name", base);
    U("block_count", c->n_layers);
    U("context_length", c->max_position_embeddings > 0 ? c->max_position_embeddings : 4096);
    U("embedding_length", c->dim);
    U("feed_forward_length", c->inter_dim);
    U("attention.head_count", c->n_heads);
    U("attention.head_count_kv", 1);
    F("rope.freq_base", c->rope_theta);
    F("attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    U("expert_count", c->n_routed_experts);
    U("expert_used_count", c->n_activated_experts);
    U("expert_group_count", c->n_expert_groups);
    U("expert_group_used_count", c->n_limited_groups);
    U("expert_gating_func", c->score_func == DSV_SCORE_SOFTMAX ? 1 : 2);
    if (!st) st = dsv_gguf_set_u32(w, "general.file_type", ftype);
    U("leading_dense_block_count", c->n_dense_layers);
    U("vocab_size", c->vocab_size);
    U("attention.q_lora_rank", c->q_lora_rank);
    U("attention.kv_lora_rank", c->kv_lora_rank);
    U("attention.key_length", c->kv_lora_rank + c->qk_rope_head_dim);
    U("attention.value_length", c->kv_lora_rank);
    U("attention.key_length_mla", c->qk_nope_head_dim + c->qk_rope_head_dim);
    U("attention.value_length_mla", c->v_head_dim);
    U("expert_feed_forward_length", c->moe_inter_dim);
    U("expert_shared_count", c->n_shared_experts);
    F("expert_weights_scale", c->route_scale);
    if (!st) st = dsv_gguf_set_bool(w, A("expert_weights_norm"), c->norm_topk_prob);
    U("rope.dimension_count", c->qk_rope_head_dim);
    if (c->yarn) {
        if (!st) st = dsv_gguf_set_str(w, A("rope.scaling.type"), "yarn");
        F("rope.scaling.factor", c->rope_factor);
        U("rope.scaling.original_context_length", c->original_seq_len);
        F("rope.scaling.yarn_log_multiplier", 0.1f * c->mscale);
        F("rope.scaling.yarn_beta_fast", c->beta_fast);
        F("rope.scaling.yarn_beta_slow", c->beta_slow);
    }
    if (!strcmp(arch, "deepseek32")) {
        U("attention.indexer.head_count", c->index_n_heads);
        U("attention.indexer.key_length", c->index_head_dim);
        U("attention.indexer.top_k", c->index_topk);
    }
    if (!st) st = dsv_gguf_set_u32(w, "general.quantization_version", 2);
    /* Not a llama.cpp key: the activation scale format (model_gguf.c). */
    if (!st) st = dsv_gguf_set_str(w, "dsv32.scale_fmt", c->scale_fmt == DSV_SCALE_FMT_UE8M0 ? "ue8m0" : "none");
    /* Nor this: an FP8 checkpoint's linears quantize their inputs to e4m3
     * (act_quant), which no GGUF weight type expresses; the engine does so
     * again for the float weights of those linears (model_gguf.c). */
    if (!st) st = dsv_gguf_set_str(w, "dsv32.act_quant", c->fp8 ? "fp8_e4m3" : "none");
#undef A
#undef U
#undef F
    if (!st) st = write_tokenizer(w, dir, c->vocab_size);
    return st;
}

/* ---- writing ------------------------------------------------------------- */

/* Encodes and puts one tensor, a row at a time. buf: room for one encoded
 * row and rows floats; tmp: a head's k_b (kv_lora * nope floats). */
static int put_tensor(dsv_gguf_writer *w, const dsv_st *st, const dsv_config *c, const item *t, float *row,
                      uint8_t *enc, float *tmp) {
    src s;
    int rc;
    const int64_t K = t->ne[0];
    const size_t rb = dsv_ggml_row_size(t->type, K);
    if (t->kind == K_VEC) {
        const dsv_st_tensor *v = dsv_st_find(st, t->src);
        if (!v) return dsv_error(DSV_ERR_MODEL, "tensor '%s' is missing", t->src);
        if (v->n_dims != 1 || v->shape[0] != K ||
            (v->dtype != DSV_DT_BF16 && v->dtype != DSV_DT_F16 && v->dtype != DSV_DT_F32))
            return dsv_error(DSV_ERR_MODEL, "tensor '%s': expected BF16|F16|F32 [%lld]", t->src, (long long)K);
        dsv_linear l = {.dtype = v->dtype, .w = v->data};
        for (int64_t k = 0; k < K; k++) row[k] = dsv_weight_at(&l, (long)k, 0);
        dsv_q_quant(t->type, row, enc, K);
        return dsv_gguf_writer_put(w, enc, rb);
    }
    if (t->kind == K_MAT) {
        if ((rc = src_open(st, t->src, t->ne[1], K, &s))) return rc;
        for (int64_t r = 0; r < t->ne[1]; r++) {
            src_row(&s, r, row);
            dsv_q_quant(t->type, row, enc, K);
            if ((rc = dsv_gguf_writer_put(w, enc, rb))) return rc;
        }
        return DSV_OK;
    }
    if (t->kind == K_EXPS) {
        char prefix[200];
        for (int64_t e = 0; e < t->ne[2]; e++) {
            snprintf(prefix, sizeof prefix, t->src, (int)e);
            if ((rc = src_open(st, prefix, t->ne[1], K, &s))) return rc;
            for (int64_t r = 0; r < t->ne[1]; r++) {
                src_row(&s, r, row);
                dsv_q_quant(t->type, row, enc, K);
                if ((rc = dsv_gguf_writer_put(w, enc, rb))) return rc;
            }
        }
        return DSV_OK;
    }
    /* attn_k_b / attn_v_b from kv_b_proj [H*(N+V), C]. */
    const int H = c->n_heads, N = c->qk_nope_head_dim, V = c->v_head_dim, C = c->kv_lora_rank;
    if ((rc = src_open(st, t->src, (int64_t)H * (N + V), C, &s))) return rc;
    for (int h = 0; h < H; h++) {
        if (t->kind == K_VB) {
            for (int r = 0; r < V; r++) {
                src_row(&s, (int64_t)h * (N + V) + N + r, row);
                dsv_q_quant(t->type, row, enc, C);
                if ((rc = dsv_gguf_writer_put(w, enc, rb))) return rc;
            }
            continue;
        }
        for (int r = 0; r < N; r++) src_row(&s, (int64_t)h * (N + V) + r, tmp + (size_t)r * C);
        for (int k = 0; k < C; k++) { /* row k of k_b[h]: column k of the key half */
            for (int r = 0; r < N; r++) row[r] = tmp[(size_t)r * C + k];
            dsv_q_quant(t->type, row, enc, N);
            if ((rc = dsv_gguf_writer_put(w, enc, rb))) return rc;
        }
    }
    return DSV_OK;
}

static uint64_t tensor_bytes(const item *t) {
    return dsv_ggml_row_size(t->type, t->ne[0]) * (uint64_t)t->ne[1] * (uint64_t)t->ne[2];
}

static void report_policy(const dsv_quantize_params *p, const qplan *pl) {
    if (!p->report) return;
    for (int g = 0; g < G_N; g++) {
        char line[512];
        size_t o = (size_t)snprintf(line, sizeof line, "%-32s", group_names[g]);
        int any = 0;
        for (uint32_t t = 0; t < DSV_GGML_NTYPES; t++) {
            int cnt = 0;
            for (int i = 0; i < pl->n; i++) cnt += pl->it[i].group == g && pl->it[i].type == t;
            if (cnt && o < sizeof line)
                o += (size_t)snprintf(line + o, sizeof line - o, "%s%s x%d", any++ ? ", " : "", dsv_ggml_name(t), cnt);
        }
        if (any) p->report(line, p->report_user);
    }
}

int dsv_quantize(const dsv_quantize_params *p) {
    if (!p || !p->model_dir || !p->out_path || !p->preset || (p->n_overrides && !p->overrides) || p->n_overrides < 0)
        return dsv_error(DSV_ERR_ARG, "dsv_quantize: missing argument");
    uint32_t base = 0;
    int st = parse_preset(p->preset, &base);
    if (st) return st;
    struct rule *rules = calloc((size_t)p->n_overrides + 1, sizeof *rules);
    if (!rules) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    if ((st = parse_rules(p, rules))) { free(rules); return st; }
    dsv_config c;
    dsv_st *sto = NULL;
    qplan pl = {0};
    float *row = NULL, *tmp = NULL;
    uint8_t *enc = NULL;
    dsv_gguf_writer *w = NULL;
    char **paths = NULL;
    int n_files = 1, done_files = 0;
    const char *arch = p->arch ? p->arch : "deepseek32";
    if (strcmp(arch, "deepseek32") && strcmp(arch, "deepseek2")) {
        st = dsv_error(DSV_ERR_ARG, "--arch %s: expected deepseek32 or deepseek2", arch);
        goto out;
    }
    if ((st = dsv_config_load(&c, p->model_dir)) || (st = dsv_st_open(&sto, p->model_dir)) ||
        (st = build_plan(&pl, &c, sto, !strcmp(arch, "deepseek32"))))
        goto out;
    int64_t maxk = 0;
    for (int i = 0; i < pl.n; i++) {
        item *t = &pl.it[i];
        t->type = policy(t->group, base);
        if (t->group != G_NORM)
            for (int r = 0; r < p->n_overrides; r++)
                if (!regexec(&rules[r].re, t->name, 0, NULL, 0)) { t->type = rules[r].type; break; }
        t->type = fallback(t->type, t->ne[0]);
        maxk = DSV_MAX(maxk, t->ne[0]);
    }
    report_policy(p, &pl);
    const size_t tmp_n = (size_t)c.kv_lora_rank * (size_t)c.qk_nope_head_dim;
    row = malloc((size_t)maxk * sizeof *row);
    enc = malloc((size_t)maxk * 4 + 64);
    tmp = malloc(tmp_n * sizeof *tmp);
    if (!row || !enc || !tmp) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto out; }

    /* Files: a new one whenever the next tensor would pass the size limit. */
    int *file_of = malloc((size_t)pl.n * sizeof *file_of);
    if (!file_of) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto out; }
    uint64_t acc = 0;
    n_files = 1;
    for (int i = 0; i < pl.n; i++) {
        const uint64_t b = (tensor_bytes(&pl.it[i]) + 31) / 32 * 32;
        if (p->split_max_size && acc && acc + b > p->split_max_size) { n_files++; acc = 0; }
        acc += b;
        file_of[i] = n_files - 1;
    }
    if (n_files > 99999) { free(file_of); st = dsv_error(DSV_ERR_ARG, "--split-max-size: more than 99999 files"); goto out; }
    paths = calloc((size_t)n_files, sizeof *paths);
    size_t ol = strlen(p->out_path);
    const size_t stem = ol > 5 && !strcmp(p->out_path + ol - 5, ".gguf") ? ol - 5 : ol;
    for (int f = 0; paths && f < n_files; f++) {
        if (!(paths[f] = malloc(ol + 32))) break;
        if (n_files == 1) snprintf(paths[f], ol + 32, "%s", p->out_path);
        else snprintf(paths[f], ol + 32, "%.*s-%05d-of-%05d.gguf", (int)stem, p->out_path, f + 1, n_files);
    }
    if (!paths || !paths[n_files - 1]) { free(file_of); st = dsv_error(DSV_ERR_NOMEM, "out of memory"); goto out; }
    int done = 0;
    for (int f = 0; f < n_files && !st; f++) {
        if ((st = dsv_gguf_writer_init(&w))) break;
        if (f == 0) st = write_model_kv(w, &c, p->model_dir, file_type(p->preset, base), arch);
        if (!st && n_files > 1) {
            st = dsv_gguf_set_u16(w, "split.no", (uint16_t)f);
            if (!st) st = dsv_gguf_set_u16(w, "split.count", (uint16_t)n_files);
            if (!st) st = dsv_gguf_set_i32(w, "split.tensors.count", pl.n);
        }
        for (int i = 0; i < pl.n && !st; i++)
            if (file_of[i] == f) st = dsv_gguf_writer_add(w, pl.it[i].name, pl.it[i].type, pl.it[i].n_dims, pl.it[i].ne);
        if (!st) st = dsv_gguf_writer_begin(w, paths[f]);
        for (int i = 0; i < pl.n && !st; i++) {
            if (file_of[i] != f) continue;
            if ((st = put_tensor(w, sto, &c, &pl.it[i], row, enc, tmp)))
                st = dsv_error_prefix(st, "%s -> %s", p->model_dir, pl.it[i].name);
            else if (p->progress) p->progress(++done, pl.n, pl.it[i].name, dsv_ggml_name(pl.it[i].type), p->progress_user);
        }
        if (!st) st = dsv_gguf_writer_finish(w);
        dsv_gguf_writer_free(w);
        w = NULL;
        if (!st) done_files++;
    }
    free(file_of);
out:
    if (st && paths)
        for (int f = 0; f < done_files; f++) unlink(paths[f]);
    for (int f = 0; paths && f < n_files; f++) free(paths[f]);
    free(paths);
    dsv_gguf_writer_free(w);
    for (int r = 0; r < p->n_overrides; r++) regfree(&rules[r].re);
    free(rules);
    free(row);
    free(enc);
    free(tmp);
    free(pl.it);
    dsv_st_close(sto);
    return st;
}
