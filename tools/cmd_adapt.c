/* cmd_adapt.c: `dsv32 adapt`, the lightning indexer of a model adapted to a
 * user's text (include/dsv32_adapt.h): the held-out indexer KL and the
 * attention mass the top-k keeps before, the training steps with their
 * progress, the adapted model directory, and the same measures taken again
 * on that directory as the engine loads it, so the fp8 rounding of the
 * written weights is in the "after" numbers.
 *
 * Ctrl-C stops after the current step and saves the resume state; so does
 * every --save-every steps. Data: the text is encoded with the model's own
 * tokenizer; each step's windows depend only on (seed, step), so a resumed
 * run sees what the uninterrupted one would have. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_adapt.h"
#include "dsv32_tokenizer.h"
#include "dsv32_util.h"

/* Texts are read whole; past 4 GiB the token ids alone would not fit. */
#define TEXT_MAX_BYTES ((size_t)1 << 32)

static const char *adapt_usage =
    "usage: dsv32 adapt -m MODEL -f TEXT -o OUT [options]\n"
    "       dsv32 adapt -m MODEL -f TEXT [--val FILE] --measure [--topk K] [--ctx N]\n"
    "\n"
    "Adapts the lightning indexer of MODEL (a Hugging Face directory) to TEXT: DeepSeek's\n"
    "indexer warm-up (KL between the indexer's distribution and the main model's attention\n"
    "summed over heads), main model frozen and computed by this engine. Only the indexer's\n"
    "wq_b, wk, k_norm and weights_proj train (fp32); OUT is a copy of MODEL with those\n"
    "tensors rewritten in the checkpoint's format (fp8 with 128x128 block scales, or bf16).\n"
    "\n"
    "  -m DIR             model directory (config.json, safetensors, tokenizer.json)\n"
    "  -f FILE            training text (UTF-8)\n"
    "  -o DIR             adapted model directory to write (not MODEL itself)\n"
    "  --val FILE         held-out text: KL and mass kept before and after (default: none)\n"
    "  --steps N          optimizer steps (default 100)\n"
    "  --lr F             peak learning rate (default 1e-3)\n"
    "  --min-lr F         final learning rate as a fraction of --lr (default 0.1)\n"
    "  --warmup N         linear warm-up steps, then cosine decay (default steps/10)\n"
    "  --clip F           gradient-norm clip, 0 for none (default 1)\n"
    "  --ctx N            tokens per window, BOS included (default 256)\n"
    "  --batch N          windows per step (default 1)\n"
    "  --stage S          dense (the warm-up, default) or sparse (the loss restricted to the\n"
    "                     indexer's own top-k, DeepSeek's sparse stage)\n"
    "  --topk K           top-k of the sparse stage and of the mass-kept measure\n"
    "                     (default: the model's index_topk)\n"
    "  --seed N           window sampling (default 1234)\n"
    "  --eval-windows N   windows of each text measured before and after (default 16)\n"
    "  --state FILE       resume state written on Ctrl-C, every --save-every steps and at the\n"
    "                     end (default: OUT.state)\n"
    "  --save-every N     default 0 (only on Ctrl-C and at the end)\n"
    "  --resume FILE      continue from a resume state (same model, text and options)\n"
    "  --measure          only measure KL and mass kept on -f (and --val); no -o, no training\n"
    "  --threads N        engine threads (default: all online CPUs)\n"
    "  -h, --help         this help\n"
    "\n"
    "Progress goes to stderr: step, indexer KL, mass kept, learning rate, gradient norm,\n"
    "tokens per second. The summary (stdout) gives KL and mass kept before and after.\n";

static volatile sig_atomic_t stop_flag;
static void on_sigint(int sig) {
    (void)sig;
    stop_flag = 1;
}

static int parse_float(const char *cmd, const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0 || v > 1e30)
        return cli_fail(cmd, "%s: '%s' is not a number >= 0", opt, s);
    *out = (float)v;
    return 0;
}

static int load_ids(const char *cmd, const dsv_tokenizer *tok, const char *path, int32_t **ids, size_t *n) {
    size_t len;
    char *text;
    if (dsv_read_file(path, TEXT_MAX_BYTES, &text, &len)) return cli_fail(cmd, "%s", dsv_errmsg());
    *ids = malloc((len + 1) * sizeof **ids);
    if (!*ids) { free(text); return cli_fail(cmd, "out of memory"); }
    int st = dsv_tokenize(tok, text, len, *ids, len + 1, n);
    free(text);
    return st ? cli_fail(cmd, "%s: %s", path, dsv_errmsg()) : 0;
}

/* KL and mass kept on the first max_w windows of a text. */
/* Layers whose KL the summary lists. */
#define MAX_LAYERS_SHOWN 256

/* KL (per layer too, into kl_layer when not NULL) and mass kept on the
 * first max_w windows of a text. */
static int measure(const char *cmd, dsv_adapter *a, const int32_t *ids, size_t n, int max_w, dsv_adapt_stats *st,
                   double *kl_layer) {
    int32_t *win;
    int nw;
    if (dsv_adapt_windows(a, ids, n, &win, &nw)) return cli_fail(cmd, "%s", dsv_errmsg());
    if (nw > max_w) nw = max_w;
    int rc = dsv_adapt_eval(a, win, nw, st, kl_layer) ? cli_fail(cmd, "%s", dsv_errmsg()) : 0;
    free(win);
    return rc;
}

static void print_mass(double m) {
    if (m < 0) printf("      -");
    else printf(" %6.4f", m);
}

int cmd_adapt(int argc, char **argv) {
    const char *cmd = "adapt", *model = NULL, *text = NULL, *out = NULL, *val = NULL, *state = NULL;
    const char *resume = NULL, *stage = "dense", *v;
    dsv_adapt_opts o = dsv_adapt_default_opts();
    long steps = o.steps, ctx = o.ctx, batch = o.batch, warmup = -1, topk = 0, seed = 1234, threads = 0;
    long save_every = 0, eval_windows = 16;
    int measure_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        long *iv = NULL, lo = 0, hi = 1L << 30;
        float *fv = NULL;
        const char **sv = NULL;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) { fputs(adapt_usage, stdout); return 0; }
        else if (!strcmp(arg, "--measure")) { measure_only = 1; continue; }
        else if (!strcmp(arg, "-m")) sv = &model;
        else if (!strcmp(arg, "-f")) sv = &text;
        else if (!strcmp(arg, "-o")) sv = &out;
        else if (!strcmp(arg, "--val")) sv = &val;
        else if (!strcmp(arg, "--state")) sv = &state;
        else if (!strcmp(arg, "--resume")) sv = &resume;
        else if (!strcmp(arg, "--stage")) sv = &stage;
        else if (!strcmp(arg, "--steps")) iv = &steps;
        else if (!strcmp(arg, "--ctx")) { iv = &ctx; lo = 2; hi = 1 << 16; }
        else if (!strcmp(arg, "--batch")) { iv = &batch; lo = 1; hi = 4096; }
        else if (!strcmp(arg, "--warmup")) iv = &warmup;
        else if (!strcmp(arg, "--topk")) { iv = &topk; lo = 1; }
        else if (!strcmp(arg, "--seed")) { iv = &seed; hi = 0x7fffffffffffffffL; }
        else if (!strcmp(arg, "--threads")) { iv = &threads; lo = 1; hi = 1024; }
        else if (!strcmp(arg, "--save-every")) iv = &save_every;
        else if (!strcmp(arg, "--eval-windows")) iv = &eval_windows;
        else if (!strcmp(arg, "--lr")) fv = &o.lr;
        else if (!strcmp(arg, "--min-lr")) fv = &o.min_lr;
        else if (!strcmp(arg, "--clip")) fv = &o.clip;
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 adapt --help)", arg);
        if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
        if (sv) *sv = v;
        else if (iv) { if (cli_int(cmd, arg, v, lo, hi, iv)) return 1; }
        else if (parse_float(cmd, arg, v, fv)) return 1;
    }
    if (!model || !text || (!out && !measure_only))
        return cli_fail(cmd, "missing -m MODEL, -f TEXT or -o OUT (see dsv32 adapt --help)");
    if (measure_only) out = "";
    if (strcmp(stage, "dense") && strcmp(stage, "sparse"))
        return cli_fail(cmd, "--stage: '%s' is neither dense nor sparse", stage);
    o.stage = strcmp(stage, "sparse") ? DSV_ADAPT_DENSE : DSV_ADAPT_SPARSE;
    o.steps = (int)steps;
    o.ctx = (int)ctx;
    o.batch = (int)batch;
    o.warmup = (int)warmup;
    o.topk = (int)topk;
    o.seed = (uint64_t)seed;
    o.n_threads = (int)threads;
    /* Refused before any work (the library refuses it too, at the end). */
    char r_model[4096], r_out[4096];
    if (!measure_only && realpath(model, r_model) && realpath(out, r_out) && !strcmp(r_model, r_out))
        return cli_fail(cmd, "%s: the output must not be the model's own directory", out);
    char state_buf[4096];
    if (!state) {
        snprintf(state_buf, sizeof state_buf, "%s.state", out);
        state = state_buf;
    }

    dsv_tokenizer *tok;
    if (dsv_tokenizer_open(&tok, model)) return cli_fail(cmd, "%s", dsv_errmsg());
    int32_t *tids = NULL, *vids = NULL, *buf = NULL;
    size_t tn = 0, vn = 0;
    int rc = load_ids(cmd, tok, text, &tids, &tn);
    if (!rc && val) rc = load_ids(cmd, tok, val, &vids, &vn);
    dsv_tokenizer_close(tok);
    dsv_adapter *a = NULL, *b = NULL;
    if (!rc && dsv_adapt_open(&a, model, &o)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    if (!rc && resume && dsv_adapt_resume(a, resume)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    if (!rc && tn < (size_t)ctx - 1) rc = cli_fail(cmd, "%s: %zu tokens, fewer than one window (--ctx %ld)", text, tn, ctx);
    if (!rc && !(buf = malloc((size_t)batch * ctx * sizeof *buf))) rc = cli_fail(cmd, "out of memory");

    dsv_adapt_stats tr0 = {0}, va0 = {0}, tr1 = {0}, va1 = {0};
    double kl0[MAX_LAYERS_SHOWN] = {0}, kl1[MAX_LAYERS_SHOWN] = {0};
    int n_layers = 0;
    if (!rc) {
        const dsv_config *c = dsv_adapt_config(a);
        if (!measure_only)
            fprintf(stderr, "adapt: %s stage, %ld steps x %ld x %ld tokens, %ld indexer parameters over %d layers; "
                    "text %zu tokens%s\n", stage, steps, batch, ctx, dsv_adapt_n_params(a), c->n_layers, tn,
                    val ? "" : "; no --val");
        fprintf(stderr, "adapt: measuring%s\n", measure_only ? "" : " before");
        n_layers = c->n_layers <= MAX_LAYERS_SHOWN ? c->n_layers : 0;
        rc = measure(cmd, a, tids, tn, (int)eval_windows, &tr0, val || !n_layers ? NULL : kl0);
        if (!rc && val) rc = measure(cmd, a, vids, vn, (int)eval_windows, &va0, n_layers ? kl0 : NULL);
    }
    if (!rc && measure_only) {
        printf("indexer KL (mean per query and layer) and attention mass kept at k=%d, %ld-token windows\n",
               o.topk ? o.topk : dsv_adapt_config(a)->index_topk, ctx);
        printf("%-10s %9s %7s\n", "text", "KL", "mass");
        printf("%-10s %9.4f", "train", tr0.kl);
        print_mass(tr0.mass);
        printf("\n");
        if (val) {
            printf("%-10s %9.4f", "held-out", va0.kl);
            print_mass(va0.mass);
            printf("\n");
        }
        if (n_layers) {
            printf("KL per layer (%s):", val ? "held-out" : "train");
            for (int l = 0; l < n_layers; l++) printf(" %.4f", kl0[l]);
            printf("\n");
        }
        dsv_adapt_free(a);
        free(buf);
        free(tids);
        free(vids);
        return 0;
    }
    struct sigaction sa = {0}, old_sa;
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    if (!rc) fprintf(stderr, "adapt: training (Ctrl-C stops after the step and saves %s)\n", state);
    const int tty = isatty(2);
    const int every = steps >= 20 ? (int)(steps / 20) : 1;
    double t0 = dsv_time(), tok_done = 0, train_s = 0;
    int interrupted = 0;
    for (int s = a ? dsv_adapt_step_no(a) : 0; !rc && s < steps; s = dsv_adapt_step_no(a)) {
        dsv_adapt_stats st;
        double ts = dsv_time();
        if (dsv_adapt_sample(a, tids, tn, s, buf) || dsv_adapt_step(a, buf, &st)) {
            rc = cli_fail(cmd, "%s", dsv_errmsg());
            break;
        }
        double now = dsv_time();
        train_s += now - ts;
        tok_done += (double)st.tokens;
        if (tty || (s + 1) % every == 0 || s + 1 == steps)
            fprintf(stderr, "%sstep %5d/%ld  kl %.4f  mass %.4f  lr %.2e  gnorm %.3f  %.0f tok/s  %.1fs%s",
                    tty ? "\r" : "", s + 1, steps, st.kl, st.mass, st.lr, st.grad_norm, tok_done / train_s,
                    now - t0, tty ? "  " : "\n");
        if (stop_flag) {
            interrupted = 1;
            break;
        }
        if (save_every > 0 && (s + 1) % save_every == 0 && dsv_adapt_save(a, state))
            rc = cli_fail(cmd, "%s", dsv_errmsg());
    }
    sigaction(SIGINT, &old_sa, NULL);
    if (tty) fputc('\n', stderr);
    if (!rc && dsv_adapt_save(a, state)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    if (!rc && interrupted) {
        fprintf(stderr, "adapt: interrupted at step %d; state saved to %s (continue with --resume %s)\n",
                dsv_adapt_step_no(a), state, state);
        rc = 130;
    }
    if (!rc && dsv_adapt_write(a, out)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    const int k = a ? (o.topk ? o.topk : dsv_adapt_config(a)->index_topk) : 0;
    dsv_adapt_free(a);
    /* "After": the written directory as the engine loads it. */
    if (!rc) {
        fprintf(stderr, "adapt: measuring %s\n", out);
        if (dsv_adapt_open(&b, out, &o)) rc = cli_fail(cmd, "%s", dsv_errmsg());
        if (!rc) rc = measure(cmd, b, tids, tn, (int)eval_windows, &tr1, val || !n_layers ? NULL : kl1);
        if (!rc && val) rc = measure(cmd, b, vids, vn, (int)eval_windows, &va1, n_layers ? kl1 : NULL);
    }
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("indexer KL (mean per query and layer) and attention mass kept at k=%d, %ld-token windows\n", k, ctx);
        printf("%-10s %9s %9s %7s %7s\n", "text", "KL before", "KL after", "mass0", "mass1");
        printf("%-10s %9.4f %9.4f", "train", tr0.kl, tr1.kl);
        print_mass(tr0.mass);
        print_mass(tr1.mass);
        printf("\n");
        if (val) {
            printf("%-10s %9.4f %9.4f", "held-out", va0.kl, va1.kl);
            print_mass(va0.mass);
            print_mass(va1.mass);
            printf("\n");
        }
        if (n_layers) {
            printf("KL per layer (%s), before:", val ? "held-out" : "train");
            for (int l = 0; l < n_layers; l++) printf(" %.4f", kl0[l]);
            printf("\nKL per layer (%s), after: ", val ? "held-out" : "train");
            for (int l = 0; l < n_layers; l++) printf(" %.4f", kl1[l]);
            printf("\n");
        }
        if (tok_done > 0)
            printf("training: %.0f tokens in %.1f s, %.2f s per 1K tokens; peak memory %.0f MiB\n", tok_done, train_s,
                   train_s / tok_done * 1000, ru.ru_maxrss / 1024.0);
        printf("wrote %s\n", out);
    }
    dsv_adapt_free(b);
    free(buf);
    free(tids);
    free(vids);
    return rc;
}
