/* gen.h: text generation for the generate and chat commands: a model, a
 * tokenizer and a context, and the loop that drives the library's
 * generation slots (include/dsv32_gen.h), one forward call per step for all
 * sequences, with the server's rules for chunks, EOS and banned ids. */
#ifndef DSV_GEN_H
#define DSV_GEN_H

#include <stdint.h>

#include "dsv32.h"
#include "dsv32_gen.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"

#define GEN_MAX_STOPS 16

typedef struct gen_opts {
    const char *model;
    int threads, n_ctx, n_batch, attn, topk, n_predict, scale_fmt, act_quant;
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
    dsv_gen *rules;           /* chunking, EOS, banned ids: as the server's */
    int n_seq;
    double prefill_s, decode_s;
    long prefill_tok;         /* prompt tokens computed */
    long decode_tok;          /* tokens generated */
    long decode_fed;          /* generated tokens fed back (the decode steps' work) */
} gen;

/* Loads everything (a progress bar on a terminal). Returns 0 or prints an
 * error and returns 1. */
int gen_open(gen *g, const char *cmd, const gen_opts *o, int n_seq);
void gen_close(gen *g);

/* Encodes text (no BOS) into a malloc'ed array. */
int gen_encode(gen *g, const char *text, int32_t **ids, int *n);

/* A slot of the library's generation module (include/dsv32_gen.h) for
 * sequence seq, with the command's sampling, stop strings and -n; the first
 * n_past prompt tokens are already in the sequence. Special tokens (BOS,
 * padding) have no text, as in the server's answers. Returns 0 or prints an
 * error and returns 1. */
int gen_slot(gen *g, dsv_gen_slot **s, int seq, const int32_t *prompt, int n_prompt, int n_past);

/* What a finished slot's reason is called in messages: "eos", "stop", ... */
const char *gen_finish_name(int finish);

/* Text (and the token it came from) of one sequence, as it is generated. */
typedef void (*gen_emit)(void *user, int32_t id, const char *text, size_t len);

/* Runs slots[0..n) to their end: first every prompt (forward calls of at
 * most --batch tokens, cut by the module's chunking rule), then one token
 * per live sequence per call. Text goes to emit(users[i], ...) (users may be
 * NULL). */
int gen_run(gen *g, int n, dsv_gen_slot **slots, gen_emit emit, void **users);

/* Reads prompts separated by blank lines (trimmed, empty ones skipped). */
int read_prompt_file(const char *cmd, const char *path, char ***out, int *n);

/* "prompt tokens, prefill tok/s, decode tok/s, peak memory" on stderr. */
void gen_report(const gen *g);

#endif
