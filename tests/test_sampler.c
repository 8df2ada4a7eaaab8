/* test_sampler.c: the sampling chain (greedy, distribution, each filter,
 * penalties, bias, seeding) and the stop-string matcher. Statistical tests
 * use fixed seeds, so they are deterministic; their thresholds are the
 * chi-square critical values at p = 0.001. */
#include <stdlib.h> /* defines __GLIBC__ where it applies */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
#define HAVE_MALLINFO2 1
#include <malloc.h>
#endif

#include "dsv32_sampler.h"
#include "test.h"

static uint32_t lcg(uint32_t *x) { return *x = *x * 1664525u + 1013904223u; }

/* A sampler with the defaults but these settings; aborts the test on error. */
static dsv_sampler *make(int32_t n_vocab, dsv_sampler_params p) {
    dsv_sampler *s = NULL;
    int rc = dsv_sampler_init(&s, n_vocab, &p);
    REQUIREF(rc == DSV_OK, "dsv_sampler_init: %s", dsv_errmsg());
    return s;
}

static dsv_sampler_params params(float temperature, uint64_t seed) {
    dsv_sampler_params p = dsv_sampler_default_params();
    p.temperature = temperature;
    p.seed = seed;
    return p;
}

static int32_t sample(dsv_sampler *s, const float *logits) {
    int32_t id = -1;
    int rc = dsv_sampler_sample(s, logits, &id);
    REQUIREF(rc == DSV_OK, "dsv_sampler_sample: %s", dsv_errmsg());
    return id;
}

/* softmax(logits / t) in double. */
static void softmax(const float *logits, int n, double t, double *out) {
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) max = fmax(max, logits[i]);
    for (int i = 0; i < n; i++) sum += out[i] = exp((logits[i] - max) / t);
    for (int i = 0; i < n; i++) out[i] /= sum;
}

/* Draws n_draws tokens and returns the chi-square statistic against want. */
static double chi_square(dsv_sampler *s, const float *logits, int n, const double *want, int n_draws) {
    int count[64] = {0};
    REQUIRE(n <= 64);
    for (int d = 0; d < n_draws; d++) {
        int32_t id = sample(s, logits);
        REQUIRE(id >= 0 && id < n);
        count[id]++;
    }
    double chi = 0;
    for (int i = 0; i < n; i++) {
        double e = want[i] * n_draws;
        if (e == 0) { CHECKF(count[i] == 0, "token %d has probability 0 but was drawn %d times", i, count[i]); continue; }
        chi += (count[i] - e) * (count[i] - e) / e;
    }
    return chi;
}

TEST(sampler_greedy_is_argmax) {
    uint32_t x = 7;
    float logits[1000];
    dsv_sampler_params p = params(0, 1);
    p.top_k = 5; /* filters never change the argmax */
    p.top_p = 0.3f;
    p.min_p = 0.5f;
    dsv_sampler *s = make(1000, p);
    for (int trial = 0; trial < 200; trial++) {
        int best = 0;
        for (int i = 0; i < 1000; i++) {
            logits[i] = (float)(lcg(&x) >> 8) / (1 << 20) - 8.0f;
            if (logits[i] > logits[best]) best = i;
        }
        CHECK_EQ_INT(sample(s, logits), best);
    }
    /* Ties go to the lowest id. */
    for (int i = 0; i < 1000; i++) logits[i] = (i % 7 == 3) ? 5.0f : 1.0f;
    CHECK_EQ_INT(sample(s, logits), 3);
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(c[0].id, 3);
    CHECK(c[0].p == 1.0f);
    dsv_sampler_free(s);
}

TEST(sampler_distribution_matches_softmax) {
    const float logits[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, -0.5f};
    double want[8];
    softmax(logits, 8, 1.0, want);
    dsv_sampler *s = make(8, params(1.0f, 42));
    /* dist() reports the same probabilities. */
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    CHECK_EQ_INT(n, 8);
    for (int i = 0; i < n; i++) CHECK_NEAR(c[i].p, want[c[i].id], 1e-6);
    double chi = chi_square(s, logits, 8, want, 100000);
    CHECKF(chi < 24.322, "chi-square %.2f >= 24.322 (df 7, p = 0.001)", chi);
    dsv_sampler_free(s);
}

TEST(sampler_temperature) {
    const float logits[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, -0.5f};
    const float temps[] = {0.5f, 2.0f, 0.1f};
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        double want[8];
        softmax(logits, 8, temps[t], want);
        dsv_sampler *s = make(8, params(temps[t], 1000 + t));
        double chi = chi_square(s, logits, 8, want, 100000);
        CHECKF(chi < 24.322, "T = %g: chi-square %.2f >= 24.322", (double)temps[t], chi);
        dsv_sampler_free(s);
    }
    /* Lower temperature concentrates mass on the best token. */
    double p05[8], p1[8], p2[8];
    softmax(logits, 8, 0.5, p05);
    softmax(logits, 8, 1.0, p1);
    softmax(logits, 8, 2.0, p2);
    CHECK(p05[4] > p1[4] && p1[4] > p2[4]);
    dsv_sampler *s = make(8, params(0.5f, 3));
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    for (int i = 0; i < n; i++) CHECK_NEAR(c[i].p, p05[c[i].id], 1e-6);
    dsv_sampler_free(s);
}

/* Is id among the candidates? */
static int has(const dsv_token_prob *c, int32_t n, int32_t id) {
    for (int32_t i = 0; i < n; i++)
        if (c[i].id == id) return 1;
    return 0;
}

TEST(sampler_top_k) {
    enum { V = 5000 };
    static float logits[V];
    uint32_t x = 99;
    for (int i = 0; i < V; i++) logits[i] = (float)(lcg(&x) % 100000) / 1000.0f;
    const int ks[] = {1, 2, 10, 40, 4999, 5000, 6000};
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        dsv_sampler_params p = params(1.0f, 5);
        p.top_k = ks[t];
        dsv_sampler *s = make(V, p);
        const dsv_token_prob *c;
        int32_t n;
        REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
        int k = ks[t] < V ? ks[t] : V;
        CHECK_EQ_INT(n, k);
        /* Exactly the k best under (higher logit, lower id): each kept token
         * beats or ties every dropped one, and the kept are in that order. */
        float worst_kept = INFINITY;
        double psum = 0;
        for (int i = 0; i < n; i++) {
            worst_kept = fminf(worst_kept, c[i].logit);
            psum += c[i].p;
            if (i) CHECK(c[i - 1].logit > c[i].logit || (c[i - 1].logit == c[i].logit && c[i - 1].id < c[i].id));
        }
        CHECK_NEAR(psum, 1.0, 1e-5);
        int n_above = 0;
        for (int i = 0; i < V; i++) n_above += logits[i] > worst_kept;
        CHECK(n_above < k);
        for (int d = 0; d < 200; d++) CHECK(has(c, n, sample(s, logits)) || k == V);
        dsv_sampler_free(s);
    }
    /* Ties at the boundary go to the lower ids. */
    float flat[10] = {0};
    dsv_sampler_params p = params(1.0f, 5);
    p.top_k = 3;
    dsv_sampler *s = make(10, p);
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, flat, &c, &n) == DSV_OK);
    REQUIRE(n == 3);
    CHECK(c[0].id == 0 && c[1].id == 1 && c[2].id == 2);
    for (int i = 0; i < 3; i++) CHECK(c[i].p == 1.0f / 3);
    dsv_sampler_free(s);
}

static int32_t top_p_count(const float *logits, int V, float top_p) {
    dsv_sampler_params p = params(1.0f, 5);
    p.top_p = top_p;
    dsv_sampler *s = make(V, p);
    const dsv_token_prob *c;
    int32_t n = -1;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    dsv_sampler_free(s);
    return n;
}

TEST(sampler_top_p_boundary) {
    /* Four equal tokens: each has probability exactly 0.25, so the cumulative
     * sums 0.25, 0.5, 0.75, 1 are exact and the boundary is sharp. */
    const float flat[4] = {0, 0, 0, 0};
    CHECK_EQ_INT(top_p_count(flat, 4, 0.25f), 1);
    CHECK_EQ_INT(top_p_count(flat, 4, 0.5f), 2);   /* reaching p exactly is enough */
    CHECK_EQ_INT(top_p_count(flat, 4, nextafterf(0.5f, 1)), 3);
    CHECK_EQ_INT(top_p_count(flat, 4, nextafterf(0.5f, 0)), 2);
    CHECK_EQ_INT(top_p_count(flat, 4, 0.75f), 3);
    CHECK_EQ_INT(top_p_count(flat, 4, 1.0f), 4);
    CHECK_EQ_INT(top_p_count(flat, 4, 0.0f), 1);   /* the best token always stays */
    /* Two heavy tokens (weight 1) and four light ones (weight e^-4 each):
     * thresholds just below or above a cumulative sum. */
    const float groups[6] = {5, 5, 1, 1, 1, 1};
    double w_hi = 1.0, w_lo = exp(-4.0), sum = 2 * w_hi + 4 * w_lo;
    CHECK_EQ_INT(top_p_count(groups, 6, (float)(w_hi / sum)), 1);
    CHECK_EQ_INT(top_p_count(groups, 6, (float)(2 * w_hi / sum) * 0.999f), 2);
    CHECK_EQ_INT(top_p_count(groups, 6, (float)((2 * w_hi + w_lo) / sum) * 1.00001f), 4);
    CHECK_EQ_INT(top_p_count(groups, 6, 0.9999999f), 6);
}

/* The sampler's order, for qsort: higher logit first, then lower id. */
static const float *order_logits;
static int by_rank(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    float li = order_logits[i], lj = order_logits[j];
    return li > lj ? -1 : li < lj ? 1 : (i > j) - (i < j);
}

TEST(sampler_top_p_large_vocab) {
    /* The sampler sorts only as far as top-p reaches; it must keep exactly
     * what a full sort keeps, in the same order. */
    enum { V = 20000 };
    static float logits[V];
    static int order[V];
    uint32_t x = 3;
    for (int i = 0; i < V; i++) logits[i] = (float)(lcg(&x) % 20000) / 2000.0f;
    for (int i = 0; i < V; i++) order[i] = i;
    order_logits = logits;
    qsort(order, V, sizeof order[0], by_rank);
    /* The same arithmetic as the sampler: float weights, double sums. */
    float max = logits[order[0]];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += expf(logits[i] - max);
    const float ps[] = {0.1f, 0.5f, 0.9f, 0.99f};
    for (size_t t = 0; t < sizeof ps / sizeof ps[0]; t++) {
        double cum = 0;
        int want = V;
        for (int i = 0; i < V; i++) {
            cum += expf(logits[order[i]] - max);
            if (cum >= (double)ps[t] * sum) { want = i + 1; break; }
        }
        dsv_sampler_params p = params(1.0f, 5);
        p.top_p = ps[t];
        dsv_sampler *s = make(V, p);
        const dsv_token_prob *c;
        int32_t n;
        REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
        CHECKF(n == want, "top_p %g: kept %d, want %d", (double)ps[t], (int)n, want);
        for (int i = 0; i < n && i < want; i++) CHECK_EQ_INT(c[i].id, order[i]);
        dsv_sampler_free(s);
    }
}

TEST(sampler_min_p) {
    /* Probability ratios to the best: 1, 1/2, 1/10, 1/20 (exp of the logit gap). */
    const float logits[4] = {0.0f, (float)log(0.5), (float)log(0.1), (float)log(0.05)};
    const struct { float min_p; int n; } cases[] = {
        {0.0f, 4}, {0.04f, 4}, {0.06f, 3}, {0.2f, 2}, {0.49f, 2}, {0.51f, 1}, {1.0f, 1},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        dsv_sampler_params p = params(1.0f, 5);
        p.min_p = cases[t].min_p;
        dsv_sampler *s = make(4, p);
        const dsv_token_prob *c;
        int32_t n;
        REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
        CHECKF(n == cases[t].n, "min_p %g: kept %d, want %d", (double)cases[t].min_p, (int)n, cases[t].n);
        for (int i = 0; i < n; i++) CHECK(c[i].id < cases[t].n);
        dsv_sampler_free(s);
    }
    /* min_p = 1 keeps every token tied with the best (ratio exactly 1). */
    const float tied[5] = {2, 1, 2, 2, 0};
    dsv_sampler_params p = params(1.0f, 5);
    p.min_p = 1.0f;
    dsv_sampler *s = make(5, p);
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, tied, &c, &n) == DSV_OK);
    CHECK_EQ_INT(n, 3);
    CHECK(has(c, n, 0) && has(c, n, 2) && has(c, n, 3));
    dsv_sampler_free(s);
}

/* The post-penalty logit of each token (temperature 1, no filters). */
static void penalized(dsv_sampler *s, const float *logits, int V, float *out) {
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    REQUIRE(n == V);
    for (int i = 0; i < n; i++) out[c[i].id] = c[i].logit;
}

TEST(sampler_penalties) {
    const float logits[5] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f};
    float got[5];
    /* Repetition: divide positive, multiply negative, over prompt + generated. */
    dsv_sampler_params p = params(1.0f, 1);
    p.repetition_penalty = 2.0f;
    dsv_sampler *s = make(5, p);
    const int32_t prompt[] = {0, 1, 0};
    REQUIRE(dsv_sampler_accept_prompt(s, prompt, 3) == DSV_OK);
    REQUIRE(dsv_sampler_accept(s, 4) == DSV_OK);
    penalized(s, logits, 5, got);
    CHECK(got[0] == 1.0f && got[1] == -4.0f && got[2] == 1.0f && got[3] == 0.5f && got[4] == 0.0f);
    dsv_sampler_reset(s);
    penalized(s, logits, 5, got);
    CHECK(got[0] == 2.0f && got[1] == -2.0f);
    dsv_sampler_free(s);

    /* A window of the last 2 tokens. */
    p.repetition_last_n = 2;
    s = make(5, p);
    const int32_t hist[] = {0, 1, 2};
    REQUIRE(dsv_sampler_accept_prompt(s, hist, 3) == DSV_OK);
    penalized(s, logits, 5, got);
    CHECK(got[0] == 2.0f && got[1] == -4.0f && got[2] == 0.5f);
    REQUIRE(dsv_sampler_accept(s, 2) == DSV_OK); /* window: 2, 2 */
    penalized(s, logits, 5, got);
    CHECK(got[0] == 2.0f && got[1] == -2.0f && got[2] == 0.5f);
    dsv_sampler_free(s);

    /* Presence and frequency: generated tokens only. */
    p = params(1.0f, 1);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = make(5, p);
    REQUIRE(dsv_sampler_accept_prompt(s, prompt, 3) == DSV_OK);
    REQUIRE(dsv_sampler_accept(s, 2) == DSV_OK);
    REQUIRE(dsv_sampler_accept(s, 2) == DSV_OK);
    REQUIRE(dsv_sampler_accept(s, 3) == DSV_OK);
    penalized(s, logits, 5, got);
    CHECK(got[0] == 2.0f && got[1] == -2.0f);
    CHECK_NEAR(got[2], 1.0 - 2 * 0.25 - 0.5, 1e-7);
    CHECK_NEAR(got[3], 0.5 - 0.25 - 0.5, 1e-7);
    CHECK(got[4] == 0.0f);
    /* A penalty can change the greedy choice. */
    dsv_sampler_free(s);
    p.temperature = 0;
    p.frequency_penalty = 3.0f;
    s = make(5, p);
    CHECK_EQ_INT(sample(s, logits), 0);
    REQUIRE(dsv_sampler_accept(s, 0) == DSV_OK);
    CHECK_EQ_INT(sample(s, logits), 2);
    dsv_sampler_free(s);
}

TEST(sampler_logit_bias) {
    const float logits[4] = {3.0f, 1.0f, 0.0f, -1.0f};
    const dsv_logit_bias ban[] = {{0, -INFINITY}, {2, 1.5f}, {2, 0.5f}};
    dsv_sampler_params p = params(1.0f, 11);
    p.logit_bias = ban;
    p.n_logit_bias = 3;
    dsv_sampler *s = make(4, p);
    float got[4];
    const dsv_token_prob *c;
    int32_t n;
    REQUIRE(dsv_sampler_dist(s, logits, &c, &n) == DSV_OK);
    CHECK_EQ_INT(n, 3); /* the banned token is not a candidate at all */
    for (int i = 0; i < n; i++) got[c[i].id] = c[i].logit;
    CHECK(!has(c, n, 0));
    CHECK(got[1] == 1.0f && got[2] == 2.0f && got[3] == -1.0f);
    for (int d = 0; d < 10000; d++) CHECK(sample(s, logits) != 0);
    dsv_sampler_free(s);
    /* Greedy honours the ban; +inf forces a token. */
    p.temperature = 0;
    s = make(4, p);
    CHECK_EQ_INT(sample(s, logits), 2);
    dsv_sampler_free(s);
    const dsv_logit_bias force[] = {{3, INFINITY}};
    p = params(1.0f, 11);
    p.logit_bias = force;
    p.n_logit_bias = 1;
    s = make(4, p);
    for (int d = 0; d < 100; d++) CHECK_EQ_INT(sample(s, logits), 3);
    dsv_sampler_free(s);
    /* Everything banned is an error, not a crash or a made-up token. */
    const float dead[3] = {-INFINITY, NAN, -INFINITY};
    s = make(3, params(1.0f, 1));
    int32_t id = 77;
    CHECK_EQ_INT(dsv_sampler_sample(s, dead, &id), DSV_ERR_ARG);
    CHECK_EQ_INT(id, 77);
    CHECK(strstr(dsv_errmsg(), "no token left") != NULL);
    /* NaN is never drawn. */
    const float some_nan[3] = {NAN, 0.0f, NAN};
    for (int d = 0; d < 100; d++) CHECK_EQ_INT(sample(s, some_nan), 1);
    dsv_sampler_free(s);
}

static void draw_seq(dsv_sampler *s, const float *logits, int32_t *out, int n) {
    for (int i = 0; i < n; i++) out[i] = sample(s, logits);
}

TEST(sampler_seed_reproducible_and_independent) {
    float logits[50];
    for (int i = 0; i < 50; i++) logits[i] = (float)(i % 10) * 0.1f;
    int32_t a[500], b[500], c[500];
    dsv_sampler *s1 = make(50, params(1.0f, 1234)), *s2 = make(50, params(1.0f, 1234)),
                *s3 = make(50, params(1.0f, 1235));
    draw_seq(s1, logits, a, 500);
    draw_seq(s2, logits, b, 500);
    draw_seq(s3, logits, c, 500);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK(memcmp(a, c, sizeof a) != 0);
    /* reset() replays the stream. */
    dsv_sampler_reset(s1);
    draw_seq(s1, logits, b, 500);
    CHECK(!memcmp(a, b, sizeof a));
    /* Interleaving with another sequence does not change this one's draws. */
    dsv_sampler_reset(s1);
    for (int i = 0; i < 500; i++) {
        b[i] = sample(s1, logits);
        (void)sample(s3, logits);
    }
    CHECK(!memcmp(a, b, sizeof a));
    /* A random seed is reported and replays. */
    dsv_sampler *r = make(50, params(1.0f, DSV_SEED_RANDOM));
    uint64_t seed = dsv_sampler_seed(r);
    CHECK(seed != DSV_SEED_RANDOM);
    draw_seq(r, logits, a, 500);
    dsv_sampler *r2 = make(50, params(1.0f, seed));
    draw_seq(r2, logits, b, 500);
    CHECK(!memcmp(a, b, sizeof a));
    dsv_sampler *r3 = make(50, params(1.0f, DSV_SEED_RANDOM));
    CHECK(dsv_sampler_seed(r3) != seed);
    dsv_sampler_free(s1);
    dsv_sampler_free(s2);
    dsv_sampler_free(s3);
    dsv_sampler_free(r);
    dsv_sampler_free(r2);
    dsv_sampler_free(r3);
}

TEST(sampler_bad_params) {
    static const struct { const char *field; float value; const char *msg; } cases[] = {
        {"temperature", -1.0f, "temperature must be finite and >= 0"},
        {"temperature", NAN, "temperature"},
        {"top_p", 1.5f, "top_p must be in [0, 1]"},
        {"min_p", -0.1f, "min_p must be in [0, 1]"},
        {"repetition_penalty", 0.0f, "repetition_penalty must be finite and > 0"},
        {"presence_penalty", INFINITY, "presence_penalty must be finite"},
        {"frequency_penalty", NAN, "frequency_penalty must be finite"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsv_sampler_params p = dsv_sampler_default_params();
        if (!strcmp(cases[i].field, "temperature")) p.temperature = cases[i].value;
        if (!strcmp(cases[i].field, "top_p")) p.top_p = cases[i].value;
        if (!strcmp(cases[i].field, "min_p")) p.min_p = cases[i].value;
        if (!strcmp(cases[i].field, "repetition_penalty")) p.repetition_penalty = cases[i].value;
        if (!strcmp(cases[i].field, "presence_penalty")) p.presence_penalty = cases[i].value;
        if (!strcmp(cases[i].field, "frequency_penalty")) p.frequency_penalty = cases[i].value;
        dsv_sampler *s = (dsv_sampler *)&p; /* must stay untouched */
        CHECK_EQ_INT(dsv_sampler_init(&s, 10, &p), DSV_ERR_ARG);
        CHECK(s == (dsv_sampler *)&p);
        CHECKF(strstr(dsv_errmsg(), cases[i].msg) != NULL, "%s: %s", cases[i].field, dsv_errmsg());
    }
    dsv_sampler_params p = dsv_sampler_default_params();
    dsv_sampler *s = NULL;
    p.top_k = -1;
    CHECK_EQ_INT(dsv_sampler_init(&s, 10, &p), DSV_ERR_ARG);
    p = dsv_sampler_default_params();
    p.repetition_last_n = -2;
    CHECK_EQ_INT(dsv_sampler_init(&s, 10, &p), DSV_ERR_ARG);
    const dsv_logit_bias out_of_range[] = {{10, 1.0f}};
    p = dsv_sampler_default_params();
    p.logit_bias = out_of_range;
    p.n_logit_bias = 1;
    CHECK_EQ_INT(dsv_sampler_init(&s, 10, &p), DSV_ERR_ARG);
    CHECK_STR(dsv_errmsg(), "sampler: logit_bias[0].id 10 is outside the vocabulary [0, 10)");
    CHECK_EQ_INT(dsv_sampler_init(&s, 0, NULL), DSV_ERR_ARG);
    REQUIRE(dsv_sampler_init(&s, 10, NULL) == DSV_OK);
    CHECK_EQ_INT(dsv_sampler_accept(s, 10), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_sampler_accept(s, -1), DSV_ERR_ARG);
    const int32_t bad_prompt[] = {1, 2, 99};
    CHECK_EQ_INT(dsv_sampler_accept_prompt(s, bad_prompt, 3), DSV_ERR_ARG);
    dsv_sampler_free(s);
    dsv_sampler_free(NULL);
}

#ifdef HAVE_MALLINFO2
/* Sampling allocates nothing after init (checked through glibc's heap
 * statistics; under AddressSanitizer these stay 0 and the check is vacuous). */
TEST(sampler_no_allocation_per_call) {
    enum { V = 129280 };
    float *logits = malloc(V * sizeof *logits);
    REQUIRE(logits);
    uint32_t x = 1;
    for (int i = 0; i < V; i++) logits[i] = (float)(lcg(&x) % 1000) / 100.0f;
    /* One sampler per path: top-p's partial sort, top-k's select, and
     * neither; all penalties on. */
    dsv_sampler *s[3];
    for (int k = 0; k < 3; k++) {
        dsv_sampler_params p = params(0.7f, 9);
        p.top_p = k == 0 ? 0.95f : 1.0f;
        p.top_k = k == 1 ? 40 : 0;
        p.min_p = 0.01f;
        p.repetition_penalty = 1.1f;
        p.repetition_last_n = 64;
        p.frequency_penalty = 0.1f;
        s[k] = make(V, p);
        REQUIRE(dsv_sampler_accept(s[k], sample(s[k], logits)) == DSV_OK);
    }
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < 10; i++)
        for (int k = 0; k < 3; k++) REQUIRE(dsv_sampler_accept(s[k], sample(s[k], logits)) == DSV_OK);
    struct mallinfo2 after = mallinfo2();
    CHECK_EQ_INT(after.uordblks, before.uordblks);
    for (int k = 0; k < 3; k++) dsv_sampler_free(s[k]);
    free(logits);
}
#endif

/* ---- Stop strings ---------------------------------------------------------- */

static dsv_stop *make_stop(const char *const *strs, int n) {
    dsv_stop *s = NULL;
    int rc = dsv_stop_init(&s, strs, n, NULL, 0);
    REQUIREF(rc == DSV_OK, "dsv_stop_init: %s", dsv_errmsg());
    return s;
}

/* Feeds text in pieces cut at `cuts`; returns the matched index (or -1) and
 * the whole text released, flushing at the end when nothing matched. */
static int feed_split(dsv_stop *s, const char *text, const size_t *cuts, int n_cuts, char *out, size_t cap) {
    size_t pos = 0, o = 0;
    int rc = 0;
    dsv_stop_reset(s);
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : strlen(text);
        const char *e;
        size_t el;
        rc = dsv_stop_feed(s, text + pos, end - pos, &e, &el);
        REQUIRE(rc == 0 || rc == 1);
        REQUIRE(o + el < cap);
        memcpy(out + o, e, el);
        o += el;
        pos = end;
    }
    if (!rc) {
        const char *e;
        size_t el;
        dsv_stop_flush(s, &e, &el);
        REQUIRE(o + el < cap);
        memcpy(out + o, e, el);
        o += el;
    }
    out[o] = 0;
    return rc ? dsv_stop_matched(s) : -1;
}

TEST(stop_across_boundaries) {
    const char *stops[] = {"STOP"};
    dsv_stop *s = make_stop(stops, 1);
    const char *e;
    size_t el;
    CHECK_EQ_INT(dsv_stop_feed(s, "hello ST", 8, &e, &el), 0);
    CHECK(el == 6 && !memcmp(e, "hello ", 6)); /* "ST" is held back */
    CHECK_EQ_INT(dsv_stop_feed(s, "O", 1, &e, &el), 0);
    CHECK_EQ_INT(el, 0);
    CHECK_EQ_INT(dsv_stop_feed(s, "P and more", 10, &e, &el), 1);
    CHECK_EQ_INT(el, 0);
    CHECK_EQ_INT(dsv_stop_matched(s), 0);
    CHECK_EQ_INT(dsv_stop_feed(s, "x", 1, &e, &el), 1); /* stays stopped */
    CHECK_EQ_INT(el, 0);
    dsv_stop_flush(s, &e, &el);
    CHECK_EQ_INT(el, 0);
    /* A false start is released once it cannot match any more. */
    dsv_stop_reset(s);
    CHECK_EQ_INT(dsv_stop_feed(s, "a STO", 5, &e, &el), 0);
    CHECK(el == 2 && !memcmp(e, "a ", 2));
    CHECK_EQ_INT(dsv_stop_feed(s, "NE", 2, &e, &el), 0);
    CHECK(el == 5 && !memcmp(e, "STONE", 5));
    CHECK_EQ_INT(dsv_stop_feed(s, "ST", 2, &e, &el), 0);
    CHECK_EQ_INT(el, 0);
    dsv_stop_flush(s, &e, &el); /* end of generation: show what was held */
    CHECK(el == 2 && !memcmp(e, "ST", 2));
    CHECK_EQ_INT(dsv_stop_matched(s), -1);
    dsv_stop_free(s);
}

TEST(stop_multiple_and_overlapping) {
    char out[256];
    size_t cut;
    /* The stop that ends first wins, even if another started earlier. */
    const char *s1[] = {"abcd", "bc"};
    dsv_stop *s = make_stop(s1, 2);
    CHECK_EQ_INT(feed_split(s, "xabcdy", NULL, 0, out, sizeof out), 1);
    CHECK_STR(out, "xa");
    dsv_stop_free(s);
    /* Same end: the longer (earlier) one. */
    const char *s2[] = {"bc", "abc"};
    s = make_stop(s2, 2);
    CHECK_EQ_INT(feed_split(s, "xabcy", NULL, 0, out, sizeof out), 1);
    CHECK_STR(out, "x");
    dsv_stop_free(s);
    /* A prefix of one stop is a whole other stop. */
    const char *s3[] = {"abc", "ab"};
    s = make_stop(s3, 2);
    cut = 3;
    CHECK_EQ_INT(feed_split(s, "xabc", &cut, 1, out, sizeof out), 1);
    CHECK_STR(out, "x");
    dsv_stop_free(s);
    /* Self-overlapping stop: "aab" in "aaab". */
    const char *s4[] = {"aab"};
    s = make_stop(s4, 1);
    size_t cuts[] = {1, 2, 3};
    CHECK_EQ_INT(feed_split(s, "aaab!", cuts, 3, out, sizeof out), 0);
    CHECK_STR(out, "a");
    dsv_stop_free(s);
    /* UTF-8 stop strings split inside a character. */
    const char *s5[] = {"。\n", "</s>"};
    s = make_stop(s5, 2);
    size_t cuts5[] = {4, 7, 8};
    CHECK_EQ_INT(feed_split(s, "日本。\n次", cuts5, 3, out, sizeof out), 0);
    CHECK_STR(out, "日本");
    dsv_stop_free(s);
}

TEST(stop_every_split_matches_whole) {
    const char *stops[] = {"\n\nUser:", "###", "aba", "<end>", "ab"};
    dsv_stop *s = make_stop(stops, 5);
    const char *frag[] = {"a", "b", "ab", "#", "##", "\n", "User:", "<end", ">", "x", "é", " "};
    uint32_t x = 77;
    char text[128], want[256], got[256];
    size_t cuts[128];
    for (int t = 0; t < 300; t++) {
        size_t n = 0;
        int k = (int)(lcg(&x) >> 28) + 1;
        for (int j = 0; j < k; j++) {
            const char *f = frag[(lcg(&x) >> 16) % (sizeof frag / sizeof frag[0])];
            if (n + strlen(f) >= sizeof text) break;
            memcpy(text + n, f, strlen(f));
            n += strlen(f);
        }
        text[n] = 0;
        int m = feed_split(s, text, NULL, 0, want, sizeof want);
        /* Reference: the first byte position where some stop string ends. */
        int ref = -1;
        size_t ref_at = 0;
        for (size_t end = 1; end <= n && ref < 0; end++)
            for (int i = 0; i < 5; i++) {
                size_t sl = strlen(stops[i]);
                if (sl <= end && !memcmp(text + end - sl, stops[i], sl) && (ref < 0 || end - sl < ref_at)) {
                    ref = i;
                    ref_at = end - sl;
                }
            }
        CHECKF(m == ref, "\"%s\": matched %d, want %d", text, m, ref);
        CHECK(ref < 0 ? !strcmp(want, text) : strlen(want) == ref_at && !memcmp(want, text, ref_at));
        /* Every single cut and byte-by-byte give the same. */
        for (size_t c = 0; c <= n; c++) {
            CHECK_EQ_INT(feed_split(s, text, &c, 1, got, sizeof got), m);
            CHECK_STR(got, want);
        }
        for (size_t c = 0; c < n; c++) cuts[c] = c;
        CHECK_EQ_INT(feed_split(s, text, cuts, (int)n, got, sizeof got), m);
        CHECK_STR(got, want);
    }
    dsv_stop_free(s);
}

TEST(stop_tokens_and_errors) {
    const int32_t eos[] = {1, 128805};
    dsv_stop *s = NULL;
    REQUIRE(dsv_stop_init(&s, NULL, 0, eos, 2) == DSV_OK);
    CHECK(dsv_stop_is_token(s, 1));
    CHECK(dsv_stop_is_token(s, 128805));
    CHECK(!dsv_stop_is_token(s, 0));
    const char *e;
    size_t el;
    CHECK_EQ_INT(dsv_stop_feed(s, "anything", 8, &e, &el), 0); /* no strings: all released */
    CHECK_EQ_INT(el, 8);
    dsv_stop_free(s);
    const char *empty[] = {"ok", ""};
    s = NULL;
    CHECK_EQ_INT(dsv_stop_init(&s, empty, 2, NULL, 0), DSV_ERR_ARG);
    CHECK_STR(dsv_errmsg(), "stop: string 1 is empty");
    CHECK(s == NULL);
    dsv_stop_free(NULL);
}
