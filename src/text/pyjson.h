/* pyjson.h: Python's json.dumps, default separators (", " and ": "), keys in
 * the order given (internal to the text layer).
 *
 * Both chat formats embed JSON that DeepSeek's own encoders wrote with
 * json.dumps, so the prompt is only byte-exact if we write JSON the same
 * way: V3.2-Exp's tool block with ensure_ascii=True, V3.2's DSML encoder with
 * ensure_ascii=False. Implemented in chat.c. */
#ifndef DSV_PYJSON_H
#define DSV_PYJSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "text.h"

/* Appends json.dumps(v, ensure_ascii=ensure_ascii). cJSON keeps no int/float
 * distinction: integral numbers below 1e16 are written as Python ints. */
void dsv_pyjson_dump(dsv_buf *b, const cJSON *v, int ensure_ascii);
/* Appends json.dumps of the string s[0..n). */
void dsv_pyjson_string(dsv_buf *b, const char *s, size_t n, int ensure_ascii);

#endif
