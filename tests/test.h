/* test.h: the tiny test harness behind `make test`.
 *
 * Each tests/test_*.c file defines tests with TEST(name) { ... }; they register
 * themselves at start-up and tests/run_tests.c runs each one in its own child
 * process (a crash fails one test, not the suite). CHECK records a failure and
 * carries on; REQUIRE stops the test; SKIP ends it as skipped with a reason.
 * Tests never assert on wall time. */
#ifndef DSV_TEST_H
#define DSV_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);

#define TEST(name)                                                              \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void test_reg_##name(void) {            \
        test_register(#name, __FILE__, test_##name);                            \
    }                                                                           \
    static void test_##name(void)

/* A test that runs once per kernel level (generic, avx2, avx512, amx), each
 * its own entry "name@level" in the runner, with that level forced
 * (test_level() names it); a level this CPU lacks is counted as a skip. */
void test_register_levels(const char *name, const char *file, test_fn fn, int first_level);
const char *test_level(void);
#define TEST_LEVELS_FROM(name, first)                                           \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void test_reg_##name(void) {            \
        test_register_levels(#name, __FILE__, test_##name, first);              \
    }                                                                           \
    static void test_##name(void)
#define TEST_LEVELS(name) TEST_LEVELS_FROM(name, 0)
/* The fast levels only (avx2, avx512, amx): tests that compare the forced
 * level against the scalar reference, which generic would compare to itself. */
#define TEST_FAST_LEVELS(name) TEST_LEVELS_FROM(name, 1)

extern int test_failures;
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void test_abort(void);

#define CHECK(c)                                                                \
    do { if (!(c)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #c); } while (0)
#define CHECKF(c, ...)                                                          \
    do { if (!(c)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define REQUIRE(c)                                                              \
    do { if (!(c)) { test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #c); test_abort(); } } while (0)
#define REQUIREF(c, ...)                                                        \
    do { if (!(c)) { test_fail(__FILE__, __LINE__, __VA_ARGS__); test_abort(); } } while (0)
#define CHECK_EQ_INT(a, b)                                                      \
    do { long long a_ = (long long)(a), b_ = (long long)(b);                    \
         if (a_ != b_) test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld",  \
                                 #a, #b, a_, b_); } while (0)
#define CHECK_STR(a, b)                                                         \
    do { const char *a_ = (a), *b_ = (b);                                       \
         if (!a_ || !b_ || strcmp(a_, b_) != 0)                                 \
             test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,\
                       a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } while (0)
#define CHECK_NEAR(a, b, tol)                                                   \
    do { double a_ = (a), b_ = (b);                                             \
         if (!(fabs(a_ - b_) <= (tol)))                                         \
             test_fail(__FILE__, __LINE__, "|%s - %s| <= %g: %.9g vs %.9g",     \
                       #a, #b, (double)(tol), a_, b_); } while (0)
#define SKIP(...) test_skip(__VA_ARGS__)
/* A skip, unless the environment variable `var` is set (CI sets
 * DSV32_REQUIRE_MPI, DSV32_REQUIRE_NODE, DSV32_REQUIRE_CHROMIUM): then the
 * same reason is a failure. */
_Noreturn void test_skip_unless_required(const char *var, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define SKIP_UNLESS_REQUIRED(var, ...) test_skip_unless_required(var, __VA_ARGS__)

/* Helpers shared by tests. */
/* The fixtures folder, tests/data (conformance/, tokenizer/, ... laid out as
 * the project's shared reference data); $DSV32_SHARED overrides it. */
const char *test_shared_dir(void);
/* The fixtures folder joined with rel; returns a static buffer rotated among 8 slots. */
const char *test_shared(const char *rel);
/* A fresh, empty temporary directory for this test (removed by the runner). */
const char *test_tmpdir(void);
/* DeepSeek's tokenizer (tokenizer/ of the fixtures) unpacked into
 * test_tmpdir(): tokenizer.json, and tokenizer_config.json too when
 * with_config. Returns the directory; stops the test if it cannot. */
const char *test_tokenizer_dir(int with_config);
/* Reads a whole file; returns NULL if missing. *len gets the size. Caller frees. */
void *test_read_file(const char *path, size_t *len);
/* Writes len bytes to path (created or truncated); stops the test if it cannot. */
void test_write_file(const char *path, const void *data, size_t len);
/* Seconds on the monotonic clock, for deadlines and waits (never asserted on). */
double test_now(void);
/* Runs a shell command, captures stdout (caller frees) and returns exit status. */
int test_run(const char *cmd, char **out);
/* test_run of a command that must succeed: otherwise the test stops with the
 * command and its output. The output goes to *out (caller frees) unless out
 * is NULL. */
void test_run_ok(const char *cmd, char **out);
/* The dsv32 binary that tests drive: $DSV32_BIN (make test sets it to the
 * build's), else build/dsv32. */
const char *test_bin(void);
/* `run_tests --mpi BODY`: what every rank runs when a test starts run_tests
 * itself under mpirun (test_mpi.c). Returns the exit status. */
int test_mpi_main(int argc, char **argv);

#endif
