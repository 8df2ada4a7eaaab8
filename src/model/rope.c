/* rope.c: the rotary-embedding tables (rope.h). */
#include "rope.h"

#include <math.h>

#include "base/util.h"

void dsv_rope_tables(const dsv_config *c, int n_pos, float *cos_t, float *sin_t) {
    const int R = c->qk_rope_head_dim, half = R / 2;
    float freq[512];
    DSV_ASSERT(half <= 512);
    for (int i = 0; i < half; i++) freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)R);
    if (c->yarn) {
        double two_pi = 2.0 * M_PI, lb = log((double)c->rope_theta);
        double low = floor(R * log(c->original_seq_len / (c->beta_fast * two_pi)) / (2 * lb));
        double high = ceil(R * log(c->original_seq_len / (c->beta_slow * two_pi)) / (2 * lb));
        if (low < 0) low = 0;
        if (high > R - 1) high = R - 1;
        float lo = (float)low, hi = (float)high;
        if (lo == hi) hi += 0.001f;
        for (int i = 0; i < half; i++) {
            float ramp = ((float)i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float smooth = 1 - ramp;
            freq[i] = freq[i] / c->rope_factor * (1 - smooth) + freq[i] * smooth;
        }
    }
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            float phi = (float)p * freq[i];
            cos_t[(size_t)p * half + i] = (float)cos((double)phi);
            sin_t[(size_t)p * half + i] = (float)sin((double)phi);
        }
}
