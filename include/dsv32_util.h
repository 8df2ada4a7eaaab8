/* dsv32_util.h: the library's small helpers that the commands share: error
 * messages set from outside the library, a monotonic clock, a whole-file
 * reader with a size limit, and exact JSON string values.
 *
 * Thread-safety: all of these may be called from any thread; the error
 * message is per thread (dsv_errmsg). */
#ifndef DSV32_UTIL_H
#define DSV32_UTIL_H

#include <stddef.h>
#include <stdio.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DSV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DSV_PRINTF(a, b)
#endif

/* Records a printf-style message for dsv_errmsg() and returns status (so a
 * caller writes `return dsv_error(DSV_ERR_ARG, "...")`). */
DSV_API int dsv_error(int status, const char *fmt, ...) DSV_PRINTF(2, 3);
/* Prefixes the current message with "<prefix>: " (for adding context such as
 * a file name as an error propagates upward). Returns status. */
DSV_API int dsv_error_prefix(int status, const char *fmt, ...) DSV_PRINTF(2, 3);
DSV_API void dsv_error_clear(void);

/* Monotonic clock in seconds. */
DSV_API double dsv_time(void);

/* Reads a whole file into a new malloc'd buffer with a NUL after the last
 * byte; *len (may be NULL) gets the byte count, embedded NULs included.
 * path "-" reads standard input. Files of more than max_bytes are refused
 * (0: no limit but memory). Errors name the path: DSV_ERR_IO (cannot open,
 * read error), DSV_ERR_FORMAT (larger than max_bytes), DSV_ERR_NOMEM.
 * *out is written only on success. */
DSV_API int dsv_read_file(const char *path, size_t max_bytes, char **out, size_t *len);
/* Writes "dir/name" (or just dir when name is NULL) into buf[cap]. A path
 * that does not fit is an error (DSV_ERR_ARG, "...: path too long"), never a
 * silent truncation that would open another file. Returns DSV_OK. */
DSV_API int dsv_path_join(char *buf, size_t cap, const char *dir, const char *name);
/* The same from an open stream (read to its end, not closed); name is for
 * the error messages. */
DSV_API int dsv_read_stream(FILE *f, const char *name, size_t max_bytes, char **out, size_t *len);

/* Finds member `key` at the top level of the JSON object in json[0..len) and
 * decodes its string value into a new malloc'd buffer, NUL-terminated, with
 * its exact length (embedded NULs counted) in *out_len. cJSON hands strings
 * back as C strings, so a value holding \u0000 comes back cut short; text to
 * tokenize may hold NUL, so JSON-lines readers take "text" through this.
 * Only as much of the object as comes before the member is checked. Returns
 * DSV_OK, or DSV_ERR_FORMAT for malformed JSON, a missing member, a value
 * that is not a string or an escape that is not a character (a lone
 * surrogate), or DSV_ERR_NOMEM. */
DSV_API int dsv_json_get_string(const char *json, size_t len, const char *key, char **out, size_t *out_len);

/* The JSON string literal of s[0..n) (quotes included; \" \\ \n \r \t, other
 * bytes below 0x20 as \u00XX, bytes that begin no well-formed UTF-8
 * character as U+FFFD, the rest as it is: always valid UTF-8 JSON), the
 * same the server writes,
 * as a new malloc'd NUL-terminated string; *out_len (may be NULL) gets its
 * length. NULL (DSV_ERR_NOMEM recorded) when out of memory. */
DSV_API char *dsv_json_quote(const char *s, size_t n, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_UTIL_H */
