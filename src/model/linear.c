/* linear.c: linear layers on the context's thread pool.
 *
 * A layer's output columns are split across threads, so each thread streams
 * its own rows of the weight once for all input rows (at batch 1, decoding
 * reads every weight byte exactly once). The input rows are first packed in
 * the kernel set's layout (for fp8 weights: quantized exactly as kernel.py's
 * act_quant does).
 *
 * Two schedules, with the same results (an output element's arithmetic
 * depends only on its input row and weight row):
 *  - few input rows (decoding): the caller packs the inputs, then the
 *    threads take chunks of output rows from a shared counter, across every
 *    layer of a group (dsv_lin_group) in one pool run. Decoding streams
 *    weights at memory speed, so a thread that another process slows down
 *    must not hold the others up at the end of each layer; and grouping the
 *    layers that read the same input saves a pool run per layer;
 *  - many rows (prefill): each layer in one pool run, the rows packed by
 *    all threads, the output columns split evenly (the work is large and
 *    regular, and each thread keeps its weight rows in cache).
 * Block-quantized weights (a GGUF file's, dsv_linear.gtype) take the same
 * schedules with kernels/quant.h's kernels, which quantize each input row
 * to 8 bits themselves instead of using the packed input. Float weights of
 * a GGUF linear that was fp8 in its checkpoint (dsv_linear.act_fp8) are
 * packed as fp8 inputs are and run fp8_gemm's arithmetic (linear_fp8x). */
#include <stdatomic.h>

#include "context.h"
#include "base/util.h"

struct lin_args {
    dsv_context *ctx;
    dsv_bf16 *y;
    int ldy;
    const dsv_bf16 *x;
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

/* How a layer's input is packed: float weights (bf16 rows), fp8 weights
 * (act_quant), or float weights of an FP8-born GGUF linear (act_quant,
 * dsv_linear.act_fp8, for linear_fp8x). */
enum { PACK_BF16, PACK_FP8, PACK_FP8X };
static int pack_kind(const dsv_linear *w) {
    if (w->dtype == DSV_DT_F8_E4M3) return PACK_FP8;
    return w->act_fp8 ? PACK_FP8X : PACK_BF16;
}

/* Packs input rows [i0, i1) (for fp8: quantizes them) as the kernel set wants. */
static void pack_rows(struct lin_args *p, long i0, long i1) {
    const dsv_kernels *k = p->ctx->kern;
    const int K = p->w->n_in, kind = pack_kind(p->w);
    if (kind == PACK_FP8) k->lin_pack_fp8(p->ctx->xp, p->x, p->m, K, (int)i0, (int)i1, p->ctx->c->scale_fmt);
    else if (kind == PACK_FP8X) k->lin_pack_fp8x(p->ctx->xp, p->x, p->m, K, (int)i0, (int)i1, p->ctx->c->scale_fmt);
    else k->lin_pack_bf16(p->ctx->xp, p->x, p->m, K, (int)i0, (int)i1);
}

/* One pool run per layer (many input rows): each thread packs its share of
 * the input rows, all wait for the whole packed input, then each computes
 * its share of the output columns. */
static void lin_task(void *a, int ith, int nth) {
    struct lin_args *p = a;
    const dsv_kernels *k = p->ctx->kern;
    const int kind = p->w->gtype ? PACK_BF16 : pack_kind(p->w);
    const void *xp = p->x;
    if (p->w->gtype) {
        /* Block-quantized weights read the bf16 rows as given. */
        long b, e;
        split16(p->w->n_out, ith, nth, &b, &e);
        if (b < e)
            dsv_linear_q(p->y, p->ldy, p->x, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin,
                         dsv_kernels_level_of(k));
        return;
    }
    if (kind != PACK_BF16 || k->lin_pack_bf16) {
        long i0, i1;
        split16(p->m, ith, nth, &i0, &i1);
        if (i0 < i1) pack_rows(p, i0, i1);
        dsv_pool_barrier(p->ctx->pool);
        xp = p->ctx->xp;
    }
    long b, e;
    split16(p->w->n_out, ith, nth, &b, &e);
    if (b >= e) return;
    if (kind == PACK_FP8) k->linear_fp8(p->y, p->ldy, xp, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
    else if (kind == PACK_FP8X) k->linear_fp8x(p->y, p->ldy, xp, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
    else k->linear_bf16(p->y, p->ldy, xp, p->w, p->m, (int)b, (int)e, p->ctx->ts[ith].lin);
}

/* ---- groups: chunks of output rows from a shared counter ------------------ */

/* Chunks of output rows: CHUNK_BYTES of weight each (in whole passes of 64
 * rows, the decoding kernels' step) so a chunk amortizes its start, except
 * in the group's last TAIL_BYTES per thread, cut in TAIL_CHUNK_BYTES (whole
 * 16-row tiles): the threads end a run within a small chunk of each other
 * instead of a large one (a 512 KB chunk is ~50 us of one core's stream;
 * the wait at the end of each run was the largest of the decode's waits). */
#define CHUNK_BYTES ((size_t)512 << 10)
#define TAIL_BYTES ((size_t)256 << 10)
#define TAIL_CHUNK_BYTES ((size_t)128 << 10)

static int rows_of(size_t row_bytes, size_t bytes, int step, int max) {
    size_t r = bytes / (row_bytes ? row_bytes : 1) / (size_t)step * (size_t)step;
    return r < (size_t)step ? step : r > (size_t)max ? max : (int)r;
}

void dsv_lin_plan(dsv_lin_chunks *pl, const size_t *row_bytes, const int *n_out, int n, int nth) {
    DSV_ASSERT(n >= 0 && n <= DSV_LIN_JOBS);
    /* The tail, from the last job backwards: each job's last rows up to the
     * budget, the cut on a 16-row boundary. One thread has no tail. */
    size_t tail = nth > 1 ? (size_t)nth * TAIL_BYTES : 0;
    for (int j = n - 1; j >= 0; j--) {
        const size_t rb = row_bytes[j] ? row_bytes[j] : 1;
        int split = n_out[j];
        if (tail > 0) {
            const size_t want = (tail + rb - 1) / rb;
            split = want >= (size_t)n_out[j] ? 0 : (int)((size_t)n_out[j] - want) / 16 * 16;
            const size_t took = (size_t)(n_out[j] - split) * rb;
            tail = took >= tail ? 0 : tail - took;
        }
        pl->split[j] = split;
        pl->rows[j] = rows_of(rb, CHUNK_BYTES, 64, 4096);
        pl->small[j] = rows_of(rb, TAIL_CHUNK_BYTES, 16, 4096);
    }
    pl->first[0] = 0;
    for (int j = 0; j < n; j++) {
        pl->n_big[j] = (pl->split[j] + pl->rows[j] - 1) / pl->rows[j];
        pl->first[j + 1] = pl->first[j] + pl->n_big[j] + (n_out[j] - pl->split[j] + pl->small[j] - 1) / pl->small[j];
    }
}

void dsv_lin_chunk(const dsv_lin_chunks *pl, const int *n_out, int j, int c, int *r0, int *r1) {
    const int local = c - pl->first[j];
    if (local < pl->n_big[j]) {
        *r0 = local * pl->rows[j];
        *r1 = DSV_MIN(*r0 + pl->rows[j], pl->split[j]);
    } else {
        *r0 = pl->split[j] + (local - pl->n_big[j]) * pl->small[j];
        *r1 = DSV_MIN(*r0 + pl->small[j], n_out[j]);
    }
}

struct group_args {
    dsv_context *ctx;
    const dsv_lin_job *jobs;
    int n;
    const void *xp[DSV_LIN_JOBS]; /* per job: its packed input */
    const void *act[DSV_LIN_JOBS]; /* per job: its quantized input (block-quantized weights), or NULL */
    int n_out[DSV_LIN_JOBS];
    dsv_lin_chunks plan;
    atomic_int next;
};

/* One row of a job's weight, in bytes. */
static size_t row_bytes(const dsv_linear *w) {
    return w->gtype ? dsv_ggml_row_size(w->gtype, w->n_in) : (size_t)w->n_in * dsv_dtype_size(w->dtype);
}

static void group_task(void *a, int ith, int nth) {
    (void)nth;
    struct group_args *p = a;
    const dsv_kernels *k = p->ctx->kern;
    const int level = dsv_kernels_level_of(k);
    void *scr = p->ctx->ts[ith].lin;
    for (int j = 0;;) {
        const int c = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (c >= p->plan.first[p->n]) return;
        while (c >= p->plan.first[j + 1]) j++; /* chunks are taken in order */
        const dsv_lin_job *jb = &p->jobs[j];
        int r0, r1;
        dsv_lin_chunk(&p->plan, p->n_out, j, c, &r0, &r1);
        if (jb->w->gtype && p->act[j]) dsv_linear_q_act(jb->yf, jb->y, jb->ldy, p->act[j], jb->w, jb->m, r0, r1, level);
        else if (jb->w->gtype && jb->xf) dsv_linear_q_f32(jb->yf, jb->ldy, jb->xf, jb->w, jb->m, r0, r1, scr, level);
        else if (jb->w->gtype) dsv_linear_q(jb->y, jb->ldy, jb->x, jb->w, jb->m, r0, r1, scr, level);
        else if (jb->xf) k->linear_f32(jb->yf, jb->ldy, jb->xf, jb->w, jb->m, r0, r1, scr);
        else if (jb->w->dtype == DSV_DT_F8_E4M3) k->linear_fp8(jb->y, jb->ldy, p->xp[j], jb->w, jb->m, r0, r1, scr);
        else if (jb->w->act_fp8) k->linear_fp8x(jb->y, jb->ldy, p->xp[j], jb->w, jb->m, r0, r1, scr);
        else k->linear_bf16(jb->y, jb->ldy, p->xp[j], jb->w, jb->m, r0, r1, scr);
    }
}

/* Small inputs only (see dsv_lin_group). */
static void group_run(dsv_context *ctx, const dsv_lin_job *jobs, int n) {
    const dsv_kernels *k = ctx->kern;
    struct group_args g = {.ctx = ctx, .jobs = jobs, .n = n};
    size_t rb[DSV_LIN_JOBS];
    int slots = 0, prev = -1;
    DSV_ASSERT(n <= DSV_LIN_JOBS);
    atomic_init(&g.next, 0);
    for (int j = 0; j < n; j++) {
        rb[j] = row_bytes(jobs[j].w);
        g.n_out[j] = jobs[j].w->n_out;
    }
    dsv_lin_plan(&g.plan, rb, g.n_out, n, ctx->nth);
    for (int j = 0; j < n; j++) {
        const dsv_lin_job *jb = &jobs[j];
        const int kind = pack_kind(jb->w);
        int p = dsv_lin_begin(ctx, jb->w, jb->m);
        if (j == 0) prev = p;
        g.xp[j] = jb->x;
        g.act[j] = NULL;
        if (jb->w->gtype) {
            /* Quantized once here for all of the layer's chunks, shared
             * with an earlier job of the same input, rows and width. */
            const void *x = jb->xf ? (const void *)jb->xf : (const void *)jb->x;
            int i = 0;
            while (i < j && !(g.act[i] && (jobs[i].xf ? (const void *)jobs[i].xf : (const void *)jobs[i].x) == x &&
                              jobs[i].m == jb->m && jobs[i].w->n_in == jb->w->n_in))
                i++;
            if (i < j) g.act[j] = g.act[i];
            else if (slots < DSV_LIN_SLOTS && jb->m <= DSV_LIN_SMALL) {
                void *act = (char *)ctx->xp + (size_t)slots++ * ctx->xp_slot;
                DSV_ASSERT((size_t)jb->m * dsv_q_act_stride(jb->w->n_in) <= ctx->xp_slot);
                dsv_q_act_rows(act, x, !jb->xf, jb->w->n_in, jb->m, dsv_kernels_level_of(k));
                g.act[j] = act;
            } /* else each chunk quantizes its own copy */
            continue;
        }
        if (jb->xf || !(kind != PACK_BF16 || k->lin_pack_bf16)) continue;
        /* An input already packed the same way is shared. */
        int i = 0;
        while (i < j && !(jobs[i].x == jb->x && !jobs[i].xf && !jobs[i].w->gtype && jobs[i].m == jb->m &&
                          jobs[i].w->n_in == jb->w->n_in && pack_kind(jobs[i].w) == kind))
            i++;
        if (i < j) {
            g.xp[j] = g.xp[i];
            continue;
        }
        DSV_ASSERT(slots < DSV_LIN_SLOTS && jb->m <= DSV_LIN_SMALL);
        void *xp = (char *)ctx->xp + (size_t)slots++ * ctx->xp_slot;
        if (kind == PACK_FP8) k->lin_pack_fp8(xp, jb->x, jb->m, jb->w->n_in, 0, jb->m, ctx->c->scale_fmt);
        else if (kind == PACK_FP8X) k->lin_pack_fp8x(xp, jb->x, jb->m, jb->w->n_in, 0, jb->m, ctx->c->scale_fmt);
        else k->lin_pack_bf16(xp, jb->x, jb->m, jb->w->n_in, 0, jb->m);
        g.xp[j] = xp;
    }
    if (g.plan.first[n] > 1 && ctx->nth > 1) dsv_pool_run(ctx->pool, group_task, &g);
    else group_task(&g, 0, 1);
    dsv_phase(ctx, prev);
}

void dsv_lin_group(dsv_context *ctx, const dsv_lin_job *jobs, int n) {
    int small = 1;
    for (int j = 0; j < n; j++) small &= jobs[j].m <= DSV_LIN_SMALL || jobs[j].xf;
    if (small) {
        group_run(ctx, jobs, n);
        return;
    }
    for (int j = 0; j < n; j++) {
        if (jobs[j].xf) dsv_lin_f32(ctx, jobs[j].yf, jobs[j].xf, jobs[j].w, jobs[j].m);
        else dsv_lin(ctx, jobs[j].y, jobs[j].ldy, jobs[j].x, jobs[j].w, jobs[j].m);
    }
}

void dsv_lin(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m) {
    struct lin_args a = {.ctx = ctx, .y = y, .ldy = ldy, .x = x, .w = w, .m = m};
    if (m <= 0) return;
    if (m <= DSV_LIN_SMALL) {
        const dsv_lin_job j = {.w = w, .m = m, .y = y, .ldy = ldy, .x = x};
        group_run(ctx, &j, 1);
        return;
    }
    int prev = dsv_lin_begin(ctx, w, m);
    dsv_pool_run(ctx->pool, lin_task, &a);
    dsv_phase(ctx, prev);
}

void dsv_lin_f32(dsv_context *ctx, float *y, const float *x, const dsv_linear *w, int m) {
    DSV_ASSERT(w->dtype != DSV_DT_F8_E4M3 && !w->act_fp8);
    if (m <= 0) return;
    const dsv_lin_job j = {.w = w, .m = m, .yf = y, .ldy = w->n_out, .xf = x};
    group_run(ctx, &j, 1);
}
