/* chat_json.h: reading a chat request's JSON, as both chat formats' front
 * ends do (chat.c for V3.2-Exp, dsml.c for V3.2; internal to the text
 * layer). Errors name the field by its path in the request. */
#ifndef DSV_CHAT_JSON_H
#define DSV_CHAT_JSON_H

#include <cjson/cJSON.h>

#include "text.h"

/* What a JSON value is, for messages: "missing" (NULL), "null", "a
 * boolean", "a number", "a string", "an array" or "an object". */
const char *dsv_json_type_name(const cJSON *v);

/* An optional boolean field obj[key] (path: where obj sits, as a prefix of
 * key in messages): *out is left alone when absent or null. */
int dsv_json_opt_bool(const cJSON *obj, const char *key, const char *path, int *out);

/* messages[i].content: a string (*out points into the tree), text parts
 * joined with "\n" (as vLLM joins them; the joined string is handed to
 * own(owner, buffer), which takes the buffer's string, keeps it as long as
 * *out is used and returns it, or NULL when out of memory), or, when
 * `optional`, null or absent (*out = NULL). */
typedef const char *(*dsv_chat_own_fn)(void *owner, dsv_buf *b);
int dsv_chat_json_content(const cJSON *msg, int i, int optional, dsv_chat_own_fn own, void *owner, const char **out);

#endif
