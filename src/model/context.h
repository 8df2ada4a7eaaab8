/* context.h: the state behind a dsv_context (internal). Every buffer the
 * forward pass touches is allocated once, in dsv_context_open, from the
 * limits in dsv_context_params. */
#ifndef DSV_CONTEXT_H
#define DSV_CONTEXT_H

#include <time.h>

#include "dsv32.h"
#include "kvcache.h"
#include "model.h"
#include "base/threads.h"

/* Tokens of one sequence the indexer scores together in a multi-token call. */
#define DSV_IDX_CHUNK 8

/* An analysis or an indexer adaptation attached to a context (analyze.c,
 * train/adapt.c). On a dense context it
 * makes the indexer score every visible position anyway, makes attention
 * take the absorbed (per-token) path and leave each token's weights summed
 * over heads, and calls layer_done after each layer's attention; the
 * forward pass is otherwise unchanged. */
typedef struct dsv_probe {
    float *scores;             /* [n_batch][n_ctx] the indexer's scores of the call's tokens */
    float *attn;               /* [n_batch][n_ctx] attention weights summed over this rank's heads */
    int oracle;                /* tests: scores replaced by the attention logits summed over heads */
    void (*layer_done)(dsv_context *ctx, int il);
} dsv_probe;

/* Per-thread scratch. */
typedef struct dsv_tscratch {
    float *att;        /* attention kernels [max(dsv_attn_scratch(n_keys_max, C, R), dsv_mha_scratch(...))] */
    float *scores;     /* indexer scores [DSV_IDX_CHUNK][n_ctx] */
    int32_t *sel;      /* top-k scratch [dsv_topk_scratch(n_ctx)] */
    float *acc;        /* absorption accumulator [kv_lora] */
    void *lin;         /* linear and indexer kernels [DSV_LIN_SCRATCH bytes] */
} dsv_tscratch;

struct dsv_context {
    dsv_model *m;
    const dsv_config *c;
    dsv_context_params p;
    const dsv_kernels *kern;   /* the kernel set this context runs (cpu.c) */
    dsv_pool *pool;
    int nth;
    int topk;                  /* effective index top-k: the largest of layer_topk */
    int *layer_topk;           /* [n_layers] each layer's top-k (dsv_context_params.layer_topk) */
    int n_keys_max;            /* most keys one query attends (topk, or n_ctx when dense) */
    int mha_keys;              /* MHA scratch rows: min(mha_max_keys, n_ctx) */
    int max_pages;             /* per sequence */

    dsv_kv kv;
    dsv_seq *seqs;             /* [n_seq] */
    float *rope_cos, *rope_sin;/* [n_ctx][rope/2] (YaRN frequencies) */

    dsv_dump_fn dump;
    void *dump_user;
    dsv_probe *probe;          /* NULL unless an analysis is attached */

    /* Statistics: the time since phase_t0 (ns) belongs to `phase`. */
    dsv_context_stats stats;
    int phase;
    uint64_t phase_t0;
    uint64_t sel_ns[2];        /* indexer scoring / selection time seen by thread 0 */
    unsigned long long pool_runs0, pool_barriers0; /* the pool's counts at the last reset */

    /* Per-call token table [n_batch], and the call's entries (each a run of
     * rows of one sequence) [n_seq]. */
    int32_t *tok_pos, *tok_seq;
    int n_tok;
    int32_t *ent_row, *ent_len, *ent_seq;
    int n_ent;

    /* Activations, bf16 unless noted ([rows][width]). */
    dsv_bf16 *x;               /* [T][dim] block output / embeddings */
    dsv_bf16 *res;             /* [T][dim] residual stream */
    dsv_bf16 *xn;              /* [T][dim] normalized input of a sub-layer */
    dsv_bf16 *qa, *qr;         /* [T][q_lora] */
    dsv_bf16 *q;               /* [T][H][nope+rope] */
    dsv_bf16 *kvf;             /* [T][kv_lora+rope] */
    dsv_bf16 *kvn;             /* [T][kv_lora] */
    dsv_bf16 *o;               /* [T][H][v] */
    dsv_bf16 *iq;              /* [T][Hi][128] */
    dsv_bf16 *ik;              /* [T][128] */
    uint8_t *iq8;              /* [T][Hi][128] e4m3 */
    float *iqs;                /* [T][Hi] */
    uint8_t *iqp;              /* [T][iqp_bytes] queries packed for index_score */
    size_t iqp_bytes;          /* dsv_index_q_bytes(Hi) */
    float *iw;                 /* [T][Hi] indexer head weights */
    int32_t *sel;              /* [T][n_keys_max]: chosen positions, by score */
    int32_t *sel_pos;          /* [T][n_keys_max]: the same, by position */
    int32_t *n_sel;            /* [T] */
    float *xf;                 /* [T][max(dim, ...)] fp32 copies for fp32 linears and dumps */
    float *gate_logits;        /* [T][n_experts] */
    float *gate_w;             /* [T][n_act] */
    int32_t *gate_i;           /* [T][n_act] */
    float *moe_y;              /* [T][dim] fp32 accumulator */
    int32_t *ex_rows;          /* [T] tokens routed to the current expert */
    float *ex_wts;             /* [T] */
    dsv_bf16 *ex_x, *ex_h1, *ex_h3, *ex_o; /* [T][dim], [T][inter], [T][inter], [T][dim] */
    /* MoE of at most DSV_LIN_SMALL tokens: up to DSV_MOE_WAVE experts at once,
     * each with its own rows [DSV_MOE_WAVE][DSV_LIN_SMALL]. */
    dsv_bf16 *mw_x, *mw_o;     /* [wave][rows][dim] */
    dsv_bf16 *mw_h1, *mw_h3;   /* [wave][rows][expert width] */
    int32_t *mw_rows;          /* [wave][rows] */
    float *mw_wts;             /* [wave][rows] */
    uint8_t *aq;               /* act_quant codes [rows][K_max] */
    float *as;                 /* act_quant scales [rows][K_max/128] */
    void *xp;                  /* a linear's packed input [dsv_lin_pack_bytes(rows, K_max)], or
                                * DSV_LIN_SLOTS inputs of at most DSV_LIN_SMALL rows, xp_slot bytes apart */
    size_t xp_slot;
    /* Attention. */
    dsv_bf16 *mha_lat;         /* [mha_keys][kv_lora] */
    dsv_bf16 *mha_pe;          /* [mha_keys][rope] */
    dsv_bf16 *mha_kvb;         /* [mha_keys][H][nope+v] */
    dsv_bf16 *g_lat;           /* [n_keys_max][kv_lora] gathered latent rows */
    dsv_bf16 *g_pe;            /* [n_keys_max][rope] */
    dsv_bf16 *q_abs;           /* [H][kv_lora] */
    dsv_bf16 *q_pe;            /* [H][rope] */
    dsv_bf16 *o_lat;           /* [H][kv_lora] */
    float *mqa_s;              /* [H][n_keys_max padded] scores, then softmax weights */
    dsv_bf16 *mqa_p;           /* [H padded to 16][n_keys_max padded] the weights in bf16 */
    void *mqa_kvp;             /* [dsv_mqa_kvp_bytes(n_keys_max, kv_lora)] latent rows for the values */
    dsv_tscratch *ts;          /* [nth] */
    /* A model split across processes (coll.c, context.c; NULL when it is not). */
    int par_id;                /* the leader's name for this context */
    float *coll_f;             /* [T][dim] fp32 rows being summed across ranks */
    float *coll_scratch;       /* the collectives' sum_scratch(T * dim) */
    float *coll_logits;        /* [DSV_HEAD_ROWS][vocab part] this rank's logits */
    int32_t *op_buf;           /* a forward call packed for the followers */
    void *arena;               /* one allocation behind all of the above */
};

/* Statistics (dsv_context_stats): a clock read at each phase boundary. */
static inline uint64_t dsv_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
/* Charges the time since the last switch to the current phase, makes
 * `phase` current and returns the one it replaces (to switch back to:
 * phases nest, each interval is charged once). */
static inline int dsv_phase(dsv_context *ctx, int phase) {
    uint64_t t = dsv_now_ns();
    int prev = ctx->phase;
    ctx->stats.ns[prev] += t - ctx->phase_t0;
    ctx->phase_t0 = t;
    ctx->phase = phase;
    return prev;
}
/* Bytes of a linear layer's weight, block scales included. */
static inline uint64_t dsv_linear_bytes(const dsv_linear *w) {
    if (w->gtype) return (uint64_t)w->n_out * dsv_ggml_row_size(w->gtype, w->n_in);
    uint64_t n = (uint64_t)w->n_out * (uint64_t)w->n_in * dsv_dtype_size(w->dtype);
    if (w->scale) n += 4ull * (uint64_t)((w->n_out + DSV_QBLOCK - 1) / DSV_QBLOCK) * (uint64_t)w->scale_ld;
    return n;
}
/* Every linear layer starts here: counts its bytes and flops, and charges
 * its time to the linear phase (to the MoE's when called inside it). Returns
 * the phase to switch back to. */
static inline int dsv_lin_begin(dsv_context *ctx, const dsv_linear *w, int m) {
    const int moe = ctx->phase == DSV_PHASE_MOE;
    const uint64_t flops = 2ull * (uint64_t)m * (uint64_t)w->n_out * (uint64_t)w->n_in;
    ctx->stats.weight_bytes += dsv_linear_bytes(w);
    if (moe) ctx->stats.moe_flops += flops;
    else ctx->stats.linear_flops += flops;
    return dsv_phase(ctx, moe ? DSV_PHASE_MOE : DSV_PHASE_LINEAR);
}

/* Linear layers on the context's threads and scratch (linear.c). */
/* y [m][ldy] bf16 = x [m][n_in] · Wᵀ with the reference's numerics (fp8:
 * act_quant of x, then fp8_gemm). */
void dsv_lin(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m);
/* y [m][n_out] fp32 = x [m][n_in] fp32 · Wᵀ. */
void dsv_lin_f32(dsv_context *ctx, float *y, const float *x, const dsv_linear *w, int m);

/* Inputs of at most DSV_LIN_SMALL rows (decoding) run a group of linear
 * layers in one pool run, packed on the caller into DSV_LIN_SLOTS slots
 * (jobs with the same input share one). 16 slots let one MoE wave hold a
 * token's 8 routed experts and the shared one (DeepSeek-V3.2), so decoding
 * runs all expert work in two pool runs: up projections, down projections. */
#define DSV_LIN_SMALL 16
#define DSV_LIN_SLOTS 16
#define DSV_LIN_JOBS 32
#define DSV_MOE_WAVE DSV_LIN_SLOTS
/* One layer of a group: bf16 (y, x) as dsv_lin, or fp32 (yf, xf) as
 * dsv_lin_f32 when xf is set. */
typedef struct dsv_lin_job {
    const dsv_linear *w;
    int m;
    dsv_bf16 *y;
    int ldy;
    const dsv_bf16 *x;
    float *yf;
    const float *xf;
} dsv_lin_job;
/* The chunks of a group's output rows (linear.c): job j's rows [0,
 * split[j]) in chunks of rows[j], the rest in chunks of small[j]; job j's
 * chunks are numbered [first[j], first[j + 1]). dsv_lin_plan plans n jobs
 * of n_out[j] rows of row_bytes[j] bytes for nth threads; dsv_lin_chunk
 * gives chunk c (of job j) as rows [*r0, *r1). */
typedef struct {
    int rows[DSV_LIN_JOBS], small[DSV_LIN_JOBS], split[DSV_LIN_JOBS], n_big[DSV_LIN_JOBS];
    int first[DSV_LIN_JOBS + 1];
} dsv_lin_chunks;
void dsv_lin_plan(dsv_lin_chunks *pl, const size_t *row_bytes, const int *n_out, int n, int nth);
void dsv_lin_chunk(const dsv_lin_chunks *pl, const int *n_out, int j, int c, int *r0, int *r1);
/* Runs independent linear layers (no job reads another's output) as one
 * unit of work, the same results as one call each. Threads take chunks of
 * output rows of any job as they come free, so a slower thread does less. */
void dsv_lin_group(dsv_context *ctx, const dsv_lin_job *jobs, int n);

/* Runs fn over [0, n) split across the context's thread pool (work.c); on
 * the calling thread alone when n < min (work too small to be worth waking
 * the others). */
typedef void (*dsv_range_fn)(dsv_context *ctx, void *arg, long i0, long i1, int ith);
void dsv_ctx_for(dsv_context *ctx, long n, dsv_range_fn fn, void *arg);
void dsv_ctx_for_min(dsv_context *ctx, long n, long min, dsv_range_fn fn, void *arg);

/* A context's memory and its forward pass (forward.c), below the public
 * calls of context.c, which mirror them on the followers of a split model.
 * dsv_ctx_create resolves the defaults of `given` (each rank its own thread
 * count), allocates, and in a split model agrees with the other ranks on
 * the outcome and the kernel level. */
int dsv_ctx_create(dsv_context **out, dsv_model *m, const dsv_context_params *given);
void dsv_ctx_destroy(dsv_context *ctx);
/* Checks a forward call completely before anything changes. */
int dsv_forward_check(dsv_context *ctx, const dsv_batch_entry *en, int n);
/* Starts a call's clock (its time until the first phase is "other"). */
void dsv_forward_start(dsv_context *ctx);
/* Runs a checked call (logits may be NULL on a follower). */
int dsv_forward_run(dsv_context *ctx, const dsv_batch_entry *en, int n, float *logits);
/* Random cache contents (kvfill.c): the checks, which also reserve the
 * pages, then the fill of checked arguments. */
int dsv_kv_fill_check(dsv_context *ctx, int seq, int n_tokens);
void dsv_kv_fill(dsv_context *ctx, int seq, int n_tokens, uint64_t seed);
/* The model's weights (model.c), below dsv_model_open/close (context.c).
 * Split, dsv_model_load is a collective whose outcome every rank shares. */
int dsv_model_load(dsv_model **out, const char *dir, const dsv_model_params *params);
void dsv_model_free(dsv_model *m);

/* Sub-layers (mla.c, indexer.c, moe.c). Rows are the call's tokens. */
void dsv_mla_forward(dsv_context *ctx, int il, dsv_bf16 *out, const dsv_bf16 *xn);
/* The indexer's projections, as jobs for MLA's groups: from x_n (wk, and
 * weights_proj on x_n in fp32, converted here), 2 jobs; from q_r (wq_b). */
void dsv_indexer_project(dsv_context *ctx, int il, const dsv_bf16 *xn, dsv_lin_job *jobs);
dsv_lin_job dsv_indexer_project_q(dsv_context *ctx, int il, const dsv_bf16 *qr);
/* Keys to the cache, queries, scores and selection (after the projections). */
void dsv_indexer_forward(dsv_context *ctx, int il);
void dsv_moe_forward(dsv_context *ctx, int il, dsv_bf16 *out, const dsv_bf16 *xn);
void dsv_mlp_forward(dsv_context *ctx, const dsv_expert *e, int inter, dsv_bf16 *out,
                     const dsv_bf16 *x, int m);

/* Hands a tensor to the dump callback, if one is set. */
void dsv_dump_f32(dsv_context *ctx, const char *name, int layer, int rows, int cols, const float *d);
void dsv_dump_i32(dsv_context *ctx, const char *name, int layer, int rows, int cols, const int32_t *d);
void dsv_dump_bf16(dsv_context *ctx, const char *name, int layer, int rows, int cols, const dsv_bf16 *d);

#endif
