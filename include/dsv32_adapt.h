/* dsv32_adapt.h: adapting the lightning indexer of a DeepSeek-V3.2 model to
 * a user's text (`dsv32 adapt`): DeepSeek's indexer warm-up, and optionally
 * its sparse-stage indexer loss, run with the main model frozen and its
 * forward pass computed by the inference engine itself (its kernels, its
 * precision). Only the indexer's parameters (wq_b, wk, k_norm,
 * weights_proj) train, in fp32; the result is written back in the
 * checkpoint's own format with every other tensor copied byte for byte.
 *
 * The objective (spec section 11): per layer and query t, the target p_t is
 * the main model's dense attention summed over heads and L1-normalized, and
 * the loss is KL(p_t || softmax(I_t)) with I_t the indexer's scores, over
 * every visible position (warm-up) or over the indexer's own top-k (sparse
 * stage, p renormalized on that set). DeepSeek's sparse stage takes p from
 * the main model running sparse; here the main model runs dense (the engine
 * selects with the checkpoint's indexer, not the one being trained), so p
 * is the dense heads' sum restricted to the set, which differs from the sum
 * of per-head sparse softmaxes by each head's normalizer. The indexer is
 * computed in fp32 from the engine's inputs to it (x_n, q_r). Training does
 * not simulate the engine's rounding of the indexer's q and k (bf16, then
 * fp8 e4m3 with one scale per head or key); the measures (dsv_adapt_eval)
 * do.
 *
 * Thread-safety: an adapter is used by one thread at a time (its context
 * runs its own worker threads). */
#ifndef DSV32_ADAPT_H
#define DSV32_ADAPT_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { DSV_ADAPT_DENSE = 0, DSV_ADAPT_SPARSE = 1 };

typedef struct dsv_adapt_opts {
    int stage;        /* DSV_ADAPT_DENSE (warm-up) or DSV_ADAPT_SPARSE */
    int ctx;          /* tokens per window, BOS included (default 256) */
    int batch;        /* windows per optimizer step (default 1) */
    int steps;        /* optimizer steps in all (default 100; sets the schedule) */
    int warmup;       /* linear warm-up steps, then cosine decay (default steps / 10) */
    float lr;         /* peak learning rate (default 1e-3, DeepSeek's warm-up) */
    float min_lr;     /* final learning rate as a fraction of lr (default 0.1) */
    float clip;       /* global gradient-norm clip, 0: none (default 1) */
    int topk;         /* sparse stage and the mass-kept measure: 0 = the config's index_topk */
    int n_threads;    /* engine threads (0: the CPUs this process may use) */
    uint64_t seed;    /* window sampling (default 1234) */
} dsv_adapt_opts;

DSV_API dsv_adapt_opts dsv_adapt_default_opts(void);

typedef struct dsv_adapter dsv_adapter;

/* Opens a Hugging Face model directory with the engine (a dense context of
 * opts->ctx tokens) and takes its indexer weights, dequantized, as the fp32
 * starting point. DSV_ERR_UNSUPPORTED in a model split across processes. */
DSV_API int dsv_adapt_open(dsv_adapter **out, const char *model_dir, const dsv_adapt_opts *opts);
DSV_API void dsv_adapt_free(dsv_adapter *a);
DSV_API const dsv_config *dsv_adapt_config(const dsv_adapter *a);
/* Optimizer steps taken (restored by dsv_adapt_resume). */
DSV_API int dsv_adapt_step_no(const dsv_adapter *a);
/* Trained parameters (fp32 values of the indexers of all layers). */
DSV_API long dsv_adapt_n_params(const dsv_adapter *a);
/* The fp32 values of trained tensor i (NULL past the last), its element
 * count and checkpoint name; writable (the next step or write uses them). */
DSV_API float *dsv_adapt_tensor(dsv_adapter *a, int i, long *n, const char **name);

typedef struct dsv_adapt_stats {
    double kl;        /* mean KL per query and layer (the stage's loss) */
    double mass;      /* share of the target's mass the indexer's top-k keeps, mean over the
                       * queries that see more than k positions and the layers (-1: none) */
    double grad_norm; /* before clipping (steps only) */
    double lr;        /* steps only */
    long tokens;      /* tokens run through the engine */
} dsv_adapt_stats;

/* The window of step `step` (BOS then ctx-1 tokens of ids at an offset
 * drawn from (seed, step, b) for window b): out gets batch * ctx ids. The
 * text needs at least ctx-1 tokens. A resumed run draws what the
 * uninterrupted one would have. */
DSV_API int dsv_adapt_sample(const dsv_adapter *a, const int32_t *ids, size_t n_ids, int step, int32_t *out);
/* One optimizer step on batch windows of ctx ids each (BOS included). */
DSV_API int dsv_adapt_step(dsv_adapter *a, const int32_t *windows, dsv_adapt_stats *st);
/* The warm-up KL (every visible position, whatever the stage) and the
 * mass kept at opts->topk, without training, on n_windows windows of ctx
 * ids, with the indexer's q and k rounded as the engine rounds them.
 * per_layer_kl (may be NULL) gets n_layers means. */
DSV_API int dsv_adapt_eval(dsv_adapter *a, const int32_t *windows, int n_windows, dsv_adapt_stats *st,
                           double *per_layer_kl);
/* Consecutive windows (BOS + ctx-1 ids each) covering ids; *out is
 * malloc'ed, *n_windows gets their count (0 when the text is shorter than
 * one window). */
DSV_API int dsv_adapt_windows(const dsv_adapter *a, const int32_t *ids, size_t n_ids, int32_t **out,
                              int *n_windows);

/* Resume state: the fp32 indexer weights, AdamW moments, step and options
 * as one safetensors file (written atomically). */
DSV_API int dsv_adapt_save(dsv_adapter *a, const char *path);
/* Restores a state saved by dsv_adapt_save for the same model shape. */
DSV_API int dsv_adapt_resume(dsv_adapter *a, const char *path);
/* Writes the adapted model directory: each shard holding an indexer tensor
 * is rewritten with those tensors in their original dtype (fp8 e4m3 with
 * 128x128 block scales, power-of-two scales where the checkpoint's were,
 * bf16 or f32; a checkpoint with f16 indexer
 * tensors is refused at open) and every other tensor's bytes unchanged; every other
 * file of the directory (config.json, tokenizer files, shard index) is
 * copied byte for byte. dir must not be the model's own directory. */
DSV_API int dsv_adapt_write(dsv_adapter *a, const char *dir);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_ADAPT_H */
