/* run_tests.c: runs every registered test in its own child process and ends
 * with "N passed, N failed" (plus skips). Arguments are substrings: only tests
 * whose name or file contains one of them run. `run_tests --mpi BODY` is the
 * program a test launches under mpirun (test_mpi.c). */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 4096

struct test_entry { const char *name, *file; test_fn fn; };
static struct test_entry tests[MAX_TESTS];
static int n_tests;
int test_failures;
static char tmpdir[512];

enum { EXIT_PASS = 0, EXIT_FAIL = 1, EXIT_SKIP = 77 };

void test_register(const char *name, const char *file, test_fn fn) {
    if (n_tests < MAX_TESTS) tests[n_tests++] = (struct test_entry){name, file, fn};
}

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
    va_list ap;
    fprintf(stderr, "    skipped: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(NULL);
    _exit(EXIT_SKIP);
}

void test_abort(void) { fflush(NULL); _exit(EXIT_FAIL); }

const char *test_shared_dir(void) {
    const char *s = getenv("DSV32_SHARED");
    return s && *s ? s : "../shared";
}

const char *test_shared(const char *rel) {
    static char bufs[8][1024];
    static int slot;
    char *b = bufs[slot++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", test_shared_dir(), rel);
    return b;
}

const char *test_tmpdir(void) { return tmpdir; }

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

static void rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int selected(const struct test_entry *t, int argc, char **argv) {
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(t->name, argv[i]) || strstr(t->file, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--mpi")) return test_mpi_main(argc - 1, argv + 1);
    int passed = 0, failed = 0, skipped = 0;
    char failed_names[8192] = "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        struct test_entry *t = &tests[i];
        if (!selected(t, argc, argv)) continue;
        snprintf(tmpdir, sizeof tmpdir, "%s/dsv32-test-%d-%d",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(), i);
        mkdir(tmpdir, 0700);
        double t0 = now();
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            test_failures = 0;
            t->fn();
            fflush(NULL);
            _exit(test_failures ? EXIT_FAIL : EXIT_PASS);
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        double dt = now() - t0;
        rm_rf(tmpdir);
        const char *res;
        if (WIFEXITED(st) && WEXITSTATUS(st) == EXIT_PASS) { res = "ok"; passed++; }
        else if (WIFEXITED(st) && WEXITSTATUS(st) == EXIT_SKIP) { res = "skip"; skipped++; }
        else {
            res = "FAIL";
            failed++;
            if (WIFSIGNALED(st)) fprintf(stderr, "    killed by signal %d\n", WTERMSIG(st));
            size_t l = strlen(failed_names);
            snprintf(failed_names + l, sizeof failed_names - l, " %s", t->name);
        }
        printf("%-4s %-48s %7.2fs\n", res, t->name, dt);
    }
    if (failed) printf("failed:%s\n", failed_names);
    if (skipped) printf("%d skipped\n", skipped);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
