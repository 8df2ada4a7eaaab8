/* dsv32_sampler.h: choosing the next token from the logits, and noticing
 * when generation should stop.
 *
 * dsv_sampler: one per sequence. It owns its PRNG state (xoshiro256**,
 * seeded through splitmix64), its token history for the penalties, and all
 * scratch memory (sized for the vocabulary at init), so sampling never
 * allocates and two sequences never disturb each other's random stream.
 *
 * The chain, applied in this order (llama.cpp's common chain):
 *   1. logit bias         logit[id] += bias            (-INFINITY bans id)
 *   2. penalties          repetition, then presence/frequency
 *   3. top-k              keep the k highest logits
 *   4. top-p              keep the smallest prefix whose probability reaches p
 *   5. min-p              keep p(id) >= min_p * p(best)
 *   6. temperature        logit / T, softmax over what is left
 *   7. draw               one uniform number, inverse CDF
 * Steps 4 and 5 use the temperature-1 distribution over the tokens still in
 * play (llama.cpp applies temperature last; Hugging Face applies it first).
 * temperature == 0 is greedy: the highest logit after steps 1-2, ties going to
 * the lowest id; no random number is used. Ties in top-k go to the lower id.
 *
 * dsv_stop: matches stop strings on streamed text and tells the caller how
 * much text is safe to show; also holds the stop token ids (EOS).
 *
 * Conventions of include/dsv32.h apply (status codes, dsv_errmsg()).
 */
#ifndef DSV32_SAMPLER_H
#define DSV32_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A seed asking for a fresh, unpredictable one (see dsv_sampler_seed()). */
#define DSV_SEED_RANDOM UINT64_MAX

typedef struct dsv_logit_bias {
    int32_t id;
    float bias; /* added to the logit; -INFINITY bans the token, +INFINITY forces it */
} dsv_logit_bias;

/* A constraint on the tokens that may come next (structured output: a JSON
 * or JSON-Schema matcher, a forced tool call). The sampler asks it before
 * step 1 of every draw and tells it every token kept, so whichever loop owns
 * the sampler applies it without knowing about it. */
typedef struct dsv_token_constraint {
    /* Sets bit id (allowed[id / 32] >> (id % 32) & 1) for every token that
     * may come next; allowed has (n_vocab + 31) / 32 words, zeroed by the
     * sampler. Returns DSV_OK, or an error status (with dsv_error). */
    int (*allowed)(void *user, uint32_t *allowed);
    /* The token kept (dsv_sampler_accept). DSV_OK, or an error status when
     * the constraint cannot take it. */
    int (*accept)(void *user, int32_t id);
    void *user;
} dsv_token_constraint;

typedef struct dsv_sampler_params {
    float temperature;        /* >= 0; 0 = greedy. Default 1 */
    int32_t top_k;            /* >= 0; 0 = off. Default 0 */
    float top_p;              /* in [0, 1]; 1 = off. Default 1 */
    float min_p;              /* in [0, 1]; 0 = off. Default 0 */
    /* > 0; 1 = off. For every token among the last repetition_last_n tokens
     * (prompt and generated; see dsv_sampler_accept*), a positive logit is
     * divided by it and a negative one multiplied (llama.cpp, Hugging Face).
     * Default 1 */
    float repetition_penalty;
    int32_t repetition_last_n; /* >= -1; -1 = every token seen, 0 = off. Default -1 */
    /* OpenAI semantics over the generated tokens only:
     * logit -= count * frequency_penalty + (count > 0) * presence_penalty.
     * Default 0 */
    float presence_penalty;
    float frequency_penalty;
    const dsv_logit_bias *logit_bias; /* copied by init; repeated ids add up */
    int32_t n_logit_bias;
    uint64_t seed; /* Default DSV_SEED_RANDOM */
    /* Borrowed, must outlive the sampler; NULL = none. Tokens it does not
     * allow are banned before the bias (a +INFINITY bias cannot bring one
     * back). Default NULL */
    const dsv_token_constraint *constraint;
} dsv_sampler_params;

/* The defaults listed above: sampling from the model's own distribution. */
DSV_API dsv_sampler_params dsv_sampler_default_params(void);

typedef struct dsv_sampler dsv_sampler;

/* Creates a sampler for logits of n_vocab entries. params may be NULL
 * (defaults). Returns DSV_ERR_ARG for an out-of-range parameter or bias id
 * (the message names it), DSV_ERR_NOMEM. Free with dsv_sampler_free(). */
DSV_API int dsv_sampler_init(dsv_sampler **out, int32_t n_vocab, const dsv_sampler_params *params);
DSV_API void dsv_sampler_free(dsv_sampler *s);

/* The seed in use: params.seed, or the one drawn for DSV_SEED_RANDOM (so a
 * random run can be replayed). */
DSV_API uint64_t dsv_sampler_seed(const dsv_sampler *s);

/* Forgets the token history and restarts the random stream from the seed:
 * the sampler then behaves exactly as a new one. */
DSV_API void dsv_sampler_reset(dsv_sampler *s);

/* Records prompt tokens: they count for the repetition penalty only. */
DSV_API int dsv_sampler_accept_prompt(dsv_sampler *s, const int32_t *ids, size_t n);
/* Records a generated token (every penalty counts it). Sampling does not
 * record the token it returns: call this for each token actually kept.
 * Returns DSV_ERR_ARG for an id outside [0, n_vocab). */
DSV_API int dsv_sampler_accept(dsv_sampler *s, int32_t id);

/* Chooses the next token from logits[0..n_vocab) (not modified) through the
 * whole chain. Does not allocate. Returns DSV_ERR_ARG if no token is left
 * (every logit -INFINITY or NaN after bias and penalties); NaN logits are
 * treated as -INFINITY. If any logit is +INFINITY, the choice is among those
 * tokens only, uniformly. */
DSV_API int dsv_sampler_sample(dsv_sampler *s, const float *logits, int32_t *out_id);

/* One candidate of the final distribution. */
typedef struct dsv_token_prob {
    int32_t id;
    float logit; /* after bias and penalties (before temperature) */
    float p;     /* probability of being drawn; the p's sum to 1 */
} dsv_token_prob;

/* Steps 1-6 without the draw: the tokens that can be drawn and their
 * probabilities (for logprobs, and for tests). *cands points into the
 * sampler's scratch, valid until the next call on s. They are in
 * descending logit order (ties: lower id first) when top_k > 0 or top_p < 1,
 * else in id order; greedy gives one candidate with p = 1. Same errors as
 * dsv_sampler_sample(). */
DSV_API int dsv_sampler_dist(dsv_sampler *s, const float *logits, const dsv_token_prob **cands, int32_t *n_cands);

/* ---- Stop conditions ----------------------------------------------------- */

typedef struct dsv_stop dsv_stop;

/* A matcher for stop strings (n_strings non-empty strings, copied) and stop
 * token ids (copied; e.g. EOS, id 1 for DeepSeek). Either list may be empty.
 * Returns DSV_ERR_ARG for an empty or NULL string, DSV_ERR_NOMEM. */
DSV_API int dsv_stop_init(dsv_stop **out, const char *const *strings, int n_strings,
                  const int32_t *token_ids, int n_token_ids);
DSV_API void dsv_stop_free(dsv_stop *s);

/* 1 if id is one of the stop token ids, else 0. */
DSV_API int dsv_stop_is_token(const dsv_stop *s, int32_t id);

/* Feeds the next piece of detokenized text. *emit and *emit_len receive the text
 * that is now safe to show (it can no longer be part of a stop string); it
 * points into s and stays valid until the next call on s. Returns 1 when a
 * stop string has matched: *emit is then everything before it, the stop
 * string and whatever follows are dropped, and later feeds return 1 with
 * nothing to emit. Returns 0 while no stop string has matched; a suffix that
 * could still grow into one is held back. A stop string may span any number
 * of pieces. When several could match, the one that ends first wins (then
 * the one that starts first), which is also the first a byte-by-byte feed
 * would see. Returns DSV_ERR_ARG for NULL pointers, DSV_ERR_NOMEM. */
DSV_API int dsv_stop_feed(dsv_stop *s, const char *text, size_t len, const char **emit, size_t *emit_len);

/* Generation ended without a stop string (EOS, length): hands out the
 * held-back text, to be shown. Nothing after a match. Pointer as above. */
DSV_API void dsv_stop_flush(dsv_stop *s, const char **emit, size_t *emit_len);

/* Index of the stop string that matched, or -1. */
DSV_API int dsv_stop_matched(const dsv_stop *s);

/* Forgets held text and any match, for a new generation. */
DSV_API void dsv_stop_reset(dsv_stop *s);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_SAMPLER_H */
