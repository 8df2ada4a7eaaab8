/* cmd_synth.c: `dsv32 synth`, a random-weight model of any DeepSeek-V3.2
 * shape from a Hugging Face config.json (library side: src/synth.h).
 *
 * For benchmarks, deployment tests and sizing hardware: --dry-run prints
 * what would be written without writing it. On a terminal a progress line
 * is redrawn in place; otherwise only the summary line is printed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_synth.h"
#include "dsv32_util.h"

static const char *usage =
    "usage: dsv32 synth -c CONFIG.json -o DIR [options]\n"
    "\n"
    "Writes a model directory with random weights for the shape in CONFIG.json (a Hugging\n"
    "Face DeepSeek-V3.2 config): DIR/config.json and DIR/model.safetensors, or shards and\n"
    "model.safetensors.index.json when larger than the shard size. Same seed, same model.\n"
    "\n"
    "  -c FILE            the config.json to take the shape from (required)\n"
    "  -o DIR             output directory, created if missing (required unless --dry-run)\n"
    "  --dtype T          fp8 (e4m3 weights, 128x128 block scales) or bf16\n"
    "                     (default: fp8 if the config has a quantization_config, else bf16)\n"
    "  --seed S           random seed (default 0)\n"
    "  --shard-mb N       cut files at about N MB (default 4000)\n"
    "  --dry-run          print the size and file count, write nothing\n"
    "  -h, --help         this help\n";

struct progress_state {
    double t0;
    int tty;
};

static void on_progress(uint64_t done, uint64_t total, void *user) {
    struct progress_state *s = user;
    if (!s->tty) return;
    double dt = dsv_time() - s->t0;
    fprintf(stderr, "\rsynth: %.2f / %.2f GB (%.0f%%), %.0f MB/s   ", done / 1e9, total / 1e9,
            total ? 100.0 * (double)done / (double)total : 100.0, dt > 0 ? done / dt / 1e6 : 0.0);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

int cmd_synth(int argc, char **argv) {
    const char *cmd = "synth", *config = NULL, *dir = NULL, *v;
    long shard_mb = 4000;
    unsigned long long seed = 0;
    int dry = 0;
    dsv_synth_params p = dsv_synth_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--dry-run")) dry = 1;
        else if (!strcmp(a, "-c")) { if (!(config = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(dir = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--dtype")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            if (!strcmp(v, "fp8")) p.dtype = DSV_SYNTH_FP8;
            else if (!strcmp(v, "bf16")) p.dtype = DSV_SYNTH_BF16;
            else return cli_fail(cmd, "--dtype: expected fp8 or bf16, got '%s'", v);
        } else if (!strcmp(a, "--seed")) {
            char *end;
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            seed = strtoull(v, &end, 10);
            if (!*v || *end || *v == '-') return cli_fail(cmd, "--seed: '%s' is not a non-negative integer", v);
        } else if (!strcmp(a, "--shard-mb")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1L << 40, &shard_mb)) return 1;
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 synth --help)", a);
    }
    if (!config) return cli_fail(cmd, "missing -c CONFIG.json (see dsv32 synth --help)");
    if (!dir && !dry) return cli_fail(cmd, "missing -o DIR (see dsv32 synth --help)");
    p.seed = seed;
    p.shard_bytes = (uint64_t)shard_mb * 1000000u;

    dsv_synth_info info;
    if (dry) {
        if (dsv_synth_plan(config, &p, &info)) return cli_fail(cmd, "%s", dsv_errmsg());
        printf("%s: %.2f GB in %d file%s (%s, %.3f G parameters, %d tensors)\n", config, info.total_bytes / 1e9,
               info.n_files, info.n_files > 1 ? "s + index" : "", info.fp8 ? "fp8" : "bf16", info.n_params / 1e9,
               info.n_tensors);
        return 0;
    }
    struct progress_state ps = {dsv_time(), isatty(fileno(stderr))};
    p.progress = on_progress;
    p.progress_user = &ps;
    if (dsv_synth(config, dir, &p, &info)) {
        if (ps.tty) fputc('\n', stderr);
        return cli_fail(cmd, "%s", dsv_errmsg());
    }
    printf("%s: %.2f GB in %d file%s (%s, %.3f G parameters, %d tensors, seed %llu) in %.1f s\n", dir,
           info.total_bytes / 1e9, info.n_files, info.n_files > 1 ? "s + index" : "", info.fp8 ? "fp8" : "bf16",
           info.n_params / 1e9, info.n_tensors, seed, dsv_time() - ps.t0);
    return 0;
}
