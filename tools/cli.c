/* cli.c: argument helpers shared by the commands, and the one parser of the
 * engine options (-m/--model, -t/--threads, --ctx, --batch, --dense, --topk,
 * --topk-file, --scale-fmt). */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32.h"
#include "dsv32_chat.h"

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

cli_engine cli_engine_init(unsigned which) {
    return (cli_engine){.which = which, .scale_fmt = -1, .act_quant = -1, .ctx_min = 1, .batch_min = 1};
}

int cli_engine_opt(const char *cmd, cli_engine *e, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    if ((e->which & CLI_E_DENSE) && !strcmp(a, "--dense")) { e->dense = 1; return 1; }
    if ((e->which & CLI_E_MODEL) && (!strcmp(a, "-m") || !strcmp(a, "--model")))
        return (e->model = cli_value(cmd, argc, argv, i)) ? 1 : -1;
    if ((e->which & CLI_E_TOPK_FILE) && !strcmp(a, "--topk-file"))
        return (e->topk_file = cli_value(cmd, argc, argv, i)) ? 1 : -1;
    if ((e->which & CLI_E_SCALE_FMT) && !strcmp(a, "--scale-fmt"))
        return (v = cli_value(cmd, argc, argv, i)) && !cli_scale_fmt(cmd, v, &e->scale_fmt) ? 1 : -1;
    if ((e->which & CLI_E_ACT_QUANT) && !strcmp(a, "--act-quant")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "fp8")) e->act_quant = DSV_ACT_QUANT_FP8;
        else if (!strcmp(v, "none")) e->act_quant = DSV_ACT_QUANT_NONE;
        else {
            cli_fail(cmd, "--act-quant: expected fp8 or none, got '%s'", v);
            return -1;
        }
        return 1;
    }
    /* alias: the long name of a short option, NULL if none. */
    const struct { unsigned bit; const char *name, *alias; int *dst; long lo, hi; } ints[] = {
        {CLI_E_THREADS, "-t", "--threads", &e->threads, 1, 1024},
        {CLI_E_CTX, "--ctx", NULL, &e->n_ctx, e->ctx_min, 1L << 24},
        {CLI_E_BATCH, "--batch", NULL, &e->n_batch, e->batch_min, 1L << 20},
        {CLI_E_TOPK, "--topk", NULL, &e->topk, 1, 1L << 30},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        if (!(e->which & ints[k].bit) || (strcmp(a, ints[k].name) && (!ints[k].alias || strcmp(a, ints[k].alias))))
            continue;
        long n;
        if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, ints[k].lo, ints[k].hi, &n)) return -1;
        *ints[k].dst = (int)n;
        return 1;
    }
    return 0;
}

int cli_engine_check(const char *cmd, const cli_engine *e) {
    if ((e->which & CLI_E_MODEL) && !e->model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 %s --help)", cmd);
    if (e->dense && e->topk) return cli_fail(cmd, "--dense and --topk exclude each other");
    if (e->dense && e->topk_file) return cli_fail(cmd, "--dense and --topk-file exclude each other");
    return 0;
}

const dsv_chat_format *cli_chat_format(const char *cmd, const char *name, const char *model) {
    const dsv_chat_format *f = NULL;
    char note[1024];
    if (name) f = dsv_chat_format_find(name);
    else if (dsv_chat_format_detect_note(model, &f, note, sizeof note)) f = NULL;
    else if (note[0]) fprintf(stderr, "dsv32 %s: warning: %s\n", cmd, note);
    if (!f) cli_fail(cmd, "%s", dsv_errmsg());
    return f;
}
