/* main.c: the dsv32 command line, a thin client of include/dsv32.h.
 * Each command lives in tools/cmd_<name>.c and is listed in the table below.
 *
 * Under mpirun every rank starts here: rank 0 runs the command, the others
 * follow it (dsv_parallel_follow replays its model calls with their part of
 * the weights) and exit with its status. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "dsv32.h"

struct command {
    const char *name, *summary;
    int (*run)(int argc, char **argv);
};

static const struct command commands[] = {
    {"generate", "complete a prompt (or a file of prompts, as one batch)", cmd_generate},
    {"chat", "chat in the terminal (the model's chat format: detected, or --chat-format)", cmd_chat},
    {"tokenize", "text to token ids", cmd_tokenize},
    {"detokenize", "token ids to text", cmd_detokenize},
    {"parse", "model output to reasoning, content and tool calls (the chat format's parser)", cmd_parse},
    {"logits", "conformance: logits (and intermediates) of a fixed token sequence", cmd_logits},
    {"ppl", "perplexity of a text file in windows of the context size", cmd_ppl},
    {"analyze", "what the indexer's top-k keeps of dense attention on a text, per layer and k", cmd_analyze},
    {"bpe", "train a byte-level BPE tokenizer on a text", cmd_bpe},
    {"train", "train a model: one stage of DeepSeek's DSA recipe", cmd_train},
    {"export", "training checkpoint to a Hugging Face model directory (bf16 or fp8)", cmd_export},
    {"serve", "OpenAI-compatible HTTP server (continuous batching, prefix cache)", cmd_serve},
    {"synth", "write a random-weight model of any DeepSeek-V3.2 shape", cmd_synth},
    {"bench", "prefill and decode speed at chosen context depths, next to the machine's limits", cmd_bench},
    {"convert", "per-rank shard files of a model split across processes (mpirun)", cmd_convert},
    {"quantize", "Hugging Face checkpoint to a GGUF file (Q8_0, Q4_K_M, Q2_K, BF16, ...)", cmd_quantize},
    {"adapt", "adapt the lightning indexer to a text (indexer warm-up, main model frozen)", cmd_adapt},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: dsv32 <command> [options]   (dsv32 <command> --help for its options)\n\ncommands:\n");
    for (const struct command *c = commands; c->name; c++)
        fprintf(f, "  %-12s %s\n", c->name, c->summary);
}

static int run(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const struct command *c = commands; c->name; c++)
        if (!strcmp(argv[1], c->name)) return c->run(argc - 1, argv + 1);
    fprintf(stderr, "dsv32: unknown command '%s' (see dsv32 --help)\n", argv[1]);
    return 2;
}

int main(int argc, char **argv) {
    if (dsv_parallel_init(&argc, &argv)) {
        fprintf(stderr, "dsv32: %s\n", dsv_errmsg());
        return 1;
    }
    int rc;
    if (dsv_parallel_rank() == 0) {
        rc = run(argc, argv);
    } else {
        /* mpirun hands a Ctrl-C or SIGTERM to every rank: the leader stops
         * cleanly (serve, chat) and then releases the followers, so they
         * leave that decision to it. */
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        dsv_parallel_follow();
        rc = 0; /* the leader's status is the job's: mpirun reports rank 0 */
    }
    fflush(stdout);
    dsv_parallel_finalize(rc);
    return rc;
}
