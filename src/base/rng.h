/* rng.h: the pseudo-random numbers behind synthesized weights and random KV
 * cache contents (not for anything that needs unpredictability).
 *
 * SplitMix64: one 64-bit state, an add and two multiply-xorshift rounds per
 * draw, which is fast enough to synthesize hundreds of GB and passes the usual
 * statistical batteries. Every tensor (or cache position) gets its own stream,
 * seeded from the user's seed and the tensor's name (or position), so values
 * depend only on (seed, name, element index): never on the order tensors are
 * written in, how they are cut into chunks, or how many threads write them. */
#ifndef DSV_RNG_H
#define DSV_RNG_H

#include <stdint.h>

typedef struct dsv_rng {
    uint64_t s;
} dsv_rng;

static inline uint64_t dsv_rng_next(dsv_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A stream for (seed, name, index). The name is folded in with FNV-1a; the
 * SplitMix step then spreads nearby seeds and indices over the whole state. */
static inline dsv_rng dsv_rng_stream(uint64_t seed, const char *name, uint64_t index) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; p && *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    dsv_rng r = {seed ^ h};
    r.s = dsv_rng_next(&r) ^ (index * 0xd1b54a32d192ed03ull);
    dsv_rng_next(&r);
    return r;
}

/* Two uniform floats in [-1, 1) from one draw (24 bits each, so every value
 * is exact in fp32 and the distribution is symmetric around 0). */
static inline void dsv_rng_pair(dsv_rng *r, float *a, float *b) {
    uint64_t x = dsv_rng_next(r);
    *a = (float)((int32_t)(x & 0xffffffu) - 0x800000) * (1.0f / 8388608.0f);
    *b = (float)((int32_t)((x >> 32) & 0xffffffu) - 0x800000) * (1.0f / 8388608.0f);
}

/* n uniform floats in [-amp, amp) (n may be odd). */
static inline void dsv_rng_fill(dsv_rng *r, float *out, long n, float amp) {
    float a, b;
    long i = 0;
    for (; i + 1 < n; i += 2) {
        dsv_rng_pair(r, &a, &b);
        out[i] = a * amp;
        out[i + 1] = b * amp;
    }
    if (i < n) {
        dsv_rng_pair(r, &a, &b);
        out[i] = a * amp;
    }
}

#endif
