/* tiny_model.h: a small random-weight model of a complete DeepSeek-V3.2 shape
 * (a dense layer, a MoE layer with group-limited routing and a shared
 * expert), synthesized on demand for tests of the engine around the model. */
#ifndef DSV_TEST_TINY_MODEL_H
#define DSV_TEST_TINY_MODEL_H

#include <stdint.h>

/* The config.json text. Every fp8 input width is a multiple of 128. */
extern const char *tiny_config;
/* Writes text to <test tmpdir>/name and returns the path (static, 8 slots). */
const char *tiny_write(const char *name, const char *text);
/* Synthesizes the tiny model (dtype DSV_SYNTH_*) under the test's temporary
 * directory and returns it (static, 4 slots); shard_bytes 0 for one file. */
const char *tiny_synth(const char *sub, const char *config, int dtype, uint64_t seed, uint64_t shard_bytes);

#endif
