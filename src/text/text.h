/* text.h: small byte-string helpers shared by the chat module and the
 * stop-string matcher (internal; not part of the public API).
 *
 * dsv_buf is a growable, always NUL-terminated byte buffer with a sticky
 * failure flag: after an allocation fails every later append is a no-op and
 * the owner checks `failed` once at the end instead of after every call.
 *
 * The two scanning helpers answer the questions every streaming text filter
 * asks: "could the end of what I hold still turn into a marker?" and "does the
 * end of what I hold cut a UTF-8 character in half?". */
#ifndef DSV_TEXT_H
#define DSV_TEXT_H

#include <stddef.h>

typedef struct dsv_buf {
    char *data;   /* NUL-terminated when non-NULL; NULL until the first append */
    size_t len;   /* bytes in use, not counting the NUL */
    size_t cap;   /* bytes allocated */
    int failed;   /* an allocation failed; the contents are incomplete */
} dsv_buf;

/* Appends n bytes (may contain NUL). Returns DSV_OK or DSV_ERR_NOMEM. */
int dsv_buf_add(dsv_buf *b, const char *s, size_t n);
/* Appends a NUL-terminated string (NULL appends nothing). */
int dsv_buf_adds(dsv_buf *b, const char *s);
/* Drops the first n bytes (n <= len). */
void dsv_buf_consume(dsv_buf *b, size_t n);
/* Empties the buffer, keeping its memory. */
void dsv_buf_clear(dsv_buf *b);
/* Hands the contents to the caller as a malloc'd NUL-terminated string (""
 * when empty) and resets b. Returns NULL if an allocation failed (now or
 * earlier); b is reset either way. */
char *dsv_buf_take(dsv_buf *b);
void dsv_buf_free(dsv_buf *b);

/* Appends s[0..n) as a JSON string literal: quotes, \" \\ \n \r \t, other
 * bytes below 0x20 as \u00XX, everything else (UTF-8 included) as it is
 * (json_str.c; dsv_json_quote in dsv32_util.h is the same for the commands). */
void dsv_json_str(dsv_buf *b, const char *s, size_t n);

/* First occurrence of needle (nlen > 0) in hay[0..hlen), or NULL. */
const char *dsv_memfind(const char *hay, size_t hlen, const char *needle, size_t nlen);

/* Length of the longest suffix of s[0..n) that is a proper prefix of one of
 * the n_pat NUL-terminated patterns: the bytes a streaming filter must hold
 * back because more input could complete a pattern there. */
size_t dsv_partial_suffix(const char *s, size_t n, const char *const *pats, int n_pat);

/* The largest m <= n such that s[0..m) does not end inside a UTF-8 sequence
 * that the bytes s[m..n) have only begun (at most 3 bytes are cut). Invalid
 * bytes are not held back: they can never complete. */
size_t dsv_utf8_complete(const char *s, size_t n);

#endif
