/* coll.c: the collectives in use (see coll.h) and the forward pass's sums
 * and gathers through its context: time charged to the communication
 * phase, bytes counted. The built-in "alone" collectives serve a process
 * that is a group of one. */
#include <stdatomic.h>
#include <string.h>

#include "coll.h"
#include "context.h"
#include "base/util.h"

static void alone_sum_f32(float *x, size_t n, float *scratch) { (void)x; (void)n; (void)scratch; }
static size_t alone_sum_scratch(size_t n, int size) { (void)n; (void)size; return 0; }
static void alone_gather_cols(float *out, int ld, const float *part, int rows, const int *c0, const int *n) {
    for (int i = 0; i < rows; i++) memcpy(out + (size_t)i * ld + c0[0], part + (size_t)i * n[0], (size_t)n[0] * sizeof *out);
}
static int alone_agree(int status) { return status; }
static int alone_agree_min(int v) { return v; }
static void alone_send(const dsv_op *op) { (void)op; }

static const dsv_coll alone = {
    .rank = 0, .size = 1, .sum_f32 = alone_sum_f32, .sum_scratch = alone_sum_scratch,
    .gather_cols = alone_gather_cols, .agree = alone_agree, .agree_min = alone_agree_min, .send = alone_send,
};
static const dsv_coll *_Atomic installed = &alone;

const dsv_coll *dsv_coll_get(void) { return atomic_load(&installed); }
void dsv_coll_install(const dsv_coll *c) { atomic_store(&installed, c ? c : &alone); }

/* ---- the forward pass ---------------------------------------------------- */

static void begin_comm(dsv_context *ctx, int *prev) { *prev = dsv_phase(ctx, DSV_PHASE_COMM); }
static void end_comm(dsv_context *ctx, int prev) {
    dsv_phase(ctx, prev);
    ctx->stats.n_comm++;
}

void dsv_ctx_sum_f32(dsv_context *ctx, float *x, size_t n) {
    if (ctx->m->sh.size == 1) return;
    int prev;
    begin_comm(ctx, &prev);
    ctx->m->coll->sum_f32(x, n, ctx->coll_scratch);
    ctx->stats.comm_sum_bytes += n * sizeof(float);
    end_comm(ctx, prev);
}

void dsv_ctx_sum_bf16(dsv_context *ctx, dsv_bf16 *x, int rows) {
    if (ctx->m->sh.size == 1) return;
    const size_t n = (size_t)rows * (size_t)ctx->c->dim;
    int prev;
    begin_comm(ctx, &prev);
    /* model.py RowParallelLinear: y = y.float(); all_reduce(y); y.type_as(x). */
    for (size_t i = 0; i < n; i++) ctx->coll_f[i] = dsv_bf16_to_f32(x[i]);
    ctx->m->coll->sum_f32(ctx->coll_f, n, ctx->coll_scratch);
    for (size_t i = 0; i < n; i++) x[i] = dsv_f32_to_bf16(ctx->coll_f[i]);
    ctx->stats.comm_sum_bytes += n * sizeof(float);
    end_comm(ctx, prev);
}

void dsv_lin_reduce(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m) {
    DSV_ASSERT(ldy == ctx->c->dim);
    if (w->n_in > 0) dsv_lin(ctx, y, ldy, x, w, m);
    else memset(y, 0, (size_t)m * (size_t)ldy * sizeof *y); /* this rank holds none of its columns */
    dsv_ctx_sum_bf16(ctx, y, m);
}

/* Rows of logits computed and gathered at a time (coll_logits' height). */
#define DSV_HEAD_ROWS 16

void dsv_ctx_head(dsv_context *ctx, float *logits, int rows) {
    const dsv_model *m = ctx->m;
    if (m->sh.size == 1) {
        dsv_lin_f32(ctx, logits, ctx->xf, &m->head, rows);
        return;
    }
    const int D = ctx->c->dim, V = ctx->c->vocab_size, size = m->sh.size;
    for (int r0 = 0; r0 < rows; r0 += DSV_HEAD_ROWS) {
        const int n = DSV_MIN(DSV_HEAD_ROWS, rows - r0);
        if (m->head.n_out > 0) dsv_lin_f32(ctx, ctx->coll_logits, ctx->xf + (size_t)r0 * D, &m->head, n);
        int prev;
        begin_comm(ctx, &prev);
        m->coll->gather_cols(logits ? logits + (size_t)r0 * V : NULL, V, ctx->coll_logits, n, m->par_vocab,
                             m->par_vocab + size);
        ctx->stats.comm_gather_bytes += (uint64_t)n * (uint64_t)m->head.n_out * sizeof(float);
        end_comm(ctx, prev);
    }
}

size_t dsv_coll_sum_floats(const dsv_context *ctx) {
    return ctx->m->sh.size > 1 ? (size_t)ctx->p.n_batch * (size_t)ctx->c->dim : 0;
}
size_t dsv_coll_scratch_floats(const dsv_context *ctx) {
    return ctx->m->coll->sum_scratch(dsv_coll_sum_floats(ctx), ctx->m->sh.size);
}
size_t dsv_coll_logit_floats(const dsv_context *ctx) {
    return ctx->m->sh.size > 1 ? (size_t)DSV_HEAD_ROWS * (size_t)ctx->m->head.n_out : 0;
}
