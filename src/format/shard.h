/* shard.h: which part of the model each rank of a split holds, and the
 * per-rank shard files of `dsv32 convert --model-parallel N`.
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
 * Sums where the reference all-reduces (model/coll.c): after o_proj and the dense MLP's
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
 * exactly the reference's split.
 *
 * A GGUF file's block-quantized matrices can be cut by rows anywhere but by
 * columns only between blocks (32 values, 256 for the K-quants), so its
 * plan (dsv_shard_plan_blocks) also keeps o_proj's and the down projections'
 * column cuts on the blocks of their types, the same way. */
#ifndef DSV_SHARD_H
#define DSV_SHARD_H

#include <stddef.h>

#include "dsv32.h"

/* This rank's part of each split dimension, [lo, hi) in the full model. */
typedef struct dsv_shard {
    int rank, size;
    int head0, head1;       /* MLA heads */
    int inter0, inter1;     /* dense MLP hidden units: gate/up rows, down columns */
    int shared0, shared1;   /* the shared experts' hidden units (n_shared * moe_inter) */
    int expert0, expert1;   /* routed experts */
    int vocab0, vocab1;     /* embedding and lm_head rows */
} dsv_shard;

/* The part of `rank` of `size` (size 1: everything). */
void dsv_shard_plan(dsv_shard *sh, const dsv_config *c, int rank, int size);

/* Where column cuts may fall besides the fp8 blocks: a cut of o_proj's
 * columns (heads * v_head_dim) on a multiple of `o`, of the dense MLP's
 * down_proj on a multiple of `inter`, of the shared experts' down_proj on a
 * multiple of `shared` (1: anywhere). fp8: plan as for an fp8 checkpoint
 * whatever c->fp8 says (a GGUF file written from one, whose float linears
 * quantize their inputs in the checkpoint's 128-wide groups, splits as the
 * checkpoint does). */
typedef struct dsv_shard_blocks { int o, inter, shared, fp8; } dsv_shard_blocks;
void dsv_shard_plan_blocks(dsv_shard *sh, const dsv_config *c, int rank, int size, const dsv_shard_blocks *b);

/* Per-rank shard files (dsv32 convert --model-parallel N): one safetensors
 * file per rank, "model<r>-mp<N>.safetensors", with Hugging Face tensor
 * names, each tensor cut to the rank's part, and these metadata keys. */
#define DSV_SHARD_RANK_KEY "dsv32.rank"
#define DSV_SHARD_SIZE_KEY "dsv32.model_parallel"
/* The file name of rank r's shard of an N-way split. */
void dsv_shard_file_name(char *buf, size_t cap, int rank, int size);
/* The N of the shard files in dir (`prefer` if it has shards of several
 * splits), or 0 if it has none. */
int dsv_shard_split(const char *dir, int prefer);
/* Looks in dir for the shard of (rank, size): *found = 1 and path set when
 * it is there; *found = 0 when dir holds no shard files at all (a plain
 * checkpoint); DSV_ERR_MODEL when it holds shards of another split. */
int dsv_shard_find(const char *dir, int rank, int size, char *path, size_t cap, int *found);

#endif
