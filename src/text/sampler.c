/* sampler.c: the sampling chain and the stop-string matcher (see
 * include/dsv32_sampler.h for the contract and the order of the chain).
 *
 * Sampling works on a private copy of the logits in `cand` (id, logit, p),
 * allocated once for the whole vocabulary: bias and penalties are applied by
 * id, then the array is compacted to the live tokens, and top-k/top-p only
 * ever order the part they need (a quickselect, then a sort of the winners),
 * so the common case costs O(vocab), not O(vocab log vocab), and no call
 * allocates. Every ordering uses one strict total order (higher logit first,
 * then lower id), which makes the result independent of the algorithm.
 *
 * Randomness: xoshiro256** (Blackman & Vigna), its state filled from the
 * seed by splitmix64 as its authors recommend; one 64-bit draw per token,
 * 53 bits of it as a uniform double in [0, 1).
 *
 * The stop matcher keeps the text it has not yet released; see dsv_stop_feed
 * for why what it releases can never be part of a stop string. */
#include "dsv32_sampler.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text.h"
#include "base/util.h"

/* ==== Random numbers ====================================================== */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1): the top 53 bits, so every value is an exact double. */
static double uniform01(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

/* For DSV_SEED_RANDOM: clock readings, the object's address and a counter
 * (two samplers made in the same nanosecond still differ), mixed. */
static uint64_t fresh_seed(const void *salt) {
    static atomic_uint_fast64_t counter;
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t x = ((uint64_t)a.tv_sec * 1000000000u + (uint64_t)a.tv_nsec) ^ ((uint64_t)b.tv_nsec << 32) ^
                 (uint64_t)(uintptr_t)salt ^ (atomic_fetch_add(&counter, 1) * 0xD1B54A32D192ED03ull);
    uint64_t seed = splitmix64(&x);
    /* Never hand out the "random" marker itself: it could not be replayed. */
    return seed == DSV_SEED_RANDOM ? 0 : seed;
}

/* ==== The sampler ========================================================= */

struct dsv_sampler {
    dsv_sampler_params p;   /* p.logit_bias points at `bias` */
    dsv_logit_bias *bias;   /* [p.n_logit_bias], our copy */
    int32_t n_vocab;
    uint64_t seed;          /* the effective seed */
    uint64_t rng[4];
    dsv_token_prob *cand;   /* [n_vocab] scratch for one call */
    int32_t *rep_count;     /* [n_vocab] occurrences in the repetition window; NULL when off */
    int32_t *ring;          /* [p.repetition_last_n] that window, when it is bounded */
    int32_t ring_len, ring_pos;
    int32_t *gen_count;     /* [n_vocab] generated occurrences; NULL when presence/frequency are off */
    uint32_t *allowed;      /* [(n_vocab + 31) / 32] the constraint's bits; NULL without one */
};

dsv_sampler_params dsv_sampler_default_params(void) {
    return (dsv_sampler_params){
        .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
        .repetition_penalty = 1.0f, .repetition_last_n = -1,
        .presence_penalty = 0.0f, .frequency_penalty = 0.0f,
        .logit_bias = NULL, .n_logit_bias = 0, .seed = DSV_SEED_RANDOM,
    };
}

static int check_params(const dsv_sampler_params *p, int32_t n_vocab) {
    /* Written as !(ok) so that NaN fails every check. */
    if (!(p->temperature >= 0 && p->temperature < INFINITY))
        return dsv_error(DSV_ERR_ARG, "sampler: temperature must be finite and >= 0 (got %g)", (double)p->temperature);
    if (p->top_k < 0) return dsv_error(DSV_ERR_ARG, "sampler: top_k must be >= 0 (got %d)", (int)p->top_k);
    if (!(p->top_p >= 0 && p->top_p <= 1))
        return dsv_error(DSV_ERR_ARG, "sampler: top_p must be in [0, 1] (got %g)", (double)p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return dsv_error(DSV_ERR_ARG, "sampler: min_p must be in [0, 1] (got %g)", (double)p->min_p);
    if (!(p->repetition_penalty > 0 && p->repetition_penalty < INFINITY))
        return dsv_error(DSV_ERR_ARG, "sampler: repetition_penalty must be finite and > 0 (got %g)",
                         (double)p->repetition_penalty);
    if (p->repetition_last_n < -1)
        return dsv_error(DSV_ERR_ARG, "sampler: repetition_last_n must be >= -1 (got %d)", (int)p->repetition_last_n);
    if (!isfinite(p->presence_penalty))
        return dsv_error(DSV_ERR_ARG, "sampler: presence_penalty must be finite (got %g)", (double)p->presence_penalty);
    if (!isfinite(p->frequency_penalty))
        return dsv_error(DSV_ERR_ARG, "sampler: frequency_penalty must be finite (got %g)", (double)p->frequency_penalty);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return dsv_error(DSV_ERR_ARG, "sampler: bad logit_bias array (n_logit_bias = %d)", (int)p->n_logit_bias);
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].id < 0 || p->logit_bias[i].id >= n_vocab)
            return dsv_error(DSV_ERR_ARG, "sampler: logit_bias[%d].id %d is outside the vocabulary [0, %d)",
                             (int)i, (int)p->logit_bias[i].id, (int)n_vocab);
        if (isnan(p->logit_bias[i].bias))
            return dsv_error(DSV_ERR_ARG, "sampler: logit_bias[%d].bias is NaN", (int)i);
    }
    return DSV_OK;
}

int dsv_sampler_init(dsv_sampler **out, int32_t n_vocab, const dsv_sampler_params *params) {
    dsv_sampler_params p = params ? *params : dsv_sampler_default_params();
    if (!out) return dsv_error(DSV_ERR_ARG, "sampler: out is NULL");
    if (n_vocab <= 0) return dsv_error(DSV_ERR_ARG, "sampler: n_vocab must be > 0 (got %d)", (int)n_vocab);
    int rc = check_params(&p, n_vocab);
    if (rc) return rc;
    dsv_sampler *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "sampler: out of memory");
    int rep = p.repetition_penalty != 1.0f && p.repetition_last_n != 0;
    int gen = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->rep_count = rep ? calloc((size_t)n_vocab, sizeof *s->rep_count) : NULL;
    s->ring = rep && p.repetition_last_n > 0 ? malloc((size_t)p.repetition_last_n * sizeof *s->ring) : NULL;
    s->gen_count = gen ? calloc((size_t)n_vocab, sizeof *s->gen_count) : NULL;
    s->bias = p.n_logit_bias ? malloc((size_t)p.n_logit_bias * sizeof *s->bias) : NULL;
    s->allowed = p.constraint ? malloc(((size_t)n_vocab + 31) / 32 * sizeof *s->allowed) : NULL;
    if (!s->cand || (rep && !s->rep_count) || (rep && p.repetition_last_n > 0 && !s->ring) ||
        (gen && !s->gen_count) || (p.n_logit_bias && !s->bias) || (p.constraint && !s->allowed)) {
        dsv_sampler_free(s);
        return dsv_error(DSV_ERR_NOMEM, "sampler: out of memory for a vocabulary of %d", (int)n_vocab);
    }
    if (p.n_logit_bias) memcpy(s->bias, p.logit_bias, (size_t)p.n_logit_bias * sizeof *s->bias);
    p.logit_bias = s->bias;
    s->p = p;
    s->seed = p.seed == DSV_SEED_RANDOM ? fresh_seed(s) : p.seed;
    dsv_sampler_reset(s);
    *out = s;
    return DSV_OK;
}

void dsv_sampler_free(dsv_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->rep_count);
    free(s->ring);
    free(s->gen_count);
    free(s->bias);
    free(s->allowed);
    free(s);
}

uint64_t dsv_sampler_seed(const dsv_sampler *s) { return s->seed; }

void dsv_sampler_reset(dsv_sampler *s) {
    if (s->rep_count) memset(s->rep_count, 0, (size_t)s->n_vocab * sizeof *s->rep_count);
    if (s->gen_count) memset(s->gen_count, 0, (size_t)s->n_vocab * sizeof *s->gen_count);
    s->ring_len = s->ring_pos = 0;
    uint64_t x = s->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

/* Adds id to the repetition window, dropping the oldest when it is full. */
static void rep_push(dsv_sampler *s, int32_t id) {
    if (!s->rep_count) return;
    if (s->ring) {
        int32_t cap = s->p.repetition_last_n;
        if (s->ring_len == cap) s->rep_count[s->ring[s->ring_pos]]--;
        else s->ring_len++;
        s->ring[s->ring_pos] = id;
        s->ring_pos = (s->ring_pos + 1) % cap;
    }
    s->rep_count[id]++;
}

int dsv_sampler_accept_prompt(dsv_sampler *s, const int32_t *ids, size_t n) {
    if (!s || (n && !ids)) return dsv_error(DSV_ERR_ARG, "sampler: NULL argument");
    /* Check everything first so that a bad id leaves the history untouched. */
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return dsv_error(DSV_ERR_ARG, "sampler: prompt token %zu: id %d is outside [0, %d)", i, (int)ids[i],
                             (int)s->n_vocab);
    for (size_t i = 0; i < n; i++) rep_push(s, ids[i]);
    return DSV_OK;
}

int dsv_sampler_accept(dsv_sampler *s, int32_t id) {
    if (!s) return dsv_error(DSV_ERR_ARG, "sampler: NULL sampler");
    if (id < 0 || id >= s->n_vocab)
        return dsv_error(DSV_ERR_ARG, "sampler: token id %d is outside [0, %d)", (int)id, (int)s->n_vocab);
    if (s->p.constraint) {
        int rc = s->p.constraint->accept(s->p.constraint->user, id);
        if (rc) return rc;
    }
    if (s->gen_count) s->gen_count[id]++;
    rep_push(s, id);
    return DSV_OK;
}

/* --- Ordering: higher logit first, then lower id (a strict total order). */

static int better(const dsv_token_prob *a, const dsv_token_prob *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static void swap_tp(dsv_token_prob *a, dsv_token_prob *b) {
    dsv_token_prob t = *a;
    *a = *b;
    *b = t;
}

/* Partitions a[l..r) (r - l >= 3) around the median of its first, middle and
 * last elements; returns the pivot's final index: a[l..p) are better than it,
 * a[p+1..r) worse. */
static size_t partition(dsv_token_prob *a, size_t l, size_t r) {
    size_t m = l + (r - l) / 2, h = r - 1;
    if (better(&a[m], &a[l])) swap_tp(&a[m], &a[l]);
    if (better(&a[h], &a[l])) swap_tp(&a[h], &a[l]);
    if (better(&a[h], &a[m])) swap_tp(&a[h], &a[m]);
    swap_tp(&a[m], &a[h]); /* the median is the pivot, parked at the end */
    size_t i = l;
    for (size_t j = l; j < h; j++)
        if (better(&a[j], &a[h])) swap_tp(&a[i++], &a[j]);
    swap_tp(&a[i], &a[h]);
    return i;
}

static void sort_range(dsv_token_prob *a, size_t l, size_t r) {
    while (r - l > 16) {
        size_t p = partition(a, l, r);
        /* Recurse into the smaller side so the stack stays O(log n). */
        if (p - l < r - p) { sort_range(a, l, p); l = p + 1; }
        else { sort_range(a, p + 1, r); r = p; }
    }
    for (size_t i = l + 1; i < r; i++)
        for (size_t j = i; j > l && better(&a[j], &a[j - 1]); j--) swap_tp(&a[j], &a[j - 1]);
}

/* Quickselect: afterwards a[l0..t) are the t - l0 best of a[l0..r), in no
 * particular order. */
static void select_best(dsv_token_prob *a, size_t l, size_t r, size_t t) {
    while (r - l > 2) {
        size_t p = partition(a, l, r);
        if (p == t) return;
        if (p < t) l = p + 1;
        else r = p;
    }
    if (r - l == 2 && better(&a[l + 1], &a[l])) swap_tp(&a[l], &a[l + 1]);
}

/* Sorts the best hi - lo of a[lo..n) into a[lo..hi). */
static void sort_best(dsv_token_prob *a, size_t lo, size_t hi, size_t n) {
    if (hi < n) select_best(a, lo, n, hi);
    sort_range(a, lo, hi);
}

/* --- The chain. */

int dsv_sampler_dist(dsv_sampler *s, const float *logits, const dsv_token_prob **cands, int32_t *n_cands) {
    if (!s || !logits || !cands || !n_cands) return dsv_error(DSV_ERR_ARG, "sampler: NULL argument");
    const dsv_sampler_params *p = &s->p;
    dsv_token_prob *c = s->cand;
    size_t V = (size_t)s->n_vocab;

    /* 1-2. Bias and penalties, addressed by id while c[i].id == i. */
    for (size_t i = 0; i < V; i++) c[i] = (dsv_token_prob){(int32_t)i, logits[i], 0};
    if (p->constraint) {
        /* 0. The constraint: what it does not allow is banned outright. */
        memset(s->allowed, 0, (V + 31) / 32 * sizeof *s->allowed);
        int rc = p->constraint->allowed(p->constraint->user, s->allowed);
        if (rc) return rc;
        for (size_t i = 0; i < V; i++)
            if (!(s->allowed[i / 32] >> (i % 32) & 1)) c[i].logit = -INFINITY;
    }
    for (int32_t i = 0; i < p->n_logit_bias; i++) c[s->bias[i].id].logit += s->bias[i].bias;
    if (s->rep_count) {
        float rp = p->repetition_penalty;
        for (size_t i = 0; i < V; i++)
            if (s->rep_count[i]) c[i].logit = c[i].logit > 0 ? c[i].logit / rp : c[i].logit * rp;
    }
    if (s->gen_count) {
        for (size_t i = 0; i < V; i++)
            if (s->gen_count[i])
                c[i].logit -= (float)s->gen_count[i] * p->frequency_penalty + p->presence_penalty;
    }

    /* Drop banned tokens (and NaN); +inf, if present, outranks everything. */
    size_t n = 0;
    int any_inf = 0;
    for (size_t i = 0; i < V; i++) {
        float l = c[i].logit;
        if (isnan(l) || l == -INFINITY) continue;
        any_inf |= l == INFINITY;
        c[n++] = c[i];
    }
    if (!n) return dsv_error(DSV_ERR_ARG, "sampler: no token left to sample (every logit is -inf or NaN)");
    if (any_inf) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].logit == INFINITY) { c[m] = c[i]; c[m++].logit = 0; }
        n = m;
    }

    if (p->temperature == 0) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (better(&c[i], &c[best])) best = i;
        c[0] = c[best];
        c[0].p = 1;
        *cands = c;
        *n_cands = 1;
        return DSV_OK;
    }

    /* 3. top-k. `sorted`: how many leading entries are in final order. */
    size_t sorted = 0;
    if (p->top_k > 0) {
        size_t k = DSV_MIN((size_t)p->top_k, n);
        sort_best(c, 0, k, n);
        n = sorted = k;
    }
    float max = c[0].logit;
    for (size_t i = 1; i < n; i++) max = c[i].logit > max ? c[i].logit : max;

    /* 4. top-p over the temperature-1 distribution of the survivors: keep
     * the smallest best-first prefix whose weight reaches top_p of the total.
     * Weights w = exp(l - max) <= 1 are kept in .p until step 6; sums are in
     * double and compared unnormalized (cum >= top_p * sum), so for exactly
     * representable weights (e.g. ties) the boundary is exact. Only as much
     * of the array is sorted as the walk reaches, growing 4x at a time. */
    int have_w = 0;
    if (p->top_p < 1) {
        double sum = 0, cum = 0;
        for (size_t i = 0; i < n; i++) sum += c[i].p = expf(c[i].logit - max);
        have_w = 1;
        double target = (double)p->top_p * sum;
        for (size_t i = 0; i < n; i++) {
            if (i == sorted) {
                size_t hi = DSV_MIN(n, sorted ? 4 * sorted : 64);
                sort_best(c, sorted, hi, n);
                sorted = hi;
            }
            cum += c[i].p;
            if (cum >= target) { n = i + 1; break; }
        }
    }

    /* 5. min-p: p(i) / p(best) = exp(l_i - max), independent of the total. */
    if (p->min_p > 0) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if ((have_w ? c[i].p : expf(c[i].logit - max)) >= p->min_p) c[m++] = c[i];
        n = m;
    }

    /* 6. Temperature and softmax (the weights at T = 1 are reused). */
    double sum = 0;
    if (p->temperature == 1.0f && have_w) {
        for (size_t i = 0; i < n; i++) sum += c[i].p;
    } else {
        float inv_t = 1.0f / p->temperature;
        for (size_t i = 0; i < n; i++) sum += c[i].p = expf((c[i].logit - max) * inv_t);
    }
    for (size_t i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
    *cands = c;
    *n_cands = (int32_t)n;
    return DSV_OK;
}

int dsv_sampler_sample(dsv_sampler *s, const float *logits, int32_t *out_id) {
    const dsv_token_prob *c;
    int32_t n;
    if (!out_id) return dsv_error(DSV_ERR_ARG, "sampler: out_id is NULL");
    int rc = dsv_sampler_dist(s, logits, &c, &n);
    if (rc) return rc;
    if (n == 1) { *out_id = c[0].id; return DSV_OK; }
    /* 7. Inverse CDF. The target is scaled by the float p's own sum so that
     * rounding in the p's cannot push it past the end. */
    double total = 0, acc = 0;
    for (int32_t i = 0; i < n; i++) total += c[i].p;
    double target = uniform01(s->rng) * total;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        if (c[i].p <= 0) continue;
        last = i;
        acc += c[i].p;
        if (acc > target) break;
    }
    *out_id = c[last].id;
    return DSV_OK;
}

/* ==== Stop strings ======================================================== */

struct dsv_stop {
    char **strs;        /* [n_strs] our copies */
    int n_strs;
    int32_t *ids;       /* [n_ids] stop token ids */
    int n_ids;
    dsv_buf held;       /* text received and not yet released */
    size_t released;    /* bytes of `held` handed out by the last call */
    int matched;        /* index of the matched stop string, or -1 */
};

int dsv_stop_init(dsv_stop **out, const char *const *strings, int n_strings,
                  const int32_t *token_ids, int n_token_ids) {
    if (!out) return dsv_error(DSV_ERR_ARG, "stop: out is NULL");
    if (n_strings < 0 || (n_strings && !strings))
        return dsv_error(DSV_ERR_ARG, "stop: bad strings array (n_strings = %d)", n_strings);
    if (n_token_ids < 0 || (n_token_ids && !token_ids))
        return dsv_error(DSV_ERR_ARG, "stop: bad token id array (n_token_ids = %d)", n_token_ids);
    for (int i = 0; i < n_strings; i++)
        if (!strings[i] || !strings[i][0]) return dsv_error(DSV_ERR_ARG, "stop: string %d is empty", i);
    dsv_stop *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "stop: out of memory");
    s->matched = -1;
    s->strs = calloc((size_t)n_strings + 1, sizeof *s->strs);
    s->ids = malloc(((size_t)n_token_ids + 1) * sizeof *s->ids);
    int ok = s->strs && s->ids;
    for (int i = 0; ok && i < n_strings; i++, s->n_strs++) ok = (s->strs[i] = strdup(strings[i])) != NULL;
    if (!ok) {
        dsv_stop_free(s);
        return dsv_error(DSV_ERR_NOMEM, "stop: out of memory");
    }
    if (n_token_ids) memcpy(s->ids, token_ids, (size_t)n_token_ids * sizeof *s->ids);
    s->n_ids = n_token_ids;
    *out = s;
    return DSV_OK;
}

void dsv_stop_free(dsv_stop *s) {
    if (!s) return;
    for (int i = 0; i < s->n_strs; i++) free(s->strs[i]);
    free(s->strs);
    free(s->ids);
    dsv_buf_free(&s->held);
    free(s);
}

int dsv_stop_is_token(const dsv_stop *s, int32_t id) {
    for (int i = 0; i < s->n_ids; i++)
        if (s->ids[i] == id) return 1;
    return 0;
}

int dsv_stop_matched(const dsv_stop *s) { return s->matched; }

void dsv_stop_reset(dsv_stop *s) {
    dsv_buf_clear(&s->held);
    s->released = 0;
    s->matched = -1;
}

int dsv_stop_feed(dsv_stop *s, const char *text, size_t len, const char **emit, size_t *emit_len) {
    if (!s || !emit || !emit_len || (len && !text)) return dsv_error(DSV_ERR_ARG, "stop: NULL argument");
    /* What the caller took last time is gone now. */
    dsv_buf_consume(&s->held, s->released);
    s->released = 0;
    *emit = "";
    *emit_len = 0;
    if (s->matched >= 0) return 1;
    if (dsv_buf_add(&s->held, text, len)) return dsv_error(DSV_ERR_NOMEM, "stop: out of memory");
    const char *h = s->held.data;
    size_t n = s->held.len;

    /* The occurrence that ends first (then starts first): the first one a
     * byte-at-a-time feed would complete, so the answer is split-invariant.
     * Searching only `held` is enough: every released byte was released
     * because no stop string could start there. */
    int best = -1;
    size_t best_end = 0, best_at = 0;
    for (int i = 0; i < s->n_strs; i++) {
        size_t sl = strlen(s->strs[i]);
        const char *f = dsv_memfind(h, n, s->strs[i], sl);
        if (!f) continue;
        size_t at = (size_t)(f - h), end = at + sl;
        if (best < 0 || end < best_end || (end == best_end && at < best_at)) {
            best = i;
            best_end = end;
            best_at = at;
        }
    }
    if (best >= 0) {
        s->matched = best;
        *emit = h;
        *emit_len = best_at;
        s->released = n; /* the stop string and the rest are dropped */
        return 1;
    }
    /* Hold the longest tail that is still the start of some stop string. */
    size_t keep = dsv_partial_suffix(h, n, (const char *const *)s->strs, s->n_strs);
    *emit = h;
    *emit_len = s->released = n - keep;
    return 0;
}

void dsv_stop_flush(dsv_stop *s, const char **emit, size_t *emit_len) {
    dsv_buf_consume(&s->held, s->released);
    *emit = s->held.data ? s->held.data : "";
    *emit_len = s->matched >= 0 ? 0 : s->held.len;
    s->released = s->held.len;
}
