/* test_runner.c: the test runner itself, run a second time on fixture tests
 * (named fixture_*, which the runner leaves out unless named): a hung test is
 * killed with everything it started and fails by name; a skip is counted as
 * a skip; a leveled test counts once per kernel level, and the levels this
 * CPU lacks as skips. */
#include <signal.h>
#include <unistd.h>

#include "dsv32.h"
#include "test.h"

/* Runs this runner binary on the named tests; returns its exit status. */
static int rerun(const char *env, const char *names, char **out) {
    char self[1024], cmd[2048];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(n > 0);
    self[n] = 0;
    snprintf(cmd, sizeof cmd, "env -u DSV32_ISA %s '%s' %s 2>&1", env, self, names);
    return test_run(cmd, out);
}

TEST(fixture_hang) {
    /* A grandchild in the test's process group, then a hang. */
    pid_t p = fork();
    if (p == 0) { execlp("sleep", "sleep", "600", (char *)NULL); _exit(127); }
    const char *pidfile = getenv("HANG_PID_FILE");
    FILE *f = pidfile ? fopen(pidfile, "w") : NULL;
    if (f) { fprintf(f, "%d\n", (int)p); fclose(f); }
    for (;;) pause();
}

TEST(fixture_skips) { SKIP("nothing to do here"); }

TEST_LEVELS(fixture_levels) { CHECK(strcmp(dsv_kernels_name(), test_level()) == 0); }

TEST(runner_timeout_kills_test_and_its_children) {
    char env[700], pidfile[600], *out = NULL;
    snprintf(pidfile, sizeof pidfile, "%s/hang.pid", test_tmpdir());
    snprintf(env, sizeof env, "DSV32_TEST_TIMEOUT=1 HANG_PID_FILE='%s'", pidfile);
    int rc = rerun(env, "fixture_hang", &out);
    CHECK_EQ_INT(rc, 1);
    CHECKF(out && strstr(out, "FAIL fixture_hang") && strstr(out, "fixture_hang: timed out after 1 s") &&
               strstr(out, "failed: fixture_hang") && strstr(out, "0 passed, 1 failed, 0 skipped"),
           "%s", out ? out : "");
    char *pid_text = test_read_file(pidfile, NULL);
    REQUIREF(pid_text, "the fixture wrote no pid");
    pid_t p = (pid_t)atoi(pid_text);
    REQUIRE(p > 0);
    /* Killed with its group: gone, or at most a zombie awaiting init. */
    int alive = 0;
    char stat_path[64], *st;
    snprintf(stat_path, sizeof stat_path, "/proc/%d/stat", (int)p);
    if ((st = test_read_file(stat_path, NULL))) {
        const char *r = strrchr(st, ')');
        alive = r && r[1] == ' ' && r[2] != 'Z';
        free(st);
    }
    CHECKF(!alive, "the test's child %d outlived the timeout", (int)p);
    if (alive) kill(p, SIGKILL);
    free(pid_text);
    free(out);
}

TEST(runner_counts_skips_and_levels_apart) {
    char *out = NULL;
    int rc = rerun("", "fixture_skips fixture_levels", &out);
    CHECK_EQ_INT(rc, 0);
    REQUIRE(out);
    int have = 0, n = 0;
    for (; dsv_kernels_level(n); n++) {
        char line[128];
        int ok = dsv_kernels_supported(dsv_kernels_level(n)) == DSV_OK;
        have += ok;
        snprintf(line, sizeof line, "%s fixture_levels@%s ", ok ? "ok  " : "skip", dsv_kernels_level(n));
        CHECKF(strstr(out, line) != NULL, "no line '%s' in:\n%s", line, out);
    }
    CHECK(n >= 1 && have >= 1); /* generic runs everywhere */
    char want[128];
    snprintf(want, sizeof want, "%d passed, 0 failed, %d skipped", have, n + 1 - have);
    CHECKF(strstr(out, want) != NULL, "no '%s' in:\n%s", want, out);
    CHECKF(strstr(out, "skip fixture_skips") && strstr(out, "nothing to do here"), "%s", out);
    CHECKF(strstr(out, "kernel levels run: generic"), "%s", out);
    free(out);
}

TEST(runner_rejects_bad_timeout) {
    char *out = NULL;
    CHECK_EQ_INT(rerun("DSV32_TEST_TIMEOUT=soon", "fixture_skips", &out), 0);
    CHECKF(out && strstr(out, "DSV32_TEST_TIMEOUT: 'soon'"), "%s", out ? out : "");
    free(out);
}
