/* model_gguf.c: opening a DeepSeek model from a GGUF file (or split set) as
 * llama.cpp writes it: arch "deepseek32" (DeepSeek-V3.2 with the lightning
 * indexer) or "deepseek2" (DeepSeek-V3/V3.1/R1, or V3.2 converted without
 * the indexer), which runs as dense MLA: every context of such a model
 * attends to every position, and its indexer weights are zeros that are
 * computed with but never used.
 *
 * The metadata becomes a Hugging Face style config (JSON text handed to
 * dsv_config_parse, so both formats pass the same consistency checks);
 * tensors are found by llama.cpp's names and mapped in place:
 *   token_embd [vocab, dim]           -> embed          output -> head
 *   blk.N.attn_q_a / attn_q_b         -> wq_a / wq_b    attn_kv_a_mqa -> wkv_a
 *   blk.N.attn_k_b [H, kv_lora, nope] + attn_v_b [H, v, kv_lora]
 *                                     -> wkv_b [H*(nope+v), kv_lora] (built)
 *   blk.N.attn_output -> wo; indexer.attn_q_b / attn_k / proj / k_norm
 *   blk.N.ffn_{gate,down,up}          -> the dense MLP
 *   blk.N.ffn_{gate,down,up}_exps [E, out, in] -> expert e's slice
 *   blk.N.ffn_{gate,down,up}_shexp, ffn_gate_inp, exp_probs_b.bias
 * A GGUF extent list is the reverse of a row-major shape (ne[0] = columns).
 * F32/F16/BF16 matrices become dsv_linear of that dtype, exactly as from
 * safetensors; block-quantized ones keep their blocks (dsv_linear.gtype) and
 * run through the quantized linear kernels. Two things are converted at
 * load into memory the model owns: wkv_b, rebuilt in bf16 from llama.cpp's
 * split and transposed attn_k_b/attn_v_b (or an old file's attn_kv_b) because
 * the absorbed attention reads it in the Hugging Face layout; and a
 * block-quantized token_embd, expanded to bf16 rows for the embedding lookup.
 * Both are exact for bf16 files.
 *
 * A file written from an FP8 checkpoint says so (dsv32.act_quant): its
 * linears that were fp8 then quantize their inputs as the reference's
 * act_quant does and run fp8_gemm's arithmetic on the float weights
 * (dsv_linear.act_fp8, kernels linear_fp8x), which with BF16 weights of a
 * ue8m0 checkpoint gives the safetensors model's results.
 *
 * Split across processes (format/shard.h), every rank maps the same file
 * and points only at its part: rows of a matrix are cut anywhere, columns
 * (o_proj, the down projections) only between blocks of the tensor's type,
 * so the plan is made from the file's types (cut_blocks) and every cut is
 * checked against its tensor's type before it is mapped. Of what is
 * converted at load, only this rank's heads of wkv_b and its vocabulary rows
 * of a quantized token_embd are built.
 *
 * Not here: MTP layers (never looked up), DeepSeek-V2-Lite's layout (no q
 * LoRA). */
#include <stdarg.h>
#include <string.h>

#include "model.h"
#include "format/gguf.h"
#include "kernels/quant.h"
#include "base/util.h"

/* The part of a matrix this rank maps: rows or columns [lo, hi), or all. */
enum { CUT_NONE, CUT_ROWS, CUT_COLS };
typedef struct cut { int axis, lo, hi; } cut;
static const cut WHOLE = {CUT_NONE, 0, 0};
static cut rows_of(int lo, int hi) { return (cut){CUT_ROWS, lo, hi}; }
static cut cols_of(int lo, int hi) { return (cut){CUT_COLS, lo, hi}; }

typedef struct gloader {
    dsv_model *m;
    const char *path;
    float *vec_next, *vec_end;
    const dsv_bf16 *zeros;      /* no indexer: zero weights [128 * max(dim, q_lora)] */
    const float *fzeros;        /* and zero vectors [128] */
} gloader;

static int type_error(const gloader *L, const dsv_gguf_tensor *t) {
    return dsv_error(DSV_ERR_UNSUPPORTED,
                     "%s: tensor '%s' has type %s, which dsv32 cannot compute with (supported: F32 F16 BF16 Q8_0 "
                     "Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K)",
                     L->path, t->name, dsv_ggml_name(t->type));
}

/* Finds a tensor and checks its extents (ne[0] first; unused ones 1). */
static int find(gloader *L, const dsv_gguf_tensor **out, const char *name, int64_t e0, int64_t e1, int64_t e2) {
    const dsv_gguf_tensor *t = dsv_gguf_find(L->m->gguf, name);
    if (!t) return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is missing", L->path, name);
    if (!dsv_q_supported(t->type)) return type_error(L, t);
    if (t->ne[0] != e0 || t->ne[1] != e1 || t->ne[2] != e2 || t->ne[3] != 1)
        return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s': expected extents [%lld, %lld, %lld], actual [%lld, %lld, %lld, %lld] (%s)",
                         L->path, name, (long long)e0, (long long)e1, (long long)e2, (long long)t->ne[0],
                         (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], dsv_ggml_name(t->type));
    *out = t;
    return DSV_OK;
}

/* A small vector, decoded to fp32 into the model's vector store. */
static int vec(gloader *L, const float **out, const char *name, int64_t n) {
    const dsv_gguf_tensor *t;
    int st = find(L, &t, name, n, 1, 1);
    if (st) return st;
    DSV_ASSERT(L->vec_next + n <= L->vec_end);
    dsv_q_dequant(t->type, t->data, L->vec_next, n);
    *out = L->vec_next;
    L->vec_next += n;
    return DSV_OK;
}

int dsv_model_gguf_check_cut(const char *path, const char *name, uint32_t type, int n_in, int lo, int hi, int rank,
                             int size) {
    const int blk = dsv_ggml_blck(type);
    if (blk <= 1 || (lo % blk == 0 && (hi % blk == 0 || hi == n_in))) return DSV_OK;
    return dsv_error(DSV_ERR_UNSUPPORTED,
                     "%s: tensor '%s' is %s (blocks of %d columns) and cannot be split at columns [%d, %d) of %d for "
                     "rank %d of %d", path, name, dsv_ggml_name(type), blk, lo, hi, n_in, rank, size);
}

/* Points a dsv_linear at a matrix of a tensor: [n_out, n_in] starting at
 * row0 of a tensor whose rows are n_in long, cut to this rank's part `k`
 * (rows: the start moves; columns: the start moves and ld keeps the row
 * length). An empty part is a zero-size weight, as model.c's. */
static int set_linear(gloader *L, dsv_linear *out, const dsv_gguf_tensor *t, int n_out, int n_in, int64_t row0,
                      cut k) {
    memset(out, 0, sizeof *out);
    if (k.axis != CUT_NONE && k.lo == k.hi) {
        out->dtype = DSV_DT_BF16;
        out->n_out = k.axis == CUT_ROWS ? 0 : n_out;
        out->n_in = out->ld = k.axis == CUT_COLS ? 0 : n_in;
        return DSV_OK;
    }
    /* The plan keeps column cuts between blocks; checked for every tensor,
     * since a cut inside a block would pair values with another block's
     * scale. */
    int st = k.axis == CUT_COLS ? dsv_model_gguf_check_cut(L->path, t->name, t->type, n_in, k.lo, k.hi, L->m->sh.rank,
                                                           L->m->sh.size)
                                : DSV_OK;
    if (st) return st;
    const size_t row = dsv_ggml_row_size(t->type, n_in);
    out->n_out = n_out;
    out->n_in = out->ld = n_in;
    out->w = (const char *)t->data + (size_t)row0 * row;
    if (k.axis == CUT_ROWS) {
        out->w = (const char *)out->w + (size_t)k.lo * row;
        out->n_out = k.hi - k.lo;
    } else if (k.axis == CUT_COLS) {
        out->w = (const char *)out->w + dsv_ggml_row_size(t->type, k.lo);
        out->n_in = k.hi - k.lo;
    }
    switch (t->type) {
    case DSV_GGML_F32: out->dtype = DSV_DT_F32; break;
    case DSV_GGML_F16: out->dtype = DSV_DT_F16; break;
    case DSV_GGML_BF16: out->dtype = DSV_DT_BF16; break;
    default: out->dtype = DSV_DT_BF16; out->gtype = t->type; break; /* dtype unused with gtype */
    }
    L->m->weight_bytes += (uint64_t)out->n_out * dsv_ggml_row_size(t->type, out->n_in);
    return DSV_OK;
}

static int linear(gloader *L, dsv_linear *out, const char *name, int n_out, int n_in, cut k) {
    const dsv_gguf_tensor *t;
    int st = find(L, &t, name, n_in, n_out, 1);
    if (st) return st;
    return set_linear(L, out, t, n_out, n_in, 0, k);
}

/* wkv_b [H*(nope+v), kv_lora] in bf16, per head [k_nope rows | v rows], from
 * attn_k_b (per head [kv_lora][nope]: the key half transposed) and attn_v_b
 * (per head [v][kv_lora]), or from an unsplit attn_kv_b: this rank's heads
 * [head0, head1) only. tmp: scratch of kv_lora * max(nope, v) floats. */
static int build_kv_b(gloader *L, int il, dsv_bf16 *dst, float *tmp) {
    const dsv_config *c = &L->m->cfg;
    const int H = c->n_heads, N = c->qk_nope_head_dim, V = c->v_head_dim, C = c->kv_lora_rank;
    const int h0 = L->m->sh.head0, h1 = L->m->sh.head1;
    char n1[96], n2[96];
    const dsv_gguf_tensor *kb, *vb;
    snprintf(n1, sizeof n1, "blk.%d.attn_kv_b.weight", il);
    if (dsv_gguf_find(L->m->gguf, n1)) {
        int st = find(L, &kb, n1, C, (int64_t)H * (N + V), 1);
        if (st) return st;
        const size_t row = dsv_ggml_row_size(kb->type, C);
        for (int r = h0 * (N + V); r < h1 * (N + V); r++) {
            dsv_q_dequant(kb->type, (const char *)kb->data + (size_t)r * row, tmp, C);
            for (int k = 0; k < C; k++) dst[(size_t)(r - h0 * (N + V)) * C + k] = dsv_f32_to_bf16(tmp[k]);
        }
        return DSV_OK;
    }
    snprintf(n1, sizeof n1, "blk.%d.attn_k_b.weight", il);
    snprintf(n2, sizeof n2, "blk.%d.attn_v_b.weight", il);
    int st = find(L, &kb, n1, N, C, H);
    if (!st) st = find(L, &vb, n2, C, V, H);
    if (st) return st;
    const size_t kh = dsv_ggml_row_size(kb->type, N) * (size_t)C, vh = dsv_ggml_row_size(vb->type, C) * (size_t)V;
    for (int h = h0; h < h1; h++) {
        dsv_bf16 *o = dst + (size_t)(h - h0) * (N + V) * C;
        dsv_q_dequant(kb->type, (const char *)kb->data + (size_t)h * kh, tmp, (int64_t)C * N); /* [C][N] */
        for (int r = 0; r < N; r++)
            for (int k = 0; k < C; k++) o[(size_t)r * C + k] = dsv_f32_to_bf16(tmp[(size_t)k * N + r]);
        dsv_q_dequant(vb->type, (const char *)vb->data + (size_t)h * vh, tmp, (int64_t)V * C); /* [V][C] */
        for (size_t i = 0; i < (size_t)V * C; i++) o[(size_t)N * C + i] = dsv_f32_to_bf16(tmp[i]);
    }
    return DSV_OK;
}

/* A block-quantized attn_k_b / attn_v_b also stays mapped as the file holds
 * it, this rank's heads [head0, head1) (their rows are consecutive), for
 * the absorbed path to multiply with float activations (dsv_q_absorb):
 * k_b's rows (kv_lora per head, nope long) give q_abs = k_b q_nope, v_b's
 * (v per head, kv_lora long) o = v_b o_lat. Only for the types with decode
 * kernels (dsv_q_absorb_fast); others, float tensors and an old file's
 * unsplit attn_kv_b keep the bf16 wkv_b, which build_kv_b has checked
 * these tensors for. */
static void kv_b_quant(gloader *L, int il, dsv_layer *ly) {
    const dsv_config *c = &L->m->cfg;
    const int N = c->qk_nope_head_dim, V = c->v_head_dim, C = c->kv_lora_rank;
    const int h0 = L->m->sh.head0, nh = L->m->n_local_heads;
    char n1[96];
    memset(&ly->k_b, 0, sizeof ly->k_b);
    memset(&ly->v_b, 0, sizeof ly->v_b);
    snprintf(n1, sizeof n1, "blk.%d.attn_kv_b.weight", il);
    if (dsv_gguf_find(L->m->gguf, n1) || nh == 0) return;
    const struct { const char *name; dsv_linear *out; int rows, n_in; } tb[2] = {
        {"attn_k_b", &ly->k_b, C, N}, {"attn_v_b", &ly->v_b, V, C}};
    for (int i = 0; i < 2; i++) {
        snprintf(n1, sizeof n1, "blk.%d.%s.weight", il, tb[i].name);
        const dsv_gguf_tensor *t = dsv_gguf_find(L->m->gguf, n1);
        if (!t || !dsv_q_absorb_fast(t->type) || !dsv_q_absorb_ok(t->type, tb[i].n_in)) continue;
        const size_t row = dsv_ggml_row_size(t->type, tb[i].n_in);
        *tb[i].out = (dsv_linear){.dtype = DSV_DT_BF16, .gtype = t->type, .n_out = nh * tb[i].rows,
                                  .n_in = tb[i].n_in, .ld = tb[i].n_in,
                                  .w = (const char *)t->data + (size_t)h0 * (size_t)tb[i].rows * row};
    }
}

/* The dense MLP or the shared experts: this rank's hidden units [lo, hi)
 * (gate/up rows, down columns). */
static int expert(gloader *L, dsv_expert *e, int il, const char *sfx, int dim, int inter, int lo, int hi) {
    char p[96];
    int st;
    const int all = lo == 0 && hi == inter;
    snprintf(p, sizeof p, "blk.%d.ffn_gate%s.weight", il, sfx);
    if ((st = linear(L, &e->w1, p, inter, dim, all ? WHOLE : rows_of(lo, hi)))) return st;
    snprintf(p, sizeof p, "blk.%d.ffn_down%s.weight", il, sfx);
    if ((st = linear(L, &e->w2, p, dim, inter, all ? WHOLE : cols_of(lo, hi)))) return st;
    snprintf(p, sizeof p, "blk.%d.ffn_up%s.weight", il, sfx);
    return linear(L, &e->w3, p, inter, dim, all ? WHOLE : rows_of(lo, hi));
}

/* A model without an indexer gets zero indexer weights (one shared buffer):
 * the engine's indexer steps then run on zeros, their result unused since
 * such a model's contexts attend densely. */
static void no_indexer(gloader *L, dsv_layer *ly, const dsv_bf16 *zeros, const float *fzeros) {
    const dsv_config *c = &L->m->cfg;
    ly->idx_wq_b = (dsv_linear){.dtype = DSV_DT_BF16, .n_out = c->index_head_dim, .n_in = c->q_lora_rank,
                                .ld = c->q_lora_rank, .w = zeros};
    ly->idx_wk = (dsv_linear){.dtype = DSV_DT_BF16, .n_out = c->index_head_dim, .n_in = c->dim, .ld = c->dim, .w = zeros};
    ly->idx_wproj = (dsv_linear){.dtype = DSV_DT_BF16, .n_out = 1, .n_in = c->dim, .ld = c->dim, .w = zeros};
    ly->idx_k_norm_w = ly->idx_k_norm_b = fzeros;
}

static int load_layer(gloader *L, int il, dsv_bf16 *kv_b, float *tmp) {
    const dsv_config *c = &L->m->cfg;
    const dsv_shard *sh = &L->m->sh;
    dsv_layer *ly = &L->m->layers[il];
    const int H = c->n_heads, dim = c->dim, QH = c->qk_nope_head_dim + c->qk_rope_head_dim, VH = c->v_head_dim;
    const int split = sh->size > 1;
    char p[96];
    int st;
#define V(field, sfx, n) do { snprintf(p, sizeof p, "blk.%d.%s", il, sfx); \
        if ((st = vec(L, &ly->field, p, n))) return st; } while (0)
#define LIN(field, sfx, no, ni, k) do { snprintf(p, sizeof p, "blk.%d.%s", il, sfx); \
        if ((st = linear(L, &ly->field, p, no, ni, k))) return st; } while (0)
    V(attn_norm, "attn_norm.weight", dim);
    V(ffn_norm, "ffn_norm.weight", dim);
    LIN(wq_a, "attn_q_a.weight", c->q_lora_rank, dim, WHOLE);
    V(q_norm, "attn_q_a_norm.weight", c->q_lora_rank);
    /* Heads [head0, head1): q_b and kv_b rows, o_proj columns. */
    LIN(wq_b, "attn_q_b.weight", H * QH, c->q_lora_rank, split ? rows_of(sh->head0 * QH, sh->head1 * QH) : WHOLE);
    LIN(wkv_a, "attn_kv_a_mqa.weight", c->kv_lora_rank + c->qk_rope_head_dim, dim, WHOLE);
    V(kv_norm, "attn_kv_a_norm.weight", c->kv_lora_rank);
    if ((st = build_kv_b(L, il, kv_b, tmp))) return st;
    ly->wkv_b = (dsv_linear){.dtype = DSV_DT_BF16, .n_out = L->m->n_local_heads * (c->qk_nope_head_dim + VH),
                             .n_in = c->kv_lora_rank, .ld = c->kv_lora_rank, .w = kv_b};
    kv_b_quant(L, il, ly);
    /* Counted as decode streams it: the file's blocks where kept, else bf16. */
    const uint64_t nh = (uint64_t)L->m->n_local_heads, kvl = (uint64_t)c->kv_lora_rank;
    L->m->weight_bytes += ly->k_b.gtype ? (uint64_t)ly->k_b.n_out * dsv_ggml_row_size(ly->k_b.gtype, ly->k_b.n_in)
                                        : nh * kvl * (uint64_t)c->qk_nope_head_dim * 2;
    L->m->weight_bytes += ly->v_b.gtype ? (uint64_t)ly->v_b.n_out * dsv_ggml_row_size(ly->v_b.gtype, ly->v_b.n_in)
                                        : nh * kvl * (uint64_t)VH * 2;
    LIN(wo, "attn_output.weight", dim, H * VH, split ? cols_of(sh->head0 * VH, sh->head1 * VH) : WHOLE);
    if (L->m->no_indexer) {
        no_indexer(L, ly, L->zeros, L->fzeros);
    } else {
        LIN(idx_wq_b, "indexer.attn_q_b.weight", c->index_n_heads * c->index_head_dim, c->q_lora_rank, WHOLE);
        LIN(idx_wk, "indexer.attn_k.weight", c->index_head_dim, dim, WHOLE);
        V(idx_k_norm_w, "indexer.k_norm.weight", c->index_head_dim);
        V(idx_k_norm_b, "indexer.k_norm.bias", c->index_head_dim);
        LIN(idx_wproj, "indexer.proj.weight", c->index_n_heads, dim, WHOLE);
    }
    ly->is_moe = il >= c->n_dense_layers;
    if (!ly->is_moe) return expert(L, &ly->mlp, il, "", dim, c->inter_dim, sh->inter0, sh->inter1);
    LIN(gate, "ffn_gate_inp.weight", c->n_routed_experts, dim, WHOLE);
    snprintf(p, sizeof p, "blk.%d.exp_probs_b.bias", il);
    ly->gate_bias = NULL;
    if (dsv_gguf_find(L->m->gguf, p)) V(gate_bias, "exp_probs_b.bias", c->n_routed_experts);
    ly->experts = L->m->expert_store + (size_t)(il - c->n_dense_layers) * c->n_routed_experts;
    static const char *const parts[3] = {"gate", "down", "up"};
    for (int k = 0; k < 3; k++) {
        const dsv_gguf_tensor *t;
        const int n_out = k == 1 ? dim : c->moe_inter_dim, n_in = k == 1 ? c->moe_inter_dim : dim;
        snprintf(p, sizeof p, "blk.%d.ffn_%s_exps.weight", il, parts[k]);
        if ((st = find(L, &t, p, n_in, n_out, c->n_routed_experts))) return st;
        /* This rank's experts only (the others stay zero and are never run). */
        for (int e = sh->expert0; e < sh->expert1; e++) {
            dsv_expert *x = &ly->experts[e];
            if ((st = set_linear(L, k == 0 ? &x->w1 : k == 1 ? &x->w2 : &x->w3, t, n_out, n_in, (int64_t)e * n_out,
                                 WHOLE)))
                return st;
        }
    }
    if (c->n_shared_experts > 0)
        return expert(L, &ly->shared, il, "_shexp", dim, c->n_shared_experts * c->moe_inter_dim, sh->shared0,
                      sh->shared1);
    return DSV_OK;
#undef V
#undef LIN
}

/* ---- metadata -> config ---------------------------------------------------- */

struct jbuf { char s[4096]; size_t n; int st; };

static void jput(struct jbuf *j, const char *fmt, ...) DSV_PRINTF(2, 3);
static void jput(struct jbuf *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(j->s + j->n, sizeof j->s - j->n, fmt, ap);
    va_end(ap);
    DSV_ASSERT(k >= 0 && (size_t)k < sizeof j->s - j->n);
    j->n += (size_t)k;
}

/* "<field>": <integer key>, from arch-prefixed key (required unless def is
 * given: have_def). The range keeps every value an int. */
static void jint(struct jbuf *j, const dsv_gguf *g, const char *arch, const char *key, const char *field,
                 int have_def, int64_t def) {
    char k[128];
    int64_t v = def;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (j->st) return;
    if (dsv_gguf_kv_find(g, k) >= 0 || !have_def) j->st = dsv_gguf_get_int(g, k, 0, 1 << 30, &v);
    if (!j->st) jput(j, "\"%s\": %lld, ", field, (long long)v);
}

static void jnum(struct jbuf *j, const dsv_gguf *g, const char *arch, const char *key, const char *field,
                 int have_def, float def) {
    char k[128];
    float v = def;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    if (j->st) return;
    if (dsv_gguf_kv_find(g, k) >= 0 || !have_def) j->st = dsv_gguf_get_f32(g, k, &v);
    if (!j->st && !(v == v && v > -1e30f && v < 1e30f))
        j->st = dsv_error(DSV_ERR_MODEL, "metadata key \"%s\" is not a finite number", k);
    if (!j->st) jput(j, "\"%s\": %.9g, ", field, (double)v);
}

/* The scale format of activation quantization (the indexer and the cached
 * latent), which GGUF has no key for: dsv32 quantize writes dsv32.scale_fmt;
 * without it a deepseek32 file is taken to be DeepSeek-V3.2 (ue8m0). */
#define SCALE_FMT_KEY "dsv32.scale_fmt"

static int config_from_gguf(dsv_config *c, const dsv_gguf *g, const char *path, int *no_indexer) {
    const char *s;
    size_t len;
    char arch[32];
    int st = dsv_gguf_get_str(g, "general.architecture", &s, &len);
    if (st) return st;
    snprintf(arch, sizeof arch, "%.*s", (int)DSV_MIN(len, sizeof arch - 1), s);
    if ((strcmp(arch, "deepseek32") && strcmp(arch, "deepseek2")) || len != strlen(arch))
        return dsv_error(DSV_ERR_MODEL, "%s: architecture '%.*s' is not a DeepSeek model (deepseek32 or deepseek2)",
                         path, (int)DSV_MIN(len, 40), s);
    *no_indexer = !strcmp(arch, "deepseek2");
    struct jbuf *j = calloc(1, sizeof *j);
    if (!j) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    jput(j, "{\"architectures\": [\"DeepseekV32ForCausalLM\"], ");
    int64_t n_layers = 0, n_mtp = 0;
    char k[128];
    snprintf(k, sizeof k, "%s.block_count", arch);
    if (!(j->st = dsv_gguf_get_int(g, k, 1, 1 << 20, &n_layers))) {
        snprintf(k, sizeof k, "%s.nextn_predict_layers", arch);
        if (dsv_gguf_kv_find(g, k) >= 0) j->st = dsv_gguf_get_int(g, k, 0, n_layers - 1, &n_mtp);
        jput(j, "\"num_hidden_layers\": %lld, \"num_nextn_predict_layers\": %lld, ", (long long)(n_layers - n_mtp),
             (long long)n_mtp);
    }
    /* The vocabulary: vocab_size, else the token list's length. */
    snprintf(k, sizeof k, "%s.vocab_size", arch);
    int tok = dsv_gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (!j->st && dsv_gguf_kv_find(g, k) < 0 && tok >= 0 && dsv_gguf_kv_type(g, tok) == DSV_GGUF_ARRAY) {
        if (dsv_gguf_arr_n(g, tok) > (1u << 30)) j->st = dsv_error(DSV_ERR_MODEL, "tokenizer.ggml.tokens is too long");
        else jput(j, "\"vocab_size\": %llu, ", (unsigned long long)dsv_gguf_arr_n(g, tok));
    } else jint(j, g, arch, "vocab_size", "vocab_size", 0, 0);
    jint(j, g, arch, "embedding_length", "hidden_size", 0, 0);
    jint(j, g, arch, "feed_forward_length", "intermediate_size", 0, 0);
    jint(j, g, arch, "expert_feed_forward_length", "moe_intermediate_size", 0, 0);
    jint(j, g, arch, "leading_dense_block_count", "first_k_dense_replace", 0, 0);
    jint(j, g, arch, "attention.head_count", "num_attention_heads", 0, 0);
    jint(j, g, arch, "expert_count", "n_routed_experts", 0, 0);
    jint(j, g, arch, "expert_shared_count", "n_shared_experts", 1, 0);
    jint(j, g, arch, "expert_used_count", "num_experts_per_tok", 0, 0);
    jint(j, g, arch, "expert_group_count", "n_group", 1, 1);
    jint(j, g, arch, "expert_group_used_count", "topk_group", 1, 1);
    jint(j, g, arch, "attention.q_lora_rank", "q_lora_rank", 0, 0);
    jint(j, g, arch, "attention.kv_lora_rank", "kv_lora_rank", 0, 0);
    jint(j, g, arch, "rope.dimension_count", "qk_rope_head_dim", 0, 0);
    jint(j, g, arch, "attention.value_length_mla", "v_head_dim", 0, 0);
    if (*no_indexer) /* placeholders the config checks want; the indexer never runs */
        jput(j, "\"index_n_heads\": 1, \"index_head_dim\": 128, \"index_topk\": 1, ");
    else {
        jint(j, g, arch, "attention.indexer.head_count", "index_n_heads", 0, 0);
        jint(j, g, arch, "attention.indexer.key_length", "index_head_dim", 0, 0);
        jint(j, g, arch, "attention.indexer.top_k", "index_topk", 0, 0);
    }
    jint(j, g, arch, "context_length", "max_position_embeddings", 1, 0);
    jnum(j, g, arch, "attention.layer_norm_rms_epsilon", "rms_norm_eps", 0, 0);
    jnum(j, g, arch, "rope.freq_base", "rope_theta", 1, 10000.0f);
    jnum(j, g, arch, "expert_weights_scale", "routed_scaling_factor", 1, 1.0f);
    /* The key length (nope + rope) gives qk_nope_head_dim. */
    int64_t kl = 0, rope = 0;
    snprintf(k, sizeof k, "%s.attention.key_length_mla", arch);
    if (!j->st) j->st = dsv_gguf_get_int(g, k, 1, 1 << 20, &kl);
    snprintf(k, sizeof k, "%s.rope.dimension_count", arch);
    if (!j->st) j->st = dsv_gguf_get_int(g, k, 0, kl - 1, &rope);
    if (!j->st) jput(j, "\"qk_nope_head_dim\": %lld, ", (long long)(kl - rope));
    /* Routing: gating function 1 softmax, 2 sigmoid (llama.cpp's enum); a
     * deepseek2 file without the key is DeepSeek-V2 (softmax). */
    int64_t gf = *no_indexer ? 1 : 2;
    int norm = 0;
    snprintf(k, sizeof k, "%s.expert_gating_func", arch);
    if (!j->st && dsv_gguf_kv_find(g, k) >= 0) j->st = dsv_gguf_get_int(g, k, 1, 2, &gf);
    snprintf(k, sizeof k, "%s.expert_weights_norm", arch);
    if (!j->st && dsv_gguf_kv_find(g, k) >= 0) j->st = dsv_gguf_get_bool(g, k, &norm);
    if (!j->st) jput(j, "\"scoring_func\": \"%s\", \"norm_topk_prob\": %s, ", gf == 1 ? "softmax" : "sigmoid",
                     norm ? "true" : "false");
    /* YaRN. */
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    if (!j->st && dsv_gguf_kv_find(g, k) >= 0 && !(j->st = dsv_gguf_get_str(g, k, &s, &len)) &&
        len == 4 && !memcmp(s, "yarn", 4)) {
        float f = 0, lm = 0;
        int64_t orig = 0;
        snprintf(k, sizeof k, "%s.rope.scaling.factor", arch);
        if (!(j->st = dsv_gguf_get_f32(g, k, &f))) {
            snprintf(k, sizeof k, "%s.rope.scaling.original_context_length", arch);
            j->st = dsv_gguf_get_int(g, k, 1, 1 << 30, &orig);
        }
        /* llama.cpp's converter writes yarn_log_multiplier = 0.1 * mscale_all_dim. */
        snprintf(k, sizeof k, "%s.rope.scaling.yarn_log_multiplier", arch);
        if (!j->st && dsv_gguf_kv_find(g, k) >= 0) j->st = dsv_gguf_get_f32(g, k, &lm);
        else lm = 0.1f;
        if (!j->st && !(f >= 1 && f < 1e6f && lm >= 0 && lm < 100))
            j->st = dsv_error(DSV_ERR_MODEL, "%s: rope scaling factor %g or yarn_log_multiplier %g out of range", path,
                              (double)f, (double)lm);
        if (!j->st)
            jput(j, "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": %.9g, \"original_max_position_embeddings\": %lld, "
                    "\"mscale\": %.9g, \"mscale_all_dim\": %.9g}, ", (double)f, (long long)orig, (double)(lm * 10),
                 (double)(lm * 10));
    }
    /* Special tokens. */
    int64_t bos = 0, eos = 1;
    if (!j->st && dsv_gguf_kv_find(g, "tokenizer.ggml.bos_token_id") >= 0)
        j->st = dsv_gguf_get_int(g, "tokenizer.ggml.bos_token_id", 0, 1 << 30, &bos);
    if (!j->st && dsv_gguf_kv_find(g, "tokenizer.ggml.eos_token_id") >= 0)
        j->st = dsv_gguf_get_int(g, "tokenizer.ggml.eos_token_id", 0, 1 << 30, &eos);
    const char *fmt = *no_indexer ? NULL : "ue8m0";
    if (!j->st && dsv_gguf_kv_find(g, SCALE_FMT_KEY) >= 0 && !(j->st = dsv_gguf_get_str(g, SCALE_FMT_KEY, &s, &len))) {
        if (len == 4 && !memcmp(s, "none", 4)) fmt = NULL;
        else if (len == 5 && !memcmp(s, "ue8m0", 5)) fmt = "ue8m0";
        else
            j->st = dsv_error(DSV_ERR_MODEL, "%s: %s must be \"none\" or \"ue8m0\"", path, SCALE_FMT_KEY);
    }
    if (!j->st) {
        jput(j, "\"bos_token_id\": %lld, \"eos_token_id\": %lld", (long long)bos, (long long)eos);
        /* The activation scale format rides on quantization_config; the
         * weights themselves are not fp8, which load() records after. */
        if (fmt) jput(j, ", \"quantization_config\": {\"quant_method\": \"fp8\", \"scale_fmt\": \"ue8m0\"}");
        jput(j, "}");
        st = dsv_config_parse(c, j->s, path);
        c->fp8 = 0;
    } else st = dsv_error_prefix(j->st, "%s", path);
    free(j);
    return st;
}

/* Whether the linears that were fp8 in the checkpoint quantize their inputs
 * (dsv_linear.act_fp8): dsv32 quantize writes dsv32.act_quant = "fp8_e4m3"
 * for an FP8 checkpoint ("none" otherwise); llama.cpp's converter, which
 * dequantizes FP8 weights, writes nothing (then: none). */
#define ACT_QUANT_KEY "dsv32.act_quant"

static int act_quant_of(const dsv_gguf *g, const char *path, int *fp8) {
    const char *s;
    size_t len;
    *fp8 = 0;
    if (dsv_gguf_kv_find(g, ACT_QUANT_KEY) < 0) return DSV_OK;
    int st = dsv_gguf_get_str(g, ACT_QUANT_KEY, &s, &len);
    if (st) return st;
    if (len == 8 && !memcmp(s, "fp8_e4m3", 8)) *fp8 = 1;
    else if (!(len == 4 && !memcmp(s, "none", 4)))
        return dsv_error(DSV_ERR_MODEL, "%s: %s must be \"fp8_e4m3\" or \"none\"", path, ACT_QUANT_KEY);
    return DSV_OK;
}

/* Marks a float linear as fp8-born (block-quantized ones are left as they
 * are). fp8_gemm works on whole 128-wide blocks of the input. */
static int mark_fp8(const char *path, dsv_linear *w, int il, const char *what) {
    if (w->gtype) return DSV_OK;
    if (w->n_in % DSV_QBLOCK)
        return dsv_error(DSV_ERR_MODEL, "%s: fp8 activations: layer %d's %s has %d inputs, not a multiple of %d", path,
                         il, what, w->n_in, DSV_QBLOCK);
    w->act_fp8 = 1;
    return DSV_OK;
}

/* The linears a safetensors FP8 checkpoint holds in F8_E4M3 (model.c's
 * LIN_QUANT layers): attention, wkv_b (the prefill path's Linear), the
 * indexer's wq_b and wk, and every MLP and expert. Not: the embedding, the
 * head, the router and the indexer's weights_proj. */
static int mark_fp8_layers(dsv_model *m, const char *path) {
    const dsv_config *c = &m->cfg;
    int st = DSV_OK;
    for (int il = 0; il < c->n_layers && !st; il++) {
        dsv_layer *ly = &m->layers[il];
        struct { dsv_linear *w; const char *what; } l[] = {
            {&ly->wq_a, "attn_q_a"}, {&ly->wq_b, "attn_q_b"}, {&ly->wkv_a, "attn_kv_a_mqa"},
            {&ly->wkv_b, "attn_k_b/attn_v_b"}, {&ly->wo, "attn_output"},
            {m->no_indexer ? NULL : &ly->idx_wq_b, "indexer.attn_q_b"}, {m->no_indexer ? NULL : &ly->idx_wk, "indexer.attn_k"},
        };
        for (size_t k = 0; k < sizeof l / sizeof l[0] && !st; k++)
            if (l[k].w) st = mark_fp8(path, l[k].w, il, l[k].what);
        /* The dense MLP, or the routed experts then the shared ones. */
        const int n_e = ly->is_moe ? c->n_routed_experts + (c->n_shared_experts > 0) : 1;
        for (int x = 0; x < n_e && !st; x++) {
            if (ly->is_moe && x < c->n_routed_experts && (x < m->sh.expert0 || x >= m->sh.expert1))
                continue; /* another rank's expert */
            dsv_expert *ex = !ly->is_moe ? &ly->mlp : x < c->n_routed_experts ? &ly->experts[x] : &ly->shared;
            st = mark_fp8(path, &ex->w1, il, "ffn_gate");
            if (!st) st = mark_fp8(path, &ex->w2, il, "ffn_down");
            if (!st) st = mark_fp8(path, &ex->w3, il, "ffn_up");
        }
    }
    return st;
}

/* The column blocks a split must keep whole (shard.h): the largest block of
 * any layer's attn_output, dense ffn_down and ffn_down_shexp (powers of two,
 * so the largest is a multiple of the others). A missing tensor counts as
 * unblocked: its absence is reported when the layer is loaded. *floats: one
 * of them is stored as floats. */
static void cut_blocks(const dsv_gguf *g, const dsv_config *c, dsv_shard_blocks *b, int *floats) {
    char p[96];
    b->o = b->inter = b->shared = 1;
    *floats = 0;
    for (int il = 0; il < c->n_layers; il++) {
        const dsv_gguf_tensor *t;
        snprintf(p, sizeof p, "blk.%d.attn_output.weight", il);
        if ((t = dsv_gguf_find(g, p))) b->o = DSV_MAX(b->o, dsv_ggml_blck(t->type));
        if (t && dsv_ggml_blck(t->type) == 1) *floats = 1;
        snprintf(p, sizeof p, il < c->n_dense_layers ? "blk.%d.ffn_down.weight" : "blk.%d.ffn_down_shexp.weight", il);
        int *dst = il < c->n_dense_layers ? &b->inter : &b->shared;
        if ((t = dsv_gguf_find(g, p))) *dst = DSV_MAX(*dst, dsv_ggml_blck(t->type));
        if (t && dsv_ggml_blck(t->type) == 1) *floats = 1;
    }
}

/* FNV-1a over bytes, continuing from h. */
static uint32_t fnv(uint32_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

/* A fingerprint of what the plan, the mapping and the arithmetic depend on:
 * the metadata (keys and values: dsv32.act_quant changes the plan's head
 * granule, eps or rope scaling the results) and every tensor's name, type,
 * extents and size, in file order (not the weights' bytes: reading 400 GB
 * to compare would take minutes). */
static uint32_t fingerprint(const dsv_gguf *g) {
    uint32_t h = 2166136261u;
    const int nt = dsv_gguf_count(g), nk = dsv_gguf_kv_count(g), nf = dsv_gguf_file_count(g);
    h = fnv(fnv(fnv(h, &nt, sizeof nt), &nk, sizeof nk), &nf, sizeof nf);
    for (int i = 0; i < nk; i++) {
        size_t len;
        const void *v = dsv_gguf_kv_bytes(g, i, &len);
        const int type[2] = {dsv_gguf_kv_type(g, i), dsv_gguf_kv_type(g, i) == DSV_GGUF_ARRAY ? dsv_gguf_arr_type(g, i) : -1};
        h = fnv(h, dsv_gguf_kv_key(g, i), strlen(dsv_gguf_kv_key(g, i)) + 1);
        h = fnv(fnv(h, type, sizeof type), v, len);
    }
    for (int i = 0; i < nt; i++) {
        const dsv_gguf_tensor *t = dsv_gguf_at(g, i);
        const uint64_t nb = t->nbytes;
        h = fnv(h, t->name, strlen(t->name) + 1);
        h = fnv(fnv(fnv(h, &t->type, sizeof t->type), t->ne, sizeof t->ne), &nb, sizeof nb);
    }
    return h;
}

/* Every rank maps its own copy of the file (on its own machine), and each
 * derives the plan from it: copies that differ (another preset, another
 * conversion) would sum parts of different models. The ranks compare
 * fingerprints, once every rank has opened its copy (a collective: every
 * rank calls it). The outcome is the same on every rank, a fault of the
 * group rather than of one rank, so the message names no rank. */
static int same_file_on_every_rank(dsv_model *m, const char *path) {
    const int v = (int)(fingerprint(m->gguf) & 0x7fffffffu);
    const int lo = m->coll->agree_min(v), hi = -m->coll->agree_min(-v);
    if (lo == hi) return DSV_OK;
    return dsv_error(DSV_ERR_MODEL, "%s: the ranks' copies of this file differ (metadata and tensor table fingerprints %08x to "
                     "%08x): every rank must map the same file", path, (unsigned)lo, (unsigned)hi);
}

/* Whether the fp8-born linears quantize their inputs: the file's word,
 * unless the caller overrides it. */
static int act_fp8(const dsv_gguf *g, const char *path, const dsv_model_params *params, int *fp8) {
    int st = act_quant_of(g, path, fp8);
    if (!st && (params->act_quant == DSV_ACT_QUANT_NONE || params->act_quant == DSV_ACT_QUANT_FP8))
        *fp8 = params->act_quant == DSV_ACT_QUANT_FP8;
    return st;
}

/* The checks that need only the header, the metadata and the tensor
 * table: the sizes the load will allocate from, bounded in double before
 * any is computed in size_t (each metadata field is below 2^30; a file
 * cannot ask for more than 2^40 elements of any of them), and the last
 * layer's presence. */
static int check_shapes(const dsv_gguf *g, const dsv_config *c, const char *path) {
    const double dvec = (double)c->dim + (double)c->n_layers * (2.0 * c->dim + c->q_lora_rank + c->kv_lora_rank +
                                                                 2.0 * c->index_head_dim + c->n_routed_experts);
    const double dkvb = (double)c->n_heads * (double)(c->qk_nope_head_dim + c->v_head_dim) * (double)c->kv_lora_rank;
    const double demb = (double)c->vocab_size * (double)c->dim;
    const double dexp = (double)(c->n_layers + 1) * (double)(c->n_routed_experts + 1);
    if (dvec > 0x1p40 || dkvb * c->n_layers + demb > 0x1p40 || dexp > 0x1p32)
        return dsv_error(DSV_ERR_MODEL, "%s: the metadata's shapes are too large", path);
    char last[64];
    snprintf(last, sizeof last, "blk.%d.attn_norm.weight", c->n_layers - 1);
    if (!dsv_gguf_find(g, last))
        return dsv_error(DSV_ERR_MODEL, "%s: block_count is %d but tensor '%s' is missing", path, c->n_layers, last);
    return DSV_OK;
}

int dsv_model_open_gguf(dsv_model *m, const char *path, const dsv_model_params *params, dsv_shard_blocks *blocks) {
    int fp8 = 0, st = dsv_gguf_open(&m->gguf, path);
    if (!st) st = config_from_gguf(&m->cfg, m->gguf, path, &m->no_indexer);
    if (!st) st = act_fp8(m->gguf, path, params, &fp8);
    if (!st) st = check_shapes(m->gguf, &m->cfg, path);
    /* Split, the ranks agree here, before any builds its part (minutes for
     * the largest files): a rank whose copy is missing or invalid fails
     * every rank at once with its own message. */
    if ((st = m->coll->agree(st))) return st;
    if ((st = same_file_on_every_rank(m, path))) return st;
    dsv_config *c = &m->cfg;
    if (params->scale_fmt == DSV_SCALE_FMT_NONE || params->scale_fmt == DSV_SCALE_FMT_UE8M0)
        c->scale_fmt = params->scale_fmt;
    /* Column cuts on the blocks of the types. An FP8-born file whose cut
     * matrices include floats (these quantize their inputs in the
     * checkpoint's 128-wide groups) splits as its checkpoint does, and so
     * gives the checkpoint's split results. */
    int floats;
    cut_blocks(m->gguf, c, blocks, &floats);
    blocks->fp8 = fp8 && floats;
    return DSV_OK;
}

int dsv_model_load_gguf(dsv_model *m, const char *path, const dsv_model_params *params) {
    int st, fp8;
    if ((st = act_fp8(m->gguf, path, params, &fp8))) return st;
    dsv_config *c = &m->cfg;
    const dsv_shard *sh = &m->sh;

    /* Sizes from the metadata, bounded at open (check_shapes). */
    const double dvec = (double)c->dim + (double)c->n_layers * (2.0 * c->dim + c->q_lora_rank + c->kv_lora_rank +
                                                                 2.0 * c->index_head_dim + c->n_routed_experts);
    const double dkvb = (double)c->n_heads * (double)(c->qk_nope_head_dim + c->v_head_dim) * (double)c->kv_lora_rank;
    const size_t n_vec = (size_t)dvec;
    const int n_moe = c->n_layers - c->n_dense_layers;
    /* Built here: this rank's heads of wkv_b and vocabulary rows of a
     * quantized embedding. */
    const size_t kvb = (size_t)dkvb / (size_t)c->n_heads * (size_t)m->n_local_heads;
    const int n_vocab = sh->vocab1 - sh->vocab0;
    const dsv_gguf_tensor *emb = dsv_gguf_find(m->gguf, "token_embd.weight");
    const int emb_q = emb && dsv_q_supported(emb->type) && emb->type != DSV_GGML_F32 && emb->type != DSV_GGML_F16 &&
                      emb->type != DSV_GGML_BF16;
    const size_t emb_n = emb_q ? (size_t)n_vocab * (size_t)c->dim : 0;
    /* No indexer: zeros for its weights (bf16) and vectors (fp32, 64 bf16 slots each). */
    const size_t zero_n = m->no_indexer ? 128 * (size_t)DSV_MAX(c->dim, c->q_lora_rank) + 128 * 2 : 0;
    m->vecs = malloc(n_vec * sizeof(float));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->expert_store = calloc((size_t)(n_moe > 0 ? n_moe : 1) * (size_t)(c->n_routed_experts > 0 ? c->n_routed_experts : 1),
                             sizeof *m->expert_store);
    m->owned = calloc((size_t)c->n_layers * kvb + emb_n + zero_n + 1, sizeof(dsv_bf16)); /* + 1: never 0 bytes */
    const size_t tmp_n = (size_t)c->kv_lora_rank * (size_t)DSV_MAX(c->qk_nope_head_dim, c->v_head_dim);
    float *tmp = malloc(DSV_MAX(tmp_n, (size_t)c->dim) * sizeof *tmp);
    if (!m->vecs || !m->layers || !m->expert_store || !m->owned || !tmp) {
        free(tmp);
        return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", path);
    }
    dsv_bf16 *zeros = (dsv_bf16 *)m->owned + (size_t)c->n_layers * kvb + emb_n;
    gloader L = {m, path, m->vecs, m->vecs + n_vec, zeros, (const float *)(zeros + zero_n - 256)};
    const dsv_gguf_tensor *t;
    /* The embedding from row vocab0 (the forward pass looks up rows
     * relative to it). */
    if ((st = find(&L, &t, "token_embd.weight", c->dim, c->vocab_size, 1))) goto out;
    const size_t emb_row = dsv_ggml_row_size(t->type, c->dim);
    m->embed = (const char *)t->data + (size_t)sh->vocab0 * emb_row;
    m->embed_dtype = t->type == DSV_GGML_F32 ? DSV_DT_F32 : t->type == DSV_GGML_F16 ? DSV_DT_F16 : DSV_DT_BF16;
    if (emb_q) {
        /* Expanded to bf16 rows for the lookup, rounded as the embedding
         * of a bf16 model is. */
        dsv_bf16 *e = (dsv_bf16 *)m->owned + (size_t)c->n_layers * kvb;
        for (int v = 0; v < n_vocab; v++) {
            dsv_q_dequant(t->type, (const char *)t->data + (size_t)(sh->vocab0 + v) * emb_row, tmp, c->dim);
            for (int d = 0; d < c->dim; d++) e[(size_t)v * c->dim + d] = dsv_f32_to_bf16(tmp[d]);
        }
        m->embed = e;
    }
    if ((st = vec(&L, &m->norm, "output_norm.weight", c->dim))) goto out;
    if ((st = linear(&L, &m->head, "output.weight", c->vocab_size, c->dim,
                     sh->size > 1 ? rows_of(sh->vocab0, sh->vocab1) : WHOLE)))
        goto out;
    for (int il = 0; il < c->n_layers; il++)
        if ((st = load_layer(&L, il, (dsv_bf16 *)m->owned + (size_t)il * kvb, tmp))) goto out;
    if (fp8) st = mark_fp8_layers(m, path);
out:
    free(tmp);
    return st;
}
