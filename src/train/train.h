/* train.h: the trainer's insides: the fp32 ops with their backward passes,
 * the matrix product, and the hooks the gradient checks use. The trainer
 * itself and the BPE trainer are public: include/dsv32_train.h (used by
 * `dsv32 train`, `dsv32 bpe`, `dsv32 ppl --recall`).
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
#include "dsv32_train.h"

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
/* The lightning indexer's backward pass, from dI [T][T] (the loss's
 * gradient on its scores I, causal: s <= i) to its parameters' gradients.
 * The forward values: per-head scores S [Hi][T][T] before the ReLU, head
 * weights iw [T][Hi] (times 1/sqrt(Hi * Di)), queries iq [T][Hi][Di] and keys
 * ik [T][Di] (roped, Hadamard-rotated), the keys' LayerNorm input ikr
 * [T][Di] with its mean and rstd per row, the inputs xn [T][dim] and qr
 * [T][q_lora_rank], rope tables [T][qk_rope_head_dim / 2], and the key
 * LayerNorm's weight knw. diq, dik, diw, dikl and dS are scratch of the
 * forward values' shapes ([T][T] for dS, which may alias a spent target).
 * The gradients g_* (wq_b, wk, weights_proj, LayerNorm weight and bias) are
 * added to. Shared by the trainer and the adapter. */
typedef struct dsv_tr_indexer_grad {
    const dsv_config *c;
    int T;
    const float *dI, *S, *iw, *iq, *ik, *ikr, *imu, *irs, *xn, *qr, *rope_cos, *rope_sin, *knw;
    float *dS, *diq, *dik, *diw, *dikl;
    float *g_wq, *g_wk, *g_wp, *g_knw, *g_knb;
} dsv_tr_indexer_grad;
void dsv_tr_indexer_bwd(const dsv_tr_indexer_grad *g);
/* Router of one token (moe.py Gate, sigmoid scoring): s = sigmoid(logits),
 * experts chosen on s + bias with group-limited selection, weights from the
 * unbiased s, normalized when cfg->norm_topk_prob, times route_scale.
 * Writes idx[K], w[K], s[E]. The backward maps dw[K] to dlogits[E] (added). */
void dsv_tr_route_fwd(int32_t *idx, float *w, float *s, const float *logits, const float *bias,
                      const dsv_config *c);
void dsv_tr_route_bwd(float *dlogits, const float *dw, const int32_t *idx, const float *s, const dsv_config *c);

/* ---- test hooks of the trainer (the rest is in include/dsv32_train.h) ---- */

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

#endif
