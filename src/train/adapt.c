/* adapt.c: indexer adaptation on a user's text (include/dsv32_adapt.h).
 *
 * The frozen model is the inference engine's: a dense context runs each
 * window with a probe attached (model/context.h) that leaves every token's
 * attention weights summed over heads, and the dump hook hands over the
 * indexer's inputs (attn_norm = x_n, qr). After each layer's attention the
 * probe calls back here, and the layer's indexer is run, scored and, when
 * training, differentiated in fp32 at once, so only one layer's activations
 * are ever held and no gradient reaches the main model. The indexer maths
 * are the trainer's (train.c indexer_fwd / indexer_loss_bwd, on the
 * train_ops.c ops) with the engine's RoPE tables.
 *
 * Writing back: the trained fp32 weights are quantized to each tensor's
 * dtype in the checkpoint and only the shards holding them are rewritten;
 * every other tensor keeps its bytes, every other file is copied. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "adapt.h"
#include "base/numeric.h"
#include "base/util.h"
#include "format/safetensors.h"
#include "model/context.h"
#include "train.h"

/* The five trained tensors of a layer's indexer. */
enum { T_WQ, T_WK, T_KNW, T_KNB, T_WP, T_N };
static const char *const t_suffix[T_N] = {"wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias",
                                          "weights_proj.weight"};

typedef struct ad_tensor {
    char name[128];
    const dsv_st_tensor *st, *scale; /* in the checkpoint; scale for fp8 */
    int rows, cols;                  /* cols 0 for a vector */
    long off, n;                     /* in the parameter arrays */
    int pow2;                        /* fp8 whose block scales are all powers of two */
} ad_tensor;

struct dsv_adapter {
    dsv_adapt_opts o;
    dsv_model *m;
    dsv_context *ctx;
    dsv_probe probe;
    const dsv_config *c;
    char dir[PATH_MAX];
    int L, T, topk;
    ad_tensor *t;                    /* [L][T_N] */
    long n;
    float *p, *g, *am, *av;          /* parameters, gradient, AdamW moments */
    int step;
    /* What the current window's forward hands over. */
    int mode;                        /* MODE_TRAIN or MODE_EVAL */
    int xn_rows, qr_rows, bad;
    float *xn, *qr;                  /* [T][dim], [T][q_lora] */
    /* One layer's indexer work. */
    float *iq, *ikr, *ikl, *ik, *imu, *irs, *iw, *S, *I, *pt, *dI, *diq, *dik, *dikl, *diw;
    uint8_t *mask;
    int32_t *sel, *sel_tmp;
    /* Sums over the current call. */
    double kl_sum, mass_sum, *kl_layer;
    long kl_n, mass_n;
};

enum { MODE_TRAIN, MODE_EVAL };

dsv_adapt_opts dsv_adapt_default_opts(void) {
    return (dsv_adapt_opts){.stage = DSV_ADAPT_DENSE, .ctx = 256, .batch = 1, .steps = 100, .warmup = -1,
                            .lr = 1e-3f, .min_lr = 0.1f, .clip = 1.0f, .seed = 1234};
}

const dsv_config *dsv_adapt_config(const dsv_adapter *a) { return a->c; }
int dsv_adapt_step_no(const dsv_adapter *a) { return a->step; }

float *dsv_adapt_tensor(dsv_adapter *a, int i, long *n, const char **name) {
    if (!a || i < 0 || i >= a->L * T_N) return NULL;
    if (n) *n = a->t[i].n;
    if (name) *name = a->t[i].name;
    return a->p + a->t[i].off;
}
long dsv_adapt_n_params(const dsv_adapter *a) { return a->n; }

/* ---- the indexer in fp32 ---------------------------------------------------- */

/* y[M][N] = x[M][K] W[N][K]^T */
static void lin(float *y, long ldy, const float *x, long ldx, const float *W, int M, int N, int K) {
    dsv_tr_gemm(y, ldy, x, ldx, 1, W, 1, K, M, N, K, 0);
}

/* A 128-value indexer query head or key rounded as the engine rounds it
 * before scoring: to bf16, then act_quant to e4m3 with one scale (the
 * checkpoint's scale format); the score's product of the two dequantized
 * vectors is what the engine's fp8 dot product times both scales gives. */
static void engine_round(float *x, int scale_fmt) {
    uint8_t q[128];
    float s;
    for (int i = 0; i < 128; i++) x[i] = dsv_round_bf16(x[i]);
    dsv_act_quant(q, &s, x, 128, scale_fmt);
    for (int i = 0; i < 128; i++) x[i] = dsv_e4m3_to_f32(q[i]) * s;
}

/* Scores I[i][s] (s <= i) of layer l from the captured x_n and q_r; when
 * measuring, with q and k rounded as the engine rounds them. */
static void indexer_fwd(dsv_adapter *a, int l) {
    const dsv_config *c = a->c;
    const ad_tensor *y = a->t + (long)l * T_N;
    const float *P = a->p;
    const int T = a->T, D = c->dim, Q = c->q_lora_rank, Hi = c->index_n_heads, Di = c->index_head_dim;
    const int R2 = c->qk_rope_head_dim / 2;
    const float wscale = (float)(1.0 / sqrt((double)Hi) / sqrt((double)Di));
    lin(a->iq, (long)Hi * Di, a->qr, Q, P + y[T_WQ].off, T, Hi * Di, Q);
    lin(a->ikr, Di, a->xn, D, P + y[T_WK].off, T, Di, D);
    lin(a->iw, Hi, a->xn, D, P + y[T_WP].off, T, Hi, D);
    for (int i = 0; i < T; i++) {
        const float *cs = a->ctx->rope_cos + (long)i * R2, *sn = a->ctx->rope_sin + (long)i * R2;
        for (int h = 0; h < Hi; h++) {
            float *q = a->iq + ((long)i * Hi + h) * Di;
            dsv_tr_rope(q, cs, sn, R2, 0, 0);
            dsv_tr_hadamard(q, Di);
            if (a->mode == MODE_EVAL) engine_round(q, c->scale_fmt);
        }
        float *k = a->ik + (long)i * Di;
        dsv_tr_layernorm_fwd(a->ikl + (long)i * Di, &a->imu[i], &a->irs[i], a->ikr + (long)i * Di, P + y[T_KNW].off,
                             P + y[T_KNB].off, Di, c->rms_norm_eps);
        memcpy(k, a->ikl + (long)i * Di, (size_t)Di * sizeof *k);
        dsv_tr_rope(k, cs, sn, R2, 0, 0);
        dsv_tr_hadamard(k, Di);
        if (a->mode == MODE_EVAL) engine_round(k, c->scale_fmt);
        for (int h = 0; h < Hi; h++) a->iw[(long)i * Hi + h] *= wscale;
    }
    for (int h = 0; h < Hi; h++) {
        float *S = a->S + (long)h * T * T;
        for (int r0 = 0; r0 < T; r0 += 128) {
            int r1 = r0 + 128 < T ? r0 + 128 : T;
            dsv_tr_gemm(S + (long)r0 * T, T, a->iq + (long)r0 * Hi * Di + (long)h * Di, (long)Hi * Di, 1, a->ik, 1,
                        Di, r1 - r0, r1, Di, 0);
        }
    }
    for (int i = 0; i < T; i++) {
        float *I = a->I + (long)i * T;
        memset(I, 0, (size_t)(i + 1) * sizeof *I);
        for (int h = 0; h < Hi; h++) {
            const float *S = a->S + (long)h * T * T + (long)i * T;
            float wh = a->iw[(long)i * Hi + h];
            for (int s = 0; s <= i; s++) I[s] += wh * (S[s] > 0 ? S[s] : 0);
        }
    }
}

/* Gradients of the indexer's parameters from dI (train.h). */
static void indexer_bwd(dsv_adapter *a, int l) {
    const ad_tensor *y = a->t + (long)l * T_N;
    float *G = a->g;
    const dsv_tr_indexer_grad g = {
        .c = a->c, .T = a->T, .dI = a->dI, .S = a->S, .iw = a->iw, .iq = a->iq, .ik = a->ik, .ikr = a->ikr,
        .imu = a->imu, .irs = a->irs, .xn = a->xn, .qr = a->qr, .rope_cos = a->ctx->rope_cos,
        .rope_sin = a->ctx->rope_sin, .knw = a->p + y[T_KNW].off,
        .dS = a->pt, /* the target is no longer needed */
        .diq = a->diq, .dik = a->dik, .diw = a->diw, .dikl = a->dikl,
        .g_wq = G + y[T_WQ].off, .g_wk = G + y[T_WK].off, .g_wp = G + y[T_WP].off, .g_knw = G + y[T_KNW].off,
        .g_knb = G + y[T_KNB].off,
    };
    dsv_tr_indexer_bwd(&g);
}

/* The probe's callback after layer il's attention: target, loss, gradient. */
static void layer_done(dsv_context *ctx, int il) {
    dsv_adapter *a = ctx->dump_user;
    const int T = a->T, k = a->topk;
    if (a->xn_rows != T || a->qr_rows != T) a->bad = 1;
    a->xn_rows = a->qr_rows = 0;
    if (a->bad) return;
    indexer_fwd(a, il);
    /* p: the heads' weights summed, L1-normalized over the visible positions. */
    for (int i = 0; i < T; i++) {
        const float *row = a->probe.attn + (size_t)i * ctx->p.n_ctx;
        float *p = a->pt + (long)i * T;
        double sum = 0;
        for (int s = 0; s <= i; s++) sum += row[s];
        for (int s = 0; s <= i; s++) p[s] = sum > 0 ? (float)(row[s] / sum) : 1.0f / (float)(i + 1);
    }
    /* The indexer's top-k of each query that sees more than k positions:
     * the mass it keeps and, in the sparse stage, the set the loss runs on. */
    double kl = 0;
    const float gscale = (float)(1.0 / ((double)T * a->L * a->o.batch));
    for (int i = 0; i < T; i++) {
        const int vis = i + 1;
        float *p = a->pt + (long)i * T;
        uint8_t *mk = NULL;
        if (vis > k) {
            dsv_topk(a->sel, a->I + (long)i * T, vis, k, a->sel_tmp);
            double kept = 0;
            for (int j = 0; j < k; j++) kept += p[a->sel[j]];
            a->mass_sum += kept;
            a->mass_n++;
            if (a->mode == MODE_TRAIN && a->o.stage == DSV_ADAPT_SPARSE) {
                mk = a->mask;
                memset(mk, 0, (size_t)vis);
                for (int j = 0; j < k; j++) mk[a->sel[j]] = 1;
                /* p restricted to the selected set, renormalized there */
                for (int s = 0; s < vis; s++) p[s] = mk[s] && kept > 0 ? (float)(p[s] / kept) : 0;
            }
        }
        kl += dsv_tr_kl(a->mode == MODE_TRAIN ? a->dI + (long)i * T : NULL, a->I + (long)i * T, p, mk, vis, gscale);
    }
    a->kl_sum += kl;
    a->kl_n += T;
    if (a->kl_layer) a->kl_layer[il] += kl / T;
    if (a->mode == MODE_TRAIN) indexer_bwd(a, il);
}

/* The dump hook: x_n and q_r of the layer being computed, in row chunks. */
static void on_dump(const char *name, int layer, int dtype, int rows, int cols, const void *data, void *user) {
    (void)layer;
    dsv_adapter *a = user;
    int *at;
    float *dst;
    if (!strcmp(name, "attn_norm")) {
        at = &a->xn_rows;
        dst = a->xn;
    } else if (!strcmp(name, "qr")) {
        at = &a->qr_rows;
        dst = a->qr;
    } else {
        return;
    }
    if (dtype != DSV_DUMP_F32 || *at + rows > a->T) {
        a->bad = 1;
        return;
    }
    memcpy(dst + (size_t)*at * cols, data, (size_t)rows * cols * sizeof(float));
    *at += rows;
}

/* Runs one window (ctx ids) through the engine; the probe does the rest. */
static int run_window(dsv_adapter *a, const int32_t *ids) {
    for (int i = 0; i < a->T; i++)
        if (ids[i] < 0 || ids[i] >= a->c->vocab_size)
            return dsv_error(DSV_ERR_ARG, "adapt: token id %d outside the vocabulary (%d)", (int)ids[i],
                             a->c->vocab_size);
    int st = dsv_seq_reset(a->ctx, 0);
    if (st) return st;
    a->xn_rows = a->qr_rows = a->bad = 0;
    dsv_batch_entry e = {.seq = 0, .n_tokens = a->T, .tokens = ids, .logits = DSV_LOGITS_NONE};
    st = dsv_forward(a->ctx, &e, 1, NULL);
    if (st) return st;
    if (a->bad) return dsv_error(DSV_ERR_MODEL, "adapt: the engine did not hand over the indexer's inputs");
    return DSV_OK;
}

static void sums_reset(dsv_adapter *a) {
    a->kl_sum = a->mass_sum = 0;
    a->kl_n = a->mass_n = 0;
}

static void sums_out(const dsv_adapter *a, dsv_adapt_stats *st) {
    st->kl = a->kl_n ? a->kl_sum / (double)a->kl_n : 0;
    st->mass = a->mass_n ? a->mass_sum / (double)a->mass_n : -1;
}

/* ---- opening -------------------------------------------------------------- */

static void *xcalloc(size_t n, int *fail) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) *fail = 1;
    return p;
}

/* A tensor of the checkpoint as fp32 (fp8 codes times their block scale). */
static int read_f32(const ad_tensor *x, float *dst) {
    const dsv_st_tensor *t = x->st;
    const long n = x->n;
    const int sld = x->cols ? (x->cols + DSV_QBLOCK - 1) / DSV_QBLOCK : 0;
    for (long i = 0; i < n; i++) {
        float v;
        switch (t->dtype) {
        case DSV_DT_F8_E4M3: {
            float s;
            memcpy(&s, (const char *)x->scale->data + 4 * ((size_t)(i / x->cols / DSV_QBLOCK) * sld +
                                                         (size_t)(i % x->cols) / DSV_QBLOCK), 4);
            v = dsv_e4m3_to_f32(((const uint8_t *)t->data)[i]) * s;
            break;
        }
        case DSV_DT_BF16: { dsv_bf16 h; memcpy(&h, (const char *)t->data + 2 * i, 2); v = dsv_bf16_to_f32(h); break; }
        case DSV_DT_F32: memcpy(&v, (const char *)t->data + 4 * i, 4); break;
        default: return dsv_error(DSV_ERR_MODEL, "adapt: tensor '%s' has dtype %s", x->name, dsv_dtype_name(t->dtype));
        }
        if (!isfinite(v)) return dsv_error(DSV_ERR_MODEL, "adapt: tensor '%s' holds a non-finite value", x->name);
        dst[i] = v;
    }
    return DSV_OK;
}

static int is_pow2(float s) {
    int e;
    return s > 0 && isfinite(s) && frexpf(s, &e) == 0.5f;
}

/* Finds the layer's tensors in the checkpoint (the engine checked their
 * shapes and dtypes when it opened the model). */
static int find_tensors(dsv_adapter *a) {
    const dsv_config *c = a->c;
    const int Hi = c->index_n_heads, Di = c->index_head_dim;
    const int rows[T_N] = {Hi * Di, Di, Di, Di, Hi}, cols[T_N] = {c->q_lora_rank, c->dim, 0, 0, c->dim};
    long off = 0;
    for (int l = 0; l < a->L; l++)
        for (int k = 0; k < T_N; k++) {
            ad_tensor *x = &a->t[l * T_N + k];
            snprintf(x->name, sizeof x->name, "model.layers.%d.self_attn.indexer.%s", l, t_suffix[k]);
            x->st = dsv_st_find(a->m->st, x->name);
            if (!x->st) return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' is missing", a->dir, x->name);
            x->rows = rows[k];
            x->cols = cols[k];
            x->n = (long)rows[k] * (cols[k] ? cols[k] : 1);
            dsv_dtype dt = x->st->dtype;
            if (dt != DSV_DT_F8_E4M3 && dt != DSV_DT_BF16 && dt != DSV_DT_F32)
                return dsv_error(DSV_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; adapt writes fp8, bf16 or f32", a->dir,
                                 x->name, dsv_dtype_name(dt));
            if (x->st->nbytes != (size_t)x->n * dsv_dtype_size(x->st->dtype))
                return dsv_error(DSV_ERR_MODEL, "%s: tensor '%s' has the wrong size", a->dir, x->name);
            if (x->st->dtype == DSV_DT_F8_E4M3) {
                char sn[160];
                snprintf(sn, sizeof sn, "model.layers.%d.self_attn.indexer.%.*s_scale_inv", l,
                         (int)strlen(t_suffix[k]), t_suffix[k]);
                x->scale = dsv_st_find(a->m->st, sn);
                size_t ns = (size_t)((x->rows + DSV_QBLOCK - 1) / DSV_QBLOCK) * ((x->cols + DSV_QBLOCK - 1) / DSV_QBLOCK);
                if (!x->cols || !x->scale || x->scale->dtype != DSV_DT_F32 || x->scale->nbytes != ns * 4)
                    return dsv_error(DSV_ERR_MODEL, "%s: '%s' lacks a valid scale tensor", a->dir, x->name);
                x->pow2 = 1;
                for (size_t i = 0; i < ns; i++) {
                    float s;
                    memcpy(&s, (const char *)x->scale->data + 4 * i, 4);
                    if (!is_pow2(s)) x->pow2 = 0;
                }
            }
            x->off = off;
            off += x->n;
        }
    a->n = off;
    return DSV_OK;
}

void dsv_adapt_free(dsv_adapter *a) {
    if (!a) return;
    dsv_context_close(a->ctx);
    dsv_model_close(a->m);
    void *bufs[] = {a->t, a->p, a->g, a->am, a->av, a->xn, a->qr, a->iq, a->ikr, a->ikl, a->ik, a->imu, a->irs,
                    a->iw, a->S, a->I, a->pt, a->dI, a->diq, a->dik, a->dikl, a->diw, a->mask, a->sel, a->sel_tmp,
                    a->probe.attn, a->probe.scores};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(a);
}

int dsv_adapt_open(dsv_adapter **out, const char *model_dir, const dsv_adapt_opts *opts) {
    if (!out || !model_dir) return dsv_error(DSV_ERR_ARG, "dsv_adapt_open: NULL argument");
    dsv_adapt_opts o = opts ? *opts : dsv_adapt_default_opts();
    if (o.ctx < 2 || o.ctx > 1 << 16)
        return dsv_error(DSV_ERR_ARG, "adapt: ctx %d is outside [2, 65536]", o.ctx);
    if (o.batch < 1 || o.batch > 4096) return dsv_error(DSV_ERR_ARG, "adapt: batch %d is outside [1, 4096]", o.batch);
    if (o.steps < 0) return dsv_error(DSV_ERR_ARG, "adapt: steps %d is negative", o.steps);
    if (!(o.lr > 0 && o.lr < 1)) return dsv_error(DSV_ERR_ARG, "adapt: lr must be in (0, 1)");
    if (!(o.min_lr >= 0 && o.min_lr <= 1)) return dsv_error(DSV_ERR_ARG, "adapt: min_lr must be in [0, 1]");
    if (!(o.clip >= 0 && o.clip < 1e30f)) return dsv_error(DSV_ERR_ARG, "adapt: clip must be >= 0");
    if (o.stage != DSV_ADAPT_DENSE && o.stage != DSV_ADAPT_SPARSE)
        return dsv_error(DSV_ERR_ARG, "adapt: unknown stage %d", o.stage);
    if (o.topk < 0) return dsv_error(DSV_ERR_ARG, "adapt: topk %d is negative", o.topk);
    if (o.warmup < 0) o.warmup = o.steps / 10;
    if (dsv_parallel_size() > 1)
        return dsv_error(DSV_ERR_UNSUPPORTED, "adapt: a model split across processes cannot be adapted; run one process");
    if (strlen(model_dir) >= PATH_MAX) return dsv_error(DSV_ERR_ARG, "adapt: model path too long");

    dsv_adapter *a = calloc(1, sizeof *a);
    if (!a) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    a->o = o;
    snprintf(a->dir, sizeof a->dir, "%s", model_dir);
    int st = dsv_model_open(&a->m, model_dir, NULL);
    if (st) { free(a); return st; }
    if (!a->m->st) {
        dsv_adapt_free(a);
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: adapt reads and writes Hugging Face directories; GGUF input is "
                         "not supported yet", model_dir);
    }
    a->c = dsv_model_config(a->m);
    const dsv_config *c = a->c;
    if (o.ctx > c->max_position_embeddings) {
        dsv_adapt_free(a);
        return dsv_error(DSV_ERR_ARG, "adapt: ctx %d exceeds the model's max_position_embeddings %d", o.ctx,
                         c->max_position_embeddings);
    }
    if (c->index_head_dim != 128 || c->qk_rope_head_dim > c->index_head_dim) {
        dsv_adapt_free(a);
        return dsv_error(DSV_ERR_UNSUPPORTED, "%s: index_head_dim %d (128 supported)", model_dir, c->index_head_dim);
    }
    a->L = c->n_layers;
    a->T = o.ctx;
    a->topk = o.topk ? o.topk : c->index_topk;
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = o.ctx;
    cp.n_batch = o.ctx;
    cp.n_seq = 1;
    cp.n_threads = o.n_threads;
    cp.attn = DSV_ATTN_DENSE;
    st = dsv_context_open(&a->ctx, a->m, &cp);
    if (st) { dsv_adapt_free(a); return st; }
    a->t = calloc((size_t)a->L * T_N, sizeof *a->t);
    if (!a->t) { dsv_adapt_free(a); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    if ((st = find_tensors(a))) { dsv_adapt_free(a); return st; }

    const size_t T = (size_t)o.ctx, Hi = (size_t)c->index_n_heads, Di = (size_t)c->index_head_dim, F = sizeof(float);
    const size_t n_ctx = (size_t)dsv_context_get_params(a->ctx)->n_ctx;
    int fail = 0;
    a->p = xcalloc((size_t)a->n * F, &fail);
    a->g = xcalloc((size_t)a->n * F, &fail);
    a->am = xcalloc((size_t)a->n * F, &fail);
    a->av = xcalloc((size_t)a->n * F, &fail);
    a->xn = xcalloc(T * (size_t)c->dim * F, &fail);
    a->qr = xcalloc(T * (size_t)c->q_lora_rank * F, &fail);
    a->iq = xcalloc(T * Hi * Di * F, &fail);
    a->diq = xcalloc(T * Hi * Di * F, &fail);
    a->ikr = xcalloc(T * Di * F, &fail);
    a->ikl = xcalloc(T * Di * F, &fail);
    a->ik = xcalloc(T * Di * F, &fail);
    a->dik = xcalloc(T * Di * F, &fail);
    a->dikl = xcalloc(T * Di * F, &fail);
    a->imu = xcalloc(T * F, &fail);
    a->irs = xcalloc(T * F, &fail);
    a->iw = xcalloc(T * Hi * F, &fail);
    a->diw = xcalloc(T * Hi * F, &fail);
    a->S = xcalloc(Hi * T * T * F, &fail);
    a->I = xcalloc(T * T * F, &fail);
    a->pt = xcalloc(T * T * F, &fail);
    a->dI = xcalloc(T * T * F, &fail);
    a->mask = xcalloc(T, &fail);
    a->sel = xcalloc(T * sizeof(int32_t), &fail);
    a->sel_tmp = xcalloc(T * sizeof(int32_t), &fail);
    a->probe.attn = xcalloc(T * n_ctx * F, &fail);
    /* A probe on a dense context may also be handed the engine's own
     * indexer scores of every visible position: room for them. */
    a->probe.scores = xcalloc(T * n_ctx * F, &fail);
    if (fail) { dsv_adapt_free(a); return dsv_error(DSV_ERR_NOMEM, "adapt: out of memory"); }
    for (long i = 0; i < (long)a->L * T_N && !st; i++) st = read_f32(&a->t[i], a->p + a->t[i].off);
    if (st) { dsv_adapt_free(a); return st; }
    a->probe.layer_done = layer_done;
    a->ctx->probe = &a->probe;
    dsv_context_set_dump(a->ctx, on_dump, a);
    *out = a;
    return DSV_OK;
}

/* ---- training and evaluation ----------------------------------------------- */

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int dsv_adapt_sample(const dsv_adapter *a, const int32_t *ids, size_t n_ids, int step, int32_t *out) {
    const int T = a->T;
    if (!ids || !out) return dsv_error(DSV_ERR_ARG, "dsv_adapt_sample: NULL argument");
    if (n_ids < (size_t)T - 1)
        return dsv_error(DSV_ERR_ARG, "adapt: the text has %zu tokens, fewer than one window (%d)", n_ids, T - 1);
    const size_t span = n_ids - (size_t)(T - 1) + 1;
    for (int b = 0; b < a->o.batch; b++) {
        size_t s = (size_t)(mix(mix(a->o.seed) ^ ((uint64_t)step << 20 | (uint64_t)b)) % span);
        int32_t *o = out + (size_t)b * T;
        o[0] = a->c->bos_id;
        memcpy(o + 1, ids + s, (size_t)(T - 1) * sizeof *o);
    }
    return DSV_OK;
}

int dsv_adapt_windows(const dsv_adapter *a, const int32_t *ids, size_t n_ids, int32_t **out, int *n_windows) {
    const size_t w = (size_t)a->T - 1;
    size_t n = n_ids / w;
    if (n > INT_MAX) n = INT_MAX;
    *n_windows = (int)n;
    *out = NULL;
    if (!n) return DSV_OK;
    int32_t *o = malloc(n * (size_t)a->T * sizeof *o);
    if (!o) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        o[i * a->T] = a->c->bos_id;
        memcpy(o + i * a->T + 1, ids + i * w, w * sizeof *o);
    }
    *out = o;
    return DSV_OK;
}

static double lr_at(const dsv_adapt_opts *o, int step) {
    if (step < o->warmup) return o->lr * (double)(step + 1) / (double)o->warmup;
    int span = o->steps - o->warmup;
    double f = span > 0 ? (double)(step - o->warmup) / span : 1.0;
    if (f > 1) f = 1;
    return o->lr * (o->min_lr + (1 - o->min_lr) * 0.5 * (1 + cos(M_PI * f)));
}

int dsv_adapt_step(dsv_adapter *a, const int32_t *windows, dsv_adapt_stats *st) {
    if (!a || !windows) return dsv_error(DSV_ERR_ARG, "dsv_adapt_step: NULL argument");
    memset(a->g, 0, (size_t)a->n * sizeof *a->g);
    sums_reset(a);
    a->mode = MODE_TRAIN;
    a->kl_layer = NULL;
    for (int b = 0; b < a->o.batch; b++) {
        int s = run_window(a, windows + (size_t)b * a->T);
        if (s) return s;
    }
    double norm2 = 0;
    for (long i = 0; i < a->n; i++) norm2 += (double)a->g[i] * a->g[i];
    const double norm = sqrt(norm2);
    if (!isfinite(norm)) return dsv_error(DSV_ERR_MODEL, "adapt: the gradient is not finite at step %d", a->step);
    const float gs = a->o.clip > 0 && norm > a->o.clip ? (float)(a->o.clip / norm) : 1.0f;
    const double lr = lr_at(&a->o, a->step);
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    const double c1 = 1 - pow(b1, a->step + 1), c2 = 1 - pow(b2, a->step + 1);
    for (long i = 0; i < a->n; i++) {
        float g = a->g[i] * gs;
        a->am[i] = b1 * a->am[i] + (1 - b1) * g;
        a->av[i] = b2 * a->av[i] + (1 - b2) * g * g;
        a->p[i] -= (float)(lr * (a->am[i] / c1) / (sqrt(a->av[i] / c2) + eps));
    }
    a->step++;
    if (st) {
        sums_out(a, st);
        st->grad_norm = norm;
        st->lr = lr;
        st->tokens = (long)a->o.batch * a->T;
    }
    return DSV_OK;
}

int dsv_adapt_loss_grad(dsv_adapter *a, const int32_t *window, double *loss, const float **grad) {
    if (!a || !window || !loss || !grad || a->o.batch != 1)
        return dsv_error(DSV_ERR_ARG, "dsv_adapt_loss_grad: bad argument (batch must be 1)");
    memset(a->g, 0, (size_t)a->n * sizeof *a->g);
    sums_reset(a);
    a->mode = MODE_TRAIN;
    a->kl_layer = NULL;
    int st = run_window(a, window);
    if (st) return st;
    *loss = a->kl_sum / ((double)a->T * a->L);
    *grad = a->g;
    return DSV_OK;
}

int dsv_adapt_eval(dsv_adapter *a, const int32_t *windows, int n_windows, dsv_adapt_stats *st, double *per_layer_kl) {
    if (!a || (!windows && n_windows > 0) || n_windows < 0 || !st)
        return dsv_error(DSV_ERR_ARG, "dsv_adapt_eval: bad argument");
    sums_reset(a);
    a->mode = MODE_EVAL;
    a->kl_layer = per_layer_kl;
    if (per_layer_kl) memset(per_layer_kl, 0, (size_t)a->L * sizeof *per_layer_kl);
    for (int w = 0; w < n_windows; w++) {
        int s = run_window(a, windows + (size_t)w * a->T);
        if (s) { a->kl_layer = NULL; return s; }
    }
    if (per_layer_kl && n_windows)
        for (int l = 0; l < a->L; l++) per_layer_kl[l] /= n_windows;
    a->kl_layer = NULL;
    memset(st, 0, sizeof *st);
    sums_out(a, st);
    st->tokens = (long)n_windows * a->T;
    return DSV_OK;
}

/* ---- resume state ----------------------------------------------------------- */

int dsv_adapt_save(dsv_adapter *a, const char *path) {
    dsv_st_writer *wr;
    int st = dsv_st_writer_init(&wr);
    if (st) return st;
    char buf[192], num[32];
    for (long i = 0; i < (long)a->L * T_N && !st; i++) {
        const ad_tensor *x = &a->t[i];
        int64_t shape[1] = {x->n};
        float *arr[3] = {a->p, a->am, a->av};
        const char *pre[3] = {"", "adam_m.", "adam_v."};
        for (int k = 0; k < 3 && !st; k++) {
            snprintf(buf, sizeof buf, "%s%s", pre[k], x->name);
            st = dsv_st_writer_add(wr, buf, DSV_DT_F32, 1, shape, arr[k] + x->off);
        }
    }
    if (!st) st = dsv_st_writer_set_metadata(wr, "format", "dsv32-adapt");
    snprintf(num, sizeof num, "%d", a->step);
    if (!st) st = dsv_st_writer_set_metadata(wr, "step", num);
    snprintf(num, sizeof num, "%d", a->o.stage);
    if (!st) st = dsv_st_writer_set_metadata(wr, "stage", num);
    if (!st) st = dsv_st_writer_write(wr, path);
    dsv_st_writer_free(wr);
    return st;
}

int dsv_adapt_resume(dsv_adapter *a, const char *path) {
    if (!a || !path) return dsv_error(DSV_ERR_ARG, "dsv_adapt_resume: NULL argument");
    dsv_st *f;
    int st = dsv_st_open(&f, path);
    if (st) return st;
    const char *fmt = dsv_st_metadata(f, 0, "format"), *sn = dsv_st_metadata(f, 0, "step");
    const char *sg = dsv_st_metadata(f, 0, "stage");
    char *end = NULL;
    long step = sn ? strtol(sn, &end, 10) : -1;
    if (!fmt || strcmp(fmt, "dsv32-adapt")) {
        st = dsv_error(DSV_ERR_FORMAT, "%s: not an adapt state (format '%s')", path, fmt ? fmt : "none");
    } else if (!sn || *end || step < 0 || step > INT_MAX) {
        st = dsv_error(DSV_ERR_FORMAT, "%s: metadata 'step' is missing or out of range", path);
    } else if (!sg || strcmp(sg, a->o.stage == DSV_ADAPT_SPARSE ? "1" : "0")) {
        st = dsv_error(DSV_ERR_ARG, "%s: saved by another stage than this run's", path);
    }
    char buf[192];
    float *arr[3] = {a->p, a->am, a->av};
    const char *pre[3] = {"", "adam_m.", "adam_v."};
    /* Into scratch copies first: a failure leaves the adapter unchanged. */
    float *tmp = st ? NULL : malloc((size_t)a->n * 3 * sizeof *tmp);
    if (!st && !tmp) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (long i = 0; i < (long)a->L * T_N && !st; i++) {
        const ad_tensor *x = &a->t[i];
        for (int k = 0; k < 3 && !st; k++) {
            snprintf(buf, sizeof buf, "%s%s", pre[k], x->name);
            const dsv_st_tensor *t = dsv_st_find(f, buf);
            if (!t || t->dtype != DSV_DT_F32 || t->nbytes != (size_t)x->n * 4)
                st = dsv_error(DSV_ERR_FORMAT, "%s: tensor '%s' is missing or has the wrong shape", path, buf);
            else
                memcpy(tmp + (size_t)k * a->n + x->off, t->data, t->nbytes);
        }
    }
    for (long i = 0; i < 3 * a->n && !st; i++)
        if (!isfinite(tmp[i])) st = dsv_error(DSV_ERR_FORMAT, "%s: a non-finite value", path);
    if (!st) {
        for (int k = 0; k < 3; k++) memcpy(arr[k], tmp + (size_t)k * a->n, (size_t)a->n * sizeof(float));
        a->step = (int)step;
    }
    free(tmp);
    dsv_st_close(f);
    return st;
}

/* ---- writing the adapted model -------------------------------------------- */

/* e4m3 codes and 128x128 block scales (amax / 448, rounded up to a power of
 * two when pow2) of W [rows][cols]. The choice is made stable: quantizing
 * the dequantized result (codes times scale, as read_f32 reads them) again
 * gives the same bytes, so a model adapted for zero steps, or reloaded and
 * written again, is written bit for bit as it was read. */
static void quant_fp8(uint8_t *q, float *scale, const float *W, int rows, int cols, int pow2) {
    const int sr = (rows + DSV_QBLOCK - 1) / DSV_QBLOCK, sc = (cols + DSV_QBLOCK - 1) / DSV_QBLOCK;
    for (int br = 0; br < sr; br++)
        for (int bc = 0; bc < sc; bc++) {
            int r1 = DSV_MIN(rows, (br + 1) * DSV_QBLOCK), c1 = DSV_MIN(cols, (bc + 1) * DSV_QBLOCK);
            float amax = 0;
            for (int r = br * DSV_QBLOCK; r < r1; r++)
                for (int c = bc * DSV_QBLOCK; c < c1; c++) amax = fmaxf(amax, fabsf(W[(long)r * cols + c]));
            float s = amax > 0 ? amax / 448.0f : 1.0f;
            if (pow2) {
                int e;
                float m = frexpf(s, &e);
                s = m == 0.5f ? s : ldexpf(1.0f, e);
            } else {
                /* The block's largest code is 448, so a reload sees amax =
                 * fl(448 s) and picks fl(amax / 448): take that fixed point. */
                for (int it = 0; it < 8 && amax > 0; it++) {
                    float s2 = (448.0f * s) / 448.0f;
                    if (s2 == s) break;
                    s = s2;
                }
            }
            float cmax = 0;
            for (int r = br * DSV_QBLOCK; r < r1; r++)
                for (int c = bc * DSV_QBLOCK; c < c1; c++) {
                    uint8_t v = dsv_f32_to_e4m3(W[(long)r * cols + c] / s);
                    q[(long)r * cols + c] = v;
                    cmax = fmaxf(cmax, fabsf(dsv_e4m3_to_f32(v)));
                }
            /* Power-of-two scales: when the largest code rounded down to 224
             * (amax / s just above 224), a reload would pick s / 2; doubling
             * every code (exact, <= 448) gives that choice and equal values. */
            if (pow2 && amax > 0 && cmax <= 224.0f) {
                s *= 0.5f;
                for (int r = br * DSV_QBLOCK; r < r1; r++)
                    for (int c = bc * DSV_QBLOCK; c < c1; c++) {
                        uint8_t *v = &q[(long)r * cols + c];
                        *v = dsv_f32_to_e4m3(2.0f * dsv_e4m3_to_f32(*v));
                    }
            }
            scale[br * sc + bc] = s;
        }
}

/* x's trained values in its checkpoint dtype: data (and scale for fp8),
 * malloc'ed. */
static int encode(const dsv_adapter *a, const ad_tensor *x, void **data, float **scale) {
    const float *p = a->p + x->off;
    *data = NULL;
    *scale = NULL;
    switch (x->st->dtype) {
    case DSV_DT_F8_E4M3: {
        size_t ns = x->scale->nbytes / 4;
        *data = malloc((size_t)x->n);
        *scale = malloc(ns * sizeof **scale);
        if (!*data || !*scale) break;
        quant_fp8(*data, *scale, p, x->rows, x->cols, x->pow2);
        return DSV_OK;
    }
    case DSV_DT_BF16: {
        dsv_bf16 *b = malloc((size_t)x->n * sizeof *b);
        if (!(*data = b)) break;
        for (long i = 0; i < x->n; i++) b[i] = dsv_f32_to_bf16(p[i]);
        return DSV_OK;
    }
    case DSV_DT_F32: {
        if (!(*data = malloc((size_t)x->n * 4))) break;
        memcpy(*data, p, (size_t)x->n * 4);
        return DSV_OK;
    }
    default: return dsv_error(DSV_ERR_MODEL, "adapt: tensor '%s' has dtype %s", x->name, dsv_dtype_name(x->st->dtype));
    }
    free(*data);
    free(*scale);
    *data = NULL;
    *scale = NULL;
    return dsv_error(DSV_ERR_NOMEM, "out of memory");
}

static int copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return dsv_error(DSV_ERR_IO, "%s: cannot read: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return dsv_error(DSV_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) { bad = 1; break; }
    bad |= ferror(in);
    fclose(in);
    bad |= fclose(out) != 0;
    return bad ? dsv_error(DSV_ERR_IO, "%s: copy to %s failed", from, to) : DSV_OK;
}

/* The "__metadata__" strings of a safetensors file, onto a writer. */
static int copy_metadata(const char *path, dsv_st_writer *wr) {
    FILE *f = fopen(path, "rb");
    if (!f) return dsv_error(DSV_ERR_IO, "%s: cannot read", path);
    unsigned char n8[8];
    uint64_t n = 0;
    char *hdr = NULL;
    int st = DSV_OK;
    if (fread(n8, 1, 8, f) != 8) st = dsv_error(DSV_ERR_FORMAT, "%s: truncated header", path);
    for (int i = 7; i >= 0 && !st; i--) n = n << 8 | n8[i];
    if (!st && n > ((uint64_t)100 << 20)) st = dsv_error(DSV_ERR_FORMAT, "%s: header too large", path);
    if (!st && !(hdr = malloc((size_t)n + 1))) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (!st && fread(hdr, 1, (size_t)n, f) != n) st = dsv_error(DSV_ERR_FORMAT, "%s: truncated header", path);
    fclose(f);
    if (st) { free(hdr); return st; }
    hdr[n] = 0;
    cJSON *j = cJSON_Parse(hdr);
    free(hdr);
    if (!j) return dsv_error(DSV_ERR_FORMAT, "%s: header is not JSON", path);
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "__metadata__"), *e;
    cJSON_ArrayForEach(e, md) {
        if (cJSON_IsString(e) && (st = dsv_st_writer_set_metadata(wr, e->string, e->valuestring))) break;
    }
    cJSON_Delete(j);
    return st;
}

/* Rewrites shard `file` into dir with the trained tensors replaced. */
static int write_shard(dsv_adapter *a, int file, const char *to) {
    const dsv_st *s = a->m->st;
    const int nt = dsv_st_count(s);
    dsv_st_writer *wr;
    int st = dsv_st_writer_init(&wr);
    if (st) return st;
    const long nx = (long)a->L * T_N;
    void **bufs = calloc((size_t)nx * 2, sizeof *bufs);
    if (!bufs) { dsv_st_writer_free(wr); return dsv_error(DSV_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < nt && !st; i++) {
        const dsv_st_tensor *t = dsv_st_at(s, i);
        if (t->file != file) continue;
        const void *data = t->data;
        if (strstr(t->name, ".indexer.")) {
            for (long k = 0; k < nx; k++) {
                ad_tensor *x = &a->t[k];
                if (x->st != t && x->scale != t) continue;
                if (!bufs[2 * k] && (st = encode(a, x, &bufs[2 * k], (float **)&bufs[2 * k + 1]))) break;
                data = x->st == t ? bufs[2 * k] : bufs[2 * k + 1];
                break;
            }
        }
        if (!st) st = dsv_st_writer_add(wr, t->name, t->dtype, t->n_dims, t->shape, data);
    }
    if (!st) st = copy_metadata(dsv_st_file_path(s, file), wr);
    if (!st) st = dsv_st_writer_write(wr, to);
    dsv_st_writer_free(wr);
    for (long k = 0; k < 2 * nx; k++) free(bufs[k]);
    free(bufs);
    return st;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int dsv_adapt_write(dsv_adapter *a, const char *dir) {
    if (!a || !dir) return dsv_error(DSV_ERR_ARG, "dsv_adapt_write: NULL argument");
    if (mkdir(dir, 0777) && errno != EEXIST) return dsv_error(DSV_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    char r_in[PATH_MAX], r_out[PATH_MAX], from[PATH_MAX + 256], to[PATH_MAX + 256];
    if (!realpath(a->dir, r_in) || !realpath(dir, r_out))
        return dsv_error(DSV_ERR_IO, "%s: cannot resolve the path", dir);
    if (!strcmp(r_in, r_out)) return dsv_error(DSV_ERR_ARG, "%s: the output must not be the model's own directory", dir);
    const dsv_st *s = a->m->st;
    const int nf = dsv_st_file_count(s);
    int st = DSV_OK;
    /* Shards holding a trained tensor are rewritten; the rest are copied
     * with every other file of the directory below. */
    uint8_t *mine = calloc((size_t)nf + 1, 1);
    if (!mine) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (long k = 0; k < (long)a->L * T_N; k++) mine[a->t[k].st->file] = 1;
    for (int f = 0; f < nf && !st; f++) {
        if (!mine[f]) continue;
        snprintf(to, sizeof to, "%s/%s", dir, base_name(dsv_st_file_path(s, f)));
        st = write_shard(a, f, to);
    }
    DIR *d = st ? NULL : opendir(a->dir);
    if (!st && !d) st = dsv_error(DSV_ERR_IO, "%s: cannot list: %s", a->dir, strerror(errno));
    struct dirent *e;
    while (!st && d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(from, sizeof from, "%s/%s", a->dir, e->d_name);
        struct stat sb;
        if (stat(from, &sb) || !S_ISREG(sb.st_mode)) continue;
        int rewritten = 0;
        for (int f = 0; f < nf; f++)
            if (mine[f] && !strcmp(base_name(dsv_st_file_path(s, f)), e->d_name)) rewritten = 1;
        if (rewritten) continue;
        snprintf(to, sizeof to, "%s/%s", dir, e->d_name);
        st = copy_file(from, to);
    }
    if (d) closedir(d);
    free(mine);
    return st;
}
