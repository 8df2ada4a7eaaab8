/* cmd_logits.c: `dsv32 logits`, the conformance command.
 *
 * Starts a fresh sequence, runs one forward call over the first P ids at
 * position 0, then one call per remaining id, and appends the last position's
 * logits (vocab float32, little-endian) after each call: 1 + n - P rows.
 * --dump DIR writes, per call i, layer 0's attention output, top-k and
 * weights_proj output and the first MoE layer's routing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"

static const char *usage =
    "usage: dsv32 logits -m MODEL_DIR --ids ID,ID,... --prefill P -o OUT [options]\n"
    "\n"
    "Runs a fresh sequence: one call over the first P ids, then one call per remaining id,\n"
    "writing the last position's logits (float32 [vocab]) after each call to OUT.\n"
    "\n"
    "  -m, --model DIR    model directory (config.json + *.safetensors)\n"
    "  --ids LIST         comma-separated token ids\n"
    "  --prefill P        ids in the first call (1 <= P <= number of ids)\n"
    "  -o FILE            output file of float32 logits, 1 + n - P rows\n"
    "  --dense            attend to every position (no top-k)\n"
    "  --topk K           keep K positions per query instead of the model's index_topk\n"
    "  --topk-file FILE   a top-k per layer (from dsv32 analyze --suggest -o)\n"
    "  --scale-fmt F      activation scale format: ue8m0 or none (default: the checkpoint's)\n"
    "  --act-quant Q      GGUF: fp8 or none: quantize the inputs of the linears that were fp8 in the checkpoint\n"
    "                     as the reference does (default: what the file says, else none)\n"
    "  -t, --threads N    threads (default: all online CPUs)\n"
    "  --dump DIR         write per-call intermediates to DIR: <i>.l0_attn_out.f32,\n"
    "                     <i>.l0_topk.i32, <i>.l0_index_weights.f32 (layer 0),\n"
    "                     <i>.moe_gate_weights.f32, <i>.moe_gate_indices.i32 (first MoE layer)\n"
    "  -h, --help         this help\n";

struct dump_state {
    const char *dir;
    int call;
    int first_moe;
    int failed;
};

static void write_file(struct dump_state *d, const char *suffix, const void *data, size_t bytes) {
    char path[4096];
    /* A name cut short would write another file: a failure instead. */
    if (snprintf(path, sizeof path, "%s/%d.%s", d->dir, d->call, suffix) >= (int)sizeof path) {
        d->failed = 1;
        return;
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) d->failed = 1;
    if (f && fclose(f)) d->failed = 1;
}

static void on_dump(const char *name, int layer, int dtype, int rows, int cols, const void *data, void *user) {
    struct dump_state *d = user;
    size_t bytes = (size_t)rows * (size_t)cols * 4;
    if (getenv("DSV32_DUMP_ALL")) {
        char suffix[256];
        snprintf(suffix, sizeof suffix, "l%d_%s.%s", layer, name, dtype == DSV_DUMP_I32 ? "i32" : "f32");
        write_file(d, suffix, data, bytes);
    }
    if (layer == 0 && !strcmp(name, "attn_out")) write_file(d, "l0_attn_out.f32", data, bytes);
    else if (layer == 0 && !strcmp(name, "topk")) write_file(d, "l0_topk.i32", data, bytes);
    else if (layer == 0 && !strcmp(name, "index_weights")) write_file(d, "l0_index_weights.f32", data, bytes);
    else if (layer == d->first_moe && !strcmp(name, "moe_gate_weights")) write_file(d, "moe_gate_weights.f32", data, bytes);
    else if (layer == d->first_moe && !strcmp(name, "moe_gate_indices")) write_file(d, "moe_gate_indices.i32", data, bytes);
}

int cmd_logits(int argc, char **argv) {
    const char *cmd = "logits", *ids_s = NULL, *out = NULL, *dump = NULL, *v;
    long prefill = -1;
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_DENSE | CLI_E_TOPK | CLI_E_SCALE_FMT | CLI_E_ACT_QUANT |
                                   CLI_E_TOPK_FILE);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_opt(cmd, &e, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--ids")) { if (!(ids_s = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(out = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--dump")) { if (!(dump = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--prefill")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1L << 30, &prefill)) return 1;
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 logits --help)", a);
    }
    if (cli_engine_check(cmd, &e)) return 1;
    if (!ids_s) return cli_fail(cmd, "missing --ids");
    if (prefill < 0) return cli_fail(cmd, "missing --prefill");
    if (!out) return cli_fail(cmd, "missing -o OUT");

    int32_t *ids;
    int n;
    if (cli_ids(cmd, ids_s, &ids, &n)) return 1;
    if (prefill > n) { free(ids); return cli_fail(cmd, "--prefill %ld exceeds the %d ids given", prefill, n); }

    dsv_model_params mp = dsv_model_default_params();
    mp.scale_fmt = e.scale_fmt;
    mp.act_quant = e.act_quant;
    dsv_model *m;
    if (dsv_model_open(&m, e.model, &mp)) { free(ids); return cli_fail(cmd, "%s", dsv_errmsg()); }
    const dsv_config *c = dsv_model_config(m);
    for (int i = 0; i < n; i++)
        if (ids[i] >= c->vocab_size) {
            int id = ids[i], vocab = c->vocab_size;
            free(ids);
            dsv_model_close(m);
            return cli_fail(cmd, "--ids: token id %d out of range [0, %d)", id, vocab);
        }
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = n;
    cp.n_batch = (int)prefill;
    cp.n_threads = e.threads;
    cp.attn = e.dense ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
    cp.topk = e.topk;
    dsv_context *ctx;
    if ((e.topk_file && cli_topk_file(cmd, e.topk_file, c->n_layers, cp.layer_topk)) ||
        (dsv_context_open(&ctx, m, &cp) && cli_fail(cmd, "%s", dsv_errmsg()))) {
        free(ids);
        dsv_model_close(m);
        return 1;
    }
    struct dump_state ds = {dump, 0, c->n_dense_layers, 0};
    if (dump) dsv_context_set_dump(ctx, on_dump, &ds);

    int rc = 0;
    FILE *f = fopen(out, "wb");
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    if (!f || !logits) rc = cli_fail(cmd, "%s: cannot write", out);
    for (int pos = 0, call = 0; !rc && pos < n; call++) {
        int len = call == 0 ? (int)prefill : 1;
        dsv_batch_entry e = {.seq = 0, .n_tokens = len, .tokens = ids + pos, .logits = DSV_LOGITS_LAST};
        ds.call = call;
        if (dsv_forward(ctx, &e, 1, logits)) rc = cli_fail(cmd, "%s", dsv_errmsg());
        else if (fwrite(logits, sizeof *logits, (size_t)c->vocab_size, f) != (size_t)c->vocab_size)
            rc = cli_fail(cmd, "%s: write failed", out);
        else if (ds.failed) rc = cli_fail(cmd, "--dump %s: cannot write files there", dump);
        pos += len;
    }
    if (f && fclose(f) && !rc) rc = cli_fail(cmd, "%s: write failed", out);
    free(logits);
    free(ids);
    dsv_context_close(ctx);
    dsv_model_close(m);
    return rc;
}
