/* cmd_quantize.c: `dsv32 quantize`, a Hugging Face checkpoint to a GGUF file
 * (the library's dsv_quantize, include/dsv32_quantize.h): options, progress
 * on a terminal, and the policy summary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_quantize.h"

static const char *usage =
    "usage: dsv32 quantize -m HF_DIR -o OUT.gguf --type T [options]\n"
    "\n"
    "Writes a GGUF file llama.cpp also loads (arch deepseek32, its tensor names and\n"
    "metadata, the tokenizer embedded) from a Hugging Face DeepSeek-V3.2 checkpoint\n"
    "(FP8 with block scales, or BF16), reading one tensor at a time.\n"
    "\n"
    "  -m DIR                 Hugging Face model directory (required)\n"
    "  -o FILE                output .gguf (required)\n"
    "  --type T               Q8_0, Q4_K_M, Q2_K, BF16, F16, F32, or a base type\n"
    "                         (Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q3_K Q4_K Q5_K Q6_K) (required)\n"
    "  --tensor-type RE=T     tensors whose GGUF name matches the POSIX extended\n"
    "                         regex RE get type T (repeatable; first match wins)\n"
    "  --split-max-size SIZE  at most SIZE bytes of tensors per file (suffix K, M, G);\n"
    "                         files are named OUT-00001-of-0000N.gguf\n"
    "  --arch A               deepseek32 (default) or deepseek2: no indexer tensors or\n"
    "                         keys (DeepSeek-V3's layout; runs as dense MLA)\n"
    "  -h, --help             this help\n"
    "\n"
    "Policy for a quantized T: routed experts' gate/up at T and down one step up;\n"
    "attention, shared experts and the dense layers' MLP two steps up; token_embd\n"
    "one step up; output two steps up (at least Q6_K); indexer projections BF16;\n"
    "router, indexer weights_proj, norms and biases F32. Steps: Q2_K Q3_K Q4_K Q5_K\n"
    "Q6_K Q8_0. Rows a K-quant cannot hold fall back as in llama.cpp.\n";

static void progress(int done, int total, const char *tensor, const char *type, void *user) {
    (void)user;
    if (isatty(2)) fprintf(stderr, "\r[%d/%d] %-40s %-7s", done, total, tensor, type);
    if (done == total && isatty(2)) fputc('\n', stderr);
}

static void report(const char *line, void *user) {
    (void)user;
    fprintf(stderr, "policy: %s\n", line);
}

static int parse_size(const char *s, uint64_t *out) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
    if (end == s || *end || v == 0 || v > (UINT64_MAX >> 30)) return 1;
    *out = v * mul;
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    const char *cmd = "quantize";
    dsv_quantize_params p = {0};
    const char **rules = calloc((size_t)argc + 1, sizeof *rules);
    if (!rules) return cli_fail(cmd, "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); free(rules); return 0; }
        if (!(v = cli_value(cmd, argc, argv, &i))) { free(rules); return 1; }
        if (!strcmp(a, "-m")) p.model_dir = v;
        else if (!strcmp(a, "-o")) p.out_path = v;
        else if (!strcmp(a, "--type")) p.preset = v;
        else if (!strcmp(a, "--tensor-type")) rules[p.n_overrides++] = v;
        else if (!strcmp(a, "--arch")) p.arch = v;
        else if (!strcmp(a, "--split-max-size")) {
            if (parse_size(v, &p.split_max_size)) { free(rules); return cli_fail(cmd, "--split-max-size: bad size '%s'", v); }
        } else { free(rules); return cli_fail(cmd, "unknown option %s (see --help)", a); }
    }
    p.overrides = rules;
    if (!p.model_dir || !p.out_path || !p.preset) {
        free(rules);
        return cli_fail(cmd, "-m, -o and --type are required (see --help)");
    }
    p.progress = progress;
    p.report = report;
    int st = dsv_quantize(&p);
    free(rules);
    if (st) return cli_fail(cmd, "%s", dsv_errmsg());
    fprintf(stderr, "wrote %s\n", p.out_path);
    return 0;
}
