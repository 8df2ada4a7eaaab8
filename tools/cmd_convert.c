/* cmd_convert.c: `dsv32 convert`, per-rank shard files of a model split
 * across processes, as the reference's convert.py writes them.
 *
 * A split run needs no conversion: each rank maps its part straight from the
 * Hugging Face files. This is for machines that should hold only their part
 * on disk: OUT gets config.json, the tokenizer files (every name containing
 * "token", as convert.py copies them) and model<r>-mp<N>.safetensors per
 * rank, each holding exactly the tensors that rank maps, cut to its part
 * (shard.c's plan), under their Hugging Face names, with the rank and N in
 * the file's metadata. A rank's file alone is enough for it: copy OUT's
 * small files and model<r>-mp<N>.safetensors to the machine of rank r, or
 * write only that one with --rank r. The loader recognizes the files and
 * maps them as they are; the bytes are the same, so the logits are too.
 * The work is the library's (dsv_convert_shards, src/format/convert.c); this
 * file reads the options and reports each file written. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_convert.h"

static const char *usage =
    "usage: dsv32 convert -m MODEL_DIR --model-parallel N -o OUT_DIR [options]\n"
    "\n"
    "Writes the per-rank shard files of an N-way split (the reference's convert.py):\n"
    "OUT_DIR/model<r>-mp<N>.safetensors for each rank r, each holding only that rank's\n"
    "part of the weights, plus config.json and the tokenizer files. `mpirun -np N dsv32\n"
    "... -m OUT_DIR` then maps them; without this step each rank maps its part of\n"
    "MODEL_DIR directly.\n"
    "\n"
    "  -m DIR               Hugging Face model directory (config.json + *.safetensors)\n"
    "  --model-parallel N   number of ranks, 1 to 1024 (required)\n"
    "  -o DIR               output directory, created if missing (required)\n"
    "  --rank R             write only rank R's shard (default: every rank's)\n"
    "  -h, --help           this help\n";

static void wrote(const char *path, int n_tensors, uint64_t bytes, void *user) {
    (void)user;
    fprintf(stderr, "wrote %s: %d tensors, %.3f GB\n", path, n_tensors, bytes / 1e9);
}

int cmd_convert(int argc, char **argv) {
    const char *cmd = "convert", *model = NULL, *out_dir = NULL, *v;
    long size = 0, only = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "-m")) { if (!(model = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(out_dir = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--model-parallel")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1024, &size)) return 1;
        } else if (!strcmp(a, "--rank")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1023, &only)) return 1;
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 convert --help)", a);
    }
    if (!model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 convert --help)");
    if (!size) return cli_fail(cmd, "missing --model-parallel N");
    if (!out_dir) return cli_fail(cmd, "missing -o OUT_DIR");
    if (only >= size) return cli_fail(cmd, "--rank %ld: ranks of a %ld-way split are 0 to %ld", only, size, size - 1);

    /* Said here in the command's terms; dsv_convert_shards checks it too. */
    char rm[PATH_MAX], ro[PATH_MAX];
    if (realpath(model, rm) && realpath(out_dir, ro) && !strcmp(rm, ro))
        return cli_fail(cmd, "-o must differ from -m (the shards would hide the checkpoint)");
    if (dsv_convert_shards(model, out_dir, (int)size, (int)only, wrote, NULL)) return cli_fail(cmd, "%s", dsv_errmsg());
    return 0;
}
