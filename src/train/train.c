/* train.c: the fp32 training model of DeepSeek-V3.2 (DSA): parameters,
 * forward and backward of one sequence, the three stages of DeepSeek's
 * recipe, AdamW, load balancing, checkpoints and export (see train.h).
 *
 * The model is the engine's (forward.c, mla.c, indexer.c, moe.c), in fp32:
 *   embed -> per layer: x += MLA(attn_norm(x)); x += FFN(ffn_norm(x)) ->
 *   norm -> head.
 * MLA in its MHA (prefill) form: qr = q_norm(wq_a x); q = wq_b qr, per head
 * [nope | rope] with interleaved RoPE; wkv_a x = [latent | k_pe], latent
 * RMS-normalized, k_pe roped (interleaved) and shared by the heads;
 * [k_nope | v] = wkv_b latent per head; causal softmax attention with the
 * config's softmax_scale (YaRN mscale included), then o_proj.
 * Lightning indexer: q = wq_b(qr) per head and k = LayerNorm(wk x), both
 * [rope | nope] with NON-interleaved RoPE, then the Hadamard transform;
 * I[t][s] = Σ_h w[t][h] ReLU(q[t][h]·k[s]), w = weights_proj(x) *
 * n_heads^-0.5 * head_dim^-0.5. Its inputs (x, qr) are detached.
 * FFN: a SwiGLU MLP in the first first_k_dense_replace layers, then MoE:
 * sigmoid router with group-limited choice on scores + bias, weights from
 * the unbiased scores, normalized, times routed_scaling_factor; routed
 * experts plus the shared expert.
 *
 * Threads split the batch (data parallel): each worker runs whole sequences
 * with its own activations and gradient buffer; gradients are then summed
 * across workers, and the optimizer runs on slices of the parameters. */
#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "base/numeric.h"
#include "kernels/ops.h"
#include "model/rope.h"
#include "format/safetensors.h"
#include "base/threads.h"
#include "train.h"
#include "base/util.h"

/* ---- parameters ---------------------------------------------------------- */

enum { GRP_NONE = 0, GRP_MAIN = 1, GRP_INDEX = 2 };
/* How a tensor exports: a linear the engine may run in fp8, an fp32-computed
 * linear (embedding, head, router, weights_proj: bf16), a vector (bf16), or
 * the router bias (f32). */
enum { KIND_LIN, KIND_MAT16, KIND_VEC, KIND_BIAS };

typedef struct tr_tensor {
    char name[96];
    long off, n;
    int rows, cols;           /* cols = 0 for a vector */
    int group, kind, decay;
} tr_tensor;

typedef struct tr_mlp { long w1, w2, w3; } tr_mlp; /* gate_proj, down_proj, up_proj */

typedef struct tr_layer {
    long attn_norm, ffn_norm;
    long wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo;
    long iwq, iwk, iknw, iknb, iwp;      /* indexer */
    int moe;
    tr_mlp mlp;                           /* dense layers */
    long gate, gbias;                     /* MoE router */
    tr_mlp *ex, shared;                   /* [n_routed_experts], shared expert */
} tr_layer;

/* Per layer activations kept for the backward ([T] rows). */
typedef struct tr_lact {
    float *x_in, *xn, *r1;                /* [T][D], [T][D], [T] */
    float *qa, *qr, *rq;                  /* [T][Q], [T][Q], [T] */
    float *q;                             /* [T][H][N+R] after RoPE */
    float *kvf, *kv, *rkv;                /* [T][C+R] (k_pe roped in place), [T][C], [T] */
    float *kvb;                           /* [T][H][N+V] */
    float *P;                             /* [H][T][T] attention probabilities */
    float *o;                             /* [T][H*V] */
    float *x_mid, *xn2, *r2;              /* [T][D], [T][D], [T] */
    float *h1, *h3;                       /* dense / shared expert hidden [T][I] */
    float *s, *w;                         /* router scores [T][E], weights [T][K] */
    int32_t *idx;                         /* [T][K] */
    int32_t *cnt, *off, *rows, *slot;     /* per expert counts [E], offsets [E+1]; [T*K] */
    float *eh1, *eh3, *ey;                /* routed rows [T*K][Im], [T*K][Im], [T*K][D] */
} tr_lact;

typedef struct tr_work {
    float *grad;                          /* [n_params] */
    tr_lact *L;                           /* [n_layers] */
    float *xL, *xf, *rf, *logits;         /* [T][D], [T][D], [T], [T][V] */
    /* backward scratch */
    float *dx, *dxn, *dxn2, *dqa, *dqr, *dq, *dkvf, *dkv, *dkvb, *dO, *dh1, *dh3, *dg, *dy, *dlog, *dw;
    float *xg, *dxg, *g, *kh, *dkh, *TT;        /* gathered rows, swiglu out, one head's keys and their grad, [T][T] */
    /* indexer */
    float *iq, *ikr, *ikl, *ik, *imu, *irs, *iw, *S, *I, *pt, *diq, *dik, *dikl, *diw;
    uint8_t *mask;                        /* [n_layers][T][T] selected sets */
    int32_t *sel, *sel_tmp;               /* top-k scratch [T] */
    double lm, kl;
    long *load;                           /* [n_layers][E] routed assignments */
    double *rec;                          /* [n_layers] recall sums */
    long rec_n;                           /* [n_layers][E] routed assignments */
} tr_work;

struct dsv_trainer {
    dsv_config c;
    char *config_json;
    dsv_train_opts o;
    int stage, step, topk;
    long n_params;
    float *p, *m, *v;
    tr_tensor *t;
    int n_t;
    tr_layer *ly;
    tr_mlp *mlp_store;
    int T;                                /* work buffers' sequence length */
    float *rope_cos, *rope_sin;           /* [T][R/2] */
    int nth;
    dsv_pool *pool;
    tr_work *w;                           /* [nth] */
    /* the current call */
    const int32_t *tokens;
    int n_seq, do_grad;
    int freeze_sel;                       /* tests: keep the last top-k sets */
};

static long add_tensor(dsv_trainer *t, int cap, const char *name, int rows, int cols, int group, int kind) {
    DSV_ASSERT(t->n_t < cap);
    tr_tensor *x = &t->t[t->n_t++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->rows = rows;
    x->cols = cols;
    x->n = (long)rows * (cols ? cols : 1);
    x->off = t->n_params;
    x->group = group;
    x->kind = kind;
    x->decay = kind == KIND_LIN || kind == KIND_MAT16;
    t->n_params += (x->n + 15) & ~15L; /* 64-byte aligned tensors */
    return x->off;
}

/* Builds the tensor table (names, shapes, offsets); returns the count. */
static int layout_params(dsv_trainer *t) {
    const dsv_config *c = &t->c;
    const int D = c->dim, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int C = c->kv_lora_rank, Q = c->q_lora_rank, Hi = c->index_n_heads, Di = c->index_head_dim;
    const int E = c->n_routed_experts;
    int cap = 8 + c->n_layers * (24 + 3 * (E + 1));
    t->t = calloc((size_t)cap, sizeof *t->t);
    t->ly = calloc((size_t)c->n_layers, sizeof *t->ly);
    t->mlp_store = calloc((size_t)(c->n_layers * (E > 0 ? E : 1)), sizeof *t->mlp_store);
    if (!t->t || !t->ly || !t->mlp_store) return -1;
    char nm[96];
    add_tensor(t, cap, "model.embed_tokens.weight", c->vocab_size, D, GRP_MAIN, KIND_MAT16);
    for (int l = 0; l < c->n_layers; l++) {
        tr_layer *y = &t->ly[l];
#define T_(field, suffix, r, cc, g, k) do { snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix); \
        y->field = add_tensor(t, cap, nm, r, cc, g, k); } while (0)
        T_(attn_norm, "input_layernorm.weight", D, 0, GRP_MAIN, KIND_VEC);
        T_(wq_a, "self_attn.q_a_proj.weight", Q, D, GRP_MAIN, KIND_LIN);
        T_(q_norm, "self_attn.q_a_layernorm.weight", Q, 0, GRP_MAIN, KIND_VEC);
        T_(wq_b, "self_attn.q_b_proj.weight", H * (N + R), Q, GRP_MAIN, KIND_LIN);
        T_(wkv_a, "self_attn.kv_a_proj_with_mqa.weight", C + R, D, GRP_MAIN, KIND_LIN);
        T_(kv_norm, "self_attn.kv_a_layernorm.weight", C, 0, GRP_MAIN, KIND_VEC);
        T_(wkv_b, "self_attn.kv_b_proj.weight", H * (N + V), C, GRP_MAIN, KIND_LIN);
        T_(wo, "self_attn.o_proj.weight", D, H * V, GRP_MAIN, KIND_LIN);
        T_(iwq, "self_attn.indexer.wq_b.weight", Hi * Di, Q, GRP_INDEX, KIND_LIN);
        T_(iwk, "self_attn.indexer.wk.weight", Di, D, GRP_INDEX, KIND_LIN);
        T_(iknw, "self_attn.indexer.k_norm.weight", Di, 0, GRP_INDEX, KIND_VEC);
        T_(iknb, "self_attn.indexer.k_norm.bias", Di, 0, GRP_INDEX, KIND_VEC);
        T_(iwp, "self_attn.indexer.weights_proj.weight", Hi, D, GRP_INDEX, KIND_MAT16);
        T_(ffn_norm, "post_attention_layernorm.weight", D, 0, GRP_MAIN, KIND_VEC);
        y->moe = l >= c->n_dense_layers;
        if (!y->moe) {
            T_(mlp.w1, "mlp.gate_proj.weight", c->inter_dim, D, GRP_MAIN, KIND_LIN);
            T_(mlp.w2, "mlp.down_proj.weight", D, c->inter_dim, GRP_MAIN, KIND_LIN);
            T_(mlp.w3, "mlp.up_proj.weight", c->inter_dim, D, GRP_MAIN, KIND_LIN);
            continue;
        }
        T_(gate, "mlp.gate.weight", E, D, GRP_MAIN, KIND_MAT16);
        T_(gbias, "mlp.gate.e_score_correction_bias", E, 0, GRP_NONE, KIND_BIAS);
        y->ex = t->mlp_store + (size_t)l * E;
        const int I = c->moe_inter_dim, Is = c->n_shared_experts * I;
        for (int e = 0; e < E; e++) {
            char s[64];
            snprintf(s, sizeof s, "mlp.experts.%d.gate_proj.weight", e);
            T_(ex[e].w1, s, I, D, GRP_MAIN, KIND_LIN);
            snprintf(s, sizeof s, "mlp.experts.%d.down_proj.weight", e);
            T_(ex[e].w2, s, D, I, GRP_MAIN, KIND_LIN);
            snprintf(s, sizeof s, "mlp.experts.%d.up_proj.weight", e);
            T_(ex[e].w3, s, I, D, GRP_MAIN, KIND_LIN);
        }
        if (Is > 0) {
            T_(shared.w1, "mlp.shared_experts.gate_proj.weight", Is, D, GRP_MAIN, KIND_LIN);
            T_(shared.w2, "mlp.shared_experts.down_proj.weight", D, Is, GRP_MAIN, KIND_LIN);
            T_(shared.w3, "mlp.shared_experts.up_proj.weight", Is, D, GRP_MAIN, KIND_LIN);
        }
#undef T_
    }
    add_tensor(t, cap, "model.norm.weight", D, 0, GRP_MAIN, KIND_VEC);
    add_tensor(t, cap, "lm_head.weight", c->vocab_size, D, GRP_MAIN, KIND_MAT16);
    return 0;
}

/* Which groups a stage trains. */
static int stage_groups(int stage) {
    return stage == 1 ? GRP_MAIN : stage == 2 ? GRP_INDEX : GRP_MAIN | GRP_INDEX;
}

/* ---- random numbers ------------------------------------------------------ */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float gauss(uint64_t *s) {
    double u1 = ((splitmix(s) >> 11) + 1.0) / 9007199254740993.0, u2 = (splitmix(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static void init_params(dsv_trainer *t) {
    uint64_t rng = t->o.seed * 0x2545f4914f6cdd1dull + 1;
    const float std = 0.02f, out_std = std / sqrtf(2.0f * t->c.n_layers);
    for (int i = 0; i < t->n_t; i++) {
        const tr_tensor *x = &t->t[i];
        float *p = t->p + x->off;
        if (x->kind == KIND_BIAS) {
            memset(p, 0, (size_t)x->n * sizeof *p);
        } else if (x->kind == KIND_VEC) {
            float v = strstr(x->name, "k_norm.bias") ? 0.0f : 1.0f;
            for (long j = 0; j < x->n; j++) p[j] = v;
        } else {
            /* Residual-branch outputs start smaller (GPT-2's scheme). */
            float s = strstr(x->name, "o_proj") || strstr(x->name, "down_proj") ? out_std : std;
            for (long j = 0; j < x->n; j++) p[j] = gauss(&rng) * s;
        }
    }
}

/* ---- set-up -------------------------------------------------------------- */

dsv_train_opts dsv_train_default_opts(void) {
    dsv_train_opts o = {0};
    o.stage = 1;
    o.seq_len = 1024;
    o.batch = 8;
    o.steps = 1000;
    o.warmup = 100;
    o.lr = 3e-3f;
    o.min_lr = 0.1f;
    o.beta1 = 0.9f;
    o.beta2 = 0.95f;
    o.adam_eps = 1e-8f;
    o.weight_decay = 0.1f;
    o.clip = 1.0f;
    o.bias_rate = 1e-3f;
    o.seed = 1234;
    return o;
}

static void *xalloc(size_t n, int *fail) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p) *fail = 1;
    else memset(p, 0, n);
    return p;
}
#define ALLOC(ptr, n) ((ptr) = xalloc((size_t)(n) * sizeof *(ptr), &fail))

static void free_work(dsv_trainer *t, tr_work *w) {
    if (!w->L && !w->grad) return;
    void **ptrs[] = {(void **)&w->grad, (void **)&w->xL, (void **)&w->xf, (void **)&w->rf, (void **)&w->logits,
                     (void **)&w->dx, (void **)&w->dxn, (void **)&w->dxn2, (void **)&w->dqa, (void **)&w->dqr,
                     (void **)&w->dq, (void **)&w->dkvf, (void **)&w->dkv, (void **)&w->dkvb, (void **)&w->dO,
                     (void **)&w->dh1, (void **)&w->dh3, (void **)&w->dg, (void **)&w->dy, (void **)&w->dlog,
                     (void **)&w->dw, (void **)&w->xg, (void **)&w->dxg, (void **)&w->g, (void **)&w->kh, (void **)&w->dkh,
                     (void **)&w->TT, (void **)&w->iq, (void **)&w->ikr, (void **)&w->ikl, (void **)&w->ik,
                     (void **)&w->imu, (void **)&w->irs, (void **)&w->iw, (void **)&w->S, (void **)&w->I,
                     (void **)&w->pt, (void **)&w->diq, (void **)&w->dik, (void **)&w->dikl, (void **)&w->diw,
                     (void **)&w->mask, (void **)&w->sel, (void **)&w->sel_tmp, (void **)&w->load, (void **)&w->rec};
    for (size_t i = 0; i < sizeof ptrs / sizeof *ptrs; i++) { free(*ptrs[i]); *ptrs[i] = NULL; }
    if (w->L) {
        for (int l = 0; l < t->c.n_layers; l++) {
            tr_lact *a = &w->L[l];
            void *lp[] = {a->x_in, a->xn, a->r1, a->qa, a->qr, a->rq, a->q, a->kvf, a->kv, a->rkv, a->kvb, a->P,
                          a->o, a->x_mid, a->xn2, a->r2, a->h1, a->h3, a->s, a->w, a->idx, a->cnt, a->off,
                          a->rows, a->slot, a->eh1, a->eh3, a->ey};
            for (size_t i = 0; i < sizeof lp / sizeof *lp; i++) free(lp[i]);
        }
        free(w->L);
        w->L = NULL;
    }
}

static int alloc_work(dsv_trainer *t, tr_work *w) {
    const dsv_config *c = &t->c;
    const long T = t->T, D = c->dim, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim;
    const long V = c->v_head_dim, C = c->kv_lora_rank, Q = c->q_lora_rank, Hi = c->index_n_heads;
    const long Di = c->index_head_dim, E = c->n_routed_experts, K = c->n_activated_experts;
    const long Im = c->moe_inter_dim, Is = c->n_shared_experts * Im;
    long Imax = c->n_dense_layers > 0 ? c->inter_dim : 0;
    if (Is > Imax) Imax = Is;
    if (Im > Imax) Imax = Im;
    long TK = c->n_dense_layers < c->n_layers ? T * K : T;
    int fail = 0;
    ALLOC(w->grad, t->n_params);
    w->L = calloc((size_t)c->n_layers, sizeof *w->L);
    if (!w->L) return -1;
    for (int l = 0; l < c->n_layers && !fail; l++) {
        tr_lact *a = &w->L[l];
        ALLOC(a->x_in, T * D); ALLOC(a->xn, T * D); ALLOC(a->r1, T);
        ALLOC(a->qa, T * Q); ALLOC(a->qr, T * Q); ALLOC(a->rq, T);
        ALLOC(a->q, T * H * (N + R));
        ALLOC(a->kvf, T * (C + R)); ALLOC(a->kv, T * C); ALLOC(a->rkv, T);
        ALLOC(a->kvb, T * H * (N + V));
        ALLOC(a->P, H * T * T);
        ALLOC(a->o, T * H * V);
        ALLOC(a->x_mid, T * D); ALLOC(a->xn2, T * D); ALLOC(a->r2, T);
        if (!t->ly[l].moe) {
            ALLOC(a->h1, T * c->inter_dim); ALLOC(a->h3, T * c->inter_dim);
            continue;
        }
        if (Is > 0) { ALLOC(a->h1, T * Is); ALLOC(a->h3, T * Is); }
        ALLOC(a->s, T * E); ALLOC(a->w, T * K); ALLOC(a->idx, T * K);
        ALLOC(a->cnt, E); ALLOC(a->off, E + 1); ALLOC(a->rows, T * K); ALLOC(a->slot, T * K);
        ALLOC(a->eh1, T * K * Im); ALLOC(a->eh3, T * K * Im); ALLOC(a->ey, T * K * D);
    }
    ALLOC(w->xL, T * D); ALLOC(w->xf, T * D); ALLOC(w->rf, T); ALLOC(w->logits, T * c->vocab_size);
    ALLOC(w->dx, T * D); ALLOC(w->dxn, T * D); ALLOC(w->dxn2, T * D);
    ALLOC(w->dqa, T * Q); ALLOC(w->dqr, T * Q); ALLOC(w->dq, T * H * (N + R));
    ALLOC(w->dkvf, T * (C + R)); ALLOC(w->dkv, T * C); ALLOC(w->dkvb, T * H * (N + V)); ALLOC(w->dO, T * H * V);
    ALLOC(w->dh1, TK * Imax); ALLOC(w->dh3, TK * Imax); ALLOC(w->dg, TK * Imax); ALLOC(w->g, TK * Imax);
    ALLOC(w->dy, TK * D); ALLOC(w->xg, TK * D); ALLOC(w->dxg, T * D);
    ALLOC(w->dlog, T * (E ? E : 1)); ALLOC(w->dw, T * (K ? K : 1));
    ALLOC(w->kh, T * (N + R)); ALLOC(w->dkh, T * (N + R)); ALLOC(w->TT, T * T);
    ALLOC(w->iq, T * Hi * Di); ALLOC(w->ikr, T * Di); ALLOC(w->ikl, T * Di); ALLOC(w->ik, T * Di);
    ALLOC(w->imu, T); ALLOC(w->irs, T); ALLOC(w->iw, T * Hi);
    ALLOC(w->S, Hi * T * T); ALLOC(w->I, T * T); ALLOC(w->pt, T * T);
    ALLOC(w->diq, T * Hi * Di); ALLOC(w->dik, T * Di); ALLOC(w->dikl, T * Di); ALLOC(w->diw, T * Hi);
    ALLOC(w->mask, c->n_layers * T * T); ALLOC(w->sel, T); ALLOC(w->sel_tmp, T);
    ALLOC(w->load, c->n_layers * (E ? E : 1));
    ALLOC(w->rec, c->n_layers);
    return fail ? -1 : 0;
}

static int check_config(const dsv_config *c) {
    if (c->score_func != DSV_SCORE_SIGMOID)
        return dsv_error(DSV_ERR_UNSUPPORTED, "training supports the sigmoid router only");
    int Di = c->index_head_dim;
    if (Di < c->qk_rope_head_dim || (Di & (Di - 1)))
        return dsv_error(DSV_ERR_UNSUPPORTED, "training needs index_head_dim a power of two >= qk_rope_head_dim");
    if (c->n_routed_experts > 1024) return dsv_error(DSV_ERR_UNSUPPORTED, "at most 1024 experts");
    return DSV_OK;
}

void dsv_train_free(dsv_trainer *t) {
    if (!t) return;
    if (t->w)
        for (int i = 0; i < t->nth; i++) free_work(t, &t->w[i]);
    free(t->w);
    dsv_pool_free(t->pool);
    free(t->p);
    free(t->m);
    free(t->v);
    free(t->t);
    free(t->ly);
    free(t->mlp_store);
    free(t->rope_cos);
    free(t->rope_sin);
    free(t->config_json);
    free(t);
}

/* Everything but the parameter values. */
static int trainer_create(dsv_trainer **out, const char *config_json, const dsv_train_opts *opts) {
    dsv_train_opts o = opts ? *opts : dsv_train_default_opts();
    if (o.stage < 1 || o.stage > 3) return dsv_error(DSV_ERR_ARG, "stage must be 1, 2 or 3");
    if (o.seq_len < 2 || o.batch < 1 || o.steps < 0)
        return dsv_error(DSV_ERR_ARG, "seq_len >= 2, batch >= 1 and steps >= 0 required");
    dsv_trainer *t = calloc(1, sizeof *t);
    if (!t) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    int st = dsv_config_parse(&t->c, config_json, "config");
    if (!st) st = check_config(&t->c);
    if (st) { free(t); return st; }
    t->config_json = strdup(config_json);
    t->o = o;
    t->stage = o.stage;
    t->topk = o.topk > 0 ? o.topk : t->c.index_topk;
    t->T = o.seq_len;
    if (o.n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.n_threads = n > 0 ? (int)n : 1;
    }
    t->nth = o.n_threads;
    if (layout_params(t) || !t->config_json) { dsv_train_free(t); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    int fail = 0;
    ALLOC(t->p, t->n_params);
    ALLOC(t->m, t->n_params);
    ALLOC(t->v, t->n_params);
    ALLOC(t->rope_cos, (long)t->T * (t->c.qk_rope_head_dim / 2));
    ALLOC(t->rope_sin, (long)t->T * (t->c.qk_rope_head_dim / 2));
    t->w = calloc((size_t)t->nth, sizeof *t->w);
    if (fail || !t->w) { dsv_train_free(t); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < t->nth; i++)
        if (alloc_work(t, &t->w[i])) {
            dsv_train_free(t);
            return dsv_error(DSV_ERR_NOMEM, "out of memory for the activations of %d-token sequences", o.seq_len);
        }
    if ((st = dsv_pool_init(&t->pool, t->nth))) { dsv_train_free(t); return st; }
    dsv_rope_tables(&t->c, t->T, t->rope_cos, t->rope_sin);
    *out = t;
    return DSV_OK;
}

int dsv_train_new(dsv_trainer **out, const char *config_json, const dsv_train_opts *opts) {
    if (!out || !config_json) return dsv_error(DSV_ERR_ARG, "dsv_train_new: NULL argument");
    int st = trainer_create(out, config_json, opts);
    if (st) return st;
    init_params(*out);
    return DSV_OK;
}

const dsv_config *dsv_train_config(const dsv_trainer *t) { return &t->c; }
int dsv_train_step_no(const dsv_trainer *t) { return t->step; }

long dsv_train_n_params(const dsv_trainer *t, int trained_only) {
    long n = 0;
    for (int i = 0; i < t->n_t; i++)
        if (!trained_only || (t->t[i].group & stage_groups(t->stage))) n += t->t[i].n;
    return n;
}

float *dsv_train_tensor(dsv_trainer *t, int i, float **grad, long *n, const char **name) {
    if (i < 0 || i >= t->n_t) return NULL;
    if (grad) *grad = t->w[0].grad + t->t[i].off;
    if (n) *n = t->t[i].n;
    if (name) *name = t->t[i].name;
    return t->p + t->t[i].off;
}

/* ---- linear helpers ------------------------------------------------------ */

/* y[M][N] (ldy) = x[M][K] (ldx) · W[N][K]ᵀ */
static void lin(float *y, long ldy, const float *x, long ldx, const float *W, int M, int N, int K) {
    dsv_tr_gemm(y, ldy, x, ldx, 1, W, 1, K, M, N, K, 0);
}
/* dx[M][K] (ldx) += dy[M][N] (ldy) · W[N][K] */
static void lin_dx(float *dx, long ldx, const float *dy, long ldy, const float *W, int M, int N, int K) {
    dsv_tr_gemm(dx, ldx, dy, ldy, 1, W, K, 1, M, K, N, 1);
}
/* dW[N][K] += dy[M][N]ᵀ · x[M][K] */
static void lin_dw(float *dW, const float *dy, long ldy, const float *x, long ldx, int M, int N, int K) {
    dsv_tr_gemm(dW, K, dy, 1, ldy, x, ldx, 1, N, K, M, 1);
}

/* ---- FFN ------------------------------------------------------------------ */

/* SwiGLU MLP over n rows: y = w2(silu(w1 x) * w3 x); keeps h1, h3. */
static void mlp_fwd(const float *P, const tr_mlp *e, int inter, int D, float *y, const float *x, int n, float *h1,
                    float *h3, float *g) {
    lin(h1, inter, x, D, P + e->w1, n, inter, D);
    lin(h3, inter, x, D, P + e->w3, n, inter, D);
    dsv_tr_swiglu_fwd(g, h1, h3, n * inter);
    lin(y, D, g, inter, P + e->w2, n, D, inter);
}

/* Adds the gradients of the weights (when Gw) and of x (into dx). */
static void mlp_bwd(const float *P, float *Gw, const tr_mlp *e, int inter, int D, float *dx, const float *dy,
                    const float *x, int n, const float *h1, const float *h3, tr_work *w) {
    float *g = w->g, *dg = w->dg, *dh1 = w->dh1, *dh3 = w->dh3;
    dsv_tr_swiglu_fwd(g, h1, h3, n * inter);
    if (Gw) lin_dw(Gw + e->w2, dy, D, g, inter, n, D, inter);
    dsv_tr_gemm(dg, inter, dy, D, 1, P + e->w2, inter, 1, n, inter, D, 0);
    memset(dh1, 0, (size_t)n * inter * sizeof *dh1);
    memset(dh3, 0, (size_t)n * inter * sizeof *dh3);
    dsv_tr_swiglu_bwd(dh1, dh3, dg, h1, h3, n * inter);
    if (Gw) {
        lin_dw(Gw + e->w1, dh1, inter, x, D, n, inter, D);
        lin_dw(Gw + e->w3, dh3, inter, x, D, n, inter, D);
    }
    lin_dx(dx, D, dh1, inter, P + e->w1, n, inter, D);
    lin_dx(dx, D, dh3, inter, P + e->w3, n, inter, D);
}

static void moe_fwd(dsv_trainer *t, tr_work *w, int l, float *out) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    tr_lact *a = &w->L[l];
    const float *P = t->p;
    const int T = t->T, D = c->dim, E = c->n_routed_experts, K = c->n_activated_experts, Im = c->moe_inter_dim;
    float *lg = w->dlog; /* router logits, before the backward needs the buffer */
    lin(lg, E, a->xn2, D, P + y->gate, T, E, D);
    for (int i = 0; i < T; i++)
        dsv_tr_route_fwd(a->idx + (long)i * K, a->w + (long)i * K, a->s + (long)i * E, lg + (long)i * E,
                         P + y->gbias, c);
    /* Assignments grouped by expert, tokens in order. */
    memset(a->cnt, 0, (size_t)E * sizeof *a->cnt);
    for (int i = 0; i < T * K; i++) a->cnt[a->idx[i]]++;
    a->off[0] = 0;
    for (int e = 0; e < E; e++) a->off[e + 1] = a->off[e] + a->cnt[e];
    int32_t pos[1024];
    for (int e = 0; e < E; e++) pos[e] = a->off[e];
    for (int i = 0; i < T; i++)
        for (int k = 0; k < K; k++) {
            int e = a->idx[i * K + k], r = pos[e]++;
            a->rows[r] = i;
            a->slot[r] = k;
        }
    for (int e = 0; e < E; e++) w->load[(long)l * E + e] += a->cnt[e];
    /* Shared expert (weight 1), then the routed ones. */
    if (c->n_shared_experts > 0)
        mlp_fwd(P, &y->shared, c->n_shared_experts * Im, D, out, a->xn2, T, a->h1, a->h3, w->g);
    else
        memset(out, 0, (size_t)T * D * sizeof *out);
    for (int e = 0; e < E; e++) {
        int n = a->cnt[e], r0 = a->off[e];
        if (!n) continue;
        for (int r = 0; r < n; r++)
            memcpy(w->xg + (long)r * D, a->xn2 + (long)a->rows[r0 + r] * D, (size_t)D * sizeof(float));
        mlp_fwd(P, &y->ex[e], Im, D, a->ey + (long)r0 * D, w->xg, n, a->eh1 + (long)r0 * Im,
                a->eh3 + (long)r0 * Im, w->g);
        for (int r = 0; r < n; r++) {
            int i = a->rows[r0 + r];
            float wt = a->w[i * K + a->slot[r0 + r]];
            const float *ye = a->ey + (long)(r0 + r) * D;
            float *o = out + (long)i * D;
            for (int d = 0; d < D; d++) o[d] += wt * ye[d];
        }
    }
}

/* df: gradient of the MoE output [T][D]; adds into dxn2. */
static void moe_bwd(dsv_trainer *t, tr_work *w, int l, const float *df, float *dxn2) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    tr_lact *a = &w->L[l];
    const float *P = t->p;
    float *G = w->grad;
    const int T = t->T, D = c->dim, E = c->n_routed_experts, K = c->n_activated_experts, Im = c->moe_inter_dim;
    if (c->n_shared_experts > 0)
        mlp_bwd(P, G, &y->shared, c->n_shared_experts * Im, D, dxn2, df, a->xn2, T, a->h1, a->h3, w);
    memset(w->dw, 0, (size_t)T * K * sizeof *w->dw);
    for (int e = 0; e < E; e++) {
        int n = a->cnt[e], r0 = a->off[e];
        if (!n) continue;
        float *dxg = w->dxg;
        for (int r = 0; r < n; r++) {
            int i = a->rows[r0 + r], k = a->slot[r0 + r];
            float wt = a->w[i * K + k], dot = 0;
            const float *dfi = df + (long)i * D, *ye = a->ey + (long)(r0 + r) * D;
            float *dy = w->dy + (long)r * D;
            for (int d = 0; d < D; d++) { dy[d] = wt * dfi[d]; dot += dfi[d] * ye[d]; }
            w->dw[i * K + k] = dot;
            memcpy(w->xg + (long)r * D, a->xn2 + (long)i * D, (size_t)D * sizeof(float));
        }
        memset(dxg, 0, (size_t)n * D * sizeof *dxg);
        mlp_bwd(P, G, &y->ex[e], Im, D, dxg, w->dy, w->xg, n, a->eh1 + (long)r0 * Im, a->eh3 + (long)r0 * Im, w);
        for (int r = 0; r < n; r++) {
            float *dst = dxn2 + (long)a->rows[r0 + r] * D;
            const float *src = dxg + (long)r * D;
            for (int d = 0; d < D; d++) dst[d] += src[d];
        }
    }
    memset(w->dlog, 0, (size_t)T * E * sizeof *w->dlog);
    for (int i = 0; i < T; i++)
        dsv_tr_route_bwd(w->dlog + (long)i * E, w->dw + (long)i * K, a->idx + (long)i * K, a->s + (long)i * E, c);
    lin_dw(G + y->gate, w->dlog, E, a->xn2, D, T, E, D);
    lin_dx(dxn2, D, w->dlog, E, P + y->gate, T, E, D);
}

/* ---- lightning indexer ---------------------------------------------------- */

/* Scores I[t][s] (s <= t) of layer l from the (detached) xn and qr. */
static void indexer_fwd(dsv_trainer *t, tr_work *w, int l) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    const tr_lact *a = &w->L[l];
    const float *P = t->p;
    const int T = t->T, D = c->dim, Q = c->q_lora_rank, Hi = c->index_n_heads, Di = c->index_head_dim;
    const int R2 = c->qk_rope_head_dim / 2;
    /* model.py Indexer: weights * n_heads^-0.5, scores * head_dim^-0.5. */
    const float wscale = (float)(1.0 / sqrt((double)Hi) / sqrt((double)Di));
    lin(w->iq, (long)Hi * Di, a->qr, Q, P + y->iwq, T, Hi * Di, Q);
    lin(w->ikr, Di, a->xn, D, P + y->iwk, T, Di, D);
    lin(w->iw, Hi, a->xn, D, P + y->iwp, T, Hi, D);
    for (int i = 0; i < T; i++) {
        const float *cs = t->rope_cos + (long)i * R2, *sn = t->rope_sin + (long)i * R2;
        for (int h = 0; h < Hi; h++) {
            float *q = w->iq + ((long)i * Hi + h) * Di;
            dsv_tr_rope(q, cs, sn, R2, 0, 0);
            dsv_tr_hadamard(q, Di);
        }
        float *k = w->ik + (long)i * Di;
        dsv_tr_layernorm_fwd(w->ikl + (long)i * Di, &w->imu[i], &w->irs[i], w->ikr + (long)i * Di, P + y->iknw,
                             P + y->iknb, Di, c->rms_norm_eps);
        memcpy(k, w->ikl + (long)i * Di, (size_t)Di * sizeof *k);
        dsv_tr_rope(k, cs, sn, R2, 0, 0);
        dsv_tr_hadamard(k, Di);
        for (int h = 0; h < Hi; h++) w->iw[(long)i * Hi + h] *= wscale;
    }
    for (int h = 0; h < Hi; h++) {
        float *S = w->S + (long)h * T * T;
        for (int r0 = 0; r0 < T; r0 += 128) {
            int r1 = r0 + 128 < T ? r0 + 128 : T;
            dsv_tr_gemm(S + (long)r0 * T, T, w->iq + (long)r0 * Hi * Di + (long)h * Di, (long)Hi * Di, 1, w->ik, 1,
                        Di, r1 - r0, r1, Di, 0);
        }
    }
    for (int i = 0; i < T; i++) {
        float *I = w->I + (long)i * T;
        memset(I, 0, (size_t)(i + 1) * sizeof *I);
        for (int h = 0; h < Hi; h++) {
            const float *S = w->S + (long)h * T * T + (long)i * T;
            float wh = w->iw[(long)i * Hi + h];
            for (int s = 0; s <= i; s++) I[s] += wh * (S[s] > 0 ? S[s] : 0);
        }
    }
}

/* Top-k of each query's visible scores into w->mask (the engine's
 * dsv_topk: ties to the lower position). */
static void indexer_select(dsv_trainer *t, tr_work *w, uint8_t *mask, int k) {
    const int T = t->T;
    for (int i = 0; i < T; i++) {
        uint8_t *m = mask + (long)i * T;
        int vis = i + 1;
        if (vis <= k) {
            memset(m, 1, (size_t)vis);
            memset(m + vis, 0, (size_t)(T - vis));
            continue;
        }
        memset(m, 0, (size_t)T);
        dsv_topk(w->sel, w->I + (long)i * T, vis, k, w->sel_tmp);
        for (int j = 0; j < k; j++) m[w->sel[j]] = 1;
    }
}

/* The target p (heads' attention summed, L1-normalized) into w->pt. */
static void attn_target(dsv_trainer *t, tr_work *w, int l) {
    const int T = t->T, H = t->c.n_heads;
    const float *P = w->L[l].P;
    for (int i = 0; i < T; i++) {
        float *p = w->pt + (long)i * T;
        for (int s = 0; s <= i; s++) {
            float sum = 0;
            for (int h = 0; h < H; h++) sum += P[(long)h * T * T + (long)i * T + s];
            p[s] = sum / (float)H;
        }
    }
}

/* KL(p || softmax(I)) per query over its selected set (mask) or every
 * visible position, and the indexer's gradients. */
static void indexer_loss_bwd(dsv_trainer *t, tr_work *w, int l, const uint8_t *mask, float gscale) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    const tr_lact *a = &w->L[l];
    const float *P = t->p;
    float *G = w->grad;
    const int T = t->T;
    attn_target(t, w, l);
    float *dI = w->TT;
    for (int i = 0; i < T; i++)
        w->kl += dsv_tr_kl(dI + (long)i * T, w->I + (long)i * T, w->pt + (long)i * T, mask ? mask + (long)i * T : NULL,
                           i + 1, gscale);
    if (!t->do_grad) return;
    const dsv_tr_indexer_grad g = {
        .c = c, .T = T, .dI = dI, .S = w->S, .iw = w->iw, .iq = w->iq, .ik = w->ik, .ikr = w->ikr, .imu = w->imu,
        .irs = w->irs, .xn = a->xn, .qr = a->qr, .rope_cos = t->rope_cos, .rope_sin = t->rope_sin, .knw = P + y->iknw,
        .dS = w->pt, /* the target is no longer needed */
        .diq = w->diq, .dik = w->dik, .diw = w->diw, .dikl = w->dikl,
        .g_wq = G + y->iwq, .g_wk = G + y->iwk, .g_wp = G + y->iwp, .g_knw = G + y->iknw, .g_knb = G + y->iknb,
    };
    dsv_tr_indexer_bwd(&g);
}

/* ---- one layer ------------------------------------------------------------ */

/* One head's keys [k_nope | k_pe] gathered into w->kh [T][N+R]. */
static void head_keys(dsv_trainer *t, tr_work *w, int l, int h) {
    const dsv_config *c = &t->c;
    const tr_lact *a = &w->L[l];
    const int T = t->T, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int C = c->kv_lora_rank;
    for (int j = 0; j < T; j++) {
        memcpy(w->kh + (long)j * (N + R), a->kvb + ((long)j * H + h) * (N + V), (size_t)N * sizeof(float));
        memcpy(w->kh + (long)j * (N + R) + N, a->kvf + (long)j * (C + R) + C, (size_t)R * sizeof(float));
    }
}

enum { MODE_TRAIN, MODE_RECALL };

static void layer_fwd(dsv_trainer *t, tr_work *w, int l, float *x_out, int mode, float gscale) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    tr_lact *a = &w->L[l];
    const float *P = t->p;
    const int T = t->T, D = c->dim, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim;
    const int V = c->v_head_dim, C = c->kv_lora_rank, Q = c->q_lora_rank, R2 = R / 2;
    const float eps = c->rms_norm_eps;
    for (int i = 0; i < T; i++) a->r1[i] = dsv_tr_rmsnorm_fwd(a->xn + (long)i * D, a->x_in + (long)i * D, P + y->attn_norm, D, eps);
    lin(a->qa, Q, a->xn, D, P + y->wq_a, T, Q, D);
    for (int i = 0; i < T; i++) a->rq[i] = dsv_tr_rmsnorm_fwd(a->qr + (long)i * Q, a->qa + (long)i * Q, P + y->q_norm, Q, eps);
    lin(a->q, (long)H * (N + R), a->qr, Q, P + y->wq_b, T, H * (N + R), Q);
    lin(a->kvf, C + R, a->xn, D, P + y->wkv_a, T, C + R, D);
    for (int i = 0; i < T; i++) {
        const float *cs = t->rope_cos + (long)i * R2, *sn = t->rope_sin + (long)i * R2;
        for (int h = 0; h < H; h++) dsv_tr_rope(a->q + ((long)i * H + h) * (N + R) + N, cs, sn, R2, 1, 0);
        float *kvf = a->kvf + (long)i * (C + R);
        a->rkv[i] = dsv_tr_rmsnorm_fwd(a->kv + (long)i * C, kvf, P + y->kv_norm, C, eps);
        dsv_tr_rope(kvf + C, cs, sn, R2, 1, 0); /* k_pe, roped in place */
    }
    lin(a->kvb, (long)H * (N + V), a->kv, C, P + y->wkv_b, T, H * (N + V), C);

    const uint8_t *mask = NULL;
    uint8_t *lmask = w->mask + (long)l * T * T;
    if (t->stage >= 2 || mode == MODE_RECALL) indexer_fwd(t, w, l);
    if (t->stage == 3 && mode == MODE_TRAIN) {
        if (!t->freeze_sel) indexer_select(t, w, lmask, t->topk);
        mask = lmask;
    }
    for (int h = 0; h < H; h++) {
        head_keys(t, w, l, h);
        dsv_tr_attn_fwd(a->o + (long)h * V, (long)H * V, a->P + (long)h * T * T, a->q + (long)h * (N + R),
                        (long)H * (N + R), w->kh, N + R, a->kvb + (long)h * (N + V) + N, (long)H * (N + V), T, N + R,
                        V, c->softmax_scale, mask);
    }
    if (mode == MODE_RECALL) {
        indexer_select(t, w, lmask, t->topk);
        attn_target(t, w, l);
        for (int i = t->topk; i < T; i++) {
            double m = 0;
            for (int s = 0; s <= i; s++)
                if (lmask[(long)i * T + s]) m += w->pt[(long)i * T + s];
            w->rec[l] += m;
        }
        w->rec_n += l == 0 ? (T > t->topk ? T - t->topk : 0) : 0;
    } else if (t->stage >= 2) {
        indexer_loss_bwd(t, w, l, mask, gscale);
    }

    lin(a->x_mid, D, a->o, (long)H * V, P + y->wo, T, D, H * V);
    for (long i = 0; i < (long)T * D; i++) a->x_mid[i] += a->x_in[i];
    for (int i = 0; i < T; i++) a->r2[i] = dsv_tr_rmsnorm_fwd(a->xn2 + (long)i * D, a->x_mid + (long)i * D, P + y->ffn_norm, D, eps);
    if (y->moe) moe_fwd(t, w, l, x_out);
    else mlp_fwd(P, &y->mlp, c->inter_dim, D, x_out, a->xn2, T, a->h1, a->h3, w->g);
    for (long i = 0; i < (long)T * D; i++) x_out[i] += a->x_mid[i];
}

/* dx: in, the gradient of the layer's output; out, of its input. */
static void layer_bwd(dsv_trainer *t, tr_work *w, int l, float *dx) {
    const dsv_config *c = &t->c;
    const tr_layer *y = &t->ly[l];
    tr_lact *a = &w->L[l];
    const float *P = t->p;
    float *G = w->grad;
    const int T = t->T, D = c->dim, H = c->n_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim;
    const int V = c->v_head_dim, C = c->kv_lora_rank, Q = c->q_lora_rank, R2 = R / 2;

    memset(w->dxn2, 0, (size_t)T * D * sizeof(float));
    if (y->moe) moe_bwd(t, w, l, dx, w->dxn2);
    else mlp_bwd(P, G, &y->mlp, c->inter_dim, D, w->dxn2, dx, a->xn2, T, a->h1, a->h3, w);
    for (int i = 0; i < T; i++)
        dsv_tr_rmsnorm_bwd(dx + (long)i * D, G + y->ffn_norm, w->dxn2 + (long)i * D, a->x_mid + (long)i * D,
                           P + y->ffn_norm, a->r2[i], D);

    /* dx is now d(x_mid) = d(attention output). */
    dsv_tr_gemm(w->dO, (long)H * V, dx, D, 1, P + y->wo, (long)H * V, 1, T, H * V, D, 0);
    lin_dw(G + y->wo, dx, D, a->o, (long)H * V, T, D, H * V);
    memset(w->dq, 0, (size_t)T * H * (N + R) * sizeof(float));
    memset(w->dkvb, 0, (size_t)T * H * (N + V) * sizeof(float));
    memset(w->dkvf, 0, (size_t)T * (C + R) * sizeof(float));
    for (int h = 0; h < H; h++) {
        head_keys(t, w, l, h);
        memset(w->dkh, 0, (size_t)T * (N + R) * sizeof(float));
        dsv_tr_attn_bwd(w->dq + (long)h * (N + R), w->dkh, w->dkvb + (long)h * (N + V) + N, w->dO + (long)h * V,
                        (long)H * V, a->P + (long)h * T * T, a->q + (long)h * (N + R), (long)H * (N + R), w->kh,
                        N + R, a->kvb + (long)h * (N + V) + N, (long)H * (N + V), T, N + R, V, c->softmax_scale,
                        w->TT);
        for (int j = 0; j < T; j++) {
            const float *dk = w->dkh + (long)j * (N + R);
            float *dn = w->dkvb + ((long)j * H + h) * (N + V), *dp = w->dkvf + (long)j * (C + R) + C;
            for (int d = 0; d < N; d++) dn[d] += dk[d];
            for (int d = 0; d < R; d++) dp[d] += dk[N + d];
        }
    }
    for (int i = 0; i < T; i++) {
        const float *cs = t->rope_cos + (long)i * R2, *sn = t->rope_sin + (long)i * R2;
        for (int h = 0; h < H; h++) dsv_tr_rope(w->dq + ((long)i * H + h) * (N + R) + N, cs, sn, R2, 1, 1);
        dsv_tr_rope(w->dkvf + (long)i * (C + R) + C, cs, sn, R2, 1, 1);
    }
    /* q path */
    lin_dw(G + y->wq_b, w->dq, (long)H * (N + R), a->qr, Q, T, H * (N + R), Q);
    memset(w->dqr, 0, (size_t)T * Q * sizeof(float));
    lin_dx(w->dqr, Q, w->dq, (long)H * (N + R), P + y->wq_b, T, H * (N + R), Q);
    memset(w->dqa, 0, (size_t)T * Q * sizeof(float));
    for (int i = 0; i < T; i++)
        dsv_tr_rmsnorm_bwd(w->dqa + (long)i * Q, G + y->q_norm, w->dqr + (long)i * Q, a->qa + (long)i * Q,
                           P + y->q_norm, a->rq[i], Q);
    lin_dw(G + y->wq_a, w->dqa, Q, a->xn, D, T, Q, D);
    memset(w->dxn, 0, (size_t)T * D * sizeof(float));
    lin_dx(w->dxn, D, w->dqa, Q, P + y->wq_a, T, Q, D);
    /* kv path */
    lin_dw(G + y->wkv_b, w->dkvb, (long)H * (N + V), a->kv, C, T, H * (N + V), C);
    memset(w->dkv, 0, (size_t)T * C * sizeof(float));
    lin_dx(w->dkv, C, w->dkvb, (long)H * (N + V), P + y->wkv_b, T, H * (N + V), C);
    for (int i = 0; i < T; i++)
        dsv_tr_rmsnorm_bwd(w->dkvf + (long)i * (C + R), G + y->kv_norm, w->dkv + (long)i * C, a->kvf + (long)i * (C + R),
                           P + y->kv_norm, a->rkv[i], C);
    lin_dw(G + y->wkv_a, w->dkvf, C + R, a->xn, D, T, C + R, D);
    lin_dx(w->dxn, D, w->dkvf, C + R, P + y->wkv_a, T, C + R, D);
    for (int i = 0; i < T; i++)
        dsv_tr_rmsnorm_bwd(dx + (long)i * D, G + y->attn_norm, w->dxn + (long)i * D, a->x_in + (long)i * D,
                           P + y->attn_norm, a->r1[i], D);
}

/* ---- one sequence --------------------------------------------------------- */

/* tok: T + 1 ids (inputs, then targets shifted by one). */
static void seq_pass(dsv_trainer *t, tr_work *w, const int32_t *tok, int mode, float gscale) {
    const dsv_config *c = &t->c;
    const int T = t->T, D = c->dim, Vs = c->vocab_size, nl = c->n_layers;
    const float *P = t->p;
    float *G = w->grad;
    const long emb = t->t[0].off, head = t->t[t->n_t - 1].off, norm = t->t[t->n_t - 2].off;
    for (int i = 0; i < T; i++) memcpy(w->L[0].x_in + (long)i * D, P + emb + (long)tok[i] * D, (size_t)D * sizeof(float));
    for (int l = 0; l < nl; l++) layer_fwd(t, w, l, l + 1 < nl ? w->L[l + 1].x_in : w->xL, mode, gscale);
    if (mode == MODE_RECALL || (t->stage == 2 && t->do_grad)) return;

    for (int i = 0; i < T; i++) w->rf[i] = dsv_tr_rmsnorm_fwd(w->xf + (long)i * D, w->xL + (long)i * D, P + norm, D, c->rms_norm_eps);
    lin(w->logits, Vs, w->xf, D, P + head, T, Vs, D);
    int grad = t->do_grad && t->stage != 2;
    for (int i = 0; i < T; i++) {
        float *lg = w->logits + (long)i * Vs;
        w->lm += dsv_tr_xent(grad ? lg : NULL, lg, Vs, tok[i + 1], gscale);
    }
    if (!grad) return;
    lin_dw(G + head, w->logits, Vs, w->xf, D, T, Vs, D);
    memset(w->dxn, 0, (size_t)T * D * sizeof(float));
    lin_dx(w->dxn, D, w->logits, Vs, P + head, T, Vs, D);
    memset(w->dx, 0, (size_t)T * D * sizeof(float));
    for (int i = 0; i < T; i++)
        dsv_tr_rmsnorm_bwd(w->dx + (long)i * D, G + norm, w->dxn + (long)i * D, w->xL + (long)i * D, P + norm, w->rf[i], D);
    for (int l = nl - 1; l >= 0; l--) layer_bwd(t, w, l, w->dx);
    for (int i = 0; i < T; i++) {
        float *g = G + emb + (long)tok[i] * D;
        const float *d = w->dx + (long)i * D;
        for (int j = 0; j < D; j++) g[j] += d[j];
    }
}

/* ---- steps ---------------------------------------------------------------- */

struct run_args {
    dsv_trainer *t;
    int mode;
    float gscale;
};

static void run_task(void *arg, int ith, int nth) {
    struct run_args *ra = arg;
    dsv_trainer *t = ra->t;
    tr_work *w = &t->w[ith];
    const int E = t->c.n_routed_experts > 0 ? t->c.n_routed_experts : 1;
    w->lm = w->kl = 0;
    w->rec_n = 0;
    memset(w->load, 0, (size_t)t->c.n_layers * E * sizeof *w->load);
    memset(w->rec, 0, (size_t)t->c.n_layers * sizeof *w->rec);
    if (t->do_grad) memset(w->grad, 0, (size_t)t->n_params * sizeof *w->grad);
    for (int s = ith; s < t->n_seq; s += nth) seq_pass(t, w, t->tokens + (long)s * (t->T + 1), ra->mode, ra->gscale);
}

static void reduce_task(void *arg, int ith, int nth) {
    dsv_trainer *t = arg;
    long b, e;
    dsv_split(t->n_params, ith, nth, &b, &e);
    for (int k = 1; k < t->nth; k++) {
        const float *src = t->w[k].grad;
        float *dst = t->w[0].grad;
        for (long i = b; i < e; i++) dst[i] += src[i];
    }
}

static void run_batch(dsv_trainer *t, const int32_t *tokens, int n_seq, int grad, int mode, dsv_train_stats *st) {
    t->tokens = tokens;
    t->n_seq = n_seq;
    t->do_grad = grad;
    struct run_args ra = {t, mode, 1.0f / ((float)n_seq * t->T)};
    dsv_pool_run(t->pool, run_task, &ra);
    if (grad && t->nth > 1) dsv_pool_run(t->pool, reduce_task, t);
    memset(st, 0, sizeof *st);
    for (int k = 0; k < t->nth; k++) {
        st->lm_loss += t->w[k].lm;
        st->kl += t->w[k].kl;
    }
    st->tokens = (long)n_seq * t->T;
    /* Expert load: summed over threads into worker 0. */
    const int E = t->c.n_routed_experts;
    for (int l = t->c.n_dense_layers; l < t->c.n_layers && E > 0; l++) {
        long tot = 0, mx = 0;
        for (int e = 0; e < E; e++) {
            long n = 0;
            for (int k = 0; k < t->nth; k++) n += t->w[k].load[(long)l * E + e];
            t->w[0].load[(long)l * E + e] = n;
            tot += n;
            mx = n > mx ? n : mx;
        }
        double r = tot ? (double)mx * E / tot : 0;
        if (r > st->max_load) st->max_load = r;
    }
}

static double lr_at(const dsv_train_opts *o, int step) {
    if (step < o->warmup) return o->lr * (step + 1) / (double)o->warmup;
    int span = o->steps - o->warmup;
    double f = span > 0 ? (double)(step - o->warmup) / span : 1.0;
    if (f > 1) f = 1;
    double lo = o->lr * o->min_lr;
    return lo + (o->lr - lo) * 0.5 * (1 + cos(M_PI * f));
}

int dsv_train_step(dsv_trainer *t, const int32_t *tokens, dsv_train_stats *st) {
    if (!t || !tokens || !st) return dsv_error(DSV_ERR_ARG, "dsv_train_step: NULL argument");
    run_batch(t, tokens, t->o.batch, 1, MODE_TRAIN, st);
    const int groups = stage_groups(t->stage);
    float *g = t->w[0].grad;
    double ss = 0;
    for (int i = 0; i < t->n_t; i++) {
        const tr_tensor *x = &t->t[i];
        if (!(x->group & groups)) continue;
        for (long j = 0; j < x->n; j++) ss += (double)g[x->off + j] * g[x->off + j];
    }
    st->grad_norm = sqrt(ss);
    float clip = t->o.clip > 0 && st->grad_norm > t->o.clip ? (float)(t->o.clip / st->grad_norm) : 1.0f;
    double lr = lr_at(&t->o, t->step);
    st->lr = lr;
    t->step++;
    const float b1 = t->o.beta1, b2 = t->o.beta2;
    const float c1 = (float)(1.0 / (1.0 - pow(b1, t->step))), c2 = (float)(1.0 / (1.0 - pow(b2, t->step)));
    for (int i = 0; i < t->n_t; i++) {
        const tr_tensor *x = &t->t[i];
        if (!(x->group & groups)) continue;
        float *p = t->p + x->off, *m = t->m + x->off, *v = t->v + x->off;
        const float *gr = g + x->off;
        const float wd = x->decay ? t->o.weight_decay : 0.0f;
        for (long j = 0; j < x->n; j++) {
            float gj = gr[j] * clip;
            m[j] = b1 * m[j] + (1 - b1) * gj;
            v[j] = b2 * v[j] + (1 - b2) * gj * gj;
            p[j] -= (float)lr * (m[j] * c1 / (sqrtf(v[j] * c2) + t->o.adam_eps) + wd * p[j]);
        }
    }
    /* Auxiliary-loss-free balancing (DeepSeek-V3): raise the bias of experts
     * below the mean load, lower it above; only while the router trains. */
    const int E = t->c.n_routed_experts;
    if ((groups & GRP_MAIN) && t->o.bias_rate > 0)
        for (int l = t->c.n_dense_layers; l < t->c.n_layers; l++) {
            long tot = 0;
            for (int e = 0; e < E; e++) tot += t->w[0].load[(long)l * E + e];
            float mean = (float)tot / E, *bias = t->p + t->ly[l].gbias;
            for (int e = 0; e < E; e++) {
                float n = (float)t->w[0].load[(long)l * E + e];
                bias[e] += n < mean ? t->o.bias_rate : n > mean ? -t->o.bias_rate : 0.0f;
            }
        }
    st->lm_loss /= st->tokens;
    st->kl /= st->tokens;
    return DSV_OK;
}

int dsv_train_eval(dsv_trainer *t, const int32_t *tokens, int n_seq, dsv_train_stats *st) {
    if (!t || !tokens || !st || n_seq < 1) return dsv_error(DSV_ERR_ARG, "dsv_train_eval: bad argument");
    run_batch(t, tokens, n_seq, 0, MODE_TRAIN, st);
    st->lm_loss /= st->tokens;
    st->kl /= st->tokens;
    return DSV_OK;
}

double dsv_train_loss_grad(dsv_trainer *t, const int32_t *tokens, int grad, double *kl) {
    dsv_train_stats st;
    int nth = t->nth;
    t->nth = 1; /* worker 0 alone: its buffer holds the whole gradient */
    t->tokens = tokens;
    t->n_seq = 1;
    t->do_grad = grad;
    struct run_args ra = {t, MODE_TRAIN, 1.0f / t->T};
    run_task(&ra, 0, 1);
    t->nth = nth;
    memset(&st, 0, sizeof st);
    if (kl) *kl = t->w[0].kl / t->T;
    return t->w[0].lm / t->T;
}

void dsv_train_freeze_selection(dsv_trainer *t, int on) { t->freeze_sel = on; }

int dsv_train_recall(dsv_trainer *t, const int32_t *tokens, int n_seq, double *recall) {
    if (!t || !tokens || !recall || n_seq < 1) return dsv_error(DSV_ERR_ARG, "dsv_train_recall: bad argument");
    dsv_train_stats st;
    run_batch(t, tokens, n_seq, 0, MODE_RECALL, &st);
    long n = 0;
    for (int l = 0; l < t->c.n_layers; l++) recall[l] = 0;
    for (int k = 0; k < t->nth; k++) {
        n += t->w[k].rec_n;
        for (int l = 0; l < t->c.n_layers; l++) recall[l] += t->w[k].rec[l];
    }
    for (int l = 0; l < t->c.n_layers; l++) recall[l] = n ? recall[l] / n : 1.0;
    return (int)n;
}

/* ---- checkpoints and export ---------------------------------------------- */

static int put_f32(dsv_st_writer *wr, const char *name, const float *data, int rows, int cols) {
    int64_t shape[2] = {rows, cols};
    return dsv_st_writer_add(wr, name, DSV_DT_F32, cols ? 2 : 1, shape, data);
}

int dsv_train_save(dsv_trainer *t, const char *path) {
    dsv_st_writer *wr;
    int st = dsv_st_writer_init(&wr);
    if (st) return st;
    char buf[160], num[32];
    for (int i = 0; i < t->n_t && !st; i++) {
        const tr_tensor *x = &t->t[i];
        st = put_f32(wr, x->name, t->p + x->off, x->rows, x->cols);
        snprintf(buf, sizeof buf, "adam_m.%s", x->name);
        if (!st) st = put_f32(wr, buf, t->m + x->off, x->rows, x->cols);
        snprintf(buf, sizeof buf, "adam_v.%s", x->name);
        if (!st) st = put_f32(wr, buf, t->v + x->off, x->rows, x->cols);
    }
    if (!st) st = dsv_st_writer_set_metadata(wr, "format", "dsv32-train");
    if (!st) st = dsv_st_writer_set_metadata(wr, "config", t->config_json);
    snprintf(num, sizeof num, "%d", t->stage);
    if (!st) st = dsv_st_writer_set_metadata(wr, "stage", num);
    snprintf(num, sizeof num, "%d", t->step);
    if (!st) st = dsv_st_writer_set_metadata(wr, "step", num);
    if (!st) st = dsv_st_writer_write(wr, path);
    dsv_st_writer_free(wr);
    return st;
}

/* A tensor of the file as fp32 (F32, BF16, F16, or F8_E4M3 with its
 * weight_scale_inv). */
static int read_tensor(const dsv_st *f, const char *name, float *dst, int rows, int cols, const char *path) {
    const dsv_st_tensor *x = dsv_st_find(f, name);
    if (!x) return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is missing", path, name);
    long n = (long)rows * (cols ? cols : 1);
    int ok = x->n_dims == (cols ? 2 : 1) && x->shape[0] == rows && (!cols || x->shape[1] == cols);
    if (!ok) return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' has the wrong shape", path, name);
    const float *scale = NULL;
    int sld = 0;
    if (x->dtype == DSV_DT_F8_E4M3) {
        char sn[192];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        const dsv_st_tensor *s = dsv_st_find(f, sn);
        sld = (cols + DSV_QBLOCK - 1) / DSV_QBLOCK;
        if (!s || s->dtype != DSV_DT_F32 || s->nbytes != (size_t)((rows + DSV_QBLOCK - 1) / DSV_QBLOCK) * sld * 4)
            return dsv_error(DSV_ERR_MODEL, "%s: '%s' lacks a valid scale tensor", path, name);
        scale = s->data;
    } else if (x->dtype != DSV_DT_F32 && x->dtype != DSV_DT_BF16 && x->dtype != DSV_DT_F16) {
        return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' has an unsupported dtype %s", path, name,
                         dsv_dtype_name(x->dtype));
    }
    dsv_linear L = {.dtype = x->dtype, .w = x->data};
    for (long i = 0; i < n; i++) {
        float v = dsv_weight_at(&L, i, 0);
        if (scale) {
            float s;
            memcpy(&s, scale + (size_t)(i / cols / DSV_QBLOCK) * sld + (i % cols) / DSV_QBLOCK, 4);
            v *= s;
        }
        dst[i] = v;
    }
    return DSV_OK;
}

int dsv_train_load(dsv_trainer **out, const char *path, const dsv_train_opts *opts, int resume) {
    if (!out || !path) return dsv_error(DSV_ERR_ARG, "dsv_train_load: NULL argument");
    dsv_st *f;
    int st = dsv_st_open(&f, path);
    if (st) return st;
    const char *fmt = dsv_st_metadata(f, 0, "format");
    int ckpt = fmt && !strcmp(fmt, "dsv32-train");
    char *cfg = NULL;
    if (ckpt) {
        const char *c = dsv_st_metadata(f, 0, "config");
        cfg = c ? strdup(c) : NULL;
    } else {
        char p[4096];
        if (dsv_path_join(p, sizeof p, path, "config.json")) {
            dsv_st_close(f);
            return DSV_ERR_ARG;
        }
        if (dsv_read_file(p, (size_t)64 << 20, &cfg, NULL)) cfg = NULL;
    }
    if (!cfg) {
        dsv_st_close(f);
        return dsv_error(DSV_ERR_FORMAT, "%s: no model config (neither a training checkpoint nor a model directory)", path);
    }
    if (resume && !ckpt) {
        free(cfg);
        dsv_st_close(f);
        return dsv_error(DSV_ERR_ARG, "%s: only a training checkpoint can be resumed", path);
    }
    dsv_train_opts o = opts ? *opts : dsv_train_default_opts();
    int step = 0;
    if (resume) {
        const char *s = dsv_st_metadata(f, 0, "stage"), *n = dsv_st_metadata(f, 0, "step");
        if (s && atoi(s) != o.stage) {
            int got = atoi(s);
            free(cfg);
            dsv_st_close(f);
            return dsv_error(DSV_ERR_ARG, "%s: a stage %d checkpoint cannot resume stage %d", path, got, o.stage);
        }
        step = n ? atoi(n) : 0;
    }
    dsv_trainer *t;
    st = trainer_create(&t, cfg, &o);
    free(cfg);
    if (st) { dsv_st_close(f); return st; }
    char buf[160];
    for (int i = 0; i < t->n_t && !st; i++) {
        const tr_tensor *x = &t->t[i];
        st = read_tensor(f, x->name, t->p + x->off, x->rows, x->cols, path);
        if (!st && resume) {
            snprintf(buf, sizeof buf, "adam_m.%s", x->name);
            st = read_tensor(f, buf, t->m + x->off, x->rows, x->cols, path);
            snprintf(buf, sizeof buf, "adam_v.%s", x->name);
            if (!st) st = read_tensor(f, buf, t->v + x->off, x->rows, x->cols, path);
        }
    }
    dsv_st_close(f);
    if (st) { dsv_train_free(t); return st; }
    t->step = step;
    *out = t;
    return DSV_OK;
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return dsv_error(DSV_ERR_IO, "%s: cannot write", path);
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad ? dsv_error(DSV_ERR_IO, "%s: write failed", path) : DSV_OK;
}

/* e4m3 codes and 128x128 block scales (amax / 448, a multiplier) of W. */
static void quant_fp8(uint8_t *q, float *scale, const float *W, int rows, int cols) {
    const int sr = (rows + DSV_QBLOCK - 1) / DSV_QBLOCK, sc = (cols + DSV_QBLOCK - 1) / DSV_QBLOCK;
    for (int br = 0; br < sr; br++)
        for (int bc = 0; bc < sc; bc++) {
            int r1 = DSV_MIN(rows, (br + 1) * DSV_QBLOCK), c1 = DSV_MIN(cols, (bc + 1) * DSV_QBLOCK);
            float amax = 0;
            for (int r = br * DSV_QBLOCK; r < r1; r++)
                for (int c = bc * DSV_QBLOCK; c < c1; c++) amax = fmaxf(amax, fabsf(W[(long)r * cols + c]));
            float s = amax > 0 ? amax / 448.0f : 1.0f;
            scale[br * sc + bc] = s;
            for (int r = br * DSV_QBLOCK; r < r1; r++)
                for (int c = bc * DSV_QBLOCK; c < c1; c++)
                    q[(long)r * cols + c] = dsv_f32_to_e4m3(W[(long)r * cols + c] / s);
        }
}

int dsv_train_export(dsv_trainer *t, const char *dir, int fp8) {
    char path[4096];
    /* The longer of the two names written: both fit, or neither is tried. */
    int st = dsv_path_join(path, sizeof path, dir, "model.safetensors");
    if (st) return st;
    cJSON *cfg = cJSON_Parse(t->config_json);
    if (!cfg) return dsv_error(DSV_ERR_FORMAT, "export: the stored config is not JSON");
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "torch_dtype");
    cJSON_AddStringToObject(cfg, "torch_dtype", "bfloat16");
    if (fp8) {
        cJSON *q = cJSON_AddObjectToObject(cfg, "quantization_config");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON *bs = cJSON_AddArrayToObject(q, "weight_block_size");
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(128));
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(128));
        cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
    }
    char *text = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!text) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t tl = strlen(text);
    char *text_nl = malloc(tl + 2);
    st = DSV_ERR_NOMEM;
    if (text_nl) {
        memcpy(text_nl, text, tl);
        memcpy(text_nl + tl, "\n", 2);
        st = write_text(path, text_nl);
        free(text_nl);
    }
    free(text);
    if (st) return st;

    /* Converted data first (the writer borrows it), then one file. */
    void **bufs = calloc((size_t)t->n_t * 2, sizeof *bufs);
    dsv_st_writer *wr = NULL;
    if (!bufs || (st = dsv_st_writer_init(&wr))) { free(bufs); return st ? st : dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < t->n_t && !st; i++) {
        const tr_tensor *x = &t->t[i];
        const float *p = t->p + x->off;
        int64_t shape[2] = {x->rows, x->cols};
        int nd = x->cols ? 2 : 1;
        if (x->kind == KIND_BIAS) {
            st = dsv_st_writer_add(wr, x->name, DSV_DT_F32, nd, shape, p);
        } else if (fp8 && x->kind == KIND_LIN && x->cols % DSV_QBLOCK == 0) {
            int sr = (x->rows + DSV_QBLOCK - 1) / DSV_QBLOCK, sc = x->cols / DSV_QBLOCK;
            uint8_t *q = malloc((size_t)x->n);
            float *s = malloc((size_t)sr * sc * sizeof *s);
            bufs[2 * i] = q;
            bufs[2 * i + 1] = s;
            if (!q || !s) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); break; }
            quant_fp8(q, s, p, x->rows, x->cols);
            char sn[192];
            snprintf(sn, sizeof sn, "%s_scale_inv", x->name);
            int64_t sshape[2] = {sr, sc};
            st = dsv_st_writer_add(wr, x->name, DSV_DT_F8_E4M3, 2, shape, q);
            if (!st) st = dsv_st_writer_add(wr, sn, DSV_DT_F32, 2, sshape, s);
        } else {
            dsv_bf16 *b = malloc((size_t)x->n * sizeof *b);
            bufs[2 * i] = b;
            if (!b) { st = dsv_error(DSV_ERR_NOMEM, "out of memory"); break; }
            for (long j = 0; j < x->n; j++) b[j] = dsv_f32_to_bf16(p[j]);
            st = dsv_st_writer_add(wr, x->name, DSV_DT_BF16, nd, shape, b);
        }
    }
    if (!st) st = dsv_st_writer_set_metadata(wr, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!st) st = dsv_st_writer_write(wr, path);
    dsv_st_writer_free(wr);
    for (int i = 0; i < 2 * t->n_t; i++) free(bufs[i]);
    free(bufs);
    return st;
}
