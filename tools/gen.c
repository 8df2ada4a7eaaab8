/* gen.c: generation shared by `dsv32 generate` and `dsv32 chat`: options,
 * loading, and the loop over the library's generation slots. The rules of
 * generation themselves (chunks, sampling, EOS, stop strings, text) are the
 * library's (src/gen/gen.c), the same the server uses. */
#include "gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "dsv32_util.h"

void gen_default_opts(gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_ctx = 0; /* the model's: min(max_position_embeddings, 4096) */
    o->n_batch = 512;
    o->attn = DSV_ATTN_SPARSE;
    o->n_predict = 200;
    o->scale_fmt = -1;
    o->act_quant = -1;
    o->sp = dsv_sampler_default_params();
    o->sp.temperature = 0.6f;
}

const char gen_opts_help[] =
    "  -m, --model DIR    model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  -n N               most tokens to generate per answer (default 200)\n"
    "  --temp T           temperature, 0 = greedy (default 0.6)\n"
    "  --top-p P          nucleus sampling, 1 = off (default 1)\n"
    "  --top-k K          keep the K most likely tokens, 0 = off (default 0)\n"
    "  --min-p P          drop tokens below P x the top probability, 0 = off (default 0)\n"
    "  --repeat-penalty R penalize tokens already seen, 1 = off (default 1)\n"
    "  --seed S           random seed (default: a different one each run)\n"
    "  --stop STR         stop when STR is generated (repeatable, up to 16)\n"
    "  --ctx N            context size in tokens (default: the model's\n"
    "                     max_position_embeddings, at most 4096)\n"
    "  --batch N          most tokens per forward call, for prefill, at least 3\n"
    "                     (default 512)\n"
    "  --act-quant Q      GGUF: fp8 or none: quantize the inputs of the linears that were fp8 in the checkpoint\n"
    "                     as the reference does (default: what the file says, else none)\n"
    "  --dense            attend to every position instead of the indexer's top-k\n"
    "  --topk K           keep K positions per query (default: the model's index_topk)\n"
    "  --topk-file FILE   a top-k per layer (from dsv32 analyze --suggest -o)\n"
    "  -t, --threads N    threads (default: all online CPUs)\n";

int gen_parse_opt(const char *cmd, gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long n;
    char *end;
    /* The engine options: the shared parser, one option at a time. */
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_CTX | CLI_E_BATCH | CLI_E_DENSE | CLI_E_TOPK |
                                   CLI_E_TOPK_FILE | CLI_E_ACT_QUANT);
    e.ctx_min = 16;
    /* The chunking rule (dsv32_gen.h) needs room for two prompt tokens and
     * the switch to decoding in one call. */
    e.batch_min = 3;
    int r = cli_engine_opt(cmd, &e, argc, argv, i);
    if (r > 0) {
        if (e.model) o->model = e.model;
        if (e.threads) o->threads = e.threads;
        if (e.n_ctx) o->n_ctx = e.n_ctx;
        if (e.n_batch) o->n_batch = e.n_batch;
        if (e.dense) o->attn = DSV_ATTN_DENSE;
        if (e.topk) o->topk = e.topk;
        if (e.topk_file) o->topk_file = e.topk_file;
        if (e.act_quant >= 0) o->act_quant = e.act_quant;
    }
    if (r) return r;
    if (!strcmp(a, "--stop")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (o->n_stops == GEN_MAX_STOPS) { cli_fail(cmd, "at most %d --stop strings", GEN_MAX_STOPS); return -1; }
        o->stops[o->n_stops++] = v;
        return 1;
    }
    struct { const char *name; int *dst; long lo, hi; } ints[] = {
        {"-n", &o->n_predict, 0, 1 << 24}, {"--top-k", &o->sp.top_k, 0, 1 << 30}};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (!strcmp(a, ints[k].name)) {
            if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, ints[k].lo, ints[k].hi, &n)) return -1;
            *ints[k].dst = (int)n;
            return 1;
        }
    struct { const char *name; float *dst; float lo, hi; } fls[] = {
        {"--temp", &o->sp.temperature, 0, 100}, {"--top-p", &o->sp.top_p, 0, 1}, {"--min-p", &o->sp.min_p, 0, 1},
        {"--repeat-penalty", &o->sp.repetition_penalty, 0.01f, 100}};
    for (size_t k = 0; k < sizeof fls / sizeof fls[0]; k++)
        if (!strcmp(a, fls[k].name)) {
            if (!(v = cli_value(cmd, argc, argv, i))) return -1;
            double d = strtod(v, &end);
            if (*end || end == v || !(d >= fls[k].lo && d <= fls[k].hi)) {
                cli_fail(cmd, "%s: '%s' is not a number in [%g, %g]", a, v, fls[k].lo, fls[k].hi);
                return -1;
            }
            *fls[k].dst = (float)d;
            return 1;
        }
    if (!strcmp(a, "--seed")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        unsigned long long s = strtoull(v, &end, 10);
        if (*end || end == v || *v == '-') { cli_fail(cmd, "--seed: '%s' is not a non-negative integer", v); return -1; }
        o->sp.seed = (uint64_t)s;
        return 1;
    }
    return 0;
}

static void progress(uint64_t done, uint64_t total, void *user) {
    const char *model = user;
    fprintf(stderr, "\rloading %s: %3d%% (%.2f of %.2f GB)", model, total ? (int)(100 * done / total) : 100,
            done / 1e9, total / 1e9);
    if (done >= total) fputc('\n', stderr);
}

int gen_open(gen *g, const char *cmd, const gen_opts *o, int n_seq) {
    memset(g, 0, sizeof *g);
    g->cmd = cmd;
    g->o = *o;
    g->n_seq = n_seq;
    if (!o->model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 %s --help)", cmd);
    dsv_model_params mp = dsv_model_default_params();
    mp.scale_fmt = o->scale_fmt;
    mp.act_quant = o->act_quant;
    if (isatty(2)) { mp.progress = progress; mp.progress_user = (void *)o->model; }
    if (dsv_model_open(&g->m, o->model, &mp)) return cli_fail(cmd, "%s", dsv_errmsg());
    g->c = dsv_model_config(g->m);
    if (dsv_tokenizer_open(&g->tok, o->model)) {
        cli_fail(cmd, "%s", dsv_errmsg());
        gen_close(g);
        return 1;
    }
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = o->n_ctx;
    cp.n_seq = n_seq;
    cp.n_batch = o->n_batch;
    cp.n_threads = o->threads;
    cp.attn = o->attn;
    cp.topk = o->topk;
    if (o->topk_file && cli_topk_file(cmd, o->topk_file, g->c->n_layers, cp.layer_topk)) {
        gen_close(g);
        return 1;
    }
    if (dsv_context_open(&g->ctx, g->m, &cp) || dsv_gen_open(&g->rules, g->ctx, g->c, g->tok)) {
        cli_fail(cmd, "%s", dsv_errmsg());
        gen_close(g);
        return 1;
    }
    g->o.n_batch = dsv_context_get_params(g->ctx)->n_batch;
    g->o.n_ctx = dsv_context_get_params(g->ctx)->n_ctx;
    return 0;
}

void gen_close(gen *g) {
    dsv_gen_close(g->rules);
    dsv_context_close(g->ctx);
    dsv_tokenizer_close(g->tok);
    dsv_model_close(g->m);
    memset(g, 0, sizeof *g);
}

int gen_encode(gen *g, const char *text, int32_t **ids, int *n) {
    size_t len = strlen(text), got;
    *ids = malloc((len + 2) * sizeof **ids);
    if (!*ids) return cli_fail(g->cmd, "out of memory");
    if (dsv_tokenize(g->tok, text, len, *ids, len + 1, &got)) {
        free(*ids);
        return cli_fail(g->cmd, "%s", dsv_errmsg());
    }
    *n = (int)got;
    return 0;
}

int gen_slot(gen *g, dsv_gen_slot **s, int seq, const int32_t *prompt, int n_prompt, int n_past) {
    dsv_gen_slot_params p = dsv_gen_slot_default_params();
    p.sampling = g->o.sp;
    p.stop = g->o.stops;
    p.n_stop = g->o.n_stops;
    p.max_tokens = g->o.n_predict; /* skip_special as the server: the same text */
    if (dsv_gen_slot_init(s, g->rules, seq, prompt, n_prompt, n_past, &p)) return cli_fail(g->cmd, "%s", dsv_errmsg());
    return 0;
}

const char *gen_finish_name(int finish) {
    switch (finish) {
    case DSV_GEN_EOS: return "eos";
    case DSV_GEN_STOP: return "stop";
    case DSV_GEN_LENGTH: return "length";
    case DSV_GEN_ERROR: return "error";
    default: return "running";
    }
}

/* One phase: forward calls until no slot has an entry (prefill: only the
 * slots still in their prompt take part). */
static int run_phase(gen *g, int n, dsv_gen_slot **slots, int prefill, gen_emit emit, void **users) {
    const int V = g->c->vocab_size;
    dsv_gen_slot **part = malloc((size_t)n * sizeof *part);
    dsv_batch_entry *ent = malloc((size_t)n * sizeof *ent);
    int *who = malloc((size_t)n * sizeof *who), rc = 0;
    float *logits = malloc((size_t)n * V * sizeof *logits);
    if (!part || !ent || !who || !logits) rc = cli_fail(g->cmd, "out of memory");
    double t0 = dsv_time();
    long fed = 0;
    while (!rc) {
        for (int i = 0; i < n; i++) part[i] = prefill && dsv_gen_slot_decoding(slots[i]) ? NULL : slots[i];
        int ne = dsv_gen_batch(part, n, g->o.n_batch, ent, who);
        if (!ne) break;
        if (dsv_forward(g->ctx, ent, ne, logits)) { rc = cli_fail(g->cmd, "%s", dsv_errmsg()); break; }
        for (int k = 0, row = 0; !rc && k < ne; k++) {
            dsv_gen_slot *s = slots[who[k]];
            dsv_gen_token t;
            fed += ent[k].n_tokens;
            if (dsv_gen_slot_fed(s, ent[k].n_tokens)) rc = cli_fail(g->cmd, "%s", dsv_errmsg());
            else if (ent[k].logits == DSV_LOGITS_LAST) {
                if (dsv_gen_slot_accept(s, logits + (size_t)row++ * V, &t)) rc = cli_fail(g->cmd, "%s", dsv_errmsg());
                else {
                    if (!prefill) g->decode_tok++;
                    if (emit) emit(users ? users[who[k]] : NULL, t.id, t.text, t.len);
                }
            }
        }
    }
    double dt = dsv_time() - t0;
    if (prefill) { g->prefill_s += dt; g->prefill_tok += fed; }
    else { g->decode_s += dt; g->decode_fed += fed; }
    free(part);
    free(ent);
    free(who);
    free(logits);
    return rc;
}

int gen_run(gen *g, int n, dsv_gen_slot **slots, gen_emit emit, void **users) {
    int rc = run_phase(g, n, slots, 1, emit, users);
    /* The first tokens were sampled from the prompts' logits. */
    for (int i = 0; !rc && i < n; i++) g->decode_tok += dsv_gen_slot_n_gen(slots[i]);
    return rc ? rc : run_phase(g, n, slots, 0, emit, users);
}

void gen_report(const gen *g) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "\nprompt tokens: %ld, prefill: %.1f tok/s, decode: %.1f tok/s (%ld tokens), peak memory: %.0f MiB, "
            "kernels: %s\n",
            g->prefill_tok, g->prefill_s > 0 ? g->prefill_tok / g->prefill_s : 0.0,
            g->decode_s > 0 ? g->decode_fed / g->decode_s : 0.0, g->decode_tok, ru.ru_maxrss / 1024.0,
            dsv_kernels_name());
}
