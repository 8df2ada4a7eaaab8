/* dsv32_train.h: training a DeepSeek-V3.2 (DSA) model from scratch in fp32,
 * and the byte-level BPE trainer (`dsv32 train`, `dsv32 bpe`, `dsv32 ppl
 * --recall`). What the recipe is and how the training model relates to the
 * engine: src/train/train.h.
 *
 * Thread-safety: a dsv_trainer is used by one thread at a time (it runs its
 * own worker threads inside dsv_train_step and dsv_train_eval); separate
 * trainers are independent. */
#ifndef DSV32_TRAIN_H
#define DSV32_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the trainer -------------------------------------------------------- */

typedef struct dsv_train_opts {
    int stage;           /* 1 dense, 2 indexer warm-up, 3 sparse */
    int seq_len;         /* tokens per sequence (BOS included) */
    int batch;           /* sequences per optimizer step */
    int steps;           /* optimizer steps of this stage */
    int warmup;          /* linear warm-up steps, then cosine decay */
    float lr;            /* peak learning rate */
    float min_lr;        /* floor of the cosine, as a fraction of lr */
    float beta1, beta2, adam_eps, weight_decay;
    float clip;          /* global gradient-norm clip (0: none) */
    float bias_rate;     /* e_score_correction_bias step per optimizer step */
    int topk;            /* index_topk override for stage 3 (0: the config's) */
    int n_threads;       /* 0: online CPUs */
    uint64_t seed;
} dsv_train_opts;

DSV_API dsv_train_opts dsv_train_default_opts(void);

typedef struct dsv_trainer dsv_trainer;

/* A new model from a Hugging Face config.json text (parsed by
 * dsv_config_parse), randomly initialized from opts->seed. */
DSV_API int dsv_train_new(dsv_trainer **out, const char *config_json, const dsv_train_opts *opts);
/* A model from a checkpoint (dsv_train_save) or from an exported model
 * directory. resume != 0 also restores the optimizer state, step and stage
 * (a checkpoint of the same stage); otherwise training starts afresh at step
 * 0 of opts->stage with the loaded weights. */
DSV_API int dsv_train_load(dsv_trainer **out, const char *path, const dsv_train_opts *opts, int resume);
DSV_API void dsv_train_free(dsv_trainer *t);
DSV_API const dsv_config *dsv_train_config(const dsv_trainer *t);
/* Parameters in all / in the ones this stage trains. */
DSV_API long dsv_train_n_params(const dsv_trainer *t, int trained_only);
DSV_API int dsv_train_step_no(const dsv_trainer *t);

typedef struct dsv_train_stats {
    double lm_loss;      /* mean next-token cross entropy (nats) */
    double kl;           /* mean indexer KL per query (stages 2, 3) */
    double grad_norm;    /* before clipping */
    double lr;
    double max_load;     /* most-loaded expert's share over the mean (1 = balanced) */
    long tokens;
} dsv_train_stats;

/* One optimizer step over batch sequences of seq_len tokens. tokens holds
 * batch * (seq_len + 1) ids: each sequence's inputs and, shifted by one, its
 * targets. */
DSV_API int dsv_train_step(dsv_trainer *t, const int32_t *tokens, dsv_train_stats *st);
/* Loss without training (the stage's forward; stage 1 gives the LM loss
 * only): same token layout as dsv_train_step, n_seq sequences. */
DSV_API int dsv_train_eval(dsv_trainer *t, const int32_t *tokens, int n_seq, dsv_train_stats *st);
/* Checkpoint: fp32 weights, AdamW moments, step, stage and config, as one
 * safetensors file (written atomically). */
DSV_API int dsv_train_save(dsv_trainer *t, const char *path);
/* Writes a Hugging Face model directory: config.json and model.safetensors,
 * linears in bf16 or fp8 e4m3 with 128x128 block scales (fp8 != 0). */
DSV_API int dsv_train_export(dsv_trainer *t, const char *dir, int fp8);

/* Indexer recall on n_seq sequences of seq_len tokens (same layout as
 * dsv_train_step; the targets are not used): for each layer, the share of
 * the dense attention mass (all heads, L1-normalized per query) that falls
 * in the indexer's top-k, averaged over the queries that see more than k
 * positions. recall[n_layers]; returns the number of such queries. */
DSV_API int dsv_train_recall(dsv_trainer *t, const int32_t *tokens, int n_seq, double *recall);

/* ---- BPE trainer (bpe_train.c) ------------------------------------------ */

/* Trains a byte-level BPE of vocab_size tokens (the three DeepSeek specials
 * BOS, EOS, pad at ids 0..2, the 256 bytes, then merges) on text[0..len)
 * with DeepSeek's pre-tokenizer, adds the chat and tool special tokens after
 * it, and writes dir/tokenizer.json and dir/tokenizer_config.json. *n_vocab
 * (may be NULL) gets one more than the highest id. */
DSV_API int dsv_bpe_train(const char *dir, const char *text, size_t len, int vocab_size, int *n_vocab);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_TRAIN_H */
