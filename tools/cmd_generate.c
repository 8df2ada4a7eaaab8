/* cmd_generate.c: `dsv32 generate`, plain text continuation of a prompt.
 *
 * The prompt is encoded (BOS first when the tokenizer adds one), run in one
 * forward call, then one token at a time is sampled and fed back until EOS,
 * -n tokens or a full context. Text streams to stdout as it completes;
 * speed goes to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"
#include "util.h"

static const char *usage =
    "usage: dsv32 generate -m MODEL_DIR [-p PROMPT] [options]\n"
    "\n"
    "Continues a prompt with text sampled from the model.\n"
    "\n"
    "  -m DIR             model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  -p TEXT            prompt (default \"And it came to pass\")\n"
    "  -n N               most tokens to generate (default 200)\n"
    "  --temp T           temperature, 0 = greedy (default 0.8)\n"
    "  --top-k K          keep the K most likely tokens, 0 = off (default 40)\n"
    "  --top-p P          nucleus sampling, 1 = off (default 0.95)\n"
    "  --repeat-penalty R repetition penalty over the last 64 tokens, 1 = off (default 1.1)\n"
    "  --seed S           random seed (default: a fresh one, printed on stderr)\n"
    "  --ctx N            context size (default: max_position_embeddings, at most 4096)\n"
    "  --dense            attend to every position (no top-k)\n"
    "  --topk K           keep K positions per query instead of the model's index_topk\n"
    "  -t N               threads (default: all online CPUs)\n"
    "  -h, --help         this help\n";

static int parse_f(const char *cmd, const char *opt, const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v != v) return cli_fail(cmd, "%s: '%s' is not a number", opt, s);
    *out = (float)v;
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *cmd = "generate", *model = NULL, *prompt = "And it came to pass", *v;
    long n_gen = 200, ctx = 0, topk = 0, threads = 0, top_k = 40, seed = -1;
    int dense = 0;
    dsv_sampler_params sp = dsv_sampler_default_params();
    sp.temperature = 0.8f;
    sp.top_p = 0.95f;
    sp.repetition_penalty = 1.1f;
    sp.repetition_last_n = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--dense")) dense = 1;
        else if (!strcmp(a, "-m")) { if (!(model = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-p")) { if (!(prompt = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-n")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1L << 30, &n_gen)) return 1; }
        else if (!strcmp(a, "--ctx")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 2, 1L << 24, &ctx)) return 1; }
        else if (!strcmp(a, "--topk")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1L << 30, &topk)) return 1; }
        else if (!strcmp(a, "--top-k")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1L << 30, &top_k)) return 1; }
        else if (!strcmp(a, "-t")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1024, &threads)) return 1; }
        else if (!strcmp(a, "--seed")) { if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 0x7fffffffL, &seed)) return 1; }
        else if (!strcmp(a, "--temp")) { if (!(v = cli_value(cmd, argc, argv, &i)) || parse_f(cmd, a, v, &sp.temperature)) return 1; }
        else if (!strcmp(a, "--top-p")) { if (!(v = cli_value(cmd, argc, argv, &i)) || parse_f(cmd, a, v, &sp.top_p)) return 1; }
        else if (!strcmp(a, "--repeat-penalty")) { if (!(v = cli_value(cmd, argc, argv, &i)) || parse_f(cmd, a, v, &sp.repetition_penalty)) return 1; }
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 generate --help)", a);
    }
    if (!model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 generate --help)");
    if (dense && topk) return cli_fail(cmd, "--dense and --topk exclude each other");
    sp.top_k = (int32_t)top_k;
    sp.seed = seed < 0 ? DSV_SEED_RANDOM : (uint64_t)seed;

    dsv_tokenizer *tok;
    if (dsv_tokenizer_open(&tok, model)) return cli_fail(cmd, "%s", dsv_errmsg());
    dsv_model *m = NULL;
    if (dsv_model_open(&m, model, NULL)) { dsv_tokenizer_close(tok); return cli_fail(cmd, "%s", dsv_errmsg()); }
    const dsv_config *c = dsv_model_config(m);
    if (!ctx) ctx = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
    size_t plen = strlen(prompt), n_ids = 0;
    int32_t *ids = malloc((plen + 2) * sizeof *ids);
    int rc = 0;
    if (!ids) rc = cli_fail(cmd, "out of memory");
    else {
        int k = 0;
        if (dsv_tokenizer_add_bos(tok) && dsv_tokenizer_bos(tok) >= 0) ids[k++] = dsv_tokenizer_bos(tok);
        if (dsv_tokenize(tok, prompt, plen, ids + k, plen + 1, &n_ids)) rc = cli_fail(cmd, "%s", dsv_errmsg());
        n_ids += (size_t)k;
    }
    if (!rc && n_ids == 0) rc = cli_fail(cmd, "empty prompt and no BOS token");
    if (!rc && n_ids >= (size_t)ctx) rc = cli_fail(cmd, "the prompt (%zu tokens) fills the context (%ld)", n_ids, ctx);
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = (int)ctx;
    cp.n_batch = (int)n_ids;
    cp.n_threads = (int)threads;
    cp.attn = dense ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
    cp.topk = (int)topk;
    dsv_context *cx = NULL;
    dsv_sampler *smp = NULL;
    if (!rc && dsv_context_open(&cx, m, &cp)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    if (!rc && dsv_sampler_init(&smp, c->vocab_size, &sp)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    float *logits = rc ? NULL : malloc((size_t)c->vocab_size * sizeof *logits);
    char *text = rc ? NULL : malloc(dsv_detok_bound(tok) + 1);
    if (!rc && (!logits || !text)) rc = cli_fail(cmd, "out of memory");
    if (!rc) dsv_sampler_accept_prompt(smp, ids, n_ids);
    if (!rc) {
        fprintf(stderr, "generate: seed %llu\n", (unsigned long long)dsv_sampler_seed(smp));
        fwrite(prompt, 1, plen, stdout);
        fflush(stdout);
    }
    dsv_detok dt;
    dsv_detok_init(&dt, tok, 1);
    int32_t cur = 0;
    int eos = c->eos_id, done = 0;
    double t0 = dsv_time(), t1 = t0;
    for (long i = 0; !rc && i <= n_gen; i++) {
        dsv_batch_entry e = {.seq = 0, .n_tokens = i ? 1 : (int)n_ids, .tokens = i ? &cur : ids, .logits = DSV_LOGITS_LAST};
        if (i && (cur == eos || dsv_seq_len(cx, 0) >= ctx)) break;
        if (i == n_gen) break;
        if (dsv_forward(cx, &e, 1, logits)) { rc = cli_fail(cmd, "%s", dsv_errmsg()); break; }
        if (!i) t1 = dsv_time();
        if (dsv_sampler_sample(smp, logits, &cur)) { rc = cli_fail(cmd, "%s", dsv_errmsg()); break; }
        dsv_sampler_accept(smp, cur);
        done++;
        size_t len = 0;
        if (cur != eos && !dsv_detok_push(&dt, cur, text, dsv_detok_bound(tok), &len)) {
            fwrite(text, 1, len, stdout);
            fflush(stdout);
        }
    }
    if (!rc) {
        size_t len = 0;
        if (!dsv_detok_flush(&dt, text, dsv_detok_bound(tok), &len)) fwrite(text, 1, len, stdout);
        putchar('\n');
        fflush(stdout);
        double t2 = dsv_time();
        fprintf(stderr, "generate: prompt %zu tokens %.1f tok/s; %d tokens %.1f tok/s\n", n_ids,
                n_ids / (t1 - t0 > 0 ? t1 - t0 : 1e-9), done, done > 1 ? (done - 1) / (t2 - t1) : 0.0);
    }
    free(logits);
    free(text);
    free(ids);
    dsv_sampler_free(smp);
    dsv_context_close(cx);
    dsv_model_close(m);
    dsv_tokenizer_close(tok);
    return rc;
}
