/* model.c: opening a model directory and checking every tensor.
 *
 * Names, dtypes and shapes follow the Hugging Face DeepSeek-V3.2 layout (spec
 * 2.1). A linear may be F8_E4M3 with its weight_scale_inv block scales, or
 * BF16/F16/F32 (used as bf16, as the reference's bf16 Linear would); the
 * router gate, the indexer's weights_proj and the lm head are computed in
 * fp32 and must not be fp8. MTP layers (index >= num_hidden_layers) are
 * never looked up. Nothing is converted at load except the small vectors.
 *
 * A model split across processes (format/shard.h) maps only this rank's part of
 * each split matrix: from a Hugging Face checkpoint, a cut of the full
 * tensor (rows: the pointer and the scale pointer move; columns: they move
 * and the row stride ld keeps the full width), or from this rank's shard
 * file (dsv32 convert), the tensor as stored, already cut. Either way the
 * same bytes end up in the same dsv_linear, so the two give the same
 * results bit for bit. Routed experts of other ranks are not looked up.
 * A GGUF file (model_gguf.c) is cut the same way, by a plan that also
 * respects its types' blocks. */
#include <math.h>
#include <string.h>

#include "model.h"
#include "base/util.h"

typedef struct loader {
    dsv_model *m;
    const char *dir;
    float *vec_next, *vec_end;
    int presliced;              /* a shard file: tensors are stored already cut */
} loader;

/* The part of a tensor this rank maps: rows or columns [lo, hi), or all. */
enum { CUT_NONE, CUT_ROWS, CUT_COLS };
typedef struct cut { int axis, lo, hi; } cut;
static const cut WHOLE = {CUT_NONE, 0, 0};
static cut rows_of(int lo, int hi) { return (cut){CUT_ROWS, lo, hi}; }
static cut cols_of(int lo, int hi) { return (cut){CUT_COLS, lo, hi}; }

static void fmt_shape(char *buf, size_t n, const int64_t *shape, int nd) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < nd && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Finds a tensor and checks its shape; `dtypes` is a mask of allowed dtypes. */
static int find(loader *L, const dsv_st_tensor **out, const char *name, unsigned dtypes,
                int nd, int64_t d0, int64_t d1) {
    const dsv_st_tensor *t = dsv_st_find(L->m->st, name);
    if (!t) return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is missing", L->dir, name);
    int64_t want[2] = {d0, d1};
    int ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == want[i];
    if (!ok || !(dtypes & (1u << t->dtype))) {
        char exp_dt[96] = "", exp_sh[64], got_sh[64];
        size_t o = 0;
        for (int d = 0; d < DSV_DT_COUNT; d++)
            if (dtypes & (1u << d))
                o += (size_t)snprintf(exp_dt + o, sizeof exp_dt - o, "%s%s", o ? "|" : "", dsv_dtype_name(d));
        fmt_shape(exp_sh, sizeof exp_sh, want, nd);
        fmt_shape(got_sh, sizeof got_sh, t->shape, t->n_dims);
        return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s': expected %s %s, actual %s %s (in %s)", L->dir,
                         name, exp_dt, exp_sh, dsv_dtype_name(t->dtype), got_sh,
                         dsv_st_file_path(L->m->st, t->file));
    }
    *out = t;
    return DSV_OK;
}

#define FLOATS ((1u << DSV_DT_BF16) | (1u << DSV_DT_F16) | (1u << DSV_DT_F32))

/* A small vector, copied to fp32 (norm weights, biases). */
static int vec(loader *L, const float **out, const char *name, int64_t n) {
    const dsv_st_tensor *t;
    int st = find(L, &t, name, FLOATS, 1, n, 0);
    if (st) return st;
    DSV_ASSERT(L->vec_next + n <= L->vec_end);
    float *v = L->vec_next;
    dsv_linear tmp = {.dtype = t->dtype, .w = t->data};
    for (int64_t i = 0; i < n; i++) v[i] = dsv_weight_at(&tmp, (long)i, 0);
    L->vec_next += n;
    *out = v;
    return DSV_OK;
}

enum { LIN_QUANT, LIN_F32 };

/* A linear weight "<prefix>.weight" [n_out, n_in]. LIN_QUANT layers may be
 * fp8 (then with "<prefix>.weight_scale_inv") or bf16/f16/f32; LIN_F32 layers
 * are computed in fp32 and may not be fp8. `k` is this rank's part; an empty
 * part is not looked up (a zero-size weight). */
static int linear(loader *L, dsv_linear *out, const char *prefix, int n_out, int n_in, int kind, cut k) {
    char name[256];
    const dsv_st_tensor *t;
    memset(out, 0, sizeof *out);
    if (k.axis != CUT_NONE && k.lo == k.hi) {
        out->dtype = DSV_DT_BF16;
        out->n_out = k.axis == CUT_ROWS ? 0 : n_out;
        out->n_in = out->ld = k.axis == CUT_COLS ? 0 : n_in;
        return DSV_OK;
    }
    /* A shard file stores the part; a checkpoint the whole, cut below. */
    if (L->presliced && k.axis == CUT_ROWS) n_out = k.hi - k.lo;
    if (L->presliced && k.axis == CUT_COLS) n_in = k.hi - k.lo;
    snprintf(name, sizeof name, "%s.weight", prefix);
    unsigned dts = FLOATS | (kind == LIN_QUANT ? 1u << DSV_DT_F8_E4M3 : 0);
    int st = find(L, &t, name, dts, 2, n_out, n_in);
    if (st) return st;
    out->dtype = t->dtype;
    out->n_out = n_out;
    out->n_in = n_in;
    out->ld = n_in;
    out->w = t->data;
    if (t->dtype == DSV_DT_F8_E4M3) {
        const dsv_st_tensor *s;
        snprintf(name, sizeof name, "%s.weight_scale_inv", prefix);
        int sr = (n_out + DSV_QBLOCK - 1) / DSV_QBLOCK, sc = (n_in + DSV_QBLOCK - 1) / DSV_QBLOCK;
        st = find(L, &s, name, 1u << DSV_DT_F32, 2, sr, sc);
        if (st) return st;
        out->scale = s->data;
        out->scale_ld = sc;
    }
    const size_t es = dsv_dtype_size(t->dtype);
    if (!L->presliced && k.axis != CUT_NONE) {
        /* An fp8 cut must fall on a scale block (shard.c plans it so). */
        if (out->scale && k.lo % DSV_QBLOCK)
            return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is fp8; this rank's %s start at %d, not a multiple of 128",
                             L->dir, name, k.axis == CUT_ROWS ? "rows" : "columns", k.lo);
        if (k.axis == CUT_ROWS) {
            out->w = (const char *)out->w + (size_t)k.lo * (size_t)out->ld * es;
            if (out->scale) out->scale += (size_t)(k.lo / DSV_QBLOCK) * (size_t)out->scale_ld;
            out->n_out = k.hi - k.lo;
        } else {
            out->w = (const char *)out->w + (size_t)k.lo * es;
            if (out->scale) out->scale += k.lo / DSV_QBLOCK;
            out->n_in = k.hi - k.lo;
        }
    }
    /* act_quant quantizes the input in 128-wide groups, so the input width
     * must be a whole number of groups. */
    if (out->scale && out->n_in % DSV_QBLOCK)
        return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is fp8 but its input width %d is not a multiple of 128",
                         L->dir, name, out->n_in);
    L->m->weight_bytes += (uint64_t)out->n_out * (uint64_t)out->n_in * es;
    if (out->scale)
        L->m->weight_bytes += 4ull * (uint64_t)((out->n_out + DSV_QBLOCK - 1) / DSV_QBLOCK) *
                              (uint64_t)((out->n_in + DSV_QBLOCK - 1) / DSV_QBLOCK);
    return DSV_OK;
}

/* An MLP or expert; `lo, hi`: this rank's hidden units (gate/up rows,
 * down columns), or all of them when lo == 0 and hi == inter. */
static int expert(loader *L, dsv_expert *e, const char *prefix, int dim, int inter, int lo, int hi) {
    char p[256];
    int st;
    const int all = lo == 0 && hi == inter;
    snprintf(p, sizeof p, "%s.gate_proj", prefix);
    if ((st = linear(L, &e->w1, p, inter, dim, LIN_QUANT, all ? WHOLE : rows_of(lo, hi)))) return st;
    snprintf(p, sizeof p, "%s.down_proj", prefix);
    if ((st = linear(L, &e->w2, p, dim, inter, LIN_QUANT, all ? WHOLE : cols_of(lo, hi)))) return st;
    snprintf(p, sizeof p, "%s.up_proj", prefix);
    return linear(L, &e->w3, p, inter, dim, LIN_QUANT, all ? WHOLE : rows_of(lo, hi));
}

static int load_layer(loader *L, int il) {
    const dsv_config *c = &L->m->cfg;
    const dsv_shard *sh = &L->m->sh;
    dsv_layer *ly = &L->m->layers[il];
    char p[256], q[256];
    int st;
    const int H = c->n_heads, dim = c->dim, split = sh->size > 1;
    const int QH = c->qk_nope_head_dim + c->qk_rope_head_dim, KVH = c->qk_nope_head_dim + c->v_head_dim;
    const int VH = c->v_head_dim;
#define V(field, suffix, n) do { snprintf(q, sizeof q, "model.layers.%d.%s", il, suffix); \
        if ((st = vec(L, &ly->field, q, n))) return st; } while (0)
#define LIN(field, suffix, no, ni, kind, k) do { snprintf(p, sizeof p, "model.layers.%d.%s", il, suffix); \
        if ((st = linear(L, &ly->field, p, no, ni, kind, k))) return st; } while (0)
    V(attn_norm, "input_layernorm.weight", dim);
    V(ffn_norm, "post_attention_layernorm.weight", dim);
    LIN(wq_a, "self_attn.q_a_proj", c->q_lora_rank, dim, LIN_QUANT, WHOLE);
    V(q_norm, "self_attn.q_a_layernorm.weight", c->q_lora_rank);
    /* Heads [head0, head1): q_b and kv_b rows, o_proj columns. */
    LIN(wq_b, "self_attn.q_b_proj", H * QH, c->q_lora_rank, LIN_QUANT,
        split ? rows_of(sh->head0 * QH, sh->head1 * QH) : WHOLE);
    LIN(wkv_a, "self_attn.kv_a_proj_with_mqa", c->kv_lora_rank + c->qk_rope_head_dim, dim, LIN_QUANT, WHOLE);
    V(kv_norm, "self_attn.kv_a_layernorm.weight", c->kv_lora_rank);
    LIN(wkv_b, "self_attn.kv_b_proj", H * KVH, c->kv_lora_rank, LIN_QUANT,
        split ? rows_of(sh->head0 * KVH, sh->head1 * KVH) : WHOLE);
    LIN(wo, "self_attn.o_proj", dim, H * VH, LIN_QUANT, split ? cols_of(sh->head0 * VH, sh->head1 * VH) : WHOLE);
    LIN(idx_wq_b, "self_attn.indexer.wq_b", c->index_n_heads * c->index_head_dim, c->q_lora_rank, LIN_QUANT, WHOLE);
    LIN(idx_wk, "self_attn.indexer.wk", c->index_head_dim, dim, LIN_QUANT, WHOLE);
    V(idx_k_norm_w, "self_attn.indexer.k_norm.weight", c->index_head_dim);
    V(idx_k_norm_b, "self_attn.indexer.k_norm.bias", c->index_head_dim);
    LIN(idx_wproj, "self_attn.indexer.weights_proj", c->index_n_heads, dim, LIN_F32, WHOLE);
    ly->is_moe = il >= c->n_dense_layers;
    if (!ly->is_moe) {
        snprintf(p, sizeof p, "model.layers.%d.mlp", il);
        return expert(L, &ly->mlp, p, dim, c->inter_dim, sh->inter0, sh->inter1);
    }
    LIN(gate, "mlp.gate", c->n_routed_experts, dim, LIN_F32, WHOLE);
    snprintf(q, sizeof q, "model.layers.%d.mlp.gate.e_score_correction_bias", il);
    ly->gate_bias = NULL;
    if (dsv_st_find(L->m->st, q)) V(gate_bias, "mlp.gate.e_score_correction_bias", c->n_routed_experts);
    ly->experts = L->m->expert_store + (size_t)(il - c->n_dense_layers) * c->n_routed_experts;
    for (int e = sh->expert0; e < sh->expert1; e++) {
        snprintf(p, sizeof p, "model.layers.%d.mlp.experts.%d", il, e);
        if ((st = expert(L, &ly->experts[e], p, dim, c->moe_inter_dim, 0, c->moe_inter_dim))) return st;
    }
    if (c->n_shared_experts > 0) {
        snprintf(p, sizeof p, "model.layers.%d.mlp.shared_experts", il);
        if ((st = expert(L, &ly->shared, p, dim, c->n_shared_experts * c->moe_inter_dim, sh->shared0, sh->shared1)))
            return st;
    }
    return DSV_OK;
#undef V
#undef LIN
}

dsv_model_params dsv_model_default_params(void) {
    dsv_model_params p = {.scale_fmt = -1, .act_quant = -1};
    return p;
}

/* Sets m->sh, n_local_heads and par_vocab: this rank's part of m->cfg in
 * m->coll's group, column cuts on `b`'s blocks (format/shard.h). */
static int plan(dsv_model *m, const dsv_shard_blocks *b, const char *what) {
    const int rank = m->coll->rank, size = m->coll->size;
    dsv_shard_plan_blocks(&m->sh, &m->cfg, rank, size, b);
    m->n_local_heads = m->sh.head1 - m->sh.head0;
    if (size > 1) {
        if (!(m->par_vocab = malloc(2 * (size_t)size * sizeof *m->par_vocab)))
            return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", what);
        for (int r = 0; r < size; r++) {
            dsv_shard o;
            dsv_shard_plan_blocks(&o, &m->cfg, r, size, b);
            m->par_vocab[r] = o.vocab0;
            m->par_vocab[size + r] = o.vocab1 - o.vocab0;
        }
    }
    return DSV_OK;
}

/* Loads this rank's part of a checkpoint (a safetensors directory, or the
 * shard files of dsv32 convert): the whole model in a group of one. */
static int load_st(dsv_model *m, const char *dir, const dsv_model_params *params) {
    int st = dsv_config_load(&m->cfg, dir);
    if (st) return st;
    dsv_config *c = &m->cfg;
    if (params->scale_fmt == DSV_SCALE_FMT_NONE || params->scale_fmt == DSV_SCALE_FMT_UE8M0)
        c->scale_fmt = params->scale_fmt;
    const int rank = m->coll->rank, size = m->coll->size;
    const dsv_shard_blocks blocks = {1, 1, 1, 0};
    if ((st = plan(m, &blocks, dir))) return st;

    /* This rank's shard file if dir holds them (dsv32 convert), else the
     * checkpoint itself. */
    char path[4096];
    int presliced = 0;
    if ((st = dsv_shard_find(dir, rank, size, path, sizeof path, &presliced))) return st;
    dsv_st_open_params sp = {params->progress, params->progress_user};
    if ((st = dsv_st_open_ex(&m->st, presliced ? path : dir, &sp))) return st;
    if (presliced) {
        const char *r = dsv_st_metadata(m->st, 0, DSV_SHARD_RANK_KEY), *n = dsv_st_metadata(m->st, 0, DSV_SHARD_SIZE_KEY);
        if (!r || !n || atoi(r) != rank || atoi(n) != size)
            return dsv_error(DSV_ERR_MODEL, "%s: not rank %d's shard of a %d-way split (metadata %s=%s, %s=%s)", path,
                             rank, size, DSV_SHARD_RANK_KEY, r ? r : "none", DSV_SHARD_SIZE_KEY, n ? n : "none");
    }

    /* Room for every fp32 vector: norms, the indexer LayerNorm, gate biases. */
    size_t n_vec = (size_t)c->dim + (size_t)c->n_layers *
        (2u * c->dim + c->q_lora_rank + c->kv_lora_rank + 2u * c->index_head_dim + c->n_routed_experts);
    int n_moe = c->n_layers - c->n_dense_layers;
    m->vecs = malloc(n_vec * sizeof(float));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->expert_store = calloc((size_t)(n_moe > 0 ? n_moe : 1) * (size_t)(c->n_routed_experts > 0 ? c->n_routed_experts : 1),
                             sizeof *m->expert_store);
    if (!m->vecs || !m->layers || !m->expert_store) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", dir);
    loader L = {m, dir, m->vecs, m->vecs + n_vec, presliced};

    /* Embedding rows [vocab0, vocab1). */
    const dsv_st_tensor *t;
    const int split = size > 1, nv = m->sh.vocab1 - m->sh.vocab0;
    m->embed_dtype = DSV_DT_BF16;
    if (nv > 0 || !presliced) { /* a shard file holds no empty part */
        if ((st = find(&L, &t, "model.embed_tokens.weight", FLOATS, 2, presliced ? nv : c->vocab_size, c->dim)))
            return st;
        m->embed = (const char *)t->data +
                   (presliced ? 0 : (size_t)m->sh.vocab0 * (size_t)c->dim * dsv_dtype_size(t->dtype));
        m->embed_dtype = t->dtype;
    }
    if ((st = vec(&L, &m->norm, "model.norm.weight", c->dim))) return st;
    if ((st = linear(&L, &m->head, "lm_head", c->vocab_size, c->dim, LIN_F32,
                     split ? rows_of(m->sh.vocab0, m->sh.vocab1) : WHOLE)))
        return st;
    for (int il = 0; il < c->n_layers; il++)
        if ((st = load_layer(&L, il))) return st;
    return DSV_OK;
}

/* Loads this rank's part, and agrees the outcome with the other ranks (a
 * collective open): every rank gets DSV_OK, or the first failing rank's
 * status and message. A GGUF open agrees once more, early (model_gguf.c):
 * when it fails, every rank already holds the agreed error and returns it
 * as is, so the message carries one rank prefix, not two. */
static int load(dsv_model *m, const char *dir, const dsv_model_params *params) {
    const size_t n = strlen(dir);
    int st;
    if (n > 5 && !strcmp(dir + n - 5, ".gguf")) {
        dsv_shard_blocks blocks;
        if ((st = dsv_model_open_gguf(m, dir, params, &blocks))) return st;
        if (!(st = plan(m, &blocks, dir))) st = dsv_model_load_gguf(m, dir, params);
    } else {
        st = load_st(m, dir, params);
    }
    return m->coll->agree(st);
}

static void model_free(dsv_model *m) {
    if (!m) return;
    dsv_st_close(m->st);
    dsv_gguf_close(m->gguf);
    free(m->owned);
    free(m->vecs);
    free(m->layers);
    free(m->expert_store);
    free(m->par_vocab);
    free(m);
}

int dsv_model_load(dsv_model **out, const char *dir, const dsv_model_params *params) {
    dsv_model *m = calloc(1, sizeof *m);
    if (!m) return dsv_coll_get()->agree(dsv_error(DSV_ERR_NOMEM, "out of memory"));
    m->coll = dsv_coll_get();
    int st = load(m, dir, params);
    if (st) {
        model_free(m);
        return st;
    }
    *out = m;
    return DSV_OK;
}

void dsv_model_free(dsv_model *m) { model_free(m); }

const dsv_config *dsv_model_config(const dsv_model *m) { return &m->cfg; }
uint64_t dsv_model_weight_bytes(const dsv_model *m) { return m->weight_bytes; }
