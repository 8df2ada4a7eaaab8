/* dsv32_convert.h: per-rank shard files of a model split across processes,
 * as the reference's convert.py writes them (`dsv32 convert`).
 *
 * A split run needs no conversion: each rank maps its part straight from the
 * Hugging Face files. This is for machines that should hold only their part
 * on disk. Not thread-safe against other writers of the same directory. */
#ifndef DSV32_CONVERT_H
#define DSV32_CONVERT_H

#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called after each shard file is complete: its path, tensor count and
 * bytes of tensor data. */
typedef void (*dsv_convert_fn)(const char *path, int n_tensors, uint64_t bytes, void *user);

/* Writes into out_dir (created if missing) config.json, the tokenizer files
 * (every name containing "token", as convert.py copies them) and
 * model<r>-mp<size>.safetensors for each rank r of a size-way split (1 to
 * 1024), or for `rank` alone (-1: every rank). Each holds exactly the
 * tensors that rank maps, cut to its part, under their Hugging Face names,
 * with the rank and size in its metadata; a rank's file alone is enough for
 * it, and gives the same logits as the checkpoint. Tensors are streamed from
 * the mapped checkpoint, so memory stays small whatever the model's size.
 * Refuses (before writing a shard) a model_dir that holds shards itself, an
 * out_dir that is model_dir or holds shards of another split. on_file may
 * be NULL. */
DSV_API int dsv_convert_shards(const char *model_dir, const char *out_dir, int size, int rank,
                               dsv_convert_fn on_file, void *user);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_CONVERT_H */
