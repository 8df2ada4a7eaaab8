/* test_cli_ppl.c: `dsv32 ppl --random-ids N --seed S`, the scoring of random
 * token ids for models without a tokenizer or a text (random-weight ones):
 * same seed same ids and score, another seed another score, no tokenizer
 * needed, --kl-base of a model against itself exactly zero, and the option
 * errors. */
#include <stdlib.h>
#include <string.h>

#include "test.h"

/* The command's stdout+stderr; *rc its exit status. */
static char *run(const char *args, int *rc) {
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s ppl %s -t 2 2>&1", test_bin(), args);
    *rc = test_run(cmd, &out);
    return out ? out : strdup("");
}

/* The conformance checkpoint has no tokenizer.json: -f could not run on it. */
#define CKPT "conformance/public_sparse_bf16/hf"

TEST(cli_ppl_random_ids) {
    char args[2048];
    int rc;
    snprintf(args, sizeof args, "-m %s --random-ids 40 --seed 5 --quiet", test_shared(CKPT));
    char *a = run(args, &rc);
    REQUIREF(rc == 0, "%s", a);
    char *b = run(args, &rc);
    CHECK(rc == 0);
    CHECK_STR(a, b); /* same seed, same ids, same score */
    double ppl = atof(a);
    /* The checkpoint's vocabulary is 777: a random model scores random ids
     * near it, far from 1. */
    CHECKF(ppl > 100 && ppl < 10000, "ppl %s", a);
    snprintf(args, sizeof args, "-m %s --random-ids 40 --seed 6 --quiet", test_shared(CKPT));
    char *c = run(args, &rc);
    CHECK(rc == 0);
    CHECKF(strcmp(a, c) != 0, "seeds 5 and 6 gave the same score %s", a);
    /* Against itself: nothing differs. 40 ids, no BOS: 39 scored. */
    snprintf(args, sizeof args, "-m %s --random-ids 40 --seed 5 --kl-base %s", test_shared(CKPT), test_shared(CKPT));
    char *d = run(args, &rc);
    CHECK(rc == 0);
    CHECKF(strstr(d, "(39 tokens scored") && strstr(d, "mean KL 0.000000  top-1 agreement 1.0000") &&
               strstr(d, "(ratio 1.0000)"),
           "%s", d);
    free(a);
    free(b);
    free(c);
    free(d);
    static const struct { const char *args, *msg; } bad[] = {
        {"--random-ids 1", "dsv32 ppl: --random-ids: '1' is not an integer in [2, 1073741824]\n"},
        {"--random-ids 10 -f x.txt", "dsv32 ppl: -f and --random-ids exclude each other\n"},
        {"--seed -1 --random-ids 10", "dsv32 ppl: --seed: '-1' is not an integer in [0, "},
        {"", "dsv32 ppl: missing -f TEXT or --random-ids N\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "-m %s %s", test_shared(CKPT), bad[i].args);
        char *o = run(args, &rc);
        CHECKF(rc != 0 && !strncmp(o, bad[i].msg, strlen(bad[i].msg)), "%s: %s", bad[i].args, o);
        free(o);
    }
}
