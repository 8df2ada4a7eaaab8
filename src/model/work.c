/* work.c: what every part of the forward pass uses of its context: the
 * fan-out of a loop over the context's thread pool, and the dump callback
 * (dsv_context_set_dump). Below the sub-layers and the forward pass, which
 * all call it, so that none of them needs to call another's file back. */
#include "context.h"
#include "base/util.h"

struct ctx_for_args {
    dsv_context *ctx;
    long n;
    dsv_range_fn fn;
    void *arg;
};

static void ctx_for_task(void *a, int ith, int nth) {
    struct ctx_for_args *p = a;
    long b, e;
    dsv_split(p->n, ith, nth, &b, &e);
    if (b < e) p->fn(p->ctx, p->arg, b, e, ith);
}

void dsv_ctx_for_min(dsv_context *ctx, long n, long min, dsv_range_fn fn, void *arg) {
    struct ctx_for_args p = {ctx, n, fn, arg};
    if (n <= 0) return;
    if (n < min || ctx->nth == 1) {
        fn(ctx, arg, 0, n, 0);
        return;
    }
    dsv_pool_run(ctx->pool, ctx_for_task, &p);
}

void dsv_ctx_for(dsv_context *ctx, long n, dsv_range_fn fn, void *arg) { dsv_ctx_for_min(ctx, n, 2, fn, arg); }

void dsv_context_set_dump(dsv_context *ctx, dsv_dump_fn fn, void *user) {
    ctx->dump = fn;
    ctx->dump_user = user;
}

void dsv_dump_f32(dsv_context *ctx, const char *name, int layer, int rows, int cols, const float *d) {
    if (ctx->dump) ctx->dump(name, layer, DSV_DUMP_F32, rows, cols, d, ctx->dump_user);
}
void dsv_dump_i32(dsv_context *ctx, const char *name, int layer, int rows, int cols, const int32_t *d) {
    if (ctx->dump) ctx->dump(name, layer, DSV_DUMP_I32, rows, cols, d, ctx->dump_user);
}
void dsv_dump_bf16(dsv_context *ctx, const char *name, int layer, int rows, int cols, const dsv_bf16 *d) {
    if (!ctx->dump) return;
    /* Widened through the fp32 scratch, at most its capacity at a time. */
    const int cap = (int)((size_t)ctx->p.n_batch * ctx->c->dim / (size_t)cols);
    for (int r0 = 0; r0 < rows;) {
        int n = rows - r0 < cap ? rows - r0 : cap;
        for (int i = 0; i < n * cols; i++) ctx->moe_y[i] = dsv_bf16_to_f32(d[(size_t)r0 * cols + i]);
        ctx->dump(name, layer, DSV_DUMP_F32, n, cols, ctx->moe_y, ctx->dump_user);
        r0 += n;
    }
}
