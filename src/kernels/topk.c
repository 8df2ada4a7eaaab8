/* topk.c: the indexer's top-k selection in O(n), by radix select.
 *
 * Each score maps to a 32-bit key that orders like the score (NaN lowest,
 * -0 equal to +0). In three passes of 11, 11 and 10 bits from the top, a
 * histogram finds which bits the k-th largest key has; only keys that share
 * the prefix found so far are looked at again (after the first pass, a
 * quarter of an octave of scores). Then the k-th key T is known: every
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

/* Bits of the key each pass looks at, from the top. */
#define TOPK_B0 11
#define TOPK_B1 11
#define TOPK_B2 10

/* The bucket (from the top) that holds the need-th largest key; need
 * becomes the count still to take from it. */
static int find_bucket(const uint32_t *hist, int nb, int *need) {
    int b = nb - 1;
    while (hist[b] < (uint32_t)*need) *need -= (int)hist[b--];
    return b;
}

/* The k-th largest key of the n positions idx[] (all positions [0, n) when
 * idx is NULL), and how many of the keys equal to it are taken (*need).
 * cand: n int32. */
static uint32_t kth_key(const float *scores, const int32_t *idx, int n, int k, uint32_t *hist, int32_t *cand, int *need) {
    *need = k;
    /* Pass 1: the top 11 bits of every key, in four interleaved histograms
     * so that runs of one bucket do not wait on each other's increments. */
    memset(hist, 0, 4 * 2048 * sizeof *hist);
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int u = 0; u < 4; u++) hist[u * 2048 + (score_key(scores[idx ? idx[i + u] : i + u]) >> (32 - TOPK_B0))]++;
    for (; i < n; i++) hist[score_key(scores[idx ? idx[i] : i]) >> (32 - TOPK_B0)]++;
    for (int b = 0; b < 2048; b++) hist[b] += hist[2048 + b] + hist[4096 + b] + hist[6144 + b];
    const uint32_t b0 = (uint32_t)find_bucket(hist, 1 << TOPK_B0, need);
    /* Pass 2: the positions in that bucket, and their next 11 bits. */
    memset(hist, 0, 2048 * sizeof *hist);
    int n_cand = 0;
    for (i = 0; i < n; i++) {
        const int p = idx ? idx[i] : i;
        const uint32_t key = score_key(scores[p]);
        if (key >> (32 - TOPK_B0) == b0) {
            cand[n_cand++] = p;
            hist[(key >> TOPK_B2) & ((1u << TOPK_B1) - 1)]++;
        }
    }
    const uint32_t b1 = (uint32_t)find_bucket(hist, 1 << TOPK_B1, need);
    /* Pass 3: the last 10 bits of those that share both. */
    memset(hist, 0, 1024 * sizeof *hist);
    for (int c = 0; c < n_cand; c++) {
        const uint32_t key = score_key(scores[cand[c]]);
        if (((key >> TOPK_B2) & ((1u << TOPK_B1) - 1)) == b1) hist[key & ((1u << TOPK_B2) - 1)]++;
    }
    const uint32_t b2 = (uint32_t)find_bucket(hist, 1 << TOPK_B2, need);
    return b0 << (32 - TOPK_B0) | b1 << TOPK_B2 | b2;
}

void dsv_topk_select(int32_t *pos, int32_t *ranked, const float *scores, int n, int k, int32_t *scratch) {
    if (k <= 0) return;
    if (k > n) k = n;
    uint32_t *hist = (uint32_t *)scratch;      /* [4][2048] */
    int32_t *cand = scratch + 4 * 2048;        /* [n] */
    int32_t *work = cand + n;                  /* [n] */
    int need, out = 0;
    /* Long rows: a histogram of every 8th key estimates a bound that about
     * 1.25 k + 64 keys reach; one pass lists those positions (in order),
     * and the exact choice is made among them alone. The bound only
     * decides how much is looked at: when fewer than k reach it, the whole
     * row is searched instead. Either way the result is the same set. */
    if (n >= 4096) {
        memset(hist, 0, 2048 * sizeof *hist);
        for (int i = 0; i < n; i += 8) hist[score_key(scores[i]) >> (32 - TOPK_B0)]++;
        const uint32_t want = (uint32_t)(k + k / 4 + 64 + 7) / 8;
        uint32_t above = 0;
        int b = 2047;
        while (b > 0 && (above += hist[b]) < want) b--;
        const uint32_t lo = (uint32_t)b << (32 - TOPK_B0);
        int nc = 0;
        for (int i = 0; i < n; i++) {
            cand[nc] = i;
            nc += score_key(scores[i]) >= lo;
        }
        if (nc >= k) {
            const uint32_t thr = kth_key(scores, cand, nc, k, hist, work, &need);
            for (int c = 0; c < nc && out < k; c++) {
                const uint32_t key = score_key(scores[cand[c]]);
                const int eq = key == thr && need > 0;
                need -= eq;
                pos[out] = cand[c];
                out += key > thr || eq;
            }
            goto ranked;
        }
    }
    {
        /* thr is the k-th key; need of the keys equal to it are taken, the
         * lowest positions first. */
        const uint32_t thr = kth_key(scores, NULL, n, k, hist, cand, &need);
        for (int i = 0; i < n && out < k; i++) {
            const uint32_t key = score_key(scores[i]);
            const int eq = key == thr && need > 0;
            need -= eq;
            pos[out] = i;
            out += key > thr || eq;
        }
    }
ranked:
    if (!ranked) return;
    /* Only for dumps: sort the chosen by rank (the candidates' room holds 2n int32). */
    struct ranked *r = (struct ranked *)cand;
    for (int i = 0; i < k; i++) r[i] = (struct ranked){score_key(scores[pos[i]]), pos[i]};
    qsort(r, (size_t)k, sizeof *r, cmp_ranked);
    for (int i = 0; i < k; i++) ranked[i] = r[i].pos;
}
