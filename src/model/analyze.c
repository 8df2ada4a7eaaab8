/* analyze.c: what the lightning indexer keeps of the dense attention, per
 * layer and per k, on the engine's own forward pass (dsv32_analyze.h).
 *
 * The analysis is a probe (context.h) on a dense context: the indexer
 * scores every visible position of every token (indexer.c), attention
 * leaves each token's weights summed over heads (mla.c), and after each
 * layer's attention layer_done turns the call's rows into statistics, the
 * tokens split across the context's threads, each thread adding into its
 * own accumulators (summed when read), so nothing is shared while it runs.
 *
 * Per token and k: the indexer's top-k is chosen with dsv_topk_select, the
 * very selection sparse attention makes, and the dense top-k with the same
 * function on the weights. Mass is summed in double in position order, so
 * a set that holds every position gives exactly 1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32_analyze.h"
#include "context.h"
#include "base/util.h"

typedef struct acc {
    double mass, mass_past, best, recall, kl;
    double bucket_mass[DSV_ANALYZE_BUCKETS], bucket_kept[DSV_ANALYZE_BUCKETS];
    long n, n_past;
} acc;

typedef struct thr {
    int32_t *sel, *top;  /* [n_ctx] chosen positions, ascending */
    int32_t *scratch;    /* [dsv_topk_scratch(n_ctx)] */
    acc *acc;            /* [n_layers][n_k] */
} thr;

struct dsv_analysis {
    dsv_probe probe;     /* first: the context holds &probe */
    dsv_context *ctx;
    int n_k, n_layers, nth;
    int *ks;             /* [n_k] */
    thr *th;             /* [nth] */
};

static const int bucket_edges[DSV_ANALYZE_BUCKETS] = DSV_ANALYZE_BUCKET_EDGES;

static int bucket_of(int d) {
    int b = DSV_ANALYZE_BUCKETS - 1;
    while (b > 0 && d < bucket_edges[b]) b--;
    return b;
}

struct layer_args {
    dsv_analysis *a;
    int il;
};

static void analyze_rows(dsv_context *ctx, void *arg, long i0, long i1, int ith) {
    struct layer_args *la = arg;
    dsv_analysis *a = la->a;
    thr *th = &a->th[ith];
    const int ld = ctx->p.n_ctx;
    for (long t = i0; t < i1; t++) {
        const int pos = ctx->tok_pos[t], vis = pos + 1;
        const float *w = a->probe.attn + (size_t)t * ld, *sc = a->probe.scores + (size_t)t * ld;
        double tot = 0;
        for (int j = 0; j < vis; j++) tot += w[j];
        if (!(tot > 0)) continue; /* cannot happen with a softmax; never divide by it */
        double bm[DSV_ANALYZE_BUCKETS] = {0};
        for (int j = 0; j < vis; j++) bm[bucket_of(pos - j)] += w[j] / tot;
        /* The indexer's training loss on this query: KL(target || softmax(scores)). */
        float mx = sc[0];
        for (int j = 1; j < vis; j++) mx = sc[j] > mx ? sc[j] : mx;
        double z = 0, kl = 0;
        for (int j = 0; j < vis; j++) z += exp((double)sc[j] - mx);
        const double lz = log(z);
        for (int j = 0; j < vis; j++)
            if (w[j] > 0) {
                const double p = w[j] / tot;
                kl += p * (log(p) - ((double)sc[j] - mx - lz));
            }
        for (int ik = 0; ik < a->n_k; ik++) {
            acc *ac = &th->acc[(size_t)la->il * a->n_k + ik];
            const int k = a->ks[ik] < vis ? a->ks[ik] : vis;
            dsv_topk_select(th->sel, NULL, sc, vis, k, th->scratch);
            dsv_topk_select(th->top, NULL, w, vis, k, th->scratch);
            double kept = 0, best = 0, bk[DSV_ANALYZE_BUCKETS] = {0};
            float theta = w[th->top[0]];
            for (int i = 0; i < k; i++) {
                best += w[th->top[i]];
                if (w[th->top[i]] < theta) theta = w[th->top[i]];
            }
            int hit = 0;
            for (int i = 0; i < k; i++) {
                const int j = th->sel[i];
                kept += w[j];
                bk[bucket_of(pos - j)] += w[j] / tot;
                hit += w[j] >= theta; /* a tie with the k-th counts as in the dense top-k */
            }
            if (hit > k) hit = k;
            ac->mass += kept / tot;
            ac->best += best / tot;
            ac->recall += (double)hit / k;
            for (int b = 0; b < DSV_ANALYZE_BUCKETS; b++) {
                ac->bucket_mass[b] += bm[b];
                ac->bucket_kept[b] += bk[b];
            }
            ac->kl += kl;
            ac->n++;
            if (vis > a->ks[ik]) {
                ac->mass_past += kept / tot;
                ac->n_past++;
            }
        }
    }
}

static void layer_done(dsv_context *ctx, int il) {
    struct layer_args la = {(dsv_analysis *)ctx->probe, il};
    dsv_ctx_for(ctx, ctx->n_tok, analyze_rows, &la);
}

void dsv_analysis_close(dsv_analysis *a) {
    if (!a) return;
    if (a->ctx && a->ctx->probe == &a->probe) a->ctx->probe = NULL;
    if (a->th)
        for (int i = 0; i < a->nth; i++) {
            free(a->th[i].sel);
            free(a->th[i].top);
            free(a->th[i].scratch);
            free(a->th[i].acc);
        }
    free(a->th);
    free(a->ks);
    free(a->probe.scores);
    free(a->probe.attn);
    free(a);
}

int dsv_analysis_open(dsv_analysis **out, dsv_context *ctx, const int *ks, int n_k, int flags) {
    if (!out || !ctx || !ks || n_k < 1 || n_k > 64) return dsv_error(DSV_ERR_ARG, "dsv_analysis_open: bad argument");
    if (ctx->p.attn != DSV_ATTN_DENSE)
        return dsv_error(DSV_ERR_ARG, "dsv_analysis_open: the context must attend densely (DSV_ATTN_DENSE)");
    if (ctx->probe) return dsv_error(DSV_ERR_ARG, "dsv_analysis_open: the context already has an analysis");
    if (ctx->m->sh.size > 1)
        return dsv_error(DSV_ERR_UNSUPPORTED, "analysis of a model split across %d processes", ctx->m->sh.size);
    if (flags & ~DSV_ANALYZE_ORACLE) return dsv_error(DSV_ERR_ARG, "dsv_analysis_open: unknown flags %#x", flags);
    for (int i = 0; i < n_k; i++)
        if (ks[i] < 1) return dsv_error(DSV_ERR_ARG, "dsv_analysis_open: k = %d (must be >= 1)", ks[i]);
    dsv_analysis *a = calloc(1, sizeof *a);
    if (!a) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    const size_t ld = (size_t)ctx->p.n_ctx, rows = (size_t)ctx->p.n_batch;
    a->n_k = n_k;
    a->n_layers = ctx->c->n_layers;
    a->nth = ctx->nth;
    a->ks = malloc((size_t)n_k * sizeof *a->ks);
    a->probe.scores = calloc(rows * ld, sizeof(float));
    a->probe.attn = calloc(rows * ld, sizeof(float));
    a->th = calloc((size_t)a->nth, sizeof *a->th);
    int fail = !a->ks || !a->probe.scores || !a->probe.attn || !a->th;
    for (int i = 0; !fail && i < a->nth; i++) {
        thr *th = &a->th[i];
        th->sel = malloc(ld * sizeof *th->sel);
        th->top = malloc(ld * sizeof *th->top);
        th->scratch = malloc(dsv_topk_scratch((int)ld) * sizeof *th->scratch);
        th->acc = calloc((size_t)a->n_layers * n_k, sizeof *th->acc);
        fail = !th->sel || !th->top || !th->scratch || !th->acc;
    }
    if (fail) {
        dsv_analysis_close(a);
        return dsv_error(DSV_ERR_NOMEM, "analysis: cannot allocate %.1f MiB", 8.0 * rows * ld / 1048576.0);
    }
    memcpy(a->ks, ks, (size_t)n_k * sizeof *a->ks);
    a->probe.oracle = (flags & DSV_ANALYZE_ORACLE) != 0;
    a->probe.layer_done = layer_done;
    a->ctx = ctx;
    ctx->probe = &a->probe;
    *out = a;
    return DSV_OK;
}

void dsv_analysis_reset(dsv_analysis *a) {
    for (int i = 0; i < a->nth; i++) memset(a->th[i].acc, 0, (size_t)a->n_layers * a->n_k * sizeof(acc));
}

int dsv_analysis_get(const dsv_analysis *a, int layer, int ik, dsv_analysis_stats *out) {
    if (!a || !out || layer < 0 || layer >= a->n_layers || ik < 0 || ik >= a->n_k)
        return dsv_error(DSV_ERR_ARG, "dsv_analysis_get: layer %d or k index %d out of range", layer, ik);
    acc s = {0};
    for (int i = 0; i < a->nth; i++) {
        const acc *x = &a->th[i].acc[(size_t)layer * a->n_k + ik];
        s.mass += x->mass;
        s.mass_past += x->mass_past;
        s.best += x->best;
        s.recall += x->recall;
        s.kl += x->kl;
        for (int b = 0; b < DSV_ANALYZE_BUCKETS; b++) {
            s.bucket_mass[b] += x->bucket_mass[b];
            s.bucket_kept[b] += x->bucket_kept[b];
        }
        s.n += x->n;
        s.n_past += x->n_past;
    }
    memset(out, 0, sizeof *out);
    out->n_queries = s.n;
    out->n_past = s.n_past;
    out->mass = s.n ? s.mass / s.n : 1;
    out->best = s.n ? s.best / s.n : 1;
    out->recall = s.n ? s.recall / s.n : 1;
    out->indexer_kl = s.n ? s.kl / s.n : 0;
    out->mass_past = s.n_past ? s.mass_past / s.n_past : 1;
    memcpy(out->bucket_mass, s.bucket_mass, sizeof s.bucket_mass);
    memcpy(out->bucket_kept, s.bucket_kept, sizeof s.bucket_kept);
    return DSV_OK;
}
