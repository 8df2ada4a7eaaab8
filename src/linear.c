/* linear.c: linear layers and parallel loops on the context's thread pool.
 *
 * A layer's output columns are split across threads, so each thread streams
 * its own rows of the weight once for all input rows (at batch 1, decoding
 * reads every weight byte exactly once). For fp8 weights the input rows are
 * first quantized exactly as kernel.py's act_quant does. */
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

static void quant_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct lin_args *p = a;
    const int K = p->w->n_in;
    for (long i = i0; i < i1; i++)
        dsv_act_quant_bf16(ctx->aq + i * K, ctx->as + i * (K / DSV_QBLOCK), p->x + i * K, K,
                           ctx->c->scale_fmt);
}

/* Columns are split in multiples of 16 so a SIMD kernel's tiles never straddle threads. */
static void col_range(long n, int ith, int nth, long *b, long *e) {
    long blocks = (n + 15) / 16, bb, be;
    dsv_split(blocks, ith, nth, &bb, &be);
    *b = bb * 16;
    *e = be * 16 < n ? be * 16 : n;
}

static void lin_fp8_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    long b, e;
    col_range(p->w->n_out, ith, nth, &b, &e);
    if (b < e) dsv_kern->linear_fp8(p->y, p->ldy, p->ctx->aq, p->ctx->as, p->w, p->m, (int)b, (int)e);
}

static void lin_bf16_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    long b, e;
    col_range(p->w->n_out, ith, nth, &b, &e);
    if (b < e) dsv_kern->linear_bf16(p->y, p->ldy, p->x, p->w, p->m, (int)b, (int)e);
}

static void lin_f32_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    long b, e;
    col_range(p->w->n_out, ith, nth, &b, &e);
    if (b < e) dsv_kern->linear_f32(p->yf, p->w->n_out, p->xf, p->w, p->m, (int)b, (int)e);
}

void dsv_lin(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m) {
    struct lin_args a = {.ctx = ctx, .y = y, .ldy = ldy, .x = x, .w = w, .m = m};
    if (m <= 0) return;
    int prev = dsv_lin_begin(ctx, w, m);
    if (w->dtype == DSV_DT_F8_E4M3) {
        dsv_par_for(ctx, m, quant_rows, &a);
        dsv_pool_run(ctx->pool, lin_fp8_task, &a);
    } else {
        dsv_pool_run(ctx->pool, lin_bf16_task, &a);
    }
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
