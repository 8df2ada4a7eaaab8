/* topk.c: the indexer's top-k selection in O(n), by radix select.
 *
 * Each score maps to a 32-bit key that orders like the score (NaN lowest,
 * -0 equal to +0). Byte by byte from the top, a histogram finds which byte
 * value the k-th largest key has; only keys that share the prefix found so
 * far are looked at again. After four bytes the k-th key T is known: every
 * position with a key above T is chosen, and of those equal to T the lowest
 * positions fill the rest. This is exactly dsv_topk's choice (higher score
 * first, ties toward the lower position), found in a few linear passes
 * instead of a quickselect, and the positions come out in ascending order,
 * which is how attention visits them. */
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static inline uint32_t score_key(float f) {
    uint32_t u = dsv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0; /* NaN ranks last */
    if (u == 0x80000000u) u = 0;                   /* -0 ties with +0 */
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

struct ranked { uint32_t key; int32_t pos; };

static int cmp_ranked(const void *a, const void *b) {
    const struct ranked *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

void dsv_topk_select(int32_t *pos, int32_t *ranked, const float *scores, int n, int k, int32_t *scratch) {
    if (k <= 0) return;
    if (k > n) k = n;
    uint32_t *hist = (uint32_t *)scratch;  /* [256] */
    int32_t *cand = scratch + 256;         /* [n] positions still in the running */
    uint32_t prefix = 0;                   /* the k-th key's bytes found so far */
    int need = k, n_cand = 0;              /* keys still to take from the prefix's bucket */
    for (int byte = 3; byte >= 0; byte--) {
        const int shift = 8 * byte;
        memset(hist, 0, 256 * sizeof *hist);
        if (byte == 3) {
            for (int i = 0; i < n; i++) hist[score_key(scores[i]) >> 24]++;
        } else if (byte == 2) {
            /* Collect the positions whose top byte matched, once. */
            for (int i = 0; i < n; i++) {
                uint32_t key = score_key(scores[i]);
                if (key >> 24 == prefix >> 24) { cand[n_cand++] = i; hist[(key >> 16) & 255]++; }
            }
        } else {
            int kept = 0;
            const uint32_t mask = ~0u << (shift + 8);
            for (int c = 0; c < n_cand; c++) {
                uint32_t key = score_key(scores[cand[c]]);
                if ((key & mask) == prefix) { cand[kept++] = cand[c]; hist[(key >> shift) & 255]++; }
            }
            n_cand = kept;
        }
        /* The bucket holding the need-th largest key, counting from the top. */
        int b = 255;
        while (hist[b] < (uint32_t)need) need -= (int)hist[b--];
        prefix |= (uint32_t)b << shift;
    }
    /* prefix is the k-th key; need of the keys equal to it are taken. */
    int out = 0;
    for (int i = 0; i < n && out < k; i++) {
        uint32_t key = score_key(scores[i]);
        if (key > prefix || (key == prefix && need-- > 0)) pos[out++] = i;
    }
    if (!ranked) return;
    /* Only for dumps: sort the chosen by rank (the candidates' room holds 2n int32). */
    struct ranked *r = (struct ranked *)cand;
    for (int i = 0; i < k; i++) r[i] = (struct ranked){score_key(scores[pos[i]]), pos[i]};
    qsort(r, (size_t)k, sizeof *r, cmp_ranked);
    for (int i = 0; i < k; i++) ranked[i] = r[i].pos;
}
