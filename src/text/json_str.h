/* json_str.h: JSON strings in and out.
 *
 * In: exact string values. cJSON hands strings back as C strings, so a value
 * holding \u0000 comes back cut short; text to tokenize may hold NUL, so
 * JSON-lines readers take "text" through this instead, and request parsers
 * find the strings that hold NUL where a name must not.
 *
 * Out: the one writer of JSON string literals for the server and the
 * commands. Its output is always valid UTF-8 JSON, whatever the bytes. */
#ifndef DSV_JSON_STR_H
#define DSV_JSON_STR_H

#include <stddef.h>

#include "text.h"

/* Finds member `key` at the top level of the JSON object in json[0..len) and
 * decodes its string value into a new malloc'd buffer, NUL-terminated, with
 * its exact length (embedded NULs counted) in *out_len. Only as much of the
 * object as comes before the member is checked. Returns DSV_OK, or
 * DSV_ERR_FORMAT for malformed JSON, a missing member, a value that is not a
 * string or an escape that is not a character (a lone surrogate), or
 * DSV_ERR_NOMEM. */
int dsv_json_get_string(const char *json, size_t len, const char *key, char **out, size_t *out_len);

/* Calls fn for every string in json[0..len) (member name or value) whose
 * decoded value holds a NUL byte, with its path ("messages[0].role"; a
 * member name's path ends in the name itself) and whether it is a member
 * name; stops at the first nonzero return of fn and returns it. Returns 0
 * when no call stopped it, or DSV_ERR_FORMAT for malformed JSON (nested
 * deeper than 512 levels included). */
int dsv_json_nul_strings(const char *json, size_t len, int (*fn)(void *user, const char *path, int is_name),
                         void *user);

/* The deepest nesting of arrays and objects in json[0..len) (brackets inside
 * strings do not count), found in one pass before any parser recurses. */
size_t dsv_json_depth(const char *json, size_t len);

/* Appends s[0..n) to b as a JSON string literal: '"' and '\\' escaped,
 * control characters as \n, \t, \r or \u00XX, every byte that does not
 * begin a well-formed UTF-8 character as U+FFFD, everything else as it
 * is. */
void dsv_json_put_str(dsv_buf *b, const char *s, size_t n);

#endif
