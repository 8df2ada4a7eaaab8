/* gen.c: the generation module (see include/dsv32_gen.h): the shared rules
 * of a context and tokenizer, and the per-sequence slot that the CLI's loop
 * and the server's scheduler both drive.
 *
 * A slot's life: prompt chunks (dsv_gen_slot_next / _fed) until the last
 * prompt token is computed, then one token per step: sample, feed it to the
 * sampler's history, EOS ends it; otherwise detokenize, pass the text
 * through the stop matcher, and end on a stop string or at max_tokens. A
 * token that ends the sequence is never fed back to the model. */
#include "dsv32_gen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "text/text.h"

struct dsv_gen {
    const dsv_tokenizer *tok;
    int32_t vocab, eos;
    int mha_keys;           /* M of the chunking rule */
    int32_t *banned;        /* ids with no text, ascending */
    int n_banned;
};

struct dsv_gen_slot {
    const dsv_gen *g;
    int seq;
    int32_t *prompt;        /* [n_prompt], owned */
    int n_prompt, n_past, n_gen, max_tokens;
    int asked;              /* tokens of the last entry handed out */
    int32_t next;           /* the token to feed when decoding */
    int decoding, finish;
    dsv_sampler *sampler;
    dsv_stop *stop;
    dsv_detok detok;
    char *piece;            /* [piece_cap]: one detokenizer output */
    size_t piece_cap;
    dsv_buf out;            /* the text of the last accepted token */
};

int dsv_gen_open(dsv_gen **out, const dsv_context *ctx, const dsv_config *cfg, const dsv_tokenizer *tok) {
    *out = NULL;
    if (!ctx || !cfg || !tok) return dsv_error(DSV_ERR_ARG, "generation: NULL context, config or tokenizer");
    const dsv_context_params *cp = dsv_context_get_params(ctx);
    dsv_gen *g = calloc(1, sizeof *g);
    if (!g) return dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
    g->tok = tok;
    g->vocab = cfg->vocab_size;
    g->eos = dsv_tokenizer_eos(tok) >= 0 ? dsv_tokenizer_eos(tok) : cfg->eos_id;
    g->mha_keys = DSV_MIN(cp->mha_max_keys, cp->n_ctx);
    for (int32_t id = 0; id < g->vocab; id++) {
        if (dsv_token_piece(tok, id, NULL)) continue;
        if ((g->n_banned & (g->n_banned - 1)) == 0) { /* grow at powers of two */
            int32_t *b = realloc(g->banned, (size_t)(g->n_banned ? 2 * g->n_banned : 16) * sizeof *b);
            if (!b) {
                dsv_gen_close(g);
                return dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
            }
            g->banned = b;
        }
        g->banned[g->n_banned++] = id;
    }
    *out = g;
    return DSV_OK;
}

void dsv_gen_close(dsv_gen *g) {
    if (!g) return;
    free(g->banned);
    free(g);
}

int32_t dsv_gen_eos(const dsv_gen *g) { return g->eos; }

const int32_t *dsv_gen_banned(const dsv_gen *g, int *n) {
    *n = g->n_banned;
    return g->banned;
}

int dsv_gen_chunk_len(const dsv_gen *g, int pos, int n_prompt, int budget) {
    const int M = g->mha_keys;
    int end = pos < M && n_prompt > M ? M : n_prompt;
    int left = end - pos, len = DSV_MIN(left, budget);
    if (len <= 0) return 0;
    if (len == left || pos >= M) return len;
    if (left - len == 1) len--; /* never leave one token before M */
    return len >= 2 ? len : 0;
}

/* ---- Slots ----------------------------------------------------------------- */

dsv_gen_slot_params dsv_gen_slot_default_params(void) {
    return (dsv_gen_slot_params){.sampling = dsv_sampler_default_params(), .max_tokens = 16, .skip_special = 1};
}

int dsv_gen_slot_init(dsv_gen_slot **out, const dsv_gen *g, int seq, const int32_t *prompt, int n_prompt, int n_past,
                      const dsv_gen_slot_params *p) {
    *out = NULL;
    if (!g || !p || !prompt || n_prompt < 1 || n_past < 0 || n_past >= n_prompt)
        return dsv_error(DSV_ERR_ARG, "generation: a prompt of %d tokens with %d already computed (at least one "
                         "must be left)", n_prompt, n_past);
    if (seq < 0) return dsv_error(DSV_ERR_ARG, "generation: sequence %d", seq);
    if (p->max_tokens < 0) return dsv_error(DSV_ERR_ARG, "generation: max_tokens %d < 0", p->max_tokens);
    if (p->n_stop < 0 || (p->n_stop && !p->stop)) return dsv_error(DSV_ERR_ARG, "generation: bad stop list");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= g->vocab)
            return dsv_error(DSV_ERR_ARG, "generation: prompt[%d] = %d is not a token id in [0, %d)", i, prompt[i],
                             g->vocab);
    dsv_gen_slot *s = calloc(1, sizeof *s);
    if (!s) return dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
    s->g = g;
    s->seq = seq;
    s->n_prompt = n_prompt;
    s->n_past = n_past;
    s->max_tokens = p->max_tokens;
    s->piece_cap = dsv_detok_bound(g->tok);
    dsv_detok_init(&s->detok, g->tok, p->skip_special);
    /* The caller's logit bias, then the ban on ids without text. */
    dsv_sampler_params sp = p->sampling;
    int st = DSV_OK;
    if (sp.n_logit_bias < 0 || (sp.n_logit_bias && !sp.logit_bias))
        st = dsv_error(DSV_ERR_ARG, "generation: bad logit_bias list");
    dsv_logit_bias *bias = NULL;
    if (!st) {
        s->prompt = malloc((size_t)n_prompt * sizeof *s->prompt);
        s->piece = malloc(s->piece_cap);
        bias = malloc(((size_t)sp.n_logit_bias + (size_t)g->n_banned + 1) * sizeof *bias);
        if (!s->prompt || !s->piece || !bias) st = dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
    }
    if (!st) {
        memcpy(s->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
        if (sp.n_logit_bias) memcpy(bias, sp.logit_bias, (size_t)sp.n_logit_bias * sizeof *bias);
        for (int i = 0; i < g->n_banned; i++) bias[sp.n_logit_bias + i] = (dsv_logit_bias){g->banned[i], -INFINITY};
        sp.logit_bias = bias;
        sp.n_logit_bias += g->n_banned;
        st = dsv_sampler_init(&s->sampler, g->vocab, &sp);
    }
    free(bias); /* the sampler keeps a copy */
    if (!st) st = dsv_sampler_accept_prompt(s->sampler, prompt, (size_t)n_prompt);
    if (!st) st = dsv_stop_init(&s->stop, p->stop, p->n_stop, NULL, 0);
    if (st) {
        dsv_gen_slot_free(s);
        return st;
    }
    *out = s;
    return DSV_OK;
}

void dsv_gen_slot_free(dsv_gen_slot *s) {
    if (!s) return;
    dsv_sampler_free(s->sampler);
    dsv_stop_free(s->stop);
    dsv_buf_free(&s->out);
    free(s->prompt);
    free(s->piece);
    free(s);
}

int dsv_gen_slot_next(dsv_gen_slot *s, int budget, dsv_batch_entry *e) {
    s->asked = 0;
    if (s->finish || budget < 1) return 0;
    if (s->decoding) {
        *e = (dsv_batch_entry){.seq = s->seq, .n_tokens = 1, .tokens = &s->next, .logits = DSV_LOGITS_LAST};
        return s->asked = 1;
    }
    int len = dsv_gen_chunk_len(s->g, s->n_past, s->n_prompt, budget);
    if (!len) return 0;
    int last = s->n_past + len == s->n_prompt;
    *e = (dsv_batch_entry){.seq = s->seq, .n_tokens = len, .tokens = s->prompt + s->n_past,
                           .logits = last && s->max_tokens > 0 ? DSV_LOGITS_LAST : DSV_LOGITS_NONE};
    return s->asked = len;
}

int dsv_gen_slot_fed(dsv_gen_slot *s, int n) {
    if (n != s->asked || n <= 0)
        return dsv_error(DSV_ERR_ARG, "generation: %d tokens computed for sequence %d, which asked for %d", n, s->seq,
                         s->asked);
    s->asked = 0;
    s->n_past += n;
    if (!s->decoding && s->n_past == s->n_prompt && s->max_tokens == 0) s->finish = DSV_GEN_LENGTH;
    return DSV_OK;
}

static int slot_fail(dsv_gen_slot *s, int st) {
    s->finish = DSV_GEN_ERROR;
    return st;
}

/* Passes detokenized text through the stop matcher into s->out. */
static int slot_text(dsv_gen_slot *s, const char *text, size_t len) {
    const char *safe;
    size_t n;
    int matched = dsv_stop_feed(s->stop, text, len, &safe, &n);
    if (matched < 0) return matched;
    if (n && dsv_buf_add(&s->out, safe, n)) return dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
    if (matched) s->finish = DSV_GEN_STOP;
    return DSV_OK;
}

/* The sequence ends without a stop string (so far): the held-back text. */
static int slot_end(dsv_gen_slot *s, int finish) {
    size_t n = 0;
    int st = dsv_detok_flush(&s->detok, s->piece, s->piece_cap, &n);
    if (!st && n) st = slot_text(s, s->piece, n);
    if (st) return st;
    if (!s->finish) {
        const char *rest;
        dsv_stop_flush(s->stop, &rest, &n);
        if (n && dsv_buf_add(&s->out, rest, n)) return dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
        s->finish = finish;
    }
    return DSV_OK;
}

int dsv_gen_slot_accept(dsv_gen_slot *s, const float *logits, dsv_gen_token *out) {
    *out = (dsv_gen_token){.id = -1, .text = "", .finish = s->finish};
    if (s->finish) return dsv_error(DSV_ERR_ARG, "generation: sequence %d has ended", s->seq);
    if (s->n_past < s->n_prompt || s->asked)
        return slot_fail(s, dsv_error(DSV_ERR_ARG, "generation: sequence %d has no logits yet", s->seq));
    dsv_buf_clear(&s->out);
    int32_t x;
    int st = dsv_sampler_sample(s->sampler, logits, &x);
    if (!st) st = dsv_sampler_accept(s->sampler, x);
    if (st) return slot_fail(s, st);
    s->n_gen++;
    out->id = x;
    if (x == s->g->eos) st = slot_end(s, DSV_GEN_EOS);
    else {
        size_t n = 0;
        st = dsv_detok_push(&s->detok, x, s->piece, s->piece_cap, &n);
        if (!st && n) st = slot_text(s, s->piece, n);
        if (!st && !s->finish && s->n_gen >= s->max_tokens) st = slot_end(s, DSV_GEN_LENGTH);
    }
    if (!st && s->out.failed) st = dsv_error(DSV_ERR_NOMEM, "generation: out of memory");
    if (st) return slot_fail(s, st);
    if (!s->finish) {
        s->next = x;
        s->decoding = 1;
    }
    out->text = s->out.data ? s->out.data : "";
    out->len = s->out.len;
    out->finish = s->finish;
    return DSV_OK;
}

int dsv_gen_slot_finish(const dsv_gen_slot *s) { return s->finish; }
int dsv_gen_slot_decoding(const dsv_gen_slot *s) { return s->decoding; }
int dsv_gen_slot_seq(const dsv_gen_slot *s) { return s->seq; }
int dsv_gen_slot_n_past(const dsv_gen_slot *s) { return s->n_past; }
int dsv_gen_slot_n_gen(const dsv_gen_slot *s) { return s->n_gen; }

int dsv_gen_batch(dsv_gen_slot *const *slots, int n, int budget, dsv_batch_entry *ent, int *who) {
    int k = 0;
    for (int i = 0; i < n && budget > 0; i++) {
        dsv_gen_slot *s = slots[i];
        if (!s || !s->decoding) continue;
        int len = dsv_gen_slot_next(s, budget, &ent[k]);
        if (!len) continue;
        who[k++] = i;
        budget -= len;
    }
    for (int i = 0; i < n && budget > 0; i++) {
        dsv_gen_slot *s = slots[i];
        if (!s || s->decoding || s->finish) continue;
        int len = dsv_gen_slot_next(s, budget, &ent[k]);
        if (!len) break; /* keep prompt order: no later prompt overtakes */
        who[k++] = i;
        budget -= len;
    }
    return k;
}
