/* train.h: training a DeepSeek-V3.2 (DSA) model from scratch in fp32, and the
 * byte-level BPE trainer (internal; used by `dsv32 train`, `dsv32 bpe`,
 * `dsv32 ppl --recall` and the tests).
 *
 * The training model is its own fp32 implementation, kept beside the bf16/fp8
 * engine as llm.c keeps train_gpt2.c beside its fast path, but it computes
 * the same architecture with the engine's conventions and Hugging Face
 * names/layouts, so a trained model exports to a directory that
 * dsv_model_open loads unchanged. The engine's quantization (fp8 weights and
 * activations, the fp8 latent round trip, fp8 indexer q/k) is not simulated.
 *
 * DeepSeek's DSA recipe (spec section 11) in three stages:
 *  1 dense pre-training of the main model; the indexer is not run;
 *  2 dense warm-up of the indexer: main model frozen, loss
 *    KL(p || softmax(I)) with p the attention of all heads summed and
 *    L1-normalized per query, I the indexer scores;
 *  3 sparse training: top-k on, all parameters train; the indexer's KL is
 *    restricted to the selected set and its input is detached, so the main
 *    model learns only from the LM loss and the indexer only from its KL.
 * The MoE router balances load without an auxiliary loss: after each step
 * e_score_correction_bias moves by a small step toward equal expert load. */
#ifndef DSV_TRAIN_H
#define DSV_TRAIN_H

#include <stdint.h>

#include "dsv32.h"

/* ---- matrix product (train_gemm.c) -------------------------------------- */

/* C[i][j] = (accumulate ? C[i][j] : 0) + Σ_k A[i*asi + k*ask] * B[k*bsk + j*bsj]
 * for i < M, j < N, k < K; C rows are ldc apart. */
typedef void (*dsv_tr_gemm_fn)(float *C, long ldc, const float *A, long asi, long ask, const float *B,
                               long bsk, long bsj, int M, int N, int K, int accumulate);
void dsv_tr_gemm(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk, long bsj,
                 int M, int N, int K, int accumulate);
void dsv_tr_gemm_ref(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk,
                     long bsj, int M, int N, int K, int accumulate);
#if defined(__x86_64__)
void dsv_tr_gemm_avx512(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk,
                        long bsj, int M, int N, int K, int accumulate);
#endif
/* The variant dsv_tr_gemm uses (AVX-512 when the CPU has it, unless
 * DSV32_ISA=generic). */
dsv_tr_gemm_fn dsv_tr_gemm_select(void);

/* ---- single ops, forward and backward (train.c) ------------------------- *
 * One row each unless a size says otherwise. Backward functions ADD into
 * every gradient they produce (dx, dw, ...); callers zero them first. */

/* y = w * x * rstd, rstd = (mean(x²) + eps)^-1/2 (returned). */
float dsv_tr_rmsnorm_fwd(float *y, const float *x, const float *w, int n, float eps);
void dsv_tr_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, float rstd, int n);
/* y = (x - mean) * rstd * w + b (biased variance); *mean and *rstd returned. */
void dsv_tr_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                          int n, float eps);
void dsv_tr_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                          float mean, float rstd, int n);
/* RoPE on 2*n_half values in place: interleaved pairs (2i, 2i+1) (MLA) or
 * half-split pairs (i, i+n_half) (indexer). The backward is the inverse
 * rotation, also in place (on the gradient). */
void dsv_tr_rope(float *x, const float *cos, const float *sin, int n_half, int interleaved, int inverse);
/* Orthonormal Walsh-Hadamard transform of n (a power of two) values in place;
 * its own transpose, so it is also its backward. */
void dsv_tr_hadamard(float *x, int n);
/* y = silu(a) * b over n; backward adds into da, db. */
void dsv_tr_swiglu_fwd(float *y, const float *a, const float *b, int n);
void dsv_tr_swiglu_bwd(float *da, float *db, const float *dy, const float *a, const float *b, int n);
/* Causal attention of one head over T positions (the MHA form of MLA):
 * s[t][j] = scale * (q[t]·k[j]) for j <= t where mask (T x T bytes, or NULL
 * for all) allows, P = softmax over them, o[t] = Σ_j P[t][j] v[j].
 * q, k: rows of dk values, qs/ks apart; v: dv values, vs apart; o: os apart.
 * P [T][T] is written (zeros where masked) and read by the backward, which
 * adds into dq, dk, dv (same strides as q, k, v). scratch: T*T floats. */
void dsv_tr_attn_fwd(float *o, long os, float *P, const float *q, long qs, const float *k, long ks, const float *v,
                     long vs, int T, int dk, int dv, float scale, const uint8_t *mask);
void dsv_tr_attn_bwd(float *dq, float *dk, float *dv, const float *dO, long os, const float *P, const float *q,
                     long qs, const float *k, long ks, const float *v, long vs, int T, int dk_, int dv_,
                     float scale, float *scratch);
/* Cross entropy of one row of logits against target; returns the loss and
 * writes dlogits = (softmax - onehot) * gscale. */
float dsv_tr_xent(float *dlogits, const float *logits, int n, int target, float gscale);
/* The indexer's loss for one query: KL(p || softmax(I)) over the positions
 * j < n with allow[j] (NULL: all); p sums to 1 over them. Returns the KL and
 * writes dI = (softmax(I) - p) * gscale on them, 0 elsewhere. */
float dsv_tr_kl(float *dI, const float *I, const float *p, const uint8_t *allow, int n, float gscale);
/* Router of one token (moe.py Gate, sigmoid scoring): s = sigmoid(logits),
 * experts chosen on s + bias with group-limited selection, weights from the
 * unbiased s, normalized when cfg->norm_topk_prob, times route_scale.
 * Writes idx[K], w[K], s[E]. The backward maps dw[K] to dlogits[E] (added). */
void dsv_tr_route_fwd(int32_t *idx, float *w, float *s, const float *logits, const float *bias,
                      const dsv_config *c);
void dsv_tr_route_bwd(float *dlogits, const float *dw, const int32_t *idx, const float *s, const dsv_config *c);

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

dsv_train_opts dsv_train_default_opts(void);

typedef struct dsv_trainer dsv_trainer;

/* A new model from a Hugging Face config.json text (parsed by
 * dsv_config_parse), randomly initialized from opts->seed. */
int dsv_train_new(dsv_trainer **out, const char *config_json, const dsv_train_opts *opts);
/* A model from a checkpoint (dsv_train_save) or from an exported model
 * directory. resume != 0 also restores the optimizer state, step and stage
 * (a checkpoint of the same stage); otherwise training starts afresh at step
 * 0 of opts->stage with the loaded weights. */
int dsv_train_load(dsv_trainer **out, const char *path, const dsv_train_opts *opts, int resume);
void dsv_train_free(dsv_trainer *t);
const dsv_config *dsv_train_config(const dsv_trainer *t);
/* Parameters in all / in the ones this stage trains. */
long dsv_train_n_params(const dsv_trainer *t, int trained_only);
int dsv_train_step_no(const dsv_trainer *t);

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
int dsv_train_step(dsv_trainer *t, const int32_t *tokens, dsv_train_stats *st);
/* Loss without training (the stage's forward; stage 1 gives the LM loss
 * only): same token layout as dsv_train_step, n_seq sequences. */
int dsv_train_eval(dsv_trainer *t, const int32_t *tokens, int n_seq, dsv_train_stats *st);
/* Checkpoint: fp32 weights, AdamW moments, step, stage and config, as one
 * safetensors file (written atomically). */
int dsv_train_save(dsv_trainer *t, const char *path);
/* Writes a Hugging Face model directory: config.json and model.safetensors,
 * linears in bf16 or fp8 e4m3 with 128x128 block scales (fp8 != 0). */
int dsv_train_export(dsv_trainer *t, const char *dir, int fp8);

/* Indexer recall on n_seq sequences of seq_len tokens (same layout as
 * dsv_train_step; the targets are not used): for each layer, the share of
 * the dense attention mass (all heads, L1-normalized per query) that falls
 * in the indexer's top-k, averaged over the queries that see more than k
 * positions. recall[n_layers]; returns the number of such queries. */
int dsv_train_recall(dsv_trainer *t, const int32_t *tokens, int n_seq, double *recall);

/* For the gradient checks of the tests: the stage's losses on one sequence
 * (tokens: seq_len + 1 ids) by worker 0 alone: returns the mean LM loss and
 * sets *kl to the mean indexer KL; with grad != 0 the gradient of every
 * trained parameter (the main ones from the LM loss, the indexer's from the
 * KL) is left in the buffer dsv_train_tensor returns. */
double dsv_train_loss_grad(dsv_trainer *t, const int32_t *tokens, int grad, double *kl);
/* Tests: on != 0 makes stage 3 reuse the top-k sets of the last pass (so
 * finite differences do not cross a change of selection). */
void dsv_train_freeze_selection(dsv_trainer *t, int on);
/* The parameter and gradient arrays of tensor i (NULL past the last), its
 * element count and Hugging Face name. */
float *dsv_train_tensor(dsv_trainer *t, int i, float **grad, long *n, const char **name);

/* ---- BPE trainer (bpe_train.c) ------------------------------------------ */

/* Trains a byte-level BPE of vocab_size tokens (the three DeepSeek specials
 * BOS, EOS, pad at ids 0..2, the 256 bytes, then merges) on text[0..len)
 * with DeepSeek's pre-tokenizer, adds the chat and tool special tokens after
 * it, and writes dir/tokenizer.json and dir/tokenizer_config.json. *n_vocab
 * (may be NULL) gets one more than the highest id. */
int dsv_bpe_train(const char *dir, const char *text, size_t len, int vocab_size, int *n_vocab);

#endif
