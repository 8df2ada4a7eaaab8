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

#endif
