/* dsv32_synth.h: random-weight models of any DeepSeek-V3.2 shape (`dsv32 synth`).
 *
 * From a Hugging Face config.json, writes a model directory that
 * dsv_model_open accepts: config.json and model.safetensors, or shards
 * model-0000i-of-0000n.safetensors plus model.safetensors.index.json when the
 * weights pass the shard size. Every tensor the loader expects is there, with
 * Hugging Face names and dtypes; MTP layers are not written (the engine never
 * reads them), so the config's num_nextn_predict_layers becomes 0.
 *
 * Values are uniform random with scales that keep a forward pass healthy at
 * any depth and width: linear weights std 1/sqrt(fan_in) (outputs keep their
 * inputs' size), norm weights near 1, biases small, embedding rows of unit
 * size. So hidden states stay finite, and attention, the indexer and the
 * router see spread-out, non-degenerate scores. FP8 weights are quantized
 * from the same values with 128x128 block scales (powers of two under
 * ue8m0), so the bf16 and fp8 models of one seed are the same model up to
 * quantization.
 *
 * Data is generated and streamed one tensor (large ones one 128-row band) at
 * a time: memory stays small whatever the model's size. */
#ifndef DSV32_SYNTH_H
#define DSV32_SYNTH_H

#include <stdint.h>

#include "dsv32.h"

enum {
    DSV_SYNTH_AS_CONFIG = 0, /* fp8 if the config has a quantization_config */
    DSV_SYNTH_FP8 = 1,       /* fp8 e4m3 linears; quantization_config added (ue8m0) if missing */
    DSV_SYNTH_BF16 = 2,      /* bf16 linears; quantization_config removed */
};

/* Shards are cut before a tensor that would take a file past this size. */
#define DSV_SYNTH_SHARD_BYTES 4000000000ull

typedef struct dsv_synth_params {
    int dtype;               /* DSV_SYNTH_* */
    uint64_t seed;
    uint64_t shard_bytes;    /* 0: DSV_SYNTH_SHARD_BYTES */
    /* Called after every few MB written (done <= total bytes of tensor data);
     * may be NULL. */
    void (*progress)(uint64_t done, uint64_t total, void *user);
    void *progress_user;
} dsv_synth_params;

typedef struct dsv_synth_info {
    uint64_t total_bytes;    /* tensor data, all files */
    uint64_t n_params;       /* weight elements (scales not counted) */
    int n_tensors;
    int n_files;             /* 1: model.safetensors; more: shards + index */
    int fp8;
} dsv_synth_info;

DSV_API dsv_synth_params dsv_synth_default_params(void);

/* What dsv_synth would write, without writing anything (for sizing). The
 * config is read and checked as dsv_synth does. */
DSV_API int dsv_synth_plan(const char *config_path, const dsv_synth_params *p, dsv_synth_info *info);

/* Writes the model directory `dir` (created if missing; files of an earlier
 * model there are replaced). Fails before writing tensors if the config is
 * invalid, the shape cannot be stored as fp8 (an fp8 linear's input width
 * must be a multiple of 128), or the disk lacks the space. Files appear
 * complete or not at all (the safetensors writer's temporary files). info may
 * be NULL. */
DSV_API int dsv_synth(const char *config_path, const char *dir, const dsv_synth_params *p, dsv_synth_info *info);

#endif
