/* rope.h: the rotary-embedding tables (model.py precompute_freqs_cis),
 * shared by the engine (forward.c) and training (train.c). */
#ifndef DSV_ROPE_H
#define DSV_ROPE_H

#include "dsv32.h"

/* cos and sin [n_pos][qk_rope_head_dim / 2] of the angles pos * θ'_i:
 * θ_i = rope_theta^(-2i/d) in fp32, blended with θ_i / rope_factor over
 * YaRN's correction range when the config uses YaRN; the angle is the fp32
 * product, its cosine and sine taken in double and rounded to fp32. */
void dsv_rope_tables(const dsv_config *c, int n_pos, float *cos_t, float *sin_t);

#endif
