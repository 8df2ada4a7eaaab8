/* dsml.h: the DeepSeek-V3.2 chat format, "DSML" (internal to the text layer;
 * callers reach it through the format table of include/dsv32_chat.h).
 *
 * The format is the one DeepSeek's Python encoder (encoding_dsv32.py)
 * writes; shared/tokenizer/v32/README.md describes it and its goldens pin
 * every byte. Render works on the request's JSON tree because the encoder
 * works on dicts: tools and response_format may sit inside a system or
 * developer message. Parse and stream-parse share one incremental parser, so
 * a stream cut anywhere gives the same result as the whole text. */
#ifndef DSV_DSML_H
#define DSV_DSML_H

#include <stddef.h>

#include "dsv32_chat.h"

/* As dsv_chat_render_json, for the V3.2 format. thinking is the default for
 * a request that sets none of "thinking", "thinking_mode" and
 * chat_template_kwargs.thinking. add_generation_prompt does not exist in
 * this format (a user turn always ends with the assistant prefix). */
int dsv_dsml_render_json(const char *json, size_t len, int thinking, char **out_text);

/* As dsv_chat_parse, for the V3.2 format. The text may end with the EOS
 * string; what follows an EOS string is content. */
int dsv_dsml_parse(const char *text, size_t len, int thinking, dsv_chat_result *out);

/* The streaming parser behind dsv_chat_stream for this format. */
typedef struct dsv_dsml_stream dsv_dsml_stream;
int dsv_dsml_stream_new(dsv_dsml_stream **out, int thinking);
void dsv_dsml_stream_free(dsv_dsml_stream *s);
int dsv_dsml_stream_feed(dsv_dsml_stream *s, const char *text, size_t len, dsv_chat_event_fn fn, void *user);
int dsv_dsml_stream_finish(dsv_dsml_stream *s, dsv_chat_event_fn fn, void *user);
const dsv_chat_result *dsv_dsml_stream_result(const dsv_dsml_stream *s);

#endif
