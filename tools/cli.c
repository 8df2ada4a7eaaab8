/* cli.c: argument helpers shared by the commands. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"

int cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "dsv32 %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_fail(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_fail(cmd, "%s: '%s' is not an integer in [%ld, %ld]", opt, s, lo, hi);
        return 1;
    }
    *out = v;
    return 0;
}

int cli_scale_fmt(const char *cmd, const char *s, int *out) {
    if (!strcmp(s, "ue8m0")) *out = DSV_SCALE_FMT_UE8M0;
    else if (!strcmp(s, "none")) *out = DSV_SCALE_FMT_NONE;
    else return cli_fail(cmd, "--scale-fmt: expected ue8m0 or none, got '%s'", s);
    return 0;
}

int cli_ids(const char *cmd, const char *s, int32_t **ids, int *n) {
    int cap = 16, cnt = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    const char *p = s;
    while (v && *p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            cli_fail(cmd, "--ids: expected comma-separated token ids, got '%s'", s);
            return 1;
        }
        if (cnt == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) { free(v); v = NULL; break; }
            v = nv;
        }
        v[cnt++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    if (!v) return cli_fail(cmd, "out of memory");
    if (!cnt) { free(v); return cli_fail(cmd, "--ids: no token ids given"); }
    *ids = v;
    *n = cnt;
    return 0;
}

int cli_topk_file(const char *cmd, const char *path, int n_layers, int *layer_topk) {
    FILE *f = fopen(path, "r");
    if (!f) return cli_fail(cmd, "--topk-file %s: cannot open (%s)", path, strerror(errno));
    int n = 0, c, bad = 0;
    long v = -1; /* the number being read, -1 between numbers */
    while (!bad) {
        c = fgetc(f);
        if (c == '#') {
            while (c != EOF && c != '\n') c = fgetc(f);
        }
        if (c >= '0' && c <= '9') {
            v = (v < 0 ? 0 : v) * 10 + (c - '0');
            if (v > (1L << 30)) bad = 1;
            continue;
        }
        if (v >= 0) {
            if (v < 1 || n >= n_layers || n >= DSV_MAX_TOPK_LAYERS) bad = 1;
            else layer_topk[n++] = (int)v;
            v = -1;
        }
        if (c == EOF) break;
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != ',') bad = 1;
    }
    fclose(f);
    if (bad || n != n_layers)
        return cli_fail(cmd, "--topk-file %s: expected %d top-k values in [1, 2^30] (one per layer; commas, spaces "
                        "and # comments allowed)", path, n_layers);
    return 0;
}
