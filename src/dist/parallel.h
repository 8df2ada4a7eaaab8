/* parallel.h: one model split across processes (internal; the API is the
 * dsv_parallel_* section of dsv32.h).
 *
 * The split is the reference's (convert.py, model.py with world_size > 1):
 *   - MLA heads: q_b_proj and kv_b_proj by rows (whole heads), o_proj by
 *     columns; each rank attends with its own heads and keeps the whole
 *     latent cache (MQA: one latent row serves every head);
 *   - the lightning indexer, q_a/kv_a projections, norms and the router are
 *     replicated: every rank computes them from the same bits, so every rank
 *     selects the same positions and the same experts;
 *   - routed experts by expert index (expert parallelism);
 *   - the dense MLP and the shared experts: gate/up by rows, down by columns;
 *   - embedding and lm_head by vocabulary rows.
 * Sums where the reference all-reduces: after o_proj and the dense MLP's
 * down_proj (each rank's bf16 output widened, summed in fp32, rounded to
 * bf16: RowParallelLinear), after the MoE (each rank's fp32 sum of its
 * experts and its slice of the shared expert, summed, then bf16), and after
 * the embedding (rows of other ranks' vocabulary are zero); the logits are
 * gathered on rank 0. Every sum adds the ranks in rank order, so every rank
 * holds the same bits afterwards (comm.h).
 *
 * Where a size does not divide by the number of ranks, or where an even
 * split would cut an fp8 weight inside a 128x128 scale block, the split
 * moves to the nearest boundary the block layout allows (heads in groups
 * whose rows and columns start at multiples of 128; hidden units in blocks
 * of 128), as evenly as it can; a rank may then hold nothing of a part and
 * contributes zeros to its sum. For the real model at 2 to 16 ranks this is
 * exactly the reference's split. */
#ifndef DSV_PARALLEL_H
#define DSV_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "kernels/ops.h"

#include "format/shard.h"

/* ---- the forward pass (no-ops on a model that is not split) ------------- */

/* x [rows][dim] bf16: every rank's partial rows widened, summed in rank
 * order in fp32 and rounded to bf16 (RowParallelLinear's reduce). */
void dsv_par_sum_bf16(dsv_context *ctx, dsv_bf16 *x, int rows);
/* x [n] fp32 summed over the ranks in rank order (the MoE's all-reduce). */
void dsv_par_sum_f32(dsv_context *ctx, float *x, size_t n);
/* A row-parallel layer: this rank's partial product y [m][dim] (zeros when
 * it holds no columns of w), then dsv_par_sum_bf16. */
void dsv_lin_reduce(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m);
/* logits [rows][vocab] = lm_head(ctx->xf [rows][dim]): each rank its
 * vocabulary rows, gathered on rank 0 (followers pass NULL). */
void dsv_par_head(dsv_context *ctx, float *logits, int rows);

/* ---- leader and followers --------------------------------------------------
 * The leader (rank 0) runs the program; every model and context call it
 * makes that changes what the forward pass computes is sent to the
 * followers first or after, and replayed there in the same order, so every
 * rank's KV pages and sequences stay the same. */

/* 1 on rank 0 of a group of more than one. */
int dsv_par_leading(void);
/* Each sender below does nothing unless it runs on the leader of a split
 * model. Opens: the ids name the object in later commands. */
int dsv_par_next_model_id(void);
int dsv_par_next_context_id(void);
void dsv_par_send_model_open(const char *dir, const dsv_model_params *p, int id);
void dsv_par_send_model_close(const dsv_model *m);
void dsv_par_send_context_open(const dsv_model *m, int id, const dsv_context_params *p);
void dsv_par_send_context_close(const dsv_context *ctx);
/* A forward call, after the leader validated it. */
void dsv_par_send_forward(dsv_context *ctx, const dsv_batch_entry *en, int n);
/* Sequence and page operations, after they succeeded on the leader. */
enum { DSV_PAR_TRUNCATE = 1, DSV_PAR_ATTACH, DSV_PAR_PAGE_REF, DSV_PAR_PAGE_UNREF, DSV_PAR_FILL };
void dsv_par_send_op(dsv_context *ctx, int op, int64_t a, int64_t b, uint64_t c, const int32_t *data, int n);

/* Buffers of a context of a split model (0 when not split), carved by
 * dsv_context_open: fp32 rows being summed, the sum's scratch, this rank's
 * logits, a forward call packed for the followers (int32). */
size_t dsv_par_sum_floats(const dsv_context *ctx);
size_t dsv_par_scratch_floats(const dsv_context *ctx);
size_t dsv_par_logit_floats(const dsv_context *ctx);
size_t dsv_par_buf_ints(const dsv_context *ctx);

/* Every rank's status of a collective open: DSV_OK when all succeeded,
 * else the first failing rank's status and message ("rank R of N: ..."). */
int dsv_par_agree(int status);
/* Contexts of a split model run one kernel set: the lowest of the levels
 * (DSV_KLEVEL_*) the ranks chose, returned on every rank. */
int dsv_par_agree_level(int level);

#endif
