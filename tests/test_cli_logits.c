/* test_cli_logits.c: `dsv32 logits` driven as a user would, through a shell. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test.h"

#define MODEL "conformance/public_sparse_fp8/hf"

TEST(cli_logits_rows_and_dumps) {
    char cmd[4096], out[1024], dump[1024];
    snprintf(out, sizeof out, "%s/l.bin", test_tmpdir());
    snprintf(dump, sizeof dump, "%s/dump", test_tmpdir());
    mkdir(dump, 0700);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids 5,6,7,8,9,10 --prefill 3 -o %s --dump %s -t 2 2>&1", test_bin(),
             test_shared(MODEL), out, dump);
    char *o = NULL;
    CHECKF(test_run(cmd, &o) == 0, "%s", o);
    free(o);
    size_t n = 0;
    void *d = test_read_file(out, &n);
    CHECK_EQ_INT(n, 4 * 1024 * 4); /* 1 + 6 - 3 rows of vocab 1024 */
    free(d);
    const char *files[] = {"0.l0_attn_out.f32", "0.l0_topk.i32", "0.l0_index_weights.f32", "0.moe_gate_weights.f32",
                           "0.moe_gate_indices.i32", "3.l0_attn_out.f32"};
    const size_t sizes[] = {3 * 384 * 4, 3 * 32 * 4, 3 * 8 * 4, 3 * 2 * 4, 3 * 2 * 4, 384 * 4};
    for (int i = 0; i < 6; i++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dump, files[i]);
        d = test_read_file(p, &n);
        CHECKF(d && n == sizes[i], "%s: %zu bytes", files[i], n);
        free(d);
    }
    /* The top-k of call 0, token 1 sees two positions: the rest is -1. */
    char p[1200];
    snprintf(p, sizeof p, "%s/0.l0_topk.i32", dump);
    int32_t *tk = test_read_file(p, NULL);
    REQUIRE(tk);
    CHECK((tk[32] == 0 || tk[32] == 1) && (tk[33] == 0 || tk[33] == 1) && tk[32] != tk[33]);
    for (int j = 2; j < 32; j++) CHECK_EQ_INT(tk[32 + j], -1);
    free(tk);
}

static void expect_fail(const char *args, const char *needle) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s logits %s -o %s/x.bin 2>&1", test_bin(), args, test_tmpdir());
    char *o = NULL;
    int rc = test_run(cmd, &o);
    CHECKF(rc != 0, "'%s' succeeded", args);
    CHECKF(o && strstr(o, needle), "'%s': output '%s' lacks '%s'", args, o ? o : "", needle);
    /* One line. */
    CHECKF(o && strchr(o, '\n') == o + strlen(o) - 1, "not one line: '%s'", o ? o : "");
    free(o);
}

TEST(cli_logits_errors) {
    char a[2048];
    snprintf(a, sizeof a, "-m %s --ids 1,2,5000 --prefill 2", test_shared(MODEL));
    expect_fail(a, "token id 5000 out of range [0, 1024)");
    snprintf(a, sizeof a, "-m %s --ids 1,2,3 --prefill 4", test_shared(MODEL));
    expect_fail(a, "--prefill 4 exceeds the 3 ids given");
    expect_fail("-m /nonexistent/model --ids 1,2 --prefill 1", "/nonexistent/model/config.json: cannot open");
    snprintf(a, sizeof a, "-m %s --ids 1,x --prefill 1", test_shared(MODEL));
    expect_fail(a, "--ids: expected comma-separated token ids");
    snprintf(a, sizeof a, "-m %s --ids 1,2", test_shared(MODEL));
    expect_fail(a, "missing --prefill");
    expect_fail("--bogus", "unknown option '--bogus'");
    char cmd[512], *o = NULL;
    snprintf(cmd, sizeof cmd, "%s logits --help", test_bin());
    CHECK(test_run(cmd, &o) == 0 && strstr(o, "--prefill P"));
    free(o);
}
