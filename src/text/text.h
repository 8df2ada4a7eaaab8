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

/* Appends s[0..n) as a JSON string literal, the one writer of every JSON
 * string the server and the commands write (json_str.c; dsv_json_quote in
 * dsv32_util.h is the same for the commands): quotes, \" \\ \n \r \t, other
 * bytes below 0x20 as \u00XX, every byte that does not begin a well-formed
 * UTF-8 character as U+FFFD, everything else as it is. The output is always
 * valid UTF-8 JSON, whatever the bytes. */
void dsv_json_str(dsv_buf *b, const char *s, size_t n);

/* Calls fn for every string in json[0..len) (member name or value) whose
 * decoded value holds a NUL byte, with its path ("messages[0].role"; a
 * member name's path ends in the name itself, up to its NUL) and whether it
 * is a member name; stops at the first nonzero return of fn and returns it.
 * Returns 0 when no call stopped it, or DSV_ERR_FORMAT for malformed JSON
 * (nested deeper than 512 levels included). cJSON ends strings at NUL, so a
 * parser uses this where a cut string would change the meaning. */
int dsv_json_nul_strings(const char *json, size_t len, int (*fn)(void *user, const char *path, int is_name),
                         void *user);

/* The deepest nesting of arrays and objects in json[0..len) (brackets inside
 * strings do not count), found in one pass before any parser recurses. */
size_t dsv_json_depth(const char *json, size_t len);

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
