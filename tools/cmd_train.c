/* cmd_train.c: `dsv32 train` (one stage of DeepSeek's DSA recipe on a text
 * corpus), `dsv32 export` (a checkpoint to a Hugging Face model directory)
 * and `dsv32 bpe` (a byte-level BPE tokenizer trained on a text).
 *
 * Training data: the text is encoded with the model's tokenizer; each
 * sequence is BOS followed by ctx-1 tokens starting at a random line start,
 * with targets shifted by one. Sampling depends only on (seed, step), so a
 * resumed run sees the data the uninterrupted one would have.
 *
 * SIGINT (Ctrl-C) ends training after the step in progress, with a
 * checkpoint of that step written to -o (exit status 130); a second SIGINT
 * kills at once. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_tokenizer.h"
#include "dsv32_train.h"
#include "dsv32_util.h"

/* Texts are read whole; past 4 GiB the token ids alone would not fit. */
#define TEXT_MAX_BYTES ((size_t)1 << 32)

/* Token ids of a text file and, for each token, whether a line starts there. */
typedef struct corpus { int32_t *ids; uint8_t *line_start; size_t n; } corpus;

static int load_corpus(const char *cmd, const dsv_tokenizer *tok, const char *path, corpus *c) {
    size_t len;
    char *text;
    if (dsv_read_file(path, TEXT_MAX_BYTES, &text, &len)) return cli_fail(cmd, "%s", dsv_errmsg());
    c->ids = malloc((len + 1) * sizeof *c->ids);
    c->line_start = malloc(len + 1);
    if (!c->ids || !c->line_start) { free(text); return cli_fail(cmd, "out of memory"); }
    if (dsv_tokenize(tok, text, len, c->ids, len + 1, &c->n)) {
        free(text);
        return cli_fail(cmd, "%s: %s", path, dsv_errmsg());
    }
    int at_start = 1;
    for (size_t i = 0; i < c->n; i++) {
        size_t pl;
        const char *p = dsv_token_piece(tok, c->ids[i], &pl);
        c->line_start[i] = (uint8_t)at_start;
        at_start = pl > 0 && p[pl - 1] == '\n';
    }
    free(text);
    return 0;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* batch sequences of ctx+1 ids for one step. */
static void sample_batch(int32_t *out, const corpus *c, int batch, int ctx, int bos, uint64_t seed, int step) {
    uint64_t r = mix(seed * 1000003u + (uint64_t)step);
    size_t span = c->n - (size_t)ctx + 1;
    for (int b = 0; b < batch; b++) {
        size_t s;
        do {
            r = mix(r);
            s = (size_t)(r % span);
        } while (!c->line_start[s]);
        int32_t *o = out + (size_t)b * (ctx + 1);
        o[0] = bos;
        memcpy(o + 1, c->ids + s, (size_t)ctx * sizeof *o);
    }
}

/* Consecutive windows (BOS + ctx tokens each) covering the text; returns the count. */
static int make_windows(int32_t **out, const corpus *c, int ctx, int bos) {
    int n = c->n >= (size_t)ctx ? (int)((c->n - 1) / (size_t)(ctx - 1)) : 0;
    if (n == 0) return 0;
    *out = malloc((size_t)n * (ctx + 1) * sizeof **out);
    if (!*out) return -1;
    for (int w = 0; w < n; w++) {
        int32_t *o = *out + (size_t)w * (ctx + 1);
        o[0] = bos;
        memcpy(o + 1, c->ids + (size_t)w * (ctx - 1), (size_t)ctx * sizeof *o);
    }
    return n;
}

static const char *train_usage =
    "usage: dsv32 train (--config FILE | --init PATH | --resume CKPT) -f TEXT -t TOKENIZER -o CKPT [options]\n"
    "\n"
    "Runs one stage of DeepSeek's DSA training recipe on a text corpus and writes a checkpoint.\n"
    "\n"
    "  --config FILE      start from random weights with this Hugging Face config.json\n"
    "  --init PATH        start from the weights of a checkpoint or model directory (optimizer fresh)\n"
    "  --resume CKPT      continue an interrupted run of the same stage (weights, AdamW state, step)\n"
    "  -f FILE            training text (UTF-8)\n"
    "  -t DIR             tokenizer directory (tokenizer.json, tokenizer_config.json)\n"
    "  -o FILE            checkpoint to write (at the end and every --save-every steps)\n"
    "  --stage N          1 dense pre-training, 2 indexer warm-up (main model frozen),\n"
    "                     3 sparse training (default 1)\n"
    "  --steps N          optimizer steps of this stage (default 1000)\n"
    "  --batch N          sequences per step (default 8)\n"
    "  --ctx N            tokens per sequence, BOS included (default 1024)\n"
    "  --lr F             peak learning rate (default 3e-3)\n"
    "  --min-lr F         final learning rate as a fraction of --lr (default 0.1)\n"
    "  --warmup N         linear warm-up steps before the cosine decay (default 100)\n"
    "  --wd F             AdamW weight decay on matrices (default 0.1)\n"
    "  --clip F           gradient-norm clip, 0 for none (default 1.0)\n"
    "  --bias-rate F      step of the router's load-balancing bias (default 1e-3)\n"
    "  --topk K           index top-k in stage 3 (default: the config's index_topk)\n"
    "  --valid FILE       validation text, evaluated every --eval-every steps and at the end\n"
    "  --eval-every N     default 100\n"
    "  --save-every N     default 200 (0: only at the end)\n"
    "  --seed N           initialization and data order (default 1234)\n"
    "  --threads N        worker threads (default: all online CPUs)\n"
    "  -h, --help         this help\n"
    "\n"
    "Progress goes to stderr: step, LM loss, indexer KL, learning rate, gradient norm,\n"
    "expert load (most-loaded expert over the mean) and tokens per second.\n";

static int parse_float(const char *cmd, const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0) return cli_fail(cmd, "%s: '%s' is not a number >= 0", opt, s);
    *out = (float)v;
    return 0;
}

static void eval_valid(dsv_trainer *t, const int32_t *win, int n_win, int batch, int ctx, dsv_train_stats *out) {
    double lm = 0, kl = 0;
    long tok = 0;
    for (int w = 0; w < n_win; w += batch) {
        int n = n_win - w < batch ? n_win - w : batch;
        dsv_train_stats st;
        if (dsv_train_eval(t, win + (size_t)w * (ctx + 1), n, &st)) break;
        lm += st.lm_loss * st.tokens;
        kl += st.kl * st.tokens;
        tok += st.tokens;
    }
    memset(out, 0, sizeof *out);
    out->lm_loss = tok ? lm / tok : 0;
    out->kl = tok ? kl / tok : 0;
    out->tokens = tok;
}

static volatile sig_atomic_t interrupted;

/* The first SIGINT asks for a checkpoint; the next one is the default. */
static void on_sigint(int sig) {
    interrupted = 1;
    signal(sig, SIG_DFL);
}

int cmd_train(int argc, char **argv) {
    const char *cmd = "train", *config = NULL, *init = NULL, *resume = NULL, *text = NULL, *tokdir = NULL;
    const char *out = NULL, *valid = NULL, *v;
    dsv_train_opts o = dsv_train_default_opts();
    long stage = 1, steps = o.steps, batch = o.batch, ctx = o.seq_len, warmup = o.warmup, topk = 0;
    long eval_every = 100, save_every = 200, seed = 1234, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long *iv = NULL;
        long lo = 0, hi = 1L << 30;
        float *fv = NULL;
        const char **sv = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(train_usage, stdout); return 0; }
        else if (!strcmp(a, "--config")) sv = &config;
        else if (!strcmp(a, "--init")) sv = &init;
        else if (!strcmp(a, "--resume")) sv = &resume;
        else if (!strcmp(a, "-f")) sv = &text;
        else if (!strcmp(a, "-t")) sv = &tokdir;
        else if (!strcmp(a, "-o")) sv = &out;
        else if (!strcmp(a, "--valid")) sv = &valid;
        else if (!strcmp(a, "--stage")) { iv = &stage; lo = 1; hi = 3; }
        else if (!strcmp(a, "--steps")) iv = &steps;
        else if (!strcmp(a, "--batch")) { iv = &batch; lo = 1; hi = 4096; }
        else if (!strcmp(a, "--ctx")) { iv = &ctx; lo = 2; hi = 1 << 16; }
        else if (!strcmp(a, "--warmup")) iv = &warmup;
        else if (!strcmp(a, "--topk")) { iv = &topk; lo = 1; }
        else if (!strcmp(a, "--eval-every")) { iv = &eval_every; lo = 1; }
        else if (!strcmp(a, "--save-every")) iv = &save_every;
        else if (!strcmp(a, "--seed")) iv = &seed;
        else if (!strcmp(a, "--threads")) { iv = &threads; lo = 1; hi = 1024; }
        else if (!strcmp(a, "--lr")) fv = &o.lr;
        else if (!strcmp(a, "--min-lr")) fv = &o.min_lr;
        else if (!strcmp(a, "--wd")) fv = &o.weight_decay;
        else if (!strcmp(a, "--clip")) fv = &o.clip;
        else if (!strcmp(a, "--bias-rate")) fv = &o.bias_rate;
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 train --help)", a);
        if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
        if (sv) *sv = v;
        else if (iv) { if (cli_int(cmd, a, v, lo, hi, iv)) return 1; }
        else if (parse_float(cmd, a, v, fv)) return 1;
    }
    if ((config != NULL) + (init != NULL) + (resume != NULL) != 1)
        return cli_fail(cmd, "give exactly one of --config, --init and --resume (see dsv32 train --help)");
    if (!text) return cli_fail(cmd, "missing -f TEXT");
    if (!tokdir) return cli_fail(cmd, "missing -t TOKENIZER");
    if (!out) return cli_fail(cmd, "missing -o CKPT");
    o.stage = (int)stage;
    o.steps = (int)steps;
    o.batch = (int)batch;
    o.seq_len = (int)ctx;
    o.warmup = (int)warmup;
    o.topk = (int)topk;
    o.seed = (uint64_t)seed;
    o.n_threads = (int)threads;

    dsv_tokenizer *tok;
    if (dsv_tokenizer_open(&tok, tokdir)) return cli_fail(cmd, "%s", dsv_errmsg());
    int bos = dsv_tokenizer_bos(tok);
    if (bos < 0) { dsv_tokenizer_close(tok); return cli_fail(cmd, "%s: the tokenizer has no BOS token", tokdir); }
    corpus tc = {0}, vc = {0};
    int rc = load_corpus(cmd, tok, text, &tc);
    if (!rc && valid) rc = load_corpus(cmd, tok, valid, &vc);
    dsv_tokenizer_close(tok);
    if (!rc && tc.n < (size_t)ctx + 1) rc = cli_fail(cmd, "%s: %zu tokens, fewer than --ctx %ld", text, tc.n, ctx);
    dsv_trainer *t = NULL;
    if (!rc) {
        int st;
        if (config) {
            size_t len;
            char *json = NULL;
            if (dsv_read_file(config, TEXT_MAX_BYTES, &json, &len)) rc = cli_fail(cmd, "%s", dsv_errmsg());
            st = json ? dsv_train_new(&t, json, &o) : 0;
            free(json);
        } else {
            st = dsv_train_load(&t, init ? init : resume, &o, resume != NULL);
        }
        if (!rc && st) rc = cli_fail(cmd, "%s", dsv_errmsg());
    }
    const dsv_config *c = t ? dsv_train_config(t) : NULL;
    for (size_t i = 0; !rc && i < tc.n; i++)
        if (tc.ids[i] >= c->vocab_size) rc = cli_fail(cmd, "token id %d exceeds the model's vocabulary (%d)", tc.ids[i], c->vocab_size);
    int32_t *buf = NULL, *win = NULL;
    int n_win = 0;
    if (!rc) {
        buf = malloc((size_t)batch * (ctx + 1) * sizeof *buf);
        if (valid) n_win = make_windows(&win, &vc, (int)ctx, bos);
        if (!buf || n_win < 0) rc = cli_fail(cmd, "out of memory");
    }
    if (!rc) {
        fprintf(stderr, "train: stage %ld, %ld steps x %ld x %ld tokens; %ld parameters (%ld trained); "
                "corpus %zu tokens; %d validation windows\n", stage, steps, batch, ctx, dsv_train_n_params(t, 0),
                dsv_train_n_params(t, 1), tc.n, n_win);
    }
    double t0 = dsv_time(), tok_done = 0;
    struct sigaction sa = {.sa_handler = on_sigint}, old_sa;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    for (int s = t ? dsv_train_step_no(t) : 0; !rc && s < steps; s = dsv_train_step_no(t)) {
        sample_batch(buf, &tc, (int)batch, (int)ctx, bos, (uint64_t)seed, s);
        dsv_train_stats st;
        double ts = dsv_time();
        if (dsv_train_step(t, buf, &st)) { rc = cli_fail(cmd, "%s", dsv_errmsg()); break; }
        double now = dsv_time();
        tok_done += (double)st.tokens;
        double rate = tok_done / (now - t0);
        fprintf(stderr, "step %5d/%ld  loss %.4f  kl %.4f  lr %.2e  gnorm %.3f  load %.2f  %.0f tok/s  %.1fs  eta %.0fs\n",
                s + 1, steps, st.lm_loss, st.kl, st.lr, st.grad_norm, st.max_load, st.tokens / (now - ts), now - t0,
                (steps - s - 1) * (double)batch * ctx / rate);
        int last = s + 1 == steps;
        if (n_win > 0 && ((s + 1) % eval_every == 0 || last)) {
            dsv_train_stats ev;
            eval_valid(t, win, n_win, (int)batch, (int)ctx, &ev);
            fprintf(stderr, "eval  %5d  valid loss %.4f  ppl %.2f  kl %.4f  (%ld tokens)\n", s + 1, ev.lm_loss,
                    exp(ev.lm_loss), ev.kl, ev.tokens);
        }
        if ((save_every > 0 && (s + 1) % save_every == 0) || last || interrupted)
            if (dsv_train_save(t, out)) rc = cli_fail(cmd, "%s", dsv_errmsg());
        if (!rc && interrupted && !last) {
            fprintf(stderr, "train: interrupted after step %d; checkpoint written to %s (continue with --resume %s)\n",
                    s + 1, out, out);
            rc = 130;
        }
    }
    sigaction(SIGINT, &old_sa, NULL);
    if (!rc && t && dsv_train_step_no(t) >= steps && steps == 0 && dsv_train_save(t, out))
        rc = cli_fail(cmd, "%s", dsv_errmsg());
    free(buf);
    free(win);
    free(tc.ids); free(tc.line_start);
    free(vc.ids); free(vc.line_start);
    dsv_train_free(t);
    return rc;
}

/* ---- export --------------------------------------------------------------- */

static const char *export_usage =
    "usage: dsv32 export -i CKPT -o DIR [--fp8] [-t TOKENIZER]\n"
    "\n"
    "Writes a Hugging Face model directory the engine loads: config.json and model.safetensors.\n"
    "\n"
    "  -i PATH            training checkpoint (or model directory) to export\n"
    "  -o DIR             output directory (created if missing)\n"
    "  --fp8              linear weights as fp8 e4m3 with 128x128 block scales, as DeepSeek's\n"
    "                     checkpoints (default: bf16)\n"
    "  -t DIR             also copy tokenizer.json and tokenizer_config.json from DIR\n"
    "  -h, --help         this help\n";

static int copy_file(const char *cmd, const char *from_dir, const char *to_dir, const char *name) {
    char a[4096], b[4096];
    if (dsv_path_join(a, sizeof a, from_dir, name) || dsv_path_join(b, sizeof b, to_dir, name))
        return cli_fail(cmd, "%s", dsv_errmsg());
    size_t len;
    char *data;
    if (dsv_read_file(a, TEXT_MAX_BYTES, &data, &len)) return cli_fail(cmd, "%s", dsv_errmsg());
    FILE *f = fopen(b, "wb");
    int bad = !f || fwrite(data, 1, len, f) != len;
    if (f && fclose(f)) bad = 1;
    free(data);
    return bad ? cli_fail(cmd, "%s: cannot write", b) : 0;
}

int cmd_export(int argc, char **argv) {
    const char *cmd = "export", *in = NULL, *out = NULL, *tokdir = NULL;
    int fp8 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(export_usage, stdout); return 0; }
        else if (!strcmp(a, "--fp8")) fp8 = 1;
        else if (!strcmp(a, "-i")) { if (!(in = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(out = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-t")) { if (!(tokdir = cli_value(cmd, argc, argv, &i))) return 1; }
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 export --help)", a);
    }
    if (!in || !out) return cli_fail(cmd, "missing -i CKPT or -o DIR (see dsv32 export --help)");
    if (mkdir(out, 0777) && errno != EEXIST) return cli_fail(cmd, "%s: cannot create (%s)", out, strerror(errno));
    dsv_train_opts o = dsv_train_default_opts();
    o.seq_len = 2;
    o.n_threads = 1;
    dsv_trainer *t;
    if (dsv_train_load(&t, in, &o, 0)) return cli_fail(cmd, "%s", dsv_errmsg());
    int rc = dsv_train_export(t, out, fp8) ? cli_fail(cmd, "%s", dsv_errmsg()) : 0;
    dsv_train_free(t);
    if (!rc && tokdir) rc = copy_file(cmd, tokdir, out, "tokenizer.json");
    if (!rc && tokdir) rc = copy_file(cmd, tokdir, out, "tokenizer_config.json");
    return rc;
}

/* ---- bpe ------------------------------------------------------------------ */

static const char *bpe_usage =
    "usage: dsv32 bpe -f TEXT -o DIR [--vocab N]\n"
    "\n"
    "Trains a byte-level BPE tokenizer on TEXT with DeepSeek-V3's pre-tokenizer and writes\n"
    "DIR/tokenizer.json and DIR/tokenizer_config.json (DeepSeek's special and chat tokens added\n"
    "after the vocabulary, the V3.2 chat template).\n"
    "\n"
    "  -f FILE            training text\n"
    "  -o DIR             output directory (created if missing)\n"
    "  --vocab N          BPE vocabulary size: 3 specials + 256 bytes + merges (default 4096)\n"
    "  -h, --help         this help\n";

int cmd_bpe(int argc, char **argv) {
    const char *cmd = "bpe", *in = NULL, *out = NULL, *v;
    long vocab = 4096;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(bpe_usage, stdout); return 0; }
        else if (!strcmp(a, "-f")) { if (!(in = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(out = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--vocab")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 259, 1 << 20, &vocab)) return 1;
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 bpe --help)", a);
    }
    if (!in || !out) return cli_fail(cmd, "missing -f TEXT or -o DIR (see dsv32 bpe --help)");
    size_t len;
    char *text;
    if (dsv_read_file(in, TEXT_MAX_BYTES, &text, &len)) return cli_fail(cmd, "%s", dsv_errmsg());
    if (mkdir(out, 0777) && errno != EEXIST) { free(text); return cli_fail(cmd, "%s: cannot create (%s)", out, strerror(errno)); }
    int n = 0;
    double t0 = dsv_time();
    int rc = dsv_bpe_train(out, text, len, (int)vocab, &n) ? cli_fail(cmd, "%s", dsv_errmsg()) : 0;
    free(text);
    if (!rc) fprintf(stderr, "bpe: %d tokens (ids 0..%d) in %.1fs -> %s/tokenizer.json\n", n, n - 1, dsv_time() - t0, out);
    return rc;
}
