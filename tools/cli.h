/* cli.h: helpers shared by the dsv32 commands (argument parsing, errors). */
#ifndef DSV_CLI_H
#define DSV_CLI_H

#include <stdint.h>
#include <stdio.h>

/* Prints "dsv32 <cmd>: <message>" on stderr and returns 1 (the exit code). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The value after an option, or NULL (and an error printed) if missing. */
const char *cli_value(const char *cmd, int argc, char **argv, int *i);
/* Parses a whole decimal integer in [lo, hi]; 0 on success. */
int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
/* Parses a --scale-fmt value ("ue8m0" or "none") into a DSV_SCALE_FMT_*; 0 on success. */
int cli_scale_fmt(const char *cmd, const char *s, int *out);
/* Parses "1,2,3" into a malloc'ed array; 0 on success. */
int cli_ids(const char *cmd, const char *s, int32_t **ids, int *n);

/* Reads a per-layer top-k file (n_layers integers >= 1, separated by
 * spaces, commas or newlines; '#' starts a comment, as `dsv32 analyze
 * --suggest -o` writes it) into layer_topk[0..n_layers); 0 on success. */
int cli_topk_file(const char *cmd, const char *path, int n_layers, int *layer_topk);

/* The chat format of a run: the one called name (--chat-format) when given,
 * else the model's (dsv_chat_format_detect_note: a directory's files or a
 * GGUF's template and architecture), with its note printed as
 * "dsv32 <cmd>: warning: ..." when detection had to guess. NULL (the error
 * printed) when neither works. */
struct dsv_chat_format;
const struct dsv_chat_format *cli_chat_format(const char *cmd, const char *name, const char *model);

/* The engine options several commands share, parsed in one place so that
 * their names, ranges and messages agree. Each command names the ones it
 * takes (CLI_E_* bits) and may raise the lower bound of --ctx and --batch. */
enum {
    CLI_E_MODEL = 1 << 0,     /* -m, --model DIR */
    CLI_E_THREADS = 1 << 1,   /* -t, --threads N, 1 to 1024 */
    CLI_E_CTX = 1 << 2,       /* --ctx N, ctx_min to 2^24 */
    CLI_E_BATCH = 1 << 3,     /* --batch N, batch_min to 2^20 */
    CLI_E_DENSE = 1 << 4,     /* --dense */
    CLI_E_TOPK = 1 << 5,      /* --topk K, 1 to 2^30 */
    CLI_E_SCALE_FMT = 1 << 6, /* --scale-fmt ue8m0|none */
    CLI_E_TOPK_FILE = 1 << 7, /* --topk-file FILE (read with cli_topk_file once the model is open) */
    CLI_E_ACT_QUANT = 1 << 8, /* --act-quant fp8|none (GGUF models) */
};
typedef struct cli_engine {
    unsigned which;           /* CLI_E_* this command takes */
    const char *model;        /* NULL: not given */
    int threads;              /* 0: all online CPUs */
    int n_ctx;                /* 0: the model's default */
    int n_batch;              /* 0: the command's default */
    int dense;
    int topk;                 /* 0: the model's index_topk */
    const char *topk_file;    /* NULL: not given */
    int scale_fmt;            /* -1: as the checkpoint says, else DSV_SCALE_FMT_* */
    int act_quant;            /* -1: as the GGUF file says, else DSV_ACT_QUANT_* */
    /* The lowest --ctx and --batch the command takes (1 unless it says
     * more), checked here so that the message is cli_int's everywhere. */
    int ctx_min, batch_min;
} cli_engine;
/* All unset, taking the options in `which`, with ctx_min = batch_min = 1. */
cli_engine cli_engine_init(unsigned which);
/* If argv[*i] is one of e->which, parses it (and its value, advancing *i):
 * returns 1; 0 if it is not one of them; -1 on a bad value (error printed). */
int cli_engine_opt(const char *cmd, cli_engine *e, int argc, char **argv, int *i);
/* After the options: -m given (when taken), --dense and --topk not both.
 * 0, or 1 with the error printed. */
int cli_engine_check(const char *cmd, const cli_engine *e);

#endif
