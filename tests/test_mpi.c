/* test_mpi.c: one model split across processes (mpirun), against the single
 * process.
 *
 * - conformance: every case of tests/data/conformance judged by its README's
 *   rule at 2 and 4 ranks (run_tests itself under mpirun: rank 0 runs the
 *   cases, the others follow);
 * - the logits of 2, 3 and 4 ranks (3: uneven splits, a rank without heads)
 *   against one process: layer 0's indexer bit for bit (its input is the
 *   embedding, which a split sums exactly), layer 0's attention output and
 *   the logits within the conformance rule's limits;
 * - greedy generate and chat on models/tiny print the same text at 1, 2 and
 *   4 ranks; ranks with different CPUs agree on one kernel set;
 * - shards written by `dsv32 convert` give the same logits, bit for bit, as
 *   mapping the Hugging Face files; a rank that cannot load fails every rank
 *   with its message; a rank killed mid-run ends the job within seconds;
 * - `dsv32 serve` under mpirun answers as one process does;
 * - GGUF files: a BF16 file split gives the checkpoint's split logits bit
 *   for bit; quantized files (Q8_0, Q4_K_M, a mix) split agree with one
 *   process as the checkpoint's split does; ranks whose copies of the file
 *   differ, or one without it, fail with one message.
 * Skipped with a message when the build has no MPI or mpirun is missing
 * (failed instead when DSV32_REQUIRE_MPI is set, as CI does).
 * Ranks run one thread each and share the machine's cores (--oversubscribe).
 *
 * Exactness across rank counts: a split sums partial products where one
 * process adds them in one pass (the reference's own model-parallel maths),
 * so logits move by rounding and a greedy choice can flip at a near-tie.
 * The greedy checks use prompts whose first tokens have no near-tie at any
 * kernel level (see the README's section on several machines). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conformance.h"
#include "dsv32.h"
#include "server_util.h"
#include "test.h"

/* Skips unless this build and machine can run ranks; sets what Open MPI
 * needs in a container (running as root; no cross-process memory copies,
 * which ptrace restrictions often forbid). */
static void need_mpi(void) {
    /* CI sets DSV32_REQUIRE_MPI: there a missing MPI is a failure. */
    const int must = getenv("DSV32_REQUIRE_MPI") && *getenv("DSV32_REQUIRE_MPI");
    if (!dsv_parallel_available()) {
        REQUIREF(!must, "DSV32_REQUIRE_MPI is set but this build has no MPI");
        SKIP("this build has no MPI (make MPI=1 with libopenmpi-dev installed)");
    }
    if (system("command -v mpirun >/dev/null 2>&1")) {
        REQUIREF(!must, "DSV32_REQUIRE_MPI is set but mpirun is missing");
        SKIP("mpirun not found (apt install openmpi-bin)");
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    /* Under AddressSanitizer (make asan): Open MPI keeps some allocations
     * until exit; the suppressions name its libraries, which the slow
     * unwinder finds even behind its unloaded components. */
    char supp[1200] = "suppressions=tests/lsan-mpi.supp:print_suppressions=0", cwd[1024];
    if (getcwd(cwd, sizeof cwd)) /* absolute: some tests start ranks in other directories */
        snprintf(supp, sizeof supp, "suppressions=%s/tests/lsan-mpi.supp:print_suppressions=0", cwd);
    const char *const add[][2] = {
        {"LSAN_OPTIONS", supp},
        {"ASAN_OPTIONS", "fast_unwind_on_malloc=0"},
    };
    for (int i = 0; i < 2; i++) {
        const char *old = getenv(add[i][0]);
        if (old && strstr(old, add[i][1])) continue; /* an earlier test's call */
        char buf[4096];
        if (snprintf(buf, sizeof buf, "%s%s%s", old ? old : "", old && *old ? ":" : "", add[i][1]) < (int)sizeof buf)
            setenv(add[i][0], buf, 1);
    }
}

/* "mpirun -np N " (empty for one rank: the plain single process). */
static const char *launcher(int np) {
    static char buf[8][128];
    static int slot;
    char *b = buf[slot++ & 7];
    if (np <= 1) b[0] = 0;
    else snprintf(b, sizeof buf[0], "mpirun --oversubscribe -np %d ", np);
    return b;
}

static float *read_f32(const char *path, size_t *n) {
    size_t bytes = 0;
    float *v = test_read_file(path, &bytes);
    *n = bytes / sizeof(float);
    return v;
}

/* Whether two files hold the same bytes. */
static int same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = test_read_file(a, &la), *y = test_read_file(b, &lb);
    int same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

/* ---- run_tests --mpi: the part that runs in every rank ----------------- */

static int conformance_all(void) {
    static const char *configs[] = {"public_sparse_fp8", "public_sparse_bf16"};
    static const char *cases[] = {"b1", "b2", "long"};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            conf_metrics rows[4];
            int n = conf_run(configs[i], cases[j], 1, rows, 4);
            if (n <= 0) return 1;
            conf_limits lim = conf_limits_for(configs[i]);
            for (int r = 0; r < n; r++) {
                char label[128];
                snprintf(label, sizeof label, "%d ranks %s %s %d", dsv_parallel_size(), configs[i] + 14, cases[j], r);
                conf_judge(label, &rows[r], &lim);
            }
        }
    return test_failures ? 1 : 0;
}

int test_mpi_main(int argc, char **argv) {
    if (dsv_parallel_init(&argc, &argv)) {
        fprintf(stderr, "%s\n", dsv_errmsg());
        return 1;
    }
    int rc = 1;
    if (dsv_parallel_rank() > 0) rc = dsv_parallel_follow();
    else if (argc > 1 && !strcmp(argv[1], "conformance")) rc = conformance_all();
    else fprintf(stderr, "run_tests --mpi: unknown body '%s'\n", argc > 1 ? argv[1] : "");
    fflush(NULL);
    dsv_parallel_finalize(rc);
    return rc;
}

/* ---- tests --------------------------------------------------------------- */

TEST(mpi_conformance) {
    need_mpi();
    char self[1024], cmd[2048];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(n > 0);
    self[n] = 0;
    for (int np = 2; np <= 4; np += 2) {
        char *out = NULL;
        snprintf(cmd, sizeof cmd, "%s'%s' --mpi conformance 2>&1", launcher(np), self);
        int st = test_run(cmd, &out);
        printf("%s", out ? out : "");
        CHECKF(st == 0, "%d ranks: the conformance cases failed (exit %d)", np, st);
        CHECKF(out && strstr(out, "long 0"), "%d ranks: not every case ran", np);
        free(out);
    }
}

/* The teacher-forced tokens of a conformance case (b1: 40 + 7). */
static int case_ids(const char *config, char *ids, size_t cap) {
    char rel[256];
    snprintf(rel, sizeof rel, "conformance/%s/b1/tokens.bin", config);
    size_t bytes = 0;
    int32_t *t = test_read_file(test_shared(rel), &bytes);
    if (!t || bytes < 47 * sizeof *t) { free(t); return -1; }
    size_t o = 0;
    for (int i = 0; i < 47 && o < cap; i++) o += (size_t)snprintf(ids + o, cap - o, "%s%d", i ? "," : "", t[i]);
    free(t);
    return 0;
}

/* dsv32 logits of config's b1 tokens with np ranks into dir (logits.f32 and
 * the layer-0 dumps). */
static void run_logits(const char *model, const char *ids, int np, const char *dir) {
    char cmd[8192], *out = NULL;
    mkdir(dir, 0700);
    snprintf(cmd, sizeof cmd, "%s%s logits -m %s --ids %s --prefill 40 -t 1 -o %s/logits.f32 --dump %s 2>&1",
             launcher(np), test_bin(), model, ids, dir, dir);
    int st = test_run(cmd, &out);
    REQUIREF(st == 0, "%d ranks: %s", np, out ? out : "");
    free(out);
}

static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { num += pow((double)a[i] - b[i], 2); den += (double)b[i] * b[i]; }
    return den > 0 ? sqrt(num / den) : 0;
}

/* How a split run's dumps (run_logits into dir) differ from one process's
 * (into one), over the case's 8 calls: layer 0's indexer (its top-k and
 * weights) must give the same bits, since its input, the embedding, is
 * summed exactly (other ranks' rows are zero): checked here, naming `what`
 * and np; layer 0's attention output, its relative error per call; the
 * logits, the mean |difference| per entry of each call. The callers judge
 * the last two. */
typedef struct {
    double l0_attn[8], l0_attn_worst;  /* relative error of layer 0's attention output */
    double logits_worst;               /* worst per-call mean |logit difference| */
} split_diff;

static split_diff split_diff_of(const char *one, const char *dir, const char *what, int np) {
    split_diff d = {{0}, 0, 0};
    char a[1300], b[1300];
    size_t na, nb;
    for (int call = 0; call < 8; call++) {
        static const char *exact[] = {"l0_topk.i32", "l0_index_weights.f32"};
        for (int k = 0; k < 2; k++) {
            snprintf(a, sizeof a, "%s/%d.%s", one, call, exact[k]);
            snprintf(b, sizeof b, "%s/%d.%s", dir, call, exact[k]);
            CHECKF(same_file(a, b), "%s, %d ranks, call %d: %s differs", what, np, call, exact[k]);
        }
        snprintf(a, sizeof a, "%s/%d.l0_attn_out.f32", one, call);
        snprintf(b, sizeof b, "%s/%d.l0_attn_out.f32", dir, call);
        float *x = read_f32(a, &na), *y = read_f32(b, &nb);
        REQUIREF(x && y && na == nb, "%s, %d ranks, call %d: layer 0 attention dumps missing or of other sizes", what,
                 np, call);
        d.l0_attn[call] = rel_err(y, x, na);
        d.l0_attn_worst = fmax(d.l0_attn_worst, d.l0_attn[call]);
        free(x);
        free(y);
    }
    snprintf(a, sizeof a, "%s/logits.f32", one);
    snprintf(b, sizeof b, "%s/logits.f32", dir);
    float *x = read_f32(a, &na), *y = read_f32(b, &nb);
    REQUIREF(x && y && na == nb && na % 8 == 0, "%s, %d ranks: logits missing or of other sizes", what, np);
    const size_t V = na / 8;
    for (int s = 0; s < 8; s++) {
        double sum = 0;
        for (size_t v = 0; v < V; v++) sum += fabs((double)x[s * V + v] - y[s * V + v]);
        d.logits_worst = fmax(d.logits_worst, sum / (double)V);
    }
    free(x);
    free(y);
    return d;
}

TEST(mpi_logits_agree_with_one_process) {
    need_mpi();
    static const char *configs[] = {"public_sparse_fp8", "public_sparse_bf16"};
    for (int c = 0; c < 2; c++) {
        char ids[4096], model[1024], one[1200];
        REQUIREF(case_ids(configs[c], ids, sizeof ids) == 0, "cannot read the tokens of %s", configs[c]);
        snprintf(model, sizeof model, "%s", test_shared(configs[c][14] == 'f' ? "conformance/public_sparse_fp8/hf"
                                                                              : "conformance/public_sparse_bf16/hf"));
        snprintf(one, sizeof one, "%s/%s-1", test_tmpdir(), configs[c]);
        run_logits(model, ids, 1, one);
        const conf_limits lim = conf_limits_for(configs[c]);
        for (int np = 2; np <= 4; np++) {
            char dir[1200];
            snprintf(dir, sizeof dir, "%s/%s-%d", test_tmpdir(), configs[c], np);
            run_logits(model, ids, np, dir);
            const split_diff d = split_diff_of(one, dir, configs[c], np);
            for (int call = 0; call < 8; call++)
                CHECKF(d.l0_attn[call] <= lim.l0a, "%s, %d ranks, call %d: layer 0 attention off by %.4f", configs[c], np,
                       call, d.l0_attn[call]);
            /* The logits, per call: mean |difference| within the rule's MED. */
            printf("    %s, %d ranks: worst per-call mean |logit difference| %.4f\n", configs[c] + 14, np,
                   d.logits_worst);
            CHECKF(d.logits_worst <= lim.med, "%s, %d ranks: logits differ by %.4f per entry", configs[c], np,
                   d.logits_worst);
        }
    }
}

static char *run_text(const char *cmd) {
    char *out = NULL;
    int st = test_run(cmd, &out);
    CHECKF(st == 0, "'%s' exited %d: %s", cmd, st, out ? out : "");
    return out;
}

TEST(mpi_greedy_generate_and_chat_match) {
    need_mpi();
    static const char *prompts[] = {"And it came to pass", "The LORD is my shepherd"};
    char cmd[2048];
    for (int p = 0; p < 2; p++) {
        char *ref = NULL;
        for (int np = 1; np <= 4; np *= 2) {
            snprintf(cmd, sizeof cmd, "%s%s generate -m models/tiny -p '%s' -n 16 --temp 0 -t 1 2>/dev/null",
                     launcher(np), test_bin(), prompts[p]);
            char *out = run_text(cmd);
            REQUIRE(out && strlen(out) > 16);
            if (!ref) ref = out;
            else {
                CHECKF(!strcmp(ref, out), "'%s', %d ranks:\n'%s'\nvs one process:\n'%s'", prompts[p], np, out, ref);
                free(out);
            }
        }
        free(ref);
    }
    /* A long prompt in one call (sums of many rows take the two-step
     * path) or in chunks of 4 tokens (one step each): the same text. */
    char *whole = NULL;
    for (int batch = 512; batch >= 4; batch /= 128) {
        snprintf(cmd, sizeof cmd, "%s%s generate -m models/tiny --batch %d -n 8 --temp 0 -t 1 -p 'In the beginning God "
                 "created the heaven and the earth. And the earth was without form, and void; and darkness was upon "
                 "the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let "
                 "there be light: and there was light. And God saw the light, that it was good' 2>/dev/null",
                 launcher(2), test_bin(), batch);
        char *out = run_text(cmd);
        REQUIRE(out);
        if (!whole) whole = out;
        else {
            CHECKF(!strcmp(whole, out), "chunked prefill: '%s' vs one call: '%s'", out, whole);
            free(out);
        }
    }
    free(whole);
    /* chat: rank 0 reads the conversation from stdin. */
    char *ref = NULL;
    for (int np = 1; np <= 2; np++) {
        snprintf(cmd, sizeof cmd, "printf 'Who begat Isaac?\\n/exit\\n' | %s%s chat -m models/tiny -n 12 --temp 0 -t 1 "
                 "2>/dev/null", launcher(np), test_bin());
        char *out = run_text(cmd);
        REQUIRE(out && *out);
        if (!ref) ref = out;
        else {
            CHECKF(!strcmp(ref, out), "chat, %d ranks:\n'%s'\nvs one process:\n'%s'", np, out, ref);
            free(out);
        }
    }
    free(ref);
}

TEST(mpi_ranks_agree_on_kernels) {
    need_mpi();
    if (dsv_kernels_supported("avx2") != DSV_OK) SKIP("this machine has only the generic kernels");
    /* Rank 1 may only run generic kernels: both ranks must then run them,
     * giving what two generic ranks give. */
    const char *m = test_shared("conformance/public_sparse_fp8/hf");
    char cmd[4096], a[1200], b[1200];
    snprintf(a, sizeof a, "%s/generic.f32", test_tmpdir());
    snprintf(b, sizeof b, "%s/mixed.f32", test_tmpdir());
    const char *args = "logits --ids 0,19,97,11,304,200,7,7,401,12 --prefill 6 -t 1";
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe -np 2 -x DSV32_ISA=generic %s %s -m %s -o %s 2>&1", test_bin(), args, m, a);
    CHECK(test_run(cmd, NULL) == 0);
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe -np 1 %s %s -m %s -o %s : -np 1 -x DSV32_ISA=generic %s %s -m %s "
             "-o %s 2>&1", test_bin(), args, m, b, test_bin(), args, m, b);
    CHECK(test_run(cmd, NULL) == 0);
    size_t la = 0, lb = 0;
    char *x = test_read_file(a, &la), *y = test_read_file(b, &lb);
    CHECK(x && y && la == lb && !memcmp(x, y, la));
    free(x);
    free(y);
}

static int logits_with(const char *model, int np, const char *extra, const char *out_file, char **log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout 120 %s%s logits -m %s --ids 0,19,97,11,304,200,7,7,401,12 --prefill 6 -t 1 "
             "-o %s %s 2>&1", launcher(np), test_bin(), model, out_file, extra);
    return test_run(cmd, log);
}

static int logits_of(const char *model, int np, const char *out_file, char **log) {
    return logits_with(model, np, "", out_file, log);
}

TEST(convert_one_shard_matches_checkpoint) {
    /* A 1-way "split" needs no MPI: the shard file is the whole model. */
    char out[1200], a[1300], b[1300], cmd[4096], *log = NULL;
    snprintf(out, sizeof out, "%s/mp1", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert -m models/tiny --model-parallel 1 -o %s 2>&1", test_bin(), out);
    REQUIREF(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    snprintf(a, sizeof a, "%s/model0-mp1.safetensors", out);
    snprintf(b, sizeof b, "%s/tokenizer.json", out);
    CHECK(access(a, R_OK) == 0 && access(b, R_OK) == 0);
    snprintf(a, sizeof a, "%s/hf.f32", test_tmpdir());
    snprintf(b, sizeof b, "%s/shard.f32", test_tmpdir());
    CHECK(logits_of("models/tiny", 1, a, NULL) == 0);
    CHECK(logits_of(out, 1, b, NULL) == 0);
    CHECK(same_file(a, b));
    /* Refusals: converting shards, writing into the checkpoint, an unknown
     * option; and --help names every option. */
    snprintf(cmd, sizeof cmd, "%s convert -m %s --model-parallel 2 -o %s/x 2>&1", test_bin(), out, test_tmpdir());
    CHECK(test_run(cmd, &log) != 0 && log && strstr(log, "holds per-rank shards"));
    free(log);
    snprintf(cmd, sizeof cmd, "%s convert -m models/tiny --model-parallel 2 -o models/tiny 2>&1", test_bin());
    CHECK(test_run(cmd, &log) != 0 && log && strstr(log, "-o must differ"));
    free(log);
    snprintf(cmd, sizeof cmd, "%s convert --help", test_bin());
    CHECK(test_run(cmd, &log) == 0 && log && strstr(log, "--model-parallel") && strstr(log, "--rank") &&
          strstr(log, "default"));
    free(log);
    /* A single process refuses shards of a 2-way split by name. */
    snprintf(a, sizeof a, "%s/mp2", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert -m models/tiny --model-parallel 2 -o %s 2>&1", test_bin(), a);
    REQUIRE(test_run(cmd, NULL) == 0);
    snprintf(b, sizeof b, "%s/x.f32", test_tmpdir());
    CHECK(logits_of(a, 1, b, &log) != 0 && log && strstr(log, "written for 2 ranks"));
    free(log);
}

TEST(mpi_convert_shards_match_checkpoint) {
    need_mpi();
    static const struct { const char *model; int np; } runs[] = {
        {"models/tiny", 2}, {"models/tiny", 4}, {"conformance/public_sparse_fp8/hf", 3},
    };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        const char *model = runs[i].model[0] == 'c' ? test_shared(runs[i].model) : runs[i].model;
        char dir[1200], a[1300], b[1300], cmd[4096], *log = NULL;
        snprintf(dir, sizeof dir, "%s/shards%zu", test_tmpdir(), i);
        snprintf(cmd, sizeof cmd, "%s convert -m %s --model-parallel %d -o %s 2>&1", test_bin(), model, runs[i].np, dir);
        REQUIREF(test_run(cmd, &log) == 0, "%s", log ? log : "");
        free(log);
        snprintf(a, sizeof a, "%s/hf%zu.f32", test_tmpdir(), i);
        snprintf(b, sizeof b, "%s/shards%zu.f32", test_tmpdir(), i);
        CHECKF(logits_of(model, runs[i].np, a, &log) == 0, "%s", log ? log : "");
        free(log);
        CHECKF(logits_of(dir, runs[i].np, b, &log) == 0, "%s", log ? log : "");
        free(log);
        CHECKF(same_file(a, b), "%s, %d ranks: shards and checkpoint give different logits", runs[i].model, runs[i].np);
    }
}

TEST(mpi_rank_that_cannot_load_fails_all) {
    need_mpi();
    char dir[1200], path[1300], cmd[4096], *log = NULL;
    snprintf(dir, sizeof dir, "%s/shards", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s convert -m models/tiny --model-parallel 2 -o %s 2>&1", test_bin(), dir);
    REQUIRE(test_run(cmd, NULL) == 0);
    snprintf(path, sizeof path, "%s/out.f32", test_tmpdir());
    /* Shards of another split. */
    CHECK(logits_of(dir, 4, path, &log) != 0 && log && strstr(log, "written for 2 ranks"));
    free(log);
    /* Rank 1's shard gone: every rank stops, naming rank 1 and the file. */
    snprintf(path, sizeof path, "%s/model1-mp2.safetensors", dir);
    REQUIRE(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/out.f32", test_tmpdir());
    int st = logits_of(dir, 2, path, &log);
    CHECKF(st != 0 && st != 124 && log && strstr(log, "rank 1 of 2") && strstr(log, "model1-mp2.safetensors"),
           "exit %d: %s", st, log ? log : "");
    free(log);
}

/* ---- GGUF files split across ranks -------------------------------------- */

/* A GGUF file `dsv32 quantize` writes from model with args, in this test's
 * temporary directory. */
static const char *quantized(const char *model, const char *name, const char *args) {
    static char path[4][1200];
    static int slot;
    char *p = path[slot++ & 3], cmd[4096], *log = NULL;
    snprintf(p, sizeof path[0], "%s/%s", test_tmpdir(), name);
    snprintf(cmd, sizeof cmd, "%s quantize -m %s -o %s %s 2>&1", test_bin(), model, p, args);
    REQUIREF(test_run(cmd, &log) == 0, "%s", log ? log : "");
    free(log);
    return p;
}

/* A BF16 file of a checkpoint holds the checkpoint's values, and one
 * process gives the checkpoint's logits bit for bit (test_gguf_model.c,
 * test_gguf_fp8.c); split, the file must be cut exactly as the checkpoint
 * is (the same plan, the same bytes in each rank's part), so the split
 * logits are the checkpoint's split logits bit for bit. fp8 at 3 ranks: a
 * rank without heads. Also a split set, and a deepseek2 file (dense MLA). */
TEST(mpi_gguf_bf16_split_equals_checkpoint_split) {
    need_mpi();
    static const char *ckpts[] = {"conformance/public_sparse_fp8/hf", "conformance/public_sparse_bf16/hf"};
    for (int c = 0; c < 2; c++) {
        const char *model = test_shared(ckpts[c]);
        const char *g = quantized(model, c ? "bf16.gguf" : "fp8.gguf", "--type BF16");
        for (int np = 2; np <= 4; np++) {
            if (c == 1 && np == 3) continue;
            char a[1300], b[1300], *log = NULL;
            snprintf(a, sizeof a, "%s/st%d.f32", test_tmpdir(), np);
            snprintf(b, sizeof b, "%s/gguf%d.f32", test_tmpdir(), np);
            CHECKF(logits_of(model, np, a, &log) == 0, "%s", log ? log : "");
            free(log);
            CHECKF(logits_of(g, np, b, &log) == 0, "%s", log ? log : "");
            free(log);
            CHECKF(same_file(a, b), "%s, %d ranks: the BF16 file's logits differ from the checkpoint's", ckpts[c], np);
        }
    }
    /* A split set, and arch deepseek2 (no indexer: dense MLA, as the
     * checkpoint with --dense), at 2 ranks. */
    const char *model = test_shared(ckpts[1]);
    char a[1300], b[1300], set[1300], *log = NULL;
    quantized(model, "set.gguf", "--type BF16 --split-max-size 1M");
    snprintf(set, sizeof set, "%s/set-00001-of-00005.gguf", test_tmpdir());
    snprintf(a, sizeof a, "%s/st2.f32", test_tmpdir());
    snprintf(b, sizeof b, "%s/set2.f32", test_tmpdir());
    CHECKF(logits_of(set, 2, b, &log) == 0, "%s", log ? log : "");
    free(log);
    CHECK(same_file(a, b));
    const char *d2 = quantized(model, "d2.gguf", "--type BF16 --arch deepseek2");
    snprintf(a, sizeof a, "%s/dense2.f32", test_tmpdir());
    snprintf(b, sizeof b, "%s/d2-2.f32", test_tmpdir());
    CHECKF(logits_with(model, 2, "--dense", a, &log) == 0, "%s", log ? log : "");
    free(log);
    CHECKF(logits_of(d2, 2, b, &log) == 0, "%s", log ? log : "");
    free(log);
    CHECK(same_file(a, b));
}

/* Quantized files of the embedded model (Q8_0; Q4_K_M, whose Q6_K
 * attn_output keeps tiny's 4 heads of 64 columns in one 256-column block,
 * so one rank holds them all and the dense MLP goes in 256-unit blocks; and
 * Q4_K_M with a Q8_0 attn_output, whose heads split 2 and 2 on 32-column
 * blocks) at 2 and 4 ranks against one process, as the checkpoint's split
 * is judged (mpi_logits_agree_with_one_process): layer 0's indexer bit for
 * bit (its input, the embedding, is summed exactly: other ranks' rows are
 * zero), layer 0's attention and the logits within the conformance rule's
 * limits (a split adds partial products in another order). A part cut at
 * the wrong columns moves the logits by 2-3 per entry, far outside. */
TEST(mpi_gguf_quantized_split_agrees_with_one_process) {
    need_mpi();
    static const struct { const char *name, *args; } files[] = {
        {"q8.gguf", "--type Q8_0"},
        {"q4km.gguf", "--type Q4_K_M"},
        {"mix.gguf", "--type Q4_K_M --tensor-type 'attn_output=Q8_0'"},
    };
    char ids[4096];
    REQUIRE(case_ids("public_sparse_fp8", ids, sizeof ids) == 0);
    const conf_limits lim = conf_limits_for("public_sparse_bf16");
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        const char *g = quantized("models/tiny", files[f].name, files[f].args);
        char one[1200];
        snprintf(one, sizeof one, "%s/%s-1", test_tmpdir(), files[f].name);
        run_logits(g, ids, 1, one);
        for (int np = 2; np <= 4; np += 2) {
            char dir[1200];
            snprintf(dir, sizeof dir, "%s/%s-%d", test_tmpdir(), files[f].name, np);
            run_logits(g, ids, np, dir);
            const split_diff d = split_diff_of(one, dir, files[f].name, np);
            printf("    %s, %d ranks: layer 0 attention off by %.4f, worst per-call mean |logit difference| %.4f\n",
                   files[f].name, np, d.l0_attn_worst, d.logits_worst);
            CHECKF(d.l0_attn_worst <= lim.l0a, "%s, %d ranks: layer 0 attention off by %.4f", files[f].name, np,
                   d.l0_attn_worst);
            CHECKF(d.logits_worst <= lim.med, "%s, %d ranks: logits differ by %.4f per entry", files[f].name, np,
                   d.logits_worst);
        }
    }
    /* Greedy text: the same at 1 and 2 ranks (this prompt has no near-tie). */
    const char *g = quantized("models/tiny", "q4km.gguf", "--type Q4_K_M");
    char cmd[2048], *ref = NULL;
    for (int np = 1; np <= 2; np++) {
        snprintf(cmd, sizeof cmd, "%s%s generate -m %s -p 'And it came to pass' -n 16 --temp 0 -t 1 2>/dev/null",
                 launcher(np), test_bin(), g);
        char *out = run_text(cmd);
        REQUIRE(out && strlen(out) > 16);
        if (!ref) ref = out;
        else {
            CHECKF(!strcmp(ref, out), "2 ranks:\n'%s'\nvs one process:\n'%s'", out, ref);
            free(out);
        }
    }
    free(ref);
}

/* The error the leader printed for a failed `dsv32 logits` (after "dsv32
 * logits: "), or NULL. */
static const char *error_line(const char *log) {
    const char *e = log ? strstr(log, "dsv32 logits: ") : NULL;
    return e ? e + strlen("dsv32 logits: ") : NULL;
}

static int starts(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* How often s occurs in the line at p. */
static int count_in_line(const char *p, const char *s) {
    const char *end = strchr(p, '\n');
    int n = 0;
    for (const char *q = p; (q = strstr(q, s)) && (!end || q < end); q += strlen(s)) n++;
    return n;
}

/* Every rank maps its own copy of the file (on its own machine): a copy of
 * another preset on one rank, or none, fails every rank with one line.
 * Each rank runs in its own directory and opens the same relative name. */
TEST(mpi_gguf_ranks_need_the_same_file) {
    need_mpi();
    char a[1200], b[1200], fa[1300], fb[1300], cmd[8192], *log = NULL;
    snprintf(a, sizeof a, "%s/a", test_tmpdir());
    snprintf(b, sizeof b, "%s/b", test_tmpdir());
    REQUIRE(mkdir(a, 0700) == 0 && mkdir(b, 0700) == 0);
    snprintf(fa, sizeof fa, "%s/m.gguf", a);
    snprintf(fb, sizeof fb, "%s/m.gguf", b);
    REQUIRE(rename(quantized("models/tiny", "q8.gguf", "--type Q8_0"), fa) == 0);
    REQUIRE(rename(quantized("models/tiny", "q4.gguf", "--type Q4_K_M"), fb) == 0);
    char bin_abs[1100]; /* the ranks start in their own directories */
    if (test_bin()[0] == '/') snprintf(bin_abs, sizeof bin_abs, "%s", test_bin());
    else {
        char cwd[900];
        REQUIRE(getcwd(cwd, sizeof cwd));
        snprintf(bin_abs, sizeof bin_abs, "%s/%s", cwd, test_bin());
    }
    const char *args = "logits -m m.gguf --ids 0,19,97,11 --prefill 2 -t 1 -o out.f32";
    snprintf(cmd, sizeof cmd, "timeout 120 mpirun --oversubscribe -np 1 -wdir %s %s %s : -np 1 -wdir %s %s %s 2>&1", a,
             bin_abs, args, b, bin_abs, args);
    /* Copies that differ are the group's fault, not one rank's: the line
     * names no rank ("rank r of 2: "). */
    int st = test_run(cmd, &log);
    const char *e = error_line(log);
    CHECKF(st != 0 && st != 124 && e && starts(e, "m.gguf: the ranks' copies of this file differ") &&
           count_in_line(e, " of 2: ") == 0, "exit %d: %s", st, log ? log : "");
    free(log);
    /* The same tensor table, one metadata value changed (the RMS norm's
     * epsilon): the results would differ, so the copies differ too. */
    REQUIRE(unlink(fb) == 0);
    {
        size_t n = 0;
        char *img = test_read_file(fa, &n);
        REQUIRE(img);
        static const char key[] = "attention.layer_norm_rms_epsilon";
        char *k = memmem(img, n, key, sizeof key - 1);
        REQUIRE(k && (size_t)(k - img) + sizeof key - 1 + 8 <= n);
        uint32_t type;
        memcpy(&type, k + sizeof key - 1, 4);
        REQUIRE(type == 6); /* f32 */
        float eps;
        memcpy(&eps, k + sizeof key - 1 + 4, 4);
        eps *= 2;
        memcpy(k + sizeof key - 1 + 4, &eps, 4);
        test_write_file(fb, img, n);
        free(img);
    }
    st = test_run(cmd, &log);
    e = error_line(log);
    CHECKF(st != 0 && st != 124 && e && starts(e, "m.gguf: the ranks' copies of this file differ") &&
           count_in_line(e, " of 2: ") == 0, "exit %d: %s", st, log ? log : "");
    free(log);
    /* Rank 1 has none: its own error, for every rank, named once. */
    REQUIRE(unlink(fb) == 0);
    st = test_run(cmd, &log);
    e = error_line(log);
    CHECKF(st != 0 && st != 124 && e && starts(e, "rank 1 of 2: m.gguf: cannot open") &&
           count_in_line(e, " of 2: ") == 1, "exit %d: %s", st, log ? log : "");
    free(log);
    /* Rank 1 has none, and rank 0's copy opens but would fail while its
     * part is built (a tensor renamed: the file's header, metadata and
     * table are valid). The ranks agree before building: rank 0 stops with
     * rank 1's error, not its own, so it built nothing (agreeing only after
     * the build reports rank 0's "is missing", the first failing rank). */
    {
        size_t n = 0;
        char *good = test_read_file(fa, &n), *bad = malloc(n ? n : 1);
        REQUIRE(good && bad);
        memcpy(bad, good, n);
        static const char name[] = "blk.1.attn_q_a.weight";
        char *k = memmem(bad, n, name, sizeof name - 1);
        REQUIRE(k);
        k[sizeof name - 2] = 'X';
        test_write_file(fa, bad, n);
        st = test_run(cmd, &log);
        e = error_line(log);
        CHECKF(st != 0 && st != 124 && e && starts(e, "rank 1 of 2: m.gguf: cannot open") &&
               count_in_line(e, " of 2: ") == 1 && !strstr(log, "is missing"), "exit %d: %s", st, log ? log : "");
        free(log);
        /* Alone, that copy fails in the build: the case above did stop rank 0 early. */
        char one[3000];
        snprintf(one, sizeof one, "cd %s && timeout 120 %s logits -m m.gguf --ids 0,19 --prefill 1 -t 1 -o out.f32 2>&1", a,
                 bin_abs);
        st = test_run(one, &log);
        CHECKF(st != 0 && log && strstr(log, "m.gguf: tensor 'blk.1.attn_q_a.weight' is missing"), "exit %d: %s", st,
               log ? log : "");
        free(log);
        test_write_file(fa, good, n);
        free(good);
        free(bad);
    }
    /* The same file: it runs. */
    REQUIRE(link(fa, fb) == 0);
    st = test_run(cmd, &log);
    CHECKF(st == 0, "exit %d: %s", st, log ? log : "");
    free(log);
}

/* Gone, or a zombie nobody reaped (a container's init may not). */
static int dead(pid_t pid) {
    char path[64], stat[256] = "";
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = 0;
    const char *p = strrchr(stat, ')');
    return p && (p[2] == 'Z' || p[2] == 'X');
}

/* Starts a long decode on 2 ranks, kills rank `victim` once it runs, and
 * checks that the job ends, non-zero, within seconds. */
static void kill_mid_run(int victim) {
    char cmd[4096], out[1200], pid_file[1300];
    snprintf(out, sizeof out, "%s/run%d.log", test_tmpdir(), victim);
    snprintf(cmd, sizeof cmd, "exec mpirun --oversubscribe -np 2 sh -c 'echo $$ > %s/pid.$OMPI_COMM_WORLD_RANK; exec %s "
             "generate -m models/tiny -p And --ctx 65536 -n 65000 --temp 0 -t 1' > %s 2>&1",
             test_tmpdir(), test_bin(), out);
    pid_t job = fork();
    REQUIRE(job >= 0);
    if (job == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    /* Decoding has begun when text streams out. */
    double t0 = test_now();
    char *log = NULL;
    size_t len = 0;
    while (test_now() - t0 < 60) {
        free(log);
        log = test_read_file(out, &len);
        if (log && len > 40) break;
        usleep(20000);
    }
    REQUIREF(log && len > 40, "the run did not start: %s", log ? log : "");
    free(log);
    usleep(300000);
    snprintf(pid_file, sizeof pid_file, "%s/pid.%d", test_tmpdir(), victim);
    char *pid_s = test_read_file(pid_file, NULL), *other_s;
    snprintf(pid_file, sizeof pid_file, "%s/pid.%d", test_tmpdir(), 1 - victim);
    other_s = test_read_file(pid_file, NULL);
    REQUIRE(pid_s && other_s);
    pid_t pid = (pid_t)atoi(pid_s), other = (pid_t)atoi(other_s);
    free(pid_s);
    free(other_s);
    double t_kill = test_now();
    REQUIRE(kill(pid, SIGKILL) == 0);
    int st = 0, done = 0;
    while (!done && test_now() - t_kill < 30) {
        pid_t r = waitpid(job, &st, WNOHANG);
        if (r == job) done = 1;
        else usleep(20000);
    }
    if (!done) {
        kill(-job, SIGKILL);
        waitpid(job, &st, 0);
    }
    const double took = test_now() - t_kill;
    CHECKF(done, "rank %d killed: the job still ran after 30 s", victim);
    CHECKF(took < 15, "rank %d killed: the job took %.1f s to end", victim, took);
    CHECKF(!WIFEXITED(st) || WEXITSTATUS(st) != 0, "rank %d killed: mpirun exited 0", victim);
    for (double t = test_now(); !dead(other) && test_now() - t < 5;) usleep(20000);
    CHECKF(dead(other), "rank %d killed: rank %d is still alive", victim, 1 - victim);
    printf("    rank %d killed: the job ended in %.2f s\n", victim, took);
}

TEST(mpi_killed_rank_ends_the_job) {
    need_mpi();
    kill_mid_run(1);
    kill_mid_run(0);
}

TEST(mpi_serve_answers) {
    need_mpi();
    /* The same long prompt twice: the second request reuses the first's
     * full KV page from the prefix cache (page references and attach are
     * replayed on the follower) and must answer the same. */
    static const char *body =
        "{\"prompt\":\"In the beginning God created the heaven and the earth. And the earth was without form, and "
        "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
        "And God said, Let there be light: and there was light. And God saw the light, that it was good: and God "
        "divided the light from the darkness.\",\"max_tokens\":12,\"temperature\":0}";
    char *text[2][2] = {{NULL, NULL}, {NULL, NULL}};
    for (int k = 0; k < 2; k++) {
        server s;
        server_start_with(&s, k ? "mpirun --oversubscribe -np 2" : NULL, "models/tiny", "-t 1");
        for (int q = 0; q < 2; q++) {
            http_resp r;
            REQUIRE(http(s.port, "POST", "/v1/completions", NULL, body, &r) == 0);
            CHECKF(r.status == 200, "%d ranks: status %d: %s", k + 1, r.status, r.body);
            cJSON *j = cJSON_Parse(r.body);
            const cJSON *t = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text");
            text[k][q] = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
            cJSON_Delete(j);
            http_free(&r);
        }
        http_resp m;
        REQUIRE(http(s.port, "GET", "/metrics", NULL, NULL, &m) == 0);
        static const char key[] = "\ndsv32_prefix_cache_hits_total ";
        const char *hits = strstr(m.body, key);
        CHECKF(hits && atof(hits + sizeof key - 1) >= 1, "%d ranks: no prefix-cache hit: %s", k + 1, m.body);
        http_free(&m);
        server_stop(&s);
    }
    for (int q = 0; q < 2; q++)
        CHECKF(text[0][q] && text[1][q] && !strcmp(text[0][q], text[1][q]), "request %d: 2 ranks answered '%s', one "
               "process '%s'", q + 1, text[1][q], text[0][q]);
    CHECK(text[1][0] && text[1][1] && !strcmp(text[1][0], text[1][1]));
    for (int k = 0; k < 2; k++) { free(text[k][0]); free(text[k][1]); }
}
