/* dsv32_gen.h: generation, one sequence at a time, for every front end.
 *
 * The rules that turn a prompt into forward calls and logits into tokens and
 * text live here once, so that `dsv32 generate`, `dsv32 chat` and the server
 * give the same tokens for the same request and seed.
 *
 * dsv_gen: what every sequence of one context and tokenizer shares: the
 * vocabulary, the EOS id, the ids that are never sampled (a model's head may
 * have more rows than its tokenizer has tokens: DeepSeek's has 129280 for
 * 128815; those ids have no text and are banned, so every generated token
 * has text to stream) and the prompt chunking rule. Immutable once open: any
 * number of threads may use one dsv_gen at once.
 *
 * dsv_gen_slot: one sequence being generated: its prompt (copied), sampler,
 * stop-string matcher, streaming detokenizer, position and state. The API is
 * per step, not a loop: a caller (the CLI's loop, the server's scheduler)
 * asks each slot for its next batch entry, runs one dsv_forward over the
 * entries of many slots, tells each slot what was computed and hands it its
 * row of logits, getting back the token, its text and whether the sequence
 * has ended. A slot is used by one thread at a time; it never calls the
 * engine itself and never touches the KV cache: the caller owns the context
 * and the sequence (resets it, attaches cached pages).
 *
 * The chunking rule. A prompt token's numbers depend on how it was computed:
 * a multi-token call over positions below M = min(mha_max_keys, n_ctx) uses
 * the reference's non-absorbed maths, a single token or a position past M
 * the absorbed maths of decoding (forward.c). So that they are a function of
 * the position alone, and not of --batch or of what else was in the batch,
 * a chunk below M never ends past M and never leaves a single token before
 * it. (A server's prefix cache relies on this: a cached page holds what a
 * miss would compute.)
 *
 * Lifetimes: the context and tokenizer outlive the dsv_gen, the dsv_gen
 * outlives its slots. Conventions of include/dsv32.h apply (status codes,
 * dsv_errmsg()). */
#ifndef DSV32_GEN_H
#define DSV32_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsv_gen dsv_gen;

/* The shared rules for sequences of ctx (its n_ctx and mha_max_keys), whose
 * model has configuration cfg, with tokenizer tok. EOS is the tokenizer's
 * eos_token, else the config's eos_token_id. Returns DSV_ERR_NOMEM. */
DSV_API int dsv_gen_open(dsv_gen **out, const dsv_context *ctx, const dsv_config *cfg, const dsv_tokenizer *tok);
DSV_API void dsv_gen_close(dsv_gen *g);

/* The id that ends every generation. */
DSV_API int32_t dsv_gen_eos(const dsv_gen *g);
/* The ids never sampled (no text), ascending; *n of them. */
const int32_t *dsv_gen_banned(const dsv_gen *g, int *n);

/* The chunking rule: how many prompt tokens to compute next for a sequence
 * at position pos of a prompt of n_prompt tokens, with budget tokens left in
 * this forward call (budget >= 1). 0 means wait for a call with more room:
 * taking what fits would leave one token before M; with budget >= 3 it is
 * never 0 while prompt tokens are left, so a caller whose calls have room
 * for 3 tokens always makes progress. */
DSV_API int dsv_gen_chunk_len(const dsv_gen *g, int pos, int n_prompt, int budget);

/* ---- Slots ----------------------------------------------------------------- */

enum dsv_gen_finish {
    DSV_GEN_RUNNING = 0, /* prompt or decoding still to go */
    DSV_GEN_EOS,         /* the EOS token was sampled (it has no text) */
    DSV_GEN_STOP,        /* a stop string matched (it and what follows are dropped) */
    DSV_GEN_LENGTH,      /* max_tokens generated */
    DSV_GEN_ERROR,       /* a call on the slot failed; it is over */
};

typedef struct dsv_gen_slot_params {
    /* The sampling chain; its logit_bias is copied, the banned ids are
     * added to it. */
    dsv_sampler_params sampling;
    const char *const *stop;  /* stop strings (copied), n_stop of them */
    int n_stop;
    int max_tokens;           /* >= 0; 0 computes the prompt and ends. Default 16 */
    /* 1: special tokens (BOS, padding, ...) have no text in the stream, as
     * in the server's answers; 0: they show. Default 1 */
    int skip_special;
} dsv_gen_slot_params;

DSV_API dsv_gen_slot_params dsv_gen_slot_default_params(void);

typedef struct dsv_gen_slot dsv_gen_slot;

/* A slot generating after prompt[0..n_prompt) (copied) in sequence seq of
 * the context, of which the first n_past tokens are already in the KV cache
 * (a prefix reused from before; 0 <= n_past < n_prompt: the last prompt
 * token is always computed, for its logits). The prompt counts for the
 * repetition penalty. Returns DSV_ERR_ARG for bad sizes, ids outside the
 * vocabulary or bad sampling parameters (the message names them), an empty
 * stop string, DSV_ERR_NOMEM. */
DSV_API int dsv_gen_slot_init(dsv_gen_slot **out, const dsv_gen *g, int seq, const int32_t *prompt, int n_prompt, int n_past,
                      const dsv_gen_slot_params *p);
/* NULL is a no-op. */
DSV_API void dsv_gen_slot_free(dsv_gen_slot *s);

/* Its next batch entry, within budget tokens: one token when decoding, else
 * the next prompt chunk by the chunking rule, asking for logits on the last
 * one. Returns the number of tokens (e filled; e->tokens points into the
 * slot, valid until the next call on it), or 0 when there is nothing to do
 * now (finished, or the chunk must wait for more room). */
DSV_API int dsv_gen_slot_next(dsv_gen_slot *s, int budget, dsv_batch_entry *e);

/* The forward call computed the n tokens of its last entry: the position
 * advances. After the whole prompt with max_tokens 0 the slot ends
 * (DSV_GEN_LENGTH). Returns DSV_ERR_ARG when n is not what the slot asked. */
DSV_API int dsv_gen_slot_fed(dsv_gen_slot *s, int n);

/* What one sampled token gave. */
typedef struct dsv_gen_token {
    int32_t id;       /* the token */
    const char *text; /* text now safe to show (NUL-terminated; valid until the next call on the slot) */
    size_t len;
    int finish;       /* enum dsv_gen_finish after this token */
} dsv_gen_token;

/* Samples the next token from the logits row (vocab_size floats, not
 * modified) of the entry that asked for them, after dsv_gen_slot_fed. Text
 * goes through the detokenizer and the stop matcher; text held back (part
 * of a possible stop string, an incomplete UTF-8 sequence) comes out when
 * the sequence ends without a stop string. The token is fed by the next
 * entry unless the sequence ended. On failure the slot ends (DSV_GEN_ERROR)
 * and the status is returned. */
DSV_API int dsv_gen_slot_accept(dsv_gen_slot *s, const float *logits, dsv_gen_token *out);

DSV_API int dsv_gen_slot_finish(const dsv_gen_slot *s); /* enum dsv_gen_finish */
DSV_API int dsv_gen_slot_decoding(const dsv_gen_slot *s); /* 1 once the prompt is computed */
DSV_API int dsv_gen_slot_seq(const dsv_gen_slot *s);
DSV_API int dsv_gen_slot_n_past(const dsv_gen_slot *s);  /* tokens in its sequence */
DSV_API int dsv_gen_slot_n_gen(const dsv_gen_slot *s);   /* tokens sampled (a final EOS counts) */

/* One forward call's entries for slots[0..n) (NULL entries are skipped):
 * first one token for every decoding slot, then prompt chunks in slot order
 * while the budget lasts; a prompt that must wait stops the later ones, so
 * no prompt overtakes an older one. ent and who need room for n entries;
 * who[k] is the index in slots of entry k. Returns the entry count. */
DSV_API int dsv_gen_batch(dsv_gen_slot *const *slots, int n, int budget, dsv_batch_entry *ent, int *who);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_GEN_H */
