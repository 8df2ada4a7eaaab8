/* run_tests.c: runs every registered test in its own child process (and
 * process group) and ends with "N passed, N failed, N skipped". A leveled
 * test (TEST_LEVELS) is one entry per kernel level, "name@level", each
 * counted on its own: a level this CPU lacks is a skip, never a pass. A test
 * running past DSV32_TEST_TIMEOUT seconds (default 300) is killed with
 * everything it started and fails. Arguments are substrings: only tests whose
 * name or file contains one of them run. `run_tests --mpi BODY` is the program
 * a test launches under mpirun (test_mpi.c). */
#include "test.h"

#include "dsv32.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 4096

/* Kernel levels: those this build knows (dsv_kernels_level), lowest first. */
enum { MAX_LEVELS = 8 };
static int n_levels(void) {
    int n = 0;
    while (n < MAX_LEVELS && dsv_kernels_level(n)) n++;
    return n;
}

struct test_entry { const char *name, *file; test_fn fn; int level; /* -1: none */ };
static struct test_entry tests[MAX_TESTS];
static int n_tests;
int test_failures;
static char tmpdir[512];
static const char *cur_level;
static int skip_fd = -1; /* the child's end of the pipe that carries a skip reason */

enum { EXIT_PASS = 0, EXIT_FAIL = 1, EXIT_SKIP = 77 };

static void add(const char *name, const char *file, test_fn fn, int level) {
    if (n_tests < MAX_TESTS) tests[n_tests++] = (struct test_entry){name, file, fn, level};
}

void test_register(const char *name, const char *file, test_fn fn) { add(name, file, fn, -1); }

void test_register_levels(const char *name, const char *file, test_fn fn, int first_level) {
    for (int l = first_level; l < n_levels(); l++) {
        size_t n = strlen(name) + strlen(dsv_kernels_level(l)) + 2;
        char *full = malloc(n);
        if (!full) return;
        snprintf(full, n, "%s@%s", name, dsv_kernels_level(l));
        add(full, file, fn, l);
    }
}

const char *test_level(void) { return cur_level ? cur_level : "generic"; }

void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    if (test_failures < 20) {
        fprintf(stderr, "    %s:%d: ", file, line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    } else if (test_failures == 20) {
        fprintf(stderr, "    (further failures not shown)\n");
    }
    test_failures++;
}

void test_skip(const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    fflush(NULL);
    /* The runner prints the reason on the test's own line. */
    if (skip_fd < 0 || write(skip_fd, why, strlen(why)) < 0) fprintf(stderr, "    skipped: %s\n", why);
    _exit(EXIT_SKIP);
}

void test_skip_unless_required(const char *var, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    const char *v = getenv(var);
    if (v && *v && strcmp(v, "0")) {
        test_fail(__FILE__, __LINE__, "%s is set, so this must run: %s", var, why);
        test_abort();
    }
    test_skip("%s", why);
}

void test_abort(void) { fflush(NULL); _exit(EXIT_FAIL); }

/* The fixtures live in tests/data beside this file (the path the build
 * compiled it under, relative to the repository root that `make test` runs
 * in); DSV32_SHARED points at another copy with the same layout. */
const char *test_shared_dir(void) {
    static char dir[512];
    const char *s = getenv("DSV32_SHARED");
    if (s && *s) return s;
    if (!dir[0]) {
        const char *f = __FILE__, *slash = strrchr(f, '/');
        int n = slash ? (int)(slash - f) : 0;
        snprintf(dir, sizeof dir, "%.*s%sdata", n, f, n ? "/" : "");
    }
    return dir;
}

const char *test_shared(const char *rel) {
    static char bufs[8][1024];
    static int slot;
    char *b = bufs[slot++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", test_shared_dir(), rel);
    return b;
}

const char *test_tmpdir(void) { return tmpdir; }

const char *test_tokenizer_dir(int with_config) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "zstd -q -d -f '%s' -o '%s/tokenizer.json'", test_shared("tokenizer/tokenizer.json.zst"),
             tmpdir);
    if (with_config)
        snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), " && cp '%s' '%s/'",
                 test_shared("tokenizer/tokenizer_config.json"), tmpdir);
    REQUIREF(system(cmd) == 0, "cannot unpack the tokenizer fixture: %s", cmd);
    return tmpdir;
}

void *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t)n; }
    return buf;
}

void test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    REQUIREF(f, "cannot create %s", path);
    REQUIREF(fwrite(data, 1, len, f) == len, "cannot write %s", path);
    REQUIREF(fclose(f) == 0, "cannot write %s", path);
}

int test_run(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (cap - n < 2) { cap *= 2; buf = realloc(buf, cap); }
    }
    int st = pclose(p);
    if (buf) buf[n] = 0;
    if (out) *out = buf; else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

void test_run_ok(const char *cmd, char **out) {
    char *o = NULL;
    const int rc = test_run(cmd, &o);
    REQUIREF(rc == 0, "%s: %s", cmd, o ? o : "");
    if (out) *out = o;
    else free(o);
}

const char *test_bin(void) {
    const char *b = getenv("DSV32_BIN");
    return b && *b ? b : "build/dsv32";
}

/* Removes name (relative to the directory fd `at`) and all below it; by
 * file descriptors, so that trees deeper than any path buffer go too. */
static void rm_rf_at(int at, const char *name) {
    if (!unlinkat(at, name, 0)) return;
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) rm_rf_at(fd, e->d_name);
        closedir(d);
    } else if (fd >= 0) {
        close(fd);
    }
    unlinkat(at, name, AT_REMOVEDIR);
}

static void rm_rf(const char *path) { rm_rf_at(AT_FDCWD, path); }

double test_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Tests named fixture_* exist for test_runner.c to run through a second
 * runner; they run only when an argument starts their name (past the
 * "fixture_" itself), never in a plain `make test`. */
static int selected(const struct test_entry *t, int argc, char **argv) {
    if (!strncmp(t->name, "fixture_", 8)) {
        for (int i = 1; i < argc; i++)
            if (!strncmp(t->name, argv[i], strlen(argv[i])) && strlen(argv[i]) > 8) return 1;
        return 0;
    }
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(t->name, argv[i]) || strstr(t->file, argv[i])) return 1;
    return 0;
}

/* DSV32_TEST_TIMEOUT (seconds, default 300): far above any test's normal
 * time, so no test depends on speed; it only catches a hang. */
static double timeout_s(void) {
    const char *e = getenv("DSV32_TEST_TIMEOUT");
    char *end;
    double v = e && *e ? strtod(e, &end) : 300;
    if (e && *e && (*end || !(v > 0 && v <= 86400))) {
        fprintf(stderr, "DSV32_TEST_TIMEOUT: '%s' is not a number of seconds in (0, 86400]; using 300\n", e);
        v = 300;
    }
    return v;
}

/* The child: its own process group (so a timeout ends everything it
 * started), stdin from /dev/null, the kernel level forced, then the test. */
static _Noreturn void child(const struct test_entry *t) {
    setpgid(0, 0);
    /* Outside the terminal's foreground group a read of the terminal would
     * stop the test; no test reads the runner's stdin. */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        close(null);
    }
    test_failures = 0;
    if (t->level >= 0) {
        cur_level = dsv_kernels_level(t->level);
        const char *isa = getenv("DSV32_ISA");
        if (isa && *isa && strcmp(isa, cur_level))
            test_skip("DSV32_ISA=%s selects another kernel level", isa);
        if (dsv_kernels_supported(cur_level) != DSV_OK) test_skip("%s", dsv_errmsg());
        /* Contexts opened with default parameters, here and in the commands
         * the test starts, run DSV32_ISA's level. */
        setenv("DSV32_ISA", cur_level, 1);
    }
    t->fn();
    fflush(NULL);
    _exit(test_failures ? EXIT_FAIL : EXIT_PASS);
}

/* Waits for the test; past the limit, ends its process group (SIGTERM, then
 * SIGKILL after 5 s). Returns 1 when it had to. */
static int wait_test(pid_t pid, int *st, double limit) {
    double t0 = test_now(), term_at = 0;
    const struct timespec tick = {0, 5 * 1000 * 1000};
    for (;;) {
        pid_t r = waitpid(pid, st, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) { *st = 0x7f00; break; }
        double t = test_now();
        if (!term_at && t - t0 > limit) { kill(-pid, SIGTERM); term_at = t; }
        else if (term_at && t - term_at > 5) kill(-pid, SIGKILL);
        nanosleep(&tick, NULL);
    }
    /* Whatever the test left running (a server, a rank) goes with it. */
    kill(-pid, SIGKILL);
    return term_at != 0;
}

static void append(char *list, size_t cap, const char *name) {
    size_t l = strlen(list);
    if (l + strlen(name) + 2 < cap) snprintf(list + l, cap - l, " %s", name);
    else if (l + 5 < cap && strcmp(list + l - 4, " ...")) snprintf(list + l, cap - l, " ...");
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--mpi")) return test_mpi_main(argc - 1, argv + 1);
    int passed = 0, failed = 0, skipped = 0;
    int level_ran[MAX_LEVELS] = {0}, level_skipped[MAX_LEVELS] = {0};
    char level_why[MAX_LEVELS][256] = {{0}};
    static char failed_names[8192], skipped_names[8192];
    double limit = timeout_s();
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        struct test_entry *t = &tests[i];
        if (!selected(t, argc, argv)) continue;
        snprintf(tmpdir, sizeof tmpdir, "%s/dsv32-test-%d-%d",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(), i);
        mkdir(tmpdir, 0700);
        int fds[2] = {-1, -1};
        if (pipe2(fds, O_CLOEXEC) == 0) fcntl(fds[0], F_SETFL, O_NONBLOCK);
        double t0 = test_now();
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            if (fds[0] >= 0) close(fds[0]);
            skip_fd = fds[1];
            child(t);
        }
        if (fds[1] >= 0) close(fds[1]);
        int st = 0, timed_out = 0;
        if (pid < 0) st = 0x7f00;
        else {
            setpgid(pid, pid); /* also here: no race with the child's own call */
            timed_out = wait_test(pid, &st, limit);
        }
        double dt = test_now() - t0;
        char why[512] = "";
        if (fds[0] >= 0) {
            ssize_t n = read(fds[0], why, sizeof why - 1);
            why[n > 0 ? n : 0] = 0;
            close(fds[0]);
        }
        rm_rf(tmpdir);
        const char *res;
        if (!timed_out && WIFEXITED(st) && WEXITSTATUS(st) == EXIT_PASS) {
            res = "ok";
            passed++;
            if (t->level >= 0) level_ran[t->level]++;
        } else if (!timed_out && WIFEXITED(st) && WEXITSTATUS(st) == EXIT_SKIP) {
            res = "skip";
            skipped++;
            append(skipped_names, sizeof skipped_names, t->name);
            if (t->level >= 0) {
                level_skipped[t->level]++;
                if (!level_why[t->level][0]) snprintf(level_why[t->level], sizeof level_why[0], "%s", why);
            }
        } else {
            res = "FAIL";
            failed++;
            if (t->level >= 0) level_ran[t->level]++;
            if (timed_out)
                fprintf(stderr, "    %s: timed out after %g s (DSV32_TEST_TIMEOUT), killed\n", t->name, limit);
            else if (WIFSIGNALED(st)) fprintf(stderr, "    killed by signal %d\n", WTERMSIG(st));
            append(failed_names, sizeof failed_names, t->name);
        }
        printf("%-4s %-48s %7.2fs%s%s\n", res, t->name, dt, why[0] ? "  " : "", why);
    }
    /* Which kernel levels the leveled tests ran at, and why any did not. */
    char ran[128] = "", notrun[8 * 300] = "";
    for (int l = 0; l < n_levels(); l++) {
        if (level_ran[l]) append(ran, sizeof ran, dsv_kernels_level(l));
        else if (level_skipped[l]) {
            size_t k = strlen(notrun);
            snprintf(notrun + k, sizeof notrun - k, "; %s skipped: %.255s", dsv_kernels_level(l), level_why[l]);
        }
    }
    if (ran[0] || notrun[0]) printf("kernel levels run:%s%s\n", ran[0] ? ran : " none", notrun);
    if (skipped) printf("skipped:%s\n", skipped_names);
    if (failed) printf("failed:%s\n", failed_names);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
