/* util.c: the thread-local error message, the assertion failure handler, the
 * clock and the one whole-file reader. */
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

static _Thread_local char err_buf[1024];

const char *dsv_errmsg(void) { return err_buf; }

const char *dsv_status_str(int status) {
    switch (status) {
    case DSV_OK: return "ok";
    case DSV_ERR_IO: return "i/o error";
    case DSV_ERR_FORMAT: return "malformed file";
    case DSV_ERR_CONFIG: return "bad config";
    case DSV_ERR_MODEL: return "bad model";
    case DSV_ERR_ARG: return "invalid argument";
    case DSV_ERR_NOMEM: return "out of memory";
    case DSV_ERR_UNSUPPORTED: return "unsupported";
    case DSV_ERR_FULL: return "capacity exhausted";
    }
    return "unknown error";
}

int dsv_error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return status;
}

int dsv_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    int n = name ? snprintf(buf, cap, "%s/%s", dir, name) : snprintf(buf, cap, "%s", dir);
    if (n < 0 || (size_t)n >= cap) {
        if (cap) buf[0] = 0;
        return dsv_error(DSV_ERR_ARG, "%.200s%s%s: path too long (%d bytes, at most %zu)", dir, name ? "/" : "",
                         name ? name : "", n, cap ? cap - 1 : 0);
    }
    return DSV_OK;
}

int dsv_error_prefix(int status, const char *fmt, ...) {
    char prefix[512], old[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof err_buf - 3) n = sizeof err_buf - 3;
    memcpy(err_buf, prefix, n);
    memcpy(err_buf + n, ": ", 2);
    size_t m = strlen(old);
    if (m > sizeof err_buf - n - 3) m = sizeof err_buf - n - 3;
    memcpy(err_buf + n + 2, old, m);
    err_buf[n + 2 + m] = 0;
    return status;
}

void dsv_error_clear(void) { err_buf[0] = 0; }

void dsv_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "dsv32: internal error: %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

double dsv_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int dsv_read_stream(FILE *f, const char *name, size_t max_bytes, char **out, size_t *len) {
    /* Grown by doubling rather than sized by fseek/ftell, so pipes and
     * standard input read the same way as files. */
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    if (!b) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", name);
    for (;;) {
        n += fread(b + n, 1, cap - n, f);
        if (max_bytes && n > max_bytes) {
            free(b);
            return dsv_error(DSV_ERR_FORMAT, "%s: larger than %zu bytes", name, max_bytes);
        }
        if (n < cap) break;
        char *nb = cap <= ((size_t)-1 - 1) / 2 ? realloc(b, cap * 2 + 1) : NULL;
        if (!nb) {
            free(b);
            return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", name);
        }
        b = nb;
        cap *= 2;
    }
    if (ferror(f)) {
        int e = errno;
        free(b);
        return dsv_error(DSV_ERR_IO, "%s: read error (%s)", name, strerror(e));
    }
    b[n] = 0;
    *out = b;
    if (len) *len = n;
    return DSV_OK;
}

int dsv_read_file(const char *path, size_t max_bytes, char **out, size_t *len) {
    if (!path || !out) return dsv_error(DSV_ERR_ARG, "dsv_read_file: NULL argument");
    if (!strcmp(path, "-")) return dsv_read_stream(stdin, "standard input", max_bytes, out, len);
    FILE *f = fopen(path, "rb");
    if (!f) return dsv_error(DSV_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    int st = dsv_read_stream(f, path, max_bytes, out, len);
    fclose(f);
    return st;
}

int dsv_whole_in_range(double v, int64_t lo, int64_t hi, int64_t *out) {
    /* NaN fails every comparison; +-inf fails the range. */
    if (!(v >= (double)lo && v <= (double)hi) || v != floor(v)) return 0;
    *out = (int64_t)v;
    return 1;
}
