/* dsv32_analyze.h: what the lightning indexer keeps and misses, measured on
 * the engine's own forward pass (used by `dsv32 analyze`).
 *
 * An analysis attaches to a context opened with DSV_ATTN_DENSE. During each
 * dsv_forward on that context it takes, for every token and layer, the
 * indexer's scores over all the positions the token sees and the dense
 * attention weights summed over heads, the target the indexer was trained
 * to match (DeepSeek's dense warm-up: all heads summed, L1-normalized per
 * query). For each k of its list it then selects the indexer's top-k as
 * sparse attention would (dsv_topk_select: higher score first, ties to the
 * lower position) and accumulates:
 *  - mass: the share of the dense attention mass inside the selected set;
 *  - best: the same for the k positions of largest mass (an ideal indexer);
 *  - recall: the share of the dense top-k (the k positions of largest mass,
 *    a position tied with the k-th counting as in it) that was selected;
 *  - indexer_kl: the indexer's own training loss, KL(target || softmax of
 *    its scores), per query;
 *  - per distance bucket (DSV_ANALYZE_BUCKET_EDGES, query position minus
 *    key position): the dense mass in the bucket and the part of it kept.
 * A query that sees at most k positions keeps everything (mass and recall
 * 1): it is counted, as it is in use, and n_past says how many saw more.
 *
 * The forward pass of an analysed context computes the same logits as
 * without it, on the absorbed attention path (the reference's decode maths)
 * for every token; it is slower. Not for a model split across processes
 * (each rank sees its own heads only). */
#ifndef DSV32_ANALYZE_H
#define DSV32_ANALYZE_H

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Distance buckets: [0, 128), [128, 1024), [1024, 8192), [8192, inf). */
#define DSV_ANALYZE_BUCKETS 4
#define DSV_ANALYZE_BUCKET_EDGES {0, 128, 1024, 8192}

typedef struct dsv_analysis dsv_analysis;

enum {
    /* Tests: the indexer's scores are replaced by the attention logits
     * summed over heads (with one head, the dense top-k itself). */
    DSV_ANALYZE_ORACLE = 1,
};

/* Attaches an analysis for the n_k values ks (each >= 1) to ctx, which must
 * be dense and have no other analysis. Allocates its buffers here (two rows
 * of n_ctx floats per batch token, per-thread scratch); the forward pass
 * still allocates nothing. */
DSV_API int dsv_analysis_open(dsv_analysis **out, dsv_context *ctx, const int *ks, int n_k, int flags);
/* Detaches and frees; NULL is a no-op. */
DSV_API void dsv_analysis_close(dsv_analysis *a);

typedef struct dsv_analysis_stats {
    long n_queries;                        /* tokens seen in this layer */
    long n_past;                           /* those that saw more than k positions */
    double mass;                           /* mean share of the dense mass inside the selected top-k */
    double mass_past;                      /* the same over the n_past queries (1 when none) */
    double best;                           /* mean share inside the k positions of largest mass */
    double recall;                         /* mean share of the dense top-k that was selected */
    double indexer_kl;                     /* mean KL(target || softmax(indexer scores)) over all the
                                            * visible positions: the indexer's dense warm-up loss
                                            * (the same for every k of a layer) */
    double bucket_mass[DSV_ANALYZE_BUCKETS]; /* dense mass per distance bucket, summed over queries
                                            * (each query's mass sums to 1) */
    double bucket_kept[DSV_ANALYZE_BUCKETS]; /* the part of it inside the selected sets */
} dsv_analysis_stats;

/* The statistics of layer `layer` at ks[ik] since open or the last reset. */
DSV_API int dsv_analysis_get(const dsv_analysis *a, int layer, int ik, dsv_analysis_stats *out);
DSV_API void dsv_analysis_reset(dsv_analysis *a);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_ANALYZE_H */
