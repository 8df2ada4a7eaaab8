/* moe.c: the feed-forward blocks (model.py MLP, Gate, Expert, MoE).
 *
 * Router (Gate.forward, all fp32): scores = sigmoid(x · W_gateᵀ) (softmax for
 * softmax-scored configs); experts are *chosen* on scores + e_score_correction_bias,
 * first keeping the topk_group groups with the best sum of their two best
 * biased scores, and *weighted* by the unbiased scores of the chosen ones,
 * normalized (sigmoid) and times routed_scaling_factor.
 * MoE.forward: y = Σ_e w_e * Expert_e(x) in fp32, experts added in index
 * order as the reference loops them, plus the shared expert, then bf16.
 * Tokens are grouped by expert, so each expert's weights are read once per
 * call whatever the number of tokens. A call of a few tokens (decoding)
 * runs its experts in waves of up to DSV_MOE_WAVE (a decoded token's routed
 * experts and the shared one fit in one): the up projections of a wave's
 * experts in one pool run (the shared expert's run earlier, with the
 * router's gate), their down projections in another, the threads
 * taking chunks of any expert's rows as they come free, each expert's output kept
 * apart so that the weighted sum still adds them in index order. In a model
 * split across processes a rank adds only its experts and its part of the
 * shared experts, and the ranks' fp32 sums are summed before the bf16
 * rounding (format/shard.h). */
#include <math.h>
#include <string.h>

#include "context.h"
#include "coll.h"
#include "route.h"
#include "base/util.h"

struct moe_args {
    const dsv_layer *ly;
    const dsv_bf16 *x;
    dsv_bf16 *out;
    int n;
    const dsv_bf16 *src;
};

static void route_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct moe_args *p = a;
    const dsv_config *c = ctx->c;
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    float orig[1024], sc[1024];
    DSV_ASSERT(E <= 1024);
    for (long t = i0; t < i1; t++) {
        const float *lg = ctx->gate_logits + t * E;
        if (c->score_func == DSV_SCORE_SOFTMAX) {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++) mx = fmaxf(mx, lg[e]);
            for (int e = 0; e < E; e++) { orig[e] = expf(lg[e] - mx); sum += orig[e]; }
            for (int e = 0; e < E; e++) orig[e] /= sum;
        } else {
            for (int e = 0; e < E; e++) orig[e] = 1.0f / (1.0f + expf(-lg[e]));
        }
        for (int e = 0; e < E; e++) sc[e] = p->ly->gate_bias ? orig[e] + p->ly->gate_bias[e] : orig[e];
        int32_t *idx = ctx->gate_i + t * K;
        float *w = ctx->gate_w + t * K;
        dsv_route_choose(c, sc, p->ly->gate_bias != NULL, idx);
        float sum = 0;
        for (int k = 0; k < K; k++) { w[k] = orig[idx[k]]; sum += w[k]; }
        if (c->score_func == DSV_SCORE_SIGMOID && c->norm_topk_prob)
            for (int k = 0; k < K; k++) w[k] /= sum;
        for (int k = 0; k < K; k++) w[k] *= c->route_scale;
    }
}

static void to_f32(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    const dsv_bf16 *x = a;
    const int D = ctx->c->dim;
    for (long i = i0 * D; i < i1 * D; i++) ctx->xf[i] = dsv_bf16_to_f32(x[i]);
}

static void swiglu_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ctx; (void)ith;
    struct moe_args *p = a;
    ctx->kern->swiglu(ctx->ex_h1 + i0 * p->n, ctx->ex_h1 + i0 * p->n, ctx->ex_h3 + i0 * p->n, (int)((i1 - i0) * p->n));
}

void dsv_mlp_forward(dsv_context *ctx, const dsv_expert *e, int inter, dsv_bf16 *out,
                     const dsv_bf16 *x, int m) {
    struct moe_args a = {.n = inter};
    if (inter == 0) { /* a rank of a split model holding none of its hidden units */
        memset(out, 0, (size_t)m * (size_t)ctx->c->dim * sizeof *out);
        return;
    }
    /* w1 and w3 read the same input: one group (one pool run when decoding). */
    const dsv_lin_job up[2] = {{.w = &e->w1, .m = m, .y = ctx->ex_h1, .ldy = inter, .x = x},
                               {.w = &e->w3, .m = m, .y = ctx->ex_h3, .ldy = inter, .x = x}};
    dsv_lin_group(ctx, up, 2);
    dsv_ctx_for(ctx, m, swiglu_rows, &a);
    dsv_lin(ctx, out, ctx->c->dim, ctx->ex_h1, &e->w2, m);
}

static void gather_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct moe_args *p = a;
    const int D = ctx->c->dim;
    for (long i = i0; i < i1; i++)
        memcpy(ctx->ex_x + i * D, p->x + (size_t)ctx->ex_rows[i] * D, (size_t)D * sizeof(dsv_bf16));
}

/* y[row] += float(expert_out) * weight: the fp32 product, then the add. */
static void scatter_add(dsv_context *ctx, void *a, long d0, long d1, int ith) {
    (void)ith;
    struct moe_args *p = a;
    const int D = ctx->c->dim;
    for (int i = 0; i < p->n; i++) {
        float *y = ctx->moe_y + (size_t)ctx->ex_rows[i] * D;
        const dsv_bf16 *o = ctx->ex_o + (size_t)i * D;
        ctx->kern->axpy_bf16(y + d0, o + d0, ctx->ex_wts[i], (int)(d1 - d0));
    }
}

static void add_shared(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith; (void)a;
    /* weight 1: float(o) * 1 is float(o), so this is the plain add */
    ctx->kern->axpy_bf16(ctx->moe_y + i0, ctx->ex_o + i0, 1.0f, (int)(i1 - i0));
}

static void to_bf16(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct moe_args *p = a;
    for (long i = i0; i < i1; i++) p->out[i] = dsv_f32_to_bf16(ctx->moe_y[i]);
}

/* The weighted sum of a wave's experts into moe_y, in order. */
static void wave_sum(dsv_context *ctx, int n_exp, const int *n_rows) {
    const int D = ctx->c->dim;
    for (int e = 0; e < n_exp; e++)
        for (int i = 0; i < n_rows[e]; i++) {
            const int k = e * DSV_LIN_SMALL + i;
            ctx->kern->axpy_bf16(ctx->moe_y + (size_t)ctx->mw_rows[k] * D, ctx->mw_o + (size_t)k * D, ctx->mw_wts[k], D);
        }
}

/* One wave: experts ex[0..n) with rows mw_rows/mw_wts (shared: all rows,
 * weight 1), their up projections, SwiGLU, down projections, sum. With one
 * token every expert reads the token's row in place. An expert `early`
 * (the shared one, or NULL) had its up projections computed already, into
 * ex_h1/ex_h3, from all the call's rows: the same rows (in order) as the
 * wave would give it. */
static void wave(dsv_context *ctx, const dsv_bf16 *xn, const dsv_expert *const *ex, const int *width, int n,
                 const int *n_rows, const dsv_expert *early) {
    const int D = ctx->c->dim, T = ctx->n_tok;
    const size_t ew = (size_t)ctx->c->moe_inter_dim * (size_t)DSV_MAX(1, ctx->c->n_shared_experts);
    dsv_lin_job jobs[2 * DSV_MOE_WAVE];
    dsv_bf16 *h1s[DSV_MOE_WAVE], *h3s[DSV_MOE_WAVE];
    int nj = 0;
    for (int e = 0; e < n; e++) {
        if (ex[e] == early) {
            h1s[e] = ctx->ex_h1;
            h3s[e] = ctx->ex_h3;
            continue;
        }
        const dsv_bf16 *x = xn;
        if (T > 1) {
            x = ctx->mw_x + (size_t)e * DSV_LIN_SMALL * D;
            for (int i = 0; i < n_rows[e]; i++)
                memcpy((dsv_bf16 *)x + (size_t)i * D, xn + (size_t)ctx->mw_rows[e * DSV_LIN_SMALL + i] * D,
                       (size_t)D * sizeof(dsv_bf16));
        }
        dsv_bf16 *h1 = h1s[e] = ctx->mw_h1 + (size_t)e * DSV_LIN_SMALL * ew;
        dsv_bf16 *h3 = h3s[e] = ctx->mw_h3 + (size_t)e * DSV_LIN_SMALL * ew;
        jobs[nj++] = (dsv_lin_job){.w = &ex[e]->w1, .m = n_rows[e], .y = h1, .ldy = width[e], .x = x};
        jobs[nj++] = (dsv_lin_job){.w = &ex[e]->w3, .m = n_rows[e], .y = h3, .ldy = width[e], .x = x};
    }
    if (nj) dsv_lin_group(ctx, jobs, nj);
    for (int e = 0; e < n; e++) {
        dsv_bf16 *h1 = h1s[e], *h3 = h3s[e];
        ctx->kern->swiglu(h1, h1, h3, n_rows[e] * width[e]);
        jobs[e] = (dsv_lin_job){.w = &ex[e]->w2, .m = n_rows[e], .y = ctx->mw_o + (size_t)e * DSV_LIN_SMALL * D,
                                .ldy = D, .x = h1};
    }
    dsv_lin_group(ctx, jobs, n);
    wave_sum(ctx, n, n_rows);
}

/* MoE of at most DSV_LIN_SMALL tokens: the same arithmetic as the general
 * path below, in fewer pool runs. */
static void moe_small(dsv_context *ctx, int il, const dsv_layer *ly, struct moe_args *a) {
    const dsv_config *c = ctx->c;
    const int T = ctx->n_tok, D = c->dim, K = c->n_activated_experts;
    const int e0 = ctx->m->sh.expert0, e1 = ctx->m->sh.expert1; /* this rank's experts */
    const dsv_expert *ex[DSV_MOE_WAVE];
    int width[DSV_MOE_WAVE], n_rows[DSV_MOE_WAVE], n = 0;
    to_f32(ctx, (void *)a->x, 0, T, 0);
    /* The router's gate with the shared expert's up projections, which need
     * no routing: one pool run, and the gate (too small to be worth a run
     * of its own, so once on the caller alone) no longer runs by itself. */
    const dsv_expert *early = ly->shared.w1.n_out > 0 ? &ly->shared : NULL;
    dsv_lin_job first[3] = {{.w = &ly->gate, .m = T, .yf = ctx->gate_logits, .ldy = ly->gate.n_out, .xf = ctx->xf}};
    if (early) {
        first[1] = (dsv_lin_job){.w = &early->w1, .m = T, .y = ctx->ex_h1, .ldy = early->w1.n_out, .x = a->x};
        first[2] = (dsv_lin_job){.w = &early->w3, .m = T, .y = ctx->ex_h3, .ldy = early->w1.n_out, .x = a->x};
    }
    dsv_lin_group(ctx, first, early ? 3 : 1);
    route_rows(ctx, a, 0, T, 0);
    dsv_dump_f32(ctx, "moe_gate_weights", il, T, K, ctx->gate_w);
    dsv_dump_i32(ctx, "moe_gate_indices", il, T, K, ctx->gate_i);
    memset(ctx->moe_y, 0, (size_t)T * D * sizeof(float));
    for (int e = e0; e <= e1; e++) {
        if (e < e1) {
            int r = 0;
            for (int t = 0; t < T; t++)
                for (int k = 0; k < K; k++)
                    if (ctx->gate_i[t * K + k] == e) {
                        ctx->mw_rows[n * DSV_LIN_SMALL + r] = t;
                        ctx->mw_wts[n * DSV_LIN_SMALL + r] = ctx->gate_w[t * K + k];
                        r++;
                    }
            if (!r) continue;
            ex[n] = &ly->experts[e];
            width[n] = c->moe_inter_dim;
            n_rows[n++] = r;
        } else if (ly->shared.w1.n_out > 0) { /* this rank's hidden units of the shared experts */
            /* weight 1: float(o) * 1 is float(o), the plain add of the reference */
            for (int t = 0; t < T; t++) {
                ctx->mw_rows[n * DSV_LIN_SMALL + t] = t;
                ctx->mw_wts[n * DSV_LIN_SMALL + t] = 1.0f;
            }
            ex[n] = &ly->shared;
            width[n] = ly->shared.w1.n_out;
            n_rows[n++] = T;
        }
        if (n == DSV_MOE_WAVE || (e == e1 && n > 0)) {
            wave(ctx, a->x, ex, width, n, n_rows, early);
            n = 0;
        }
    }
    dsv_ctx_sum_f32(ctx, ctx->moe_y, (size_t)T * D);
    for (long i = 0; i < (long)T * D; i++) a->out[i] = dsv_f32_to_bf16(ctx->moe_y[i]);
}

void dsv_moe_forward(dsv_context *ctx, int il, dsv_bf16 *out, const dsv_bf16 *xn) {
    const dsv_config *c = ctx->c;
    const dsv_layer *ly = &ctx->m->layers[il];
    const int T = ctx->n_tok, D = c->dim, K = c->n_activated_experts;
    struct moe_args a = {.ly = ly, .x = xn, .out = out};
    int prev = dsv_phase(ctx, DSV_PHASE_MOE);
    if (T <= DSV_LIN_SMALL) {
        moe_small(ctx, il, ly, &a);
        dsv_phase(ctx, prev);
        return;
    }

    dsv_ctx_for(ctx, T, to_f32, (void *)xn);
    dsv_lin_f32(ctx, ctx->gate_logits, ctx->xf, &ly->gate, T);
    dsv_ctx_for(ctx, T, route_rows, &a);
    dsv_dump_f32(ctx, "moe_gate_weights", il, T, K, ctx->gate_w);
    dsv_dump_i32(ctx, "moe_gate_indices", il, T, K, ctx->gate_i);

    memset(ctx->moe_y, 0, (size_t)T * D * sizeof(float));
    for (int e = ctx->m->sh.expert0; e < ctx->m->sh.expert1; e++) { /* this rank's experts */
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                if (ctx->gate_i[t * K + k] == e) { ctx->ex_rows[n] = t; ctx->ex_wts[n] = ctx->gate_w[t * K + k]; n++; }
        if (!n) continue;
        a.n = n;
        dsv_ctx_for(ctx, n, gather_rows, &a);
        dsv_mlp_forward(ctx, &ly->experts[e], c->moe_inter_dim, ctx->ex_o, ctx->ex_x, n);
        dsv_ctx_for(ctx, D, scatter_add, &a);
    }
    if (ly->shared.w1.n_out > 0) { /* this rank's hidden units of the shared experts */
        dsv_mlp_forward(ctx, &ly->shared, ly->shared.w1.n_out, ctx->ex_o, xn, T);
        dsv_ctx_for(ctx, (long)T * D, add_shared, NULL);
    }
    dsv_ctx_sum_f32(ctx, ctx->moe_y, (size_t)T * D);
    dsv_ctx_for(ctx, (long)T * D, to_bf16, &a);
    dsv_phase(ctx, prev);
}
