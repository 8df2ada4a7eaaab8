/* gen.h: text generation for the generate and chat commands: a model, a
 * tokenizer and a context, feeding prompts in chunks and decoding several
 * sequences together (one forward call per step for all of them). */
#ifndef DSV_GEN_H
#define DSV_GEN_H

#include <stdint.h>

#include "dsv32.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"

#define GEN_MAX_STOPS 16

typedef struct gen_opts {
    const char *model;
    int threads, n_ctx, n_batch, attn, topk, n_predict, scale_fmt;
    const char *topk_file;    /* --topk-file: a top-k per layer */
    dsv_sampler_params sp;
    const char *stops[GEN_MAX_STOPS];
    int n_stops;
} gen_opts;

/* Defaults shared by the commands (the reference's generate.py: temperature
 * 0.6, 200 new tokens). */
void gen_default_opts(gen_opts *o);
/* Parses one option shared by generate and chat at argv[*i]. Returns 1 if it
 * was one (and consumed its value), 0 if not, -1 on a bad value (error printed). */
int gen_parse_opt(const char *cmd, gen_opts *o, int argc, char **argv, int *i);
/* The help lines of those options. */
extern const char gen_opts_help[];

typedef struct gen {
    const char *cmd;
    gen_opts o;
    dsv_model *m;
    dsv_context *ctx;
    dsv_tokenizer *tok;
    const dsv_config *c;
    int n_seq, eos;
    float *logits;            /* [n_seq][vocab]: last logits of each sequence */
    double prefill_s, decode_s;
    long prefill_tok, decode_tok;
} gen;

/* Loads everything (a progress bar on a terminal). Returns 0 or prints an
 * error and returns 1. */
int gen_open(gen *g, const char *cmd, const gen_opts *o, int n_seq);
void gen_close(gen *g);

/* Appends tokens to sequences (all at once, in chunks of the batch size),
 * leaving each sequence's last logits in g->logits. n_toks[i] may be 0. */
int gen_feed(gen *g, int n, const int *seqs, int32_t *const *toks, const int *n_toks, int prefill);

/* Encodes text (no BOS) into a malloc'ed array. */
int gen_encode(gen *g, const char *text, int32_t **ids, int *n);

/* One sequence's decoding state: sampler, stop strings, streaming text. */
typedef struct gen_stream {
    dsv_sampler *smp;
    dsv_stop *stop;
    dsv_detok dt;
    char *piece;              /* detok buffer */
    int n_gen, done;
    const char *why;          /* "eos", "stop", "length" */
} gen_stream;

int gen_stream_init(gen *g, gen_stream *s, const int32_t *prompt, int n_prompt);
void gen_stream_free(gen_stream *s);
/* Samples the next token of sequence seq from g->logits. Text that is final
 * goes to emit(user, text, len). Returns the token (to feed) or -1 when the
 * sequence ended (s->done set). */
int32_t gen_stream_next(gen *g, gen_stream *s, int seq, void (*emit)(void *, const char *, size_t), void *user);

/* Reads prompts separated by blank lines (trimmed, empty ones skipped). */
int read_prompt_file(const char *cmd, const char *path, char ***out, int *n);

/* Decodes streams st[0..n) (sequence i is stream i, its prompt already fed)
 * until all are done: each step samples one token per live sequence and
 * feeds them all in one call. Text goes to emit(users[i], ...). */
int gen_decode(gen *g, int n, gen_stream *st, void (*emit)(void *, const char *, size_t), void **users);

/* "prompt tokens, prefill tok/s, decode tok/s, peak memory" on stderr. */
void gen_report(const gen *g);

#endif
