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
 * Only positions <= the token's own are ever chosen: causality holds by
 * construction, where the reference masks.
 *
 * The projections run with MLA's (dsv_indexer_project*: the layers that
 * read the same input share a pool run); dsv_indexer_forward does the rest.
 *
 * Scoring is fused with selection: a multi-token call scores a few
 * consecutive tokens of one sequence together (each page of keys is read
 * once for all of them), then selects each token's positions in O(context)
 * before the next group, so no [tokens x context] matrix is ever built. */
#include <math.h>
#include <string.h>

#include "context.h"
#include "base/util.h"

struct idx_args {
    const dsv_layer *ly;
    int il;
};

/* Query head h of token t: RoPE, Hadamard, act_quant. */
static void q_head(dsv_context *ctx, long t, int h) {
    const dsv_config *c = ctx->c;
    const int Hi = c->index_n_heads, R = c->qk_rope_head_dim, pos = ctx->tok_pos[t];
    dsv_bf16 *qh = ctx->iq + ((size_t)t * Hi + h) * 128;
    ctx->kern->rope(qh, ctx->rope_cos + (size_t)pos * (R / 2), ctx->rope_sin + (size_t)pos * (R / 2), R / 2, 0);
    ctx->kern->hadamard128(qh);
    ctx->kern->act_quant(ctx->iq8 + ((size_t)t * Hi + h) * 128, ctx->iqs + (size_t)t * Hi + h, qh, 128, c->scale_fmt);
}

/* Token t's key: LayerNorm, RoPE, Hadamard, act_quant into the cache. */
static void k_row(dsv_context *ctx, const dsv_layer *ly, int il, long t) {
    const dsv_config *c = ctx->c;
    const int R = c->qk_rope_head_dim, pos = ctx->tok_pos[t];
    dsv_bf16 *k = ctx->ik + (size_t)t * 128;
    dsv_layernorm(k, k, ly->idx_k_norm_w, ly->idx_k_norm_b, 128, c->rms_norm_eps);
    ctx->kern->rope(k, ctx->rope_cos + (size_t)pos * (R / 2), ctx->rope_sin + (size_t)pos * (R / 2), R / 2, 0);
    ctx->kern->hadamard128(k);
    const dsv_seq *s = &ctx->seqs[ctx->tok_seq[t]];
    ctx->kern->act_quant(dsv_kv_index_keys(&ctx->kv, s, il, pos), dsv_kv_index_scales(&ctx->kv, s, il, pos), k, 128,
                         c->scale_fmt);
}

/* Token t's packed query and head weights (after all its heads). */
static void q_pack(dsv_context *ctx, long t) {
    const int Hi = ctx->c->index_n_heads;
    /* weights * n_heads^-0.5, then * q_scale * head_dim^-0.5, each an fp32
     * multiply in the reference's order. */
    const float c_heads = (float)(1.0 / sqrt((double)Hi)), c_dim = (float)(1.0 / sqrt(128.0));
    ctx->kern->index_q_pack(ctx->iqp + (size_t)t * ctx->iqp_bytes, ctx->iq8 + (size_t)t * Hi * 128, Hi);
    float *w = ctx->iw + (size_t)t * Hi;
    for (int h = 0; h < Hi; h++) w[h] = w[h] * c_heads * ctx->iqs[(size_t)t * Hi + h] * c_dim;
}

static void qk_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct idx_args *p = a;
    for (long t = i0; t < i1; t++) {
        for (int h = 0; h < ctx->c->index_n_heads; h++) q_head(ctx, t, h);
        k_row(ctx, p->ly, p->il, t);
        q_pack(ctx, t);
    }
}

/* Keys of the next page asked for ahead, into L2 (prefetcht1: a hint for
 * the L1 would hold the L1's few miss buffers, and the prefetches then
 * stall behind the kernel's own). */
#define IDX_AHEAD 16

/* Scores positions [p0, p1) of the nq consecutive tokens t0.. (one
 * sequence) into out[q * ldo + pos]. */
static void score_range(dsv_context *ctx, int il, int t0, int nq, int p0, int p1, float *out, int ldo, void *scratch) {
    const int Hi = ctx->c->index_n_heads;
    const dsv_seq *s = &ctx->seqs[ctx->tok_seq[t0]];
    const void *qp = ctx->iqp + (size_t)t0 * ctx->iqp_bytes;
    const float *w = ctx->iw + (size_t)t0 * Hi;
    for (int pos = p0; pos < p1;) {
        int n = DSV_PAGE - pos % DSV_PAGE;
        if (n > p1 - pos) n = p1 - pos;
        const uint8_t *k8 = dsv_kv_index_keys(&ctx->kv, s, il, pos);
        const float *ks = dsv_kv_index_scales(&ctx->kv, s, il, pos);
        /* Pages lie far apart, so the hardware prefetcher starts each one
         * cold, and the kernel's own prefetch (one query: decoding) stays
         * inside the page: the page's last IDX_AHEAD keys are scored in a
         * second call, after asking for the next page's first keys and its
         * scales, which then arrive while those are scored. A score depends
         * only on its query and key, so the split changes no result. */
        int n0 = n;
        if (nq == 1 && pos + n < p1 && n > IDX_AHEAD) {
            n0 = n - IDX_AHEAD;
            ctx->kern->index_score(out + pos, ldo, qp, w, Hi, nq, k8, ks, n0, scratch);
            const char *nk = (const char *)dsv_kv_index_keys(&ctx->kv, s, il, pos + n);
            const char *ns = (const char *)dsv_kv_index_scales(&ctx->kv, s, il, pos + n);
            for (int o = 0; o < IDX_AHEAD * 128; o += 64) __builtin_prefetch(nk + o, 0, 2);
            for (int o = 0; o < DSV_PAGE * 4; o += 64) __builtin_prefetch(ns + o, 0, 2);
        } else {
            n0 = 0;
        }
        ctx->kern->index_score(out + pos + n0, ldo, qp, w, Hi, nq, k8 + (size_t)n0 * 128, ks + n0, n - n0, scratch);
        pos += n;
    }
}

/* Chooses token t's positions from its scores [0, pos]. */
static void select_token(dsv_context *ctx, int il, int t, const float *scores, int32_t *scratch) {
    const int vis = ctx->tok_pos[t] + 1, k = vis < ctx->layer_topk[il] ? vis : ctx->layer_topk[il];
    int32_t *sel = ctx->sel + (size_t)t * ctx->n_keys_max, *sp = ctx->sel_pos + (size_t)t * ctx->n_keys_max;
    /* The by-score order is only wanted by the dump. */
    dsv_topk_select(sp, ctx->dump ? sel : NULL, scores, vis, k, scratch);
    ctx->n_sel[t] = k;
}

struct sel_args {
    dsv_context *ctx;
    int il;
    int chunk; /* tokens scored together */
    int qk;    /* the queries and keys are still to be made (select_task, T < nth) */
};

/* Thread 0's time in scoring (0) or selecting (1), for the statistics. */
static void sel_clock(dsv_context *ctx, int ith, int what, uint64_t *t) {
    if (ith) return;
    uint64_t now = dsv_now_ns();
    ctx->sel_ns[what] += now - *t;
    *t = now;
}

/* Multi-token calls (T >= threads): groups of up to `chunk` consecutive
 * tokens of one entry, dealt round-robin since a token's cost grows with
 * its position. Otherwise each token's pages are split across threads into
 * a shared row, then one thread selects. Either way a score depends only on
 * its token and position, so the split never changes a result. */
static void select_task(void *a, int ith, int nth) {
    struct sel_args *p = a;
    dsv_context *ctx = p->ctx;
    const int T = ctx->n_tok;
    const int ld = ctx->p.n_ctx;
    dsv_tscratch *ts = &ctx->ts[ith];
    uint64_t clk = ith ? 0 : dsv_now_ns();
    if (T >= nth) {
        int g = 0;
        for (int e = 0; e < ctx->n_ent; e++)
            for (int t0 = ctx->ent_row[e], end = t0 + ctx->ent_len[e]; t0 < end; t0 += p->chunk, g++) {
                if (g % nth != ith) continue;
                const int nq = DSV_MIN(p->chunk, end - t0);
                score_range(ctx, p->il, t0, nq, 0, ctx->tok_pos[t0 + nq - 1] + 1, ts->scores, ld, ts->lin);
                sel_clock(ctx, ith, 0, &clk);
                for (int q = 0; q < nq; q++) select_token(ctx, p->il, t0 + q, ts->scores + (size_t)q * ld, ts->sel);
                sel_clock(ctx, ith, 1, &clk);
            }
        return;
    }
    if (p->qk) {
        /* Fewer tokens than threads (decoding): the tokens' query heads and
         * keys are split across the threads here, not run on the caller
         * alone before this run; then each token's query is packed by one
         * thread. Each head's and key's arithmetic is its own. */
        const int Hi = ctx->c->index_n_heads;
        long u0, u1;
        dsv_split((long)T * (Hi + 1), ith, nth, &u0, &u1);
        for (long u = u0; u < u1; u++) {
            if (u % (Hi + 1) < Hi) q_head(ctx, u / (Hi + 1), (int)(u % (Hi + 1)));
            else k_row(ctx, &ctx->m->layers[p->il], p->il, u / (Hi + 1));
        }
        dsv_pool_barrier(ctx->pool);
        if (ith < T) q_pack(ctx, ith); /* T < nth */
        dsv_pool_barrier(ctx->pool);
    }
    for (int t = 0; t < T; t++) {
        long b, e;
        /* Split on page boundaries so each thread reads whole pages. */
        long pages = ctx->tok_pos[t] / DSV_PAGE + 1;
        dsv_split(pages, ith, nth, &b, &e);
        b *= DSV_PAGE;
        e = e * DSV_PAGE < ctx->tok_pos[t] + 1 ? e * DSV_PAGE : ctx->tok_pos[t] + 1;
        if (b < e) score_range(ctx, p->il, t, 1, (int)b, (int)e, ctx->ts[0].scores, ld, ts->lin);
        dsv_pool_barrier(ctx->pool);
        sel_clock(ctx, ith, 0, &clk);
        if (ith == 0) select_token(ctx, p->il, t, ctx->ts[0].scores, ctx->ts[0].sel);
        /* The next token's scores reuse the row; after the last, the end of
         * the pool run is the wait. */
        if (t + 1 < T) dsv_pool_barrier(ctx->pool);
        sel_clock(ctx, ith, 1, &clk);
    }
}

/* Dense mode with an analysis attached: every token's scores over all its
 * visible positions, kept in the probe's rows (groups of consecutive tokens
 * of one entry, dealt round-robin as in select_task). */
static void probe_score_task(void *a, int ith, int nth) {
    struct sel_args *p = a;
    dsv_context *ctx = p->ctx;
    const int ld = ctx->p.n_ctx;
    int g = 0;
    for (int e = 0; e < ctx->n_ent; e++)
        for (int t0 = ctx->ent_row[e], end = t0 + ctx->ent_len[e]; t0 < end; t0 += p->chunk, g++) {
            if (g % nth != ith) continue;
            const int nq = DSV_MIN(p->chunk, end - t0);
            score_range(ctx, p->il, t0, nq, 0, ctx->tok_pos[t0 + nq - 1] + 1, ctx->probe->scores + (size_t)t0 * ld,
                        ld, ctx->ts[ith].lin);
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

void dsv_indexer_project(dsv_context *ctx, int il, const dsv_bf16 *xn, dsv_lin_job *jobs) {
    const dsv_layer *ly = &ctx->m->layers[il];
    const int T = ctx->n_tok;
    /* model.py: weights_proj(x.float()), an fp32 linear. */
    dsv_ctx_for(ctx, T, to_f32_rows, (void *)xn);
    jobs[0] = (dsv_lin_job){.w = &ly->idx_wk, .m = T, .y = ctx->ik, .ldy = 128, .x = xn};
    jobs[1] = (dsv_lin_job){.w = &ly->idx_wproj, .m = T, .yf = ctx->iw, .ldy = ctx->c->index_n_heads, .xf = ctx->xf};
}

dsv_lin_job dsv_indexer_project_q(dsv_context *ctx, int il, const dsv_bf16 *qr) {
    const dsv_layer *ly = &ctx->m->layers[il];
    return (dsv_lin_job){.w = &ly->idx_wq_b, .m = ctx->n_tok, .y = ctx->iq, .ldy = ctx->c->index_n_heads * 128, .x = qr};
}

void dsv_indexer_forward(dsv_context *ctx, int il) {
    const dsv_config *c = ctx->c;
    const dsv_layer *ly = &ctx->m->layers[il];
    const int T = ctx->n_tok, Hi = c->index_n_heads;
    struct idx_args a = {ly, il};

    dsv_dump_f32(ctx, "index_weights", il, T, Hi, ctx->iw);
    int prev = dsv_phase(ctx, DSV_PHASE_INDEXER);
    const int qk_in_select = ctx->p.attn == DSV_ATTN_SPARSE && ctx->nth > 1 && T < ctx->nth;
    if (!qk_in_select) dsv_ctx_for(ctx, T, qk_rows, &a);

    if (ctx->p.attn == DSV_ATTN_DENSE) {
        if (ctx->probe && !ctx->probe->oracle) {
            struct sel_args sa = {ctx, il, DSV_IDX_CHUNK, 0};
            dsv_pool_run(ctx->pool, probe_score_task, &sa);
        }
        dsv_phase(ctx, DSV_PHASE_TOPK);
        dsv_ctx_for(ctx, T, dense_rows, NULL);
        dsv_phase(ctx, prev);
        return;
    }
    struct sel_args sa = {ctx, il, DSV_MAX(1, DSV_MIN(DSV_IDX_CHUNK, (T + ctx->nth - 1) / ctx->nth)), qk_in_select};
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
