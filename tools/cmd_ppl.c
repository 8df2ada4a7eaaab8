/* cmd_ppl.c: `dsv32 ppl`, the perplexity of a text file with the engine (as
 * llama.cpp's perplexity tool), in consecutive windows of --ctx tokens.
 *
 * Each window is a fresh sequence: BOS (when the tokenizer adds one) and
 * then the next ctx-1 tokens of the text, so every text token is predicted
 * exactly once, from the tokens before it in its window. Windows are fed in
 * chunks of at most 512 tokens with logits for every position.
 * --recall measures the lightning indexer with the fp32 training forward on
 * the same weights: per layer, the share of dense attention mass (heads
 * summed, L1-normalized per query) inside the top-k the indexer selects,
 * over the queries that see more than k positions (full windows only).
 * --kl-base MODEL2 runs a second model (the unquantized one, say) on the
 * same windows and reports what llama.cpp's perplexity tool reports against
 * its base: mean KL(base || model) per position, top-1 agreement and the
 * perplexity ratio.
 * --random-ids N scores N token ids drawn uniformly from the vocabulary
 * (splitmix64 from --seed) instead of a text: for random-weight models
 * (dsv32 synth), which have no tokenizer and no text they predict, where
 * --kl-base still measures how far a quantized file strays from its base. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_tokenizer.h"
#include "dsv32_train.h"
#include "dsv32_util.h"

static const char *usage =
    "usage: dsv32 ppl -m MODEL_DIR (-f TEXT | --random-ids N) [options]\n"
    "\n"
    "Prints the perplexity of a text file under the model, in consecutive windows of --ctx\n"
    "tokens (each a fresh sequence starting with BOS when the tokenizer adds one).\n"
    "\n"
    "  -m, --model DIR    model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  -f FILE            text to score\n"
    "  --random-ids N     score N token ids drawn uniformly from the model's vocabulary\n"
    "                     instead of a text (no tokenizer needed, no BOS; for random-\n"
    "                     weight models, e.g. with --kl-base); same --seed, same ids\n"
    "  --seed S           seed of --random-ids (default: 0)\n"
    "  --ctx N            window size in tokens (default: max_position_embeddings, at most 4096)\n"
    "  --dense            attend to every position (no top-k)\n"
    "  --topk K           keep K positions per query instead of the model's index_topk\n"
    "  --topk-file FILE   a top-k per layer (from dsv32 analyze --suggest -o)\n"
    "  --recall           also print, per layer, the indexer's recall: the share of dense\n"
    "                     attention mass inside its top-k (fp32 training forward, full windows)\n"
    "  --scale-fmt F      activation scale format: ue8m0 or none (default: the checkpoint's)\n"
    "  --act-quant Q      GGUF: fp8 or none: quantize the inputs of the linears that were fp8 in the checkpoint\n"
    "                     as the reference does (default: what the file says, else none)\n"
    "  -t, --threads N    threads (default: all online CPUs)\n"
    "  --kl-base MODEL2   also run MODEL2 (e.g. the unquantized model) on the same windows\n"
    "                     and print mean KL(MODEL2 || MODEL), top-1 agreement and the\n"
    "                     perplexity ratio\n"
    "  --quiet            print only the perplexity\n"
    "  -h, --help         this help\n";

/* Texts are read whole; past 4 GiB the token ids alone would not fit. */
#define TEXT_MAX_BYTES ((size_t)1 << 32)

/* log p(target) from one row of logits. */
static double log_prob(const float *lg, int n, int target) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = lg[i] > mx ? lg[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)(lg[i] - mx));
    return (double)(lg[target] - mx) - log(s);
}

/* KL(p_a || p_b) of two rows of logits, and whether their argmaxes agree. */
static double kl_row(const float *a, const float *b, int n, int *agree) {
    float ma = -INFINITY, mb = -INFINITY;
    int ia = 0, ib = 0;
    for (int i = 0; i < n; i++) {
        if (a[i] > ma) { ma = a[i]; ia = i; }
        if (b[i] > mb) { mb = b[i]; ib = i; }
    }
    double za = 0, zb = 0;
    for (int i = 0; i < n; i++) { za += exp((double)(a[i] - ma)); zb += exp((double)(b[i] - mb)); }
    const double la = log(za), lb = log(zb);
    double kl = 0;
    for (int i = 0; i < n; i++) {
        const double pa = (double)(a[i] - ma) - la, pb = (double)(b[i] - mb) - lb;
        kl += exp(pa) * (pa - pb);
    }
    *agree = ia == ib;
    return kl;
}

/* n ids uniform in [0, V): splitmix64, the top bits reduced by a multiply
 * (no modulo bias worth the name at V < 2^32). */
static void random_ids(int32_t *ids, size_t n, int V, uint64_t seed) {
    uint64_t x = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        ids[i] = (int32_t)(((z >> 32) * (uint64_t)V) >> 32);
    }
}

static int run_recall(const char *cmd, const char *model, const int32_t *ids, size_t n, int ctx, int bos, int topk,
                      int threads, int quiet) {
    dsv_train_opts o = dsv_train_default_opts();
    o.seq_len = ctx;
    o.batch = 1;
    o.n_threads = threads;
    o.topk = topk;
    dsv_trainer *t;
    if (dsv_train_load(&t, model, &o, 0)) return cli_fail(cmd, "--recall: %s", dsv_errmsg());
    const dsv_config *c = dsv_train_config(t);
    int step = bos >= 0 ? ctx - 1 : ctx, n_win = (int)(n / (size_t)step);
    while (n_win > 0 && (size_t)(n_win - 1) * step + ctx - (bos >= 0) > n) n_win--;
    int32_t *buf = malloc((size_t)(n_win > 0 ? n_win : 1) * (ctx + 1) * sizeof *buf);
    double *rec = calloc((size_t)c->n_layers, sizeof *rec);
    if (!buf || !rec) { free(buf); free(rec); dsv_train_free(t); return cli_fail(cmd, "out of memory"); }
    for (int w = 0; w < n_win; w++) {
        int32_t *o2 = buf + (size_t)w * (ctx + 1);
        int k = 0;
        if (bos >= 0) o2[k++] = bos;
        memcpy(o2 + k, ids + (size_t)w * step, (size_t)(ctx - k) * sizeof *o2);
        o2[ctx] = 0;
    }
    int rc = 0;
    if (n_win == 0) rc = cli_fail(cmd, "--recall: the text has no full window of %d tokens", ctx);
    int q = rc ? 0 : dsv_train_recall(t, buf, n_win, rec);
    if (!rc && q < 0) rc = cli_fail(cmd, "--recall: %s", dsv_errmsg());
    if (!rc && !quiet) {
        printf("indexer recall (top-%d, %d queries past k in %d windows of %d):", topk ? topk : c->index_topk, q,
               n_win, ctx);
        for (int l = 0; l < c->n_layers; l++) printf(" L%d %.4f", l, rec[l]);
        printf("\n");
    }
    free(buf);
    free(rec);
    dsv_train_free(t);
    return rc;
}

int cmd_ppl(int argc, char **argv) {
    const char *cmd = "ppl", *file = NULL, *base = NULL;
    int recall = 0, quiet = 0;
    long n_random = 0, seed = 0;
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_CTX | CLI_E_DENSE | CLI_E_TOPK | CLI_E_SCALE_FMT | CLI_E_ACT_QUANT |
                                   CLI_E_TOPK_FILE);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_opt(cmd, &e, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--recall")) recall = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "-f")) { if (!(file = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--kl-base")) { if (!(base = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--random-ids") || !strcmp(a, "--seed")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            int rid = !strcmp(a, "--random-ids");
            if (!v || cli_int(cmd, a, v, rid ? 2 : 0, rid ? 1L << 30 : LONG_MAX, rid ? &n_random : &seed)) return 1;
        }
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 ppl --help)", a);
    }
    if (cli_engine_check(cmd, &e)) return 1;
    if (!file && !n_random) return cli_fail(cmd, "missing -f TEXT or --random-ids N");
    if (file && n_random) return cli_fail(cmd, "-f and --random-ids exclude each other");
    /* A window scores tokens after the first, so it needs two. */
    if (e.n_ctx == 1) return cli_fail(cmd, "--ctx: '1' is not an integer in [2, %d]", 1 << 24);
    if (e.topk_file && recall) return cli_fail(cmd, "--topk-file and --recall exclude each other");
    const char *model = e.model, *topk_file = e.topk_file;
    long ctx = e.n_ctx, topk = e.topk, threads = e.threads;
    int dense = e.dense, scale_fmt = e.scale_fmt;

    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 0, bos = -1;
    if (file) {
        dsv_tokenizer *tok;
        if (dsv_tokenizer_open(&tok, model)) return cli_fail(cmd, "%s", dsv_errmsg());
        size_t len;
        char *text;
        if (dsv_read_file(file, TEXT_MAX_BYTES, &text, &len)) {
            dsv_tokenizer_close(tok);
            return cli_fail(cmd, "%s", dsv_errmsg());
        }
        ids = malloc((len + 1) * sizeof *ids);
        if (!ids) rc = cli_fail(cmd, "out of memory");
        else if (dsv_tokenize(tok, text, len, ids, len + 1, &n)) rc = cli_fail(cmd, "%s: %s", file, dsv_errmsg());
        bos = dsv_tokenizer_add_bos(tok) ? dsv_tokenizer_bos(tok) : -1;
        dsv_tokenizer_close(tok);
        free(text);
        if (!rc && n < 2) rc = cli_fail(cmd, "%s: fewer than 2 tokens", file);
        if (rc) { free(ids); return rc; }
    }

    dsv_model_params mp = dsv_model_default_params();
    mp.scale_fmt = scale_fmt;
    mp.act_quant = e.act_quant;
    dsv_model *m;
    if (dsv_model_open(&m, model, &mp)) { free(ids); return cli_fail(cmd, "%s", dsv_errmsg()); }
    const dsv_config *c = dsv_model_config(m);
    if (n_random) {
        n = (size_t)n_random;
        if (!(ids = malloc(n * sizeof *ids))) {
            dsv_model_close(m);
            return cli_fail(cmd, "out of memory");
        }
        random_ids(ids, n, c->vocab_size, (uint64_t)seed);
    }
    if (!ctx) ctx = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
    for (size_t i = 0; i < n && !rc; i++)
        if (ids[i] >= c->vocab_size) rc = cli_fail(cmd, "token id %d exceeds the model's vocabulary (%d)", ids[i], c->vocab_size);
    const int chunk = ctx < 512 ? (int)ctx : 512, V = c->vocab_size;
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = (int)ctx;
    cp.n_batch = chunk;
    cp.n_threads = (int)threads;
    cp.attn = dense ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
    cp.topk = (int)topk;
    if (!rc && topk_file) rc = cli_topk_file(cmd, topk_file, c->n_layers, cp.layer_topk);
    dsv_context *cx = NULL;
    if (!rc && dsv_context_open(&cx, m, &cp)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    dsv_model *mb = NULL;
    dsv_context *cxb = NULL;
    if (!rc && base) {
        if (dsv_model_open(&mb, base, &mp)) rc = cli_fail(cmd, "--kl-base: %s", dsv_errmsg());
        else if (dsv_model_config(mb)->vocab_size != V)
            rc = cli_fail(cmd, "--kl-base: %s has a vocabulary of %d, not %d", base, dsv_model_config(mb)->vocab_size, V);
        else if (dsv_context_open(&cxb, mb, &cp)) rc = cli_fail(cmd, "--kl-base: %s", dsv_errmsg());
    }
    float *lbase = rc || !base ? NULL : malloc((size_t)chunk * V * sizeof *lbase);
    if (!rc && base && !lbase) rc = cli_fail(cmd, "out of memory");
    double kl = 0, nll_base = 0;
    long agree = 0;
    float *logits = rc ? NULL : malloc((size_t)chunk * V * sizeof *logits);
    int32_t *win = rc ? NULL : malloc((size_t)ctx * sizeof *win);
    if (!rc && (!logits || !win)) rc = cli_fail(cmd, "out of memory");

    const int progress = isatty(2); /* a window count on a terminal only */
    /* Windows: [BOS] + up to ctx-1 (or ctx without BOS) text tokens. */
    const size_t step = bos >= 0 ? (size_t)ctx - 1 : (size_t)ctx;
    const size_t n_win = bos >= 0 ? (n + step - 1) / step : (n - 1 + step - 2) / (step - 1);
    double nll = 0, t0 = dsv_time();
    long scored = 0;
    size_t at = 0;
    for (size_t w = 0; !rc && at < n; w++) {
        int k = 0;
        if (bos >= 0) win[k++] = bos;
        size_t take = n - at < (size_t)ctx - k ? n - at : (size_t)ctx - k;
        memcpy(win + k, ids + at, take * sizeof *win);
        int wl = k + (int)take;
        if (wl < 2) break;
        dsv_seq_reset(cx, 0);
        if (cxb) dsv_seq_reset(cxb, 0);
        for (int p = 0; p < wl && !rc; p += chunk) {
            int cl = wl - p < chunk ? wl - p : chunk;
            dsv_batch_entry e = {.seq = 0, .n_tokens = cl, .tokens = win + p, .logits = DSV_LOGITS_ALL};
            if (dsv_forward(cx, &e, 1, logits)) { rc = cli_fail(cmd, "%s", dsv_errmsg()); break; }
            if (cxb && dsv_forward(cxb, &e, 1, lbase)) { rc = cli_fail(cmd, "--kl-base: %s", dsv_errmsg()); break; }
            for (int j = 0; j < cl && p + j + 1 < wl; j++) {
                nll -= log_prob(logits + (size_t)j * V, V, win[p + j + 1]);
                if (cxb) {
                    int ag;
                    kl += kl_row(lbase + (size_t)j * V, logits + (size_t)j * V, V, &ag);
                    agree += ag;
                    nll_base -= log_prob(lbase + (size_t)j * V, V, win[p + j + 1]);
                }
                scored++;
            }
        }
        /* Without BOS the next window starts at the last scored token, so it
         * is context there and every token but the first is scored once. */
        at += bos >= 0 ? take : take - 1;
        if (bos < 0 && at + 1 >= n) at = n;
        if (!quiet && progress)
            fprintf(stderr, "\rppl: window %zu/%zu  ppl %.4f  %.0f tok/s", w + 1, n_win, exp(nll / scored),
                    scored / (dsv_time() - t0));
    }
    if (!quiet && progress) fputc('\n', stderr);
    if (!rc) {
        double ppl = exp(nll / scored);
        if (quiet) printf("%.4f\n", ppl);
        else
            printf("ppl %.4f  (%ld tokens scored, ctx %ld, %s top-%d%s)\n", ppl, scored, ctx,
                   dense ? "dense" : "sparse", dense ? (int)ctx : topk ? (int)topk : c->index_topk,
                   topk_file ? " where --topk-file leaves 0" : "");
        if (base)
            printf("kl-base: mean KL %.6f  top-1 agreement %.4f  ppl %.4f vs base %.4f (ratio %.4f)\n", kl / scored,
                   (double)agree / scored, ppl, exp(nll_base / scored), ppl / exp(nll_base / scored));
    }
    free(lbase);
    dsv_context_close(cxb);
    dsv_model_close(mb);
    free(logits);
    free(win);
    dsv_context_close(cx);
    dsv_model_close(m);
    if (!rc && recall) rc = run_recall(cmd, model, ids, n, (int)ctx, bos, (int)topk, (int)threads, quiet);
    free(ids);
    return rc;
}
