/* json_str.h: exact JSON string values. cJSON hands strings back as C
 * strings, so a value holding \u0000 comes back cut short; text to tokenize
 * may hold NUL, so JSON-lines readers take "text" through this instead. */
#ifndef DSV_JSON_STR_H
#define DSV_JSON_STR_H

#include <stddef.h>

/* Finds member `key` at the top level of the JSON object in json[0..len) and
 * decodes its string value into a new malloc'd buffer, NUL-terminated, with
 * its exact length (embedded NULs counted) in *out_len. Only as much of the
 * object as comes before the member is checked. Returns DSV_OK, or
 * DSV_ERR_FORMAT for malformed JSON, a missing member, a value that is not a
 * string or an escape that is not a character (a lone surrogate), or
 * DSV_ERR_NOMEM. */
int dsv_json_get_string(const char *json, size_t len, const char *key, char **out, size_t *out_len);

#endif
