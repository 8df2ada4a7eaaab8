/* indexer.c: the lightning indexer of DeepSeek Sparse Attention (model.py
 * Indexer.forward, fixed version).
 *
 * Per token: q = wq_b(qr) as index_n_heads heads of 128, k = LayerNorm(wk(x));
 * both split [rope | nope] (rope first, the opposite of MLA) with
 * NON-interleaved RoPE on the rope part, then a 128-point Hadamard transform,
 * then act_quant to e4m3 (one scale per head for q, one per token for k).
 * Keys go to the cache. Head weights w = weights_proj(x) in fp32, scaled by
 * n_heads^-0.5, the query's scale and 128^-0.5. The score of a visible
 * position s is k_scale[s] * Σ_h w[h] * ReLU(q8[h]·k8[s]), and the top
 * min(index_topk, visible) positions are kept, ties to the lower position.
 * Only positions <= the token's own are ever scored: causality holds by
 * construction, where the reference masks. */
#include <math.h>
#include <string.h>

#include "context.h"
#include "util.h"

struct idx_args {
    const dsv_layer *ly;
    int il;
};

static void qk_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct idx_args *p = a;
    const dsv_config *c = ctx->c;
    const int Hi = c->index_n_heads, R = c->qk_rope_head_dim;
    /* weights * n_heads^-0.5, then * q_scale * head_dim^-0.5, each an fp32
     * multiply in the reference's order. */
    const float c_heads = (float)(1.0 / sqrt((double)Hi)), c_dim = (float)(1.0 / sqrt(128.0));
    for (long t = i0; t < i1; t++) {
        const int pos = ctx->tok_pos[t];
        const float *cs = ctx->rope_cos + (size_t)pos * (R / 2), *sn = ctx->rope_sin + (size_t)pos * (R / 2);
        for (int h = 0; h < Hi; h++) {
            dsv_bf16 *qh = ctx->iq + ((size_t)t * Hi + h) * 128;
            dsv_rope(qh, cs, sn, R / 2, 0);
            dsv_hadamard128(qh);
            dsv_act_quant_bf16(ctx->iq8 + ((size_t)t * Hi + h) * 128, ctx->iqs + (size_t)t * Hi + h, qh, 128,
                               c->scale_fmt);
        }
        dsv_bf16 *k = ctx->ik + (size_t)t * 128;
        dsv_layernorm(k, k, p->ly->idx_k_norm_w, p->ly->idx_k_norm_b, 128, c->rms_norm_eps);
        dsv_rope(k, cs, sn, R / 2, 0);
        dsv_hadamard128(k);
        const dsv_seq *s = &ctx->seqs[ctx->tok_seq[t]];
        dsv_act_quant_bf16(dsv_kv_index_keys(&ctx->kv, s, p->il, pos), dsv_kv_index_scales(&ctx->kv, s, p->il, pos),
                           k, 128, c->scale_fmt);
        float *w = ctx->iw + (size_t)t * Hi;
        for (int h = 0; h < Hi; h++) w[h] = w[h] * c_heads * ctx->iqs[(size_t)t * Hi + h] * c_dim;
    }
}

/* Scores positions [p0, p1) of token t's sequence into out[p0..p1). */
static void score_range(dsv_context *ctx, int il, int t, int p0, int p1, float *out) {
    const int Hi = ctx->c->index_n_heads;
    const dsv_seq *s = &ctx->seqs[ctx->tok_seq[t]];
    for (int pos = p0; pos < p1;) {
        int n = DSV_PAGE - pos % DSV_PAGE;
        if (n > p1 - pos) n = p1 - pos;
        dsv_kern->index_score(out + pos, ctx->iq8 + (size_t)t * Hi * 128, ctx->iw + (size_t)t * Hi, Hi,
                              dsv_kv_index_keys(&ctx->kv, s, il, pos), dsv_kv_index_scales(&ctx->kv, s, il, pos), n);
        pos += n;
    }
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Chooses token t's positions from its scores [0, pos]. */
static void select_token(dsv_context *ctx, int t, const float *scores, int32_t *scratch) {
    const int vis = ctx->tok_pos[t] + 1, k = vis < ctx->topk ? vis : ctx->topk;
    int32_t *sel = ctx->sel + (size_t)t * ctx->n_keys_max, *sp = ctx->sel_pos + (size_t)t * ctx->n_keys_max;
    dsv_topk(sel, scores, vis, k, scratch);
    memcpy(sp, sel, (size_t)k * sizeof *sp);
    qsort(sp, (size_t)k, sizeof *sp, cmp_i32);
    ctx->n_sel[t] = k;
}

struct sel_args {
    dsv_context *ctx;
    int il;
};

/* Thread 0's time in scoring (0) or selecting (1), for the statistics. */
static void sel_clock(dsv_context *ctx, int ith, int what, uint64_t *t) {
    if (ith) return;
    uint64_t now = dsv_now_ns();
    ctx->sel_ns[what] += now - *t;
    *t = now;
}

/* Prefill (T >= threads): whole tokens per thread, interleaved since a
 * token's cost grows with its position. Decode: each token's positions are
 * split across threads into a shared buffer, then one thread selects. */
static void select_task(void *a, int ith, int nth) {
    struct sel_args *p = a;
    dsv_context *ctx = p->ctx;
    const int T = ctx->n_tok;
    uint64_t clk = ith ? 0 : dsv_now_ns();
    if (T >= nth) {
        for (int t = ith; t < T; t += nth) {
            score_range(ctx, p->il, t, 0, ctx->tok_pos[t] + 1, ctx->ts[ith].scores);
            sel_clock(ctx, ith, 0, &clk);
            select_token(ctx, t, ctx->ts[ith].scores, ctx->ts[ith].sel);
            sel_clock(ctx, ith, 1, &clk);
        }
        return;
    }
    for (int t = 0; t < T; t++) {
        long b, e;
        /* Split on page boundaries so each thread reads whole pages. */
        long pages = ctx->tok_pos[t] / DSV_PAGE + 1;
        dsv_split(pages, ith, nth, &b, &e);
        b *= DSV_PAGE;
        e = e * DSV_PAGE < ctx->tok_pos[t] + 1 ? e * DSV_PAGE : ctx->tok_pos[t] + 1;
        if (b < e) score_range(ctx, p->il, t, (int)b, (int)e, ctx->ts[0].scores);
        dsv_pool_barrier(ctx->pool);
        sel_clock(ctx, ith, 0, &clk);
        if (ith == 0) select_token(ctx, t, ctx->ts[0].scores, ctx->ts[0].sel);
        dsv_pool_barrier(ctx->pool);
        sel_clock(ctx, ith, 1, &clk);
    }
}

static void dense_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)a; (void)ith;
    for (long t = i0; t < i1; t++) {
        int n = ctx->tok_pos[t] + 1;
        int32_t *sel = ctx->sel + (size_t)t * ctx->n_keys_max, *sp = ctx->sel_pos + (size_t)t * ctx->n_keys_max;
        for (int j = 0; j < n; j++) sel[j] = sp[j] = j;
        ctx->n_sel[t] = n;
    }
}

static void to_f32_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    const dsv_bf16 *x = a;
    const int D = ctx->c->dim;
    for (long i = i0 * D; i < i1 * D; i++) ctx->xf[i] = dsv_bf16_to_f32(x[i]);
}

void dsv_indexer_forward(dsv_context *ctx, int il, const dsv_bf16 *xn, const dsv_bf16 *qr) {
    const dsv_config *c = ctx->c;
    const dsv_layer *ly = &ctx->m->layers[il];
    const int T = ctx->n_tok, Hi = c->index_n_heads;
    struct idx_args a = {ly, il};

    dsv_lin(ctx, ctx->iq, Hi * 128, qr, &ly->idx_wq_b, T);
    dsv_lin(ctx, ctx->ik, 128, xn, &ly->idx_wk, T);
    /* model.py: weights_proj(x.float()), an fp32 linear. */
    dsv_par_for(ctx, T, to_f32_rows, (void *)xn);
    dsv_lin_f32(ctx, ctx->iw, ctx->xf, &ly->idx_wproj, T);
    dsv_dump_f32(ctx, "index_weights", il, T, Hi, ctx->iw);
    int prev = dsv_phase(ctx, DSV_PHASE_INDEXER);
    dsv_par_for(ctx, T, qk_rows, &a);

    if (ctx->p.attn == DSV_ATTN_DENSE) {
        dsv_phase(ctx, DSV_PHASE_TOPK);
        dsv_par_for(ctx, T, dense_rows, NULL);
        dsv_phase(ctx, prev);
        return;
    }
    struct sel_args sa = {ctx, il};
    dsv_phase(ctx, DSV_PHASE_INDEXER);
    ctx->sel_ns[0] = ctx->sel_ns[1] = 0;
    dsv_pool_run(ctx->pool, select_task, &sa);
    /* Scoring and selection interleave inside the task: its wall time is
     * split in the proportion thread 0 saw. */
    uint64_t wall = dsv_now_ns() - ctx->phase_t0, seen = ctx->sel_ns[0] + ctx->sel_ns[1];
    uint64_t topk = seen ? (uint64_t)((double)wall * (double)ctx->sel_ns[1] / (double)seen) : 0;
    dsv_phase(ctx, prev);
    ctx->stats.ns[DSV_PHASE_INDEXER] -= topk;
    ctx->stats.ns[DSV_PHASE_TOPK] += topk;
    if (ctx->dump) {
        /* [T][topk] in descending score order, -1 where fewer are visible. */
        int32_t *d = (int32_t *)ctx->xf;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < ctx->topk; j++)
                d[(size_t)t * ctx->topk + j] = j < ctx->n_sel[t] ? ctx->sel[(size_t)t * ctx->n_keys_max + j] : -1;
        dsv_dump_i32(ctx, "topk", il, T, ctx->topk, d);
    }
}
