/* linear.c: linear layers and parallel loops on the context's thread pool.
 *
 * A layer's output columns are split across threads, so each thread streams
 * its own rows of the weight once for all input rows (at batch 1, decoding
 * reads every weight byte exactly once). The input rows are first packed in
 * the kernel set's layout (for fp8 weights: quantized exactly as kernel.py's
 * act_quant does). */
#include "context.h"
#include "util.h"

struct par_for_args {
    dsv_context *ctx;
    long n;
    dsv_range_fn fn;
    void *arg;
};

static void par_for_task(void *a, int ith, int nth) {
    struct par_for_args *p = a;
    long b, e;
    dsv_split(p->n, ith, nth, &b, &e);
    if (b < e) p->fn(p->ctx, p->arg, b, e, ith);
}

void dsv_par_for(dsv_context *ctx, long n, dsv_range_fn fn, void *arg) {
    struct par_for_args p = {ctx, n, fn, arg};
    if (n <= 0) return;
    dsv_pool_run(ctx->pool, par_for_task, &p);
}

struct lin_args {
    dsv_context *ctx;
    dsv_bf16 *y;
    int ldy;
    const dsv_bf16 *x;
    float *yf;
    const float *xf;
    const dsv_linear *w;
    int m;
};

/* Rows and columns are split in multiples of 16 so a kernel's tiles never
 * straddle threads. */
static void split16(long n, int ith, int nth, long *b, long *e) {
    long blocks = (n + 15) / 16, bb, be;
    dsv_split(blocks, ith, nth, &bb, &be);
    *b = bb * 16;
    *e = be * 16 < n ? be * 16 : n;
}

/* Packs input rows [i0, i1) (for fp8: quantizes them) as the kernel set wants. */
static void pack_rows(struct lin_args *p, long i0, long i1) {
    const dsv_kernels *k = dsv_kern;
    const int K = p->w->n_in;
    if (p->w->dtype == DSV_DT_F8_E4M3) k->lin_pack_fp8(p->ctx->xp, p->x, p->m, K, (int)i0, (int)i1, p->ctx->c->scale_fmt);
    else k->lin_pack_bf16(p->ctx->xp, p->x, p->m, K, (int)i0, (int)i1);
}

/* Inputs of at most this many rows are packed by the caller before the
 * pool runs: cheaper than the barrier a shared packing needs (decoding). */
#define PACK_ALONE 16

/* One pool run per layer: each thread packs its share of the input rows
 * (when there are many), all wait for the whole packed input, then each
 * computes its share of the output columns. */
static void lin_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    const dsv_kernels *k = dsv_kern;
    const int fp8 = p->w->dtype == DSV_DT_F8_E4M3;
    const void *xp = p->x;
    if (fp8 || k->lin_pack_bf16) {
        if (p->m > PACK_ALONE) {
            long i0, i1;
            split16(p->m, ith, nth, &i0, &i1);
            if (i0 < i1) pack_rows(p, i0, i1);
            dsv_pool_barrier(p->ctx->pool);
        }
        xp = p->ctx->xp;
    }
    long b, e;
    split16(p->w->n_out, ith, nth, &b, &e);
    if (b >= e) return;
    if (fp8) k->linear_fp8(p->y, p->ldy, xp, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
    else k->linear_bf16(p->y, p->ldy, xp, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
}

static void lin_f32_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    long b, e;
    split16(p->w->n_out, ith, nth, &b, &e);
    if (b < e)
        dsv_kern->linear_f32(p->yf, p->w->n_out, p->xf, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
}

void dsv_lin(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m) {
    struct lin_args a = {.ctx = ctx, .y = y, .ldy = ldy, .x = x, .w = w, .m = m};
    if (m <= 0) return;
    int prev = dsv_lin_begin(ctx, w, m);
    if (m <= PACK_ALONE && (w->dtype == DSV_DT_F8_E4M3 || dsv_kern->lin_pack_bf16)) pack_rows(&a, 0, m);
    dsv_pool_run(ctx->pool, lin_task, &a);
    dsv_phase(ctx, prev);
}

void dsv_lin_f32(dsv_context *ctx, float *y, const float *x, const dsv_linear *w, int m) {
    struct lin_args a = {.ctx = ctx, .yf = y, .xf = x, .w = w, .m = m};
    DSV_ASSERT(w->dtype != DSV_DT_F8_E4M3);
    if (m <= 0) return;
    int prev = dsv_lin_begin(ctx, w, m);
    dsv_pool_run(ctx->pool, lin_f32_task, &a);
    dsv_phase(ctx, prev);
}
