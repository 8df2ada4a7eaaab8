/* cmd_generate.c: `dsv32 generate`, text completion of plain prompts.
 *
 * One prompt (-p) streams its completion to stdout as it is produced; an
 * input file's prompts (separated by blank lines) run together as one batch,
 * one sequence each, and their completions are printed in input order.
 * A plain prompt gets BOS when tokenizer_config.json says add_bos_token, as
 * the Hugging Face tokenizer adds it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32_util.h"
#include "gen.h"

static void usage(void) {
    printf("usage: dsv32 generate -m DIR (-p TEXT | --input-file F) [options]\n"
           "\n"
           "Continues a prompt; prints the completion as it is generated, then the prompt\n"
           "size, prefill and decode speed and peak memory on stderr.\n"
           "\n"
           "  -p TEXT            the prompt\n"
           "  --input-file F     prompts separated by blank lines, run as one batch; the\n"
           "                     completions are printed in input order\n"
           "%s"
           "  -h, --help         this help\n",
           gen_opts_help);
}

static void emit_stdout(void *user, int32_t id, const char *text, size_t len) {
    (void)user;
    (void)id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

struct buf { char *p; size_t n, cap; };
static void emit_buf(void *user, int32_t id, const char *text, size_t len) {
    struct buf *b = user;
    (void)id;
    if (b->n + len + 1 > b->cap) {
        size_t cap = (b->n + len + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) return;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, text, len);
    b->n += len;
    b->p[b->n] = 0;
}

/* Texts are read whole; past 4 GiB the token ids alone would not fit. */
#define TEXT_MAX_BYTES ((size_t)1 << 32)

/* Splits the file's text at blank lines ("\n\n"), trimming each prompt. */
int read_prompt_file(const char *cmd, const char *path, char ***out, int *n) {
    char *text;
    if (dsv_read_file(path, TEXT_MAX_BYTES, &text, NULL)) return cli_fail(cmd, "%s", dsv_errmsg());
    char **v = NULL;
    int cnt = 0;
    char *p = text;
    while (*p) {
        char *end = strstr(p, "\n\n");
        if (end) *end = 0;
        while (*p == '\n' || *p == ' ' || *p == '\t' || *p == '\r') p++;
        size_t l = strlen(p);
        while (l && (p[l - 1] == '\n' || p[l - 1] == ' ' || p[l - 1] == '\r' || p[l - 1] == '\t')) p[--l] = 0;
        if (l) {
            char **nv = realloc(v, (size_t)(cnt + 1) * sizeof *v);
            if (!nv) break;
            v = nv;
            v[cnt++] = strdup(p);
        }
        if (!end) break;
        p = end + 2;
    }
    free(text);
    if (!cnt) { free(v); return cli_fail(cmd, "%s: no prompts (prompts are separated by blank lines)", path); }
    *out = v;
    *n = cnt;
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *cmd = "generate", *prompt = NULL, *input = NULL;
    gen_opts o;
    gen_default_opts(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        int r = gen_parse_opt(cmd, &o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(a, "-p")) { if (!(prompt = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--input-file")) { if (!(input = cli_value(cmd, argc, argv, &i))) return 1; }
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 generate --help)", a);
    }
    if (!prompt == !input) return cli_fail(cmd, "give exactly one of -p TEXT or --input-file F");
    char **prompts = NULL;
    int n = 1;
    if (input) { if (read_prompt_file(cmd, input, &prompts, &n)) return 1;
    if (n > 256) return cli_fail(cmd, "%s: %d prompts; at most 256 run in one batch", input, n); }
    else { prompts = malloc(sizeof *prompts); prompts[0] = strdup(prompt); }

    gen g;
    int rc = gen_open(&g, cmd, &o, n);
    int32_t **ids = calloc((size_t)n, sizeof *ids);
    dsv_gen_slot **slots = calloc((size_t)n, sizeof *slots);
    struct buf *outs = calloc((size_t)n, sizeof *outs);
    if (!rc && (!ids || !slots || !outs)) rc = cli_fail(cmd, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        int32_t *t;
        int nt, len;
        if ((rc = gen_encode(&g, prompts[i], &t, &nt))) break;
        int bos = dsv_tokenizer_add_bos(g.tok);
        if (!(ids[i] = malloc((size_t)(nt + 1) * sizeof **ids))) { free(t); rc = cli_fail(cmd, "out of memory"); break; }
        if (bos) ids[i][0] = dsv_tokenizer_bos(g.tok) >= 0 ? dsv_tokenizer_bos(g.tok) : g.c->bos_id;
        memcpy(ids[i] + bos, t, (size_t)nt * sizeof *t);
        len = nt + bos;
        free(t);
        if (len == 0) rc = cli_fail(cmd, "prompt %d is empty", i + 1);
        else if (len + o.n_predict > g.o.n_ctx)
            rc = cli_fail(cmd, "prompt %d (%d tokens) plus -n %d exceeds the context (--ctx %d)", i + 1, len, o.n_predict, g.o.n_ctx);
        else rc = gen_slot(&g, &slots[i], i, ids[i], len, 0);
    }
    void **users = calloc((size_t)n, sizeof *users);
    for (int i = 0; users && i < n; i++) users[i] = &outs[i];
    if (!rc) rc = gen_run(&g, n, slots, input ? emit_buf : emit_stdout, input ? users : NULL);
    free(users);
    if (!rc && input)
        for (int i = 0; i < n; i++) printf("Prompt: %s\nCompletion: %s\n\n", prompts[i], outs[i].p ? outs[i].p : "");
    if (!rc && !input) putchar('\n');
    fflush(stdout);
    if (!rc) gen_report(&g);
    for (int i = 0; i < n; i++) {
        free(prompts[i]);
        if (ids) free(ids[i]);
        if (outs) free(outs[i].p);
        if (slots) dsv_gen_slot_free(slots[i]);
    }
    free(ids); free(slots); free(outs); free(prompts);
    if (g.m) gen_close(&g);
    return rc;
}
