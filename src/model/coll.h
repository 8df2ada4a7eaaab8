/* coll.h: what the engine needs of the other processes when a model is
 * split across them: a small collectives interface, and the messages that
 * mirror the leader's state-changing calls on the followers.
 *
 * The model layer knows no transport. It runs on whatever dsv_coll is
 * installed: the built-in "alone" one (a group of one: sums are no-ops,
 * nothing is sent), or the one src/dist/ installs at dsv_parallel_init
 * when the process is one of several ranks. The forward pass reaches it
 * through its context (dsv_ctx_sum_*, dsv_ctx_head below), which also
 * charges the time and bytes to the context's statistics. */
#ifndef DSV_COLL_H
#define DSV_COLL_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "base/numeric.h"

/* The state-changing calls, the entries of context.c's table. */
enum {
    DSV_OP_MODEL_OPEN, DSV_OP_MODEL_CLOSE, DSV_OP_CONTEXT_OPEN, DSV_OP_CONTEXT_CLOSE, DSV_OP_FORWARD,
    DSV_OP_TRUNCATE, DSV_OP_ATTACH, DSV_OP_PAGE_REF, DSV_OP_PAGE_UNREF, DSV_OP_FILL, DSV_OP_COUNT
};

/* One state-changing call of the leader, as it travels to the followers:
 * scalar arguments and a payload. */
typedef struct dsv_op {
    int32_t code;              /* DSV_OP_* */
    int32_t id;                /* the model or context it acts on; for an open, the new one's */
    int64_t a, b;
    uint64_t c;
    const void *data;          /* payload (bytes) */
    size_t bytes;
    void *local;               /* the leader's own extras, never sent (logits, model params) */
} dsv_op;

typedef struct dsv_coll {
    int rank, size;            /* this process, and the group (1: alone) */
    /* x[i] = Σ over ranks, in rank order, bit-identical on every rank;
     * scratch: sum_scratch(n, size) floats. */
    void (*sum_f32)(float *x, size_t n, float *scratch);
    size_t (*sum_scratch)(size_t n, int size);
    /* Rank 0 gets out [rows][ld], rank r's part [rows][n[r]] at columns
     * c0[r]; out is not touched elsewhere. */
    void (*gather_cols)(float *out, int ld, const float *part, int rows, const int *c0, const int *n);
    /* Every rank's status of a collective open: DSV_OK when all succeeded,
     * else the first failing rank's status and message. */
    int (*agree)(int status);
    /* The smallest of every rank's v, on every rank. */
    int (*agree_min)(int v);
    /* Leader: the op to every follower (which replays it, context.c). */
    void (*send)(const dsv_op *op);
} dsv_coll;

/* The collectives in use (the "alone" ones until dist/ installs others). */
const dsv_coll *dsv_coll_get(void);
/* Installs c (NULL: back to alone); from dsv_parallel_init, before any
 * model opens. c must outlive every model. */
void dsv_coll_install(const dsv_coll *c);

/* A follower's replay of the leader's calls (context.c): the models and
 * contexts it opened, by the leader's ids. dsv_replay_op applies one op
 * received from the leader; it returns DSV_OK, or the error of a call that
 * failed here although it succeeded on the leader (the ranks then differ:
 * the caller ends the job). dsv_replay_free closes what is still open. */
typedef struct dsv_replay dsv_replay;
dsv_replay *dsv_replay_new(void);
int dsv_replay_op(dsv_replay *r, dsv_op *op);
void dsv_replay_free(dsv_replay *r);

/* ---- the forward pass's collectives, through its context (coll.c) ------- */
/* Each is a no-op (or the plain local computation) unless the context's
 * model is split. */

/* Sums rows [rows][dim] of bf16 across ranks, as model.py's
 * RowParallelLinear: in fp32, rounded back to bf16. */
void dsv_ctx_sum_bf16(dsv_context *ctx, dsv_bf16 *x, int rows);
void dsv_ctx_sum_f32(dsv_context *ctx, float *x, size_t n);
/* A row-parallel linear layer: this rank's columns of x times its part of
 * W, summed across ranks (y [m][dim]). */
struct dsv_linear;
void dsv_lin_reduce(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const struct dsv_linear *w, int m);
/* The output head on ctx->xf [rows][dim]: logits [rows][vocab] on rank 0
 * (logits may be NULL elsewhere), each rank computing its vocab slice. */
void dsv_ctx_head(dsv_context *ctx, float *logits, int rows);

/* Sizes of the context's buffers for the above (context.c's layout). */
size_t dsv_coll_sum_floats(const dsv_context *ctx);
size_t dsv_coll_scratch_floats(const dsv_context *ctx);
size_t dsv_coll_logit_floats(const dsv_context *ctx);

#endif
