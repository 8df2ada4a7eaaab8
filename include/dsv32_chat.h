/* dsv32_chat.h: the chat formats. Renders a conversation to the prompt string
 * the model expects, and parses what the model generates back into reasoning,
 * content and tool calls (one-shot or streaming).
 *
 * Two formats, in a table (dsv_chat_format_*, at the end of this file):
 * "deepseek-v3.2-exp" (the V3.1-style template of V3.2-Exp; the dsv_chat_*
 * functions without a format argument are this one) and "deepseek-v3.2" (the
 * DSML format of DeepSeek-V3.2 and V3.2-Speciale, shared/tokenizer/v32/);
 * "deepseek-v3.1" is the Exp format under DeepSeek-V3.1's name.
 *
 * The format is specified in shared/spec/chat-format.md; the Jinja template in
 * tokenizer_config.json is the ground truth and the renderer reproduces it byte
 * for byte, quirks included. Everything here works on text: the tokenizer (a
 * separate module) turns the prompt into ids, and the rendered prompt already
 * starts with the BOS string, so it must be tokenized without adding a BOS.
 *
 * Conventions of include/dsv32.h apply: functions return a dsv_status and set
 * dsv_errmsg() on failure; output pointers are written only on success; every
 * string is UTF-8 and NUL-terminated unless a length is passed with it.
 */
#ifndef DSV32_CHAT_H
#define DSV32_CHAT_H

#include <stddef.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Rendering ---------------------------------------------------------- */

typedef enum dsv_chat_role {
    DSV_CHAT_SYSTEM,
    DSV_CHAT_USER,
    DSV_CHAT_ASSISTANT,
    DSV_CHAT_TOOL, /* a tool result */
} dsv_chat_role;

/* One call inside an assistant message (OpenAI `tool_calls[i]`). */
typedef struct dsv_chat_tool_call {
    const char *id;        /* optional; the format has no ids (results pair with calls by order) */
    const char *name;      /* required */
    const char *arguments; /* JSON text, inserted verbatim; NULL renders as "{}" */
} dsv_chat_tool_call;

/* One message. Every string is borrowed for the duration of the call. A NULL
 * string renders as "". */
typedef struct dsv_chat_msg {
    dsv_chat_role role;
    const char *content;
    /* Not rendered: the template never re-sends reasoning. Present so a
     * stored assistant turn round-trips through this struct. */
    const char *reasoning_content;
    /* Assistant only. n_tool_calls == 0 means "no tool calls". (The Jinja
     * template treats an empty list like a non-empty one and would drop the
     * content and emit a lone <｜tool▁calls▁end｜>; we treat it as absent.) */
    const dsv_chat_tool_call *tool_calls;
    int n_tool_calls;
    const char *tool_call_id; /* tool only; not rendered */
    /* Assistant only: a partial answer for the model to continue (spec §2.1
     * rule 7). After a user turn it is opened with <think> when thinking is
     * on, and no generation prompt follows it. */
    int prefix;
} dsv_chat_msg;

/* A tool the model may call (OpenAI `tools[i].function`). */
typedef struct dsv_chat_tool {
    const char *name;        /* required */
    const char *description; /* NULL renders as "" */
    const char *parameters;  /* JSON Schema text; NULL means {} */
} dsv_chat_tool;

typedef struct dsv_chat_opts {
    /* Prompt ends with <think> (reason first) instead of </think>. */
    int thinking;
    /* Append the <｜Assistant｜> opener the model continues from. */
    int add_generation_prompt;
    /* Tool definitions: rendered as the "## Tools" block (spec §2.3) appended
     * to the first system message after "\n\n"; with no system message the
     * block alone acts as one, placed first. */
    const dsv_chat_tool *tools;
    int n_tools;
} dsv_chat_opts;

/* Renders msgs[0..n_msgs) to the prompt text, exactly as the V3.2-Exp template
 * does (spec §2.1): BOS string, all system messages joined by "\n\n", turns,
 * and the generation prompt. opts may be NULL (no thinking, no generation
 * prompt, no tools). Tool parameter schemas are re-serialized the way Python's
 * json.dumps does (", " and ": " separators, non-ASCII escaped), to match the
 * project's golden prompts.
 * On success *out_text is a malloc'd string the caller frees with free().
 * Returns DSV_ERR_ARG for a bad role, a call without a name, a negative
 * count, or tool parameters that are not valid JSON; the message names the
 * field, e.g. "msgs[2].tool_calls[0].name: missing". */
DSV_API int dsv_chat_render(const dsv_chat_msg *msgs, int n_msgs, const dsv_chat_opts *opts,
                    char **out_text);

/* Renders an OpenAI-style request given as the JSON text json[0..len):
 *   - either a chat request object: {"messages": [...], "tools": [...],
 *     "thinking": bool, "add_generation_prompt": bool,
 *     "chat_template_kwargs": {"thinking": bool}} (other fields are ignored;
 *     chat_template_kwargs.thinking wins over a top-level "thinking"),
 *   - or a bare messages array.
 * thinking and add_generation_prompt are the defaults for fields the JSON
 * leaves out. Messages: "role" is one of system, user, assistant, tool;
 * "content" is a string, an array of {"type": "text", "text": ...} parts
 * (joined with "\n", as vLLM does) or, for assistant messages only, null or
 * absent; "tool_calls[i].function.arguments" is a JSON string (verbatim) or a
 * JSON value (serialized like json.dumps); "prefix" is a bool; an empty or
 * null "tool_calls" means none. Ids, names and other fields are ignored.
 * On success *out_text is malloc'd; the caller frees it with free().
 * Errors: DSV_ERR_ARG for invalid JSON or a field of the wrong type or value,
 * with the path in the message ("messages[2].role: expected a string");
 * DSV_ERR_UNSUPPORTED for non-text content parts (images, audio). */
DSV_API int dsv_chat_render_json(const char *json, size_t len, int thinking, int add_generation_prompt,
                         char **out_text);

/* ---- Parsing model output ------------------------------------------------ */

/* A tool call found in the output. */
typedef struct dsv_chat_call {
    char *name;
    char *arguments; /* the JSON text exactly as generated (not validated) */
    /* 1 when the call was closed by a marker; 0 when the output ended inside
     * its arguments (e.g. a length limit): the arguments are then cut short. */
    int complete;
} dsv_chat_call;

/* A parsed completion. All memory belongs to the struct; free it with
 * dsv_chat_result_free(). */
typedef struct dsv_chat_result {
    char *reasoning; /* NULL when there is none (or it is empty) */
    char *content;   /* NULL when empty */
    dsv_chat_call *tool_calls;
    int n_tool_calls;
} dsv_chat_result;

/* Splits generated text (everything after the prompt, without the EOS
 * string) per spec §3:
 *  - thinking != 0: one leading "<think>" is dropped; the text up to the
 *    first "</think>" is reasoning and the rest is the answer. Without a
 *    "</think>" the whole output is reasoning (generation stopped early).
 *    thinking == 0: the whole output is the answer.
 *  - In the answer, "<｜tool▁calls▁begin｜>" opens a block of calls, each
 *    "<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>", closed by
 *    "<｜tool▁calls▁end｜>". Text outside the block is content; text after
 *    the block is content too (appended).
 * Malformed markup never fails; the rules are:
 *  - Text inside a block but outside any call is content, verbatim.
 *  - A call whose name is not followed by "<｜tool▁sep｜>" before the next
 *    marker or the end is malformed: its text from "<｜tool▁call▁begin｜>"
 *    up to that marker is content, verbatim, markers included.
 *  - Arguments end at "<｜tool▁call▁end｜>", or at "<｜tool▁calls▁end｜>" or
 *    "<｜tool▁call▁begin｜>" if the model skipped the call's end marker
 *    (complete = 1), or at the end of the output (complete = 0).
 *  - Tool markup inside the reasoning is reasoning text.
 * On success fills *out (the caller frees it with dsv_chat_result_free()).
 * Returns DSV_ERR_ARG for NULL text or out, DSV_ERR_NOMEM. */
DSV_API int dsv_chat_parse(const char *text, size_t len, int thinking, dsv_chat_result *out);

/* Frees the members of r and zeroes it; NULL and a zeroed struct are no-ops. */
DSV_API void dsv_chat_result_free(dsv_chat_result *r);

/* ---- Streaming parser ---------------------------------------------------- */

typedef enum dsv_chat_event_kind {
    DSV_CHAT_EV_REASONING,  /* text: the next piece of reasoning */
    DSV_CHAT_EV_CONTENT,    /* text: the next piece of content */
    DSV_CHAT_EV_TOOL_BEGIN, /* index, name: a call's name is complete */
    DSV_CHAT_EV_TOOL_ARGS,  /* index, text: the next piece of its arguments */
    DSV_CHAT_EV_TOOL_END,   /* index, name, text: the whole arguments; complete */
} dsv_chat_event_kind;

/* Pointers are valid only during the callback. Text pieces never contain a
 * marker or part of one (the one exception is the verbatim text of a
 * malformed call, see dsv_chat_parse) and, for valid UTF-8 input, never end
 * inside a character, so each can go into a JSON string on its own.
 * Concatenating the pieces of one kind gives that part of the final result;
 * every TOOL_BEGIN is followed by its TOOL_ARGS pieces and one TOOL_END. */
typedef struct dsv_chat_event {
    dsv_chat_event_kind kind;
    const char *text; /* not NUL-terminated; use len */
    size_t len;
    int index;        /* tool events: the call's index, from 0 */
    const char *name; /* TOOL_BEGIN, TOOL_END: NUL-terminated */
    int complete;     /* TOOL_END: as dsv_chat_call.complete */
} dsv_chat_event;

typedef void (*dsv_chat_event_fn)(void *user, const dsv_chat_event *ev);

typedef struct dsv_chat_stream dsv_chat_stream;

/* A parser for one generation, fed text as it is detokenized. thinking is as
 * for dsv_chat_parse. *out is freed with dsv_chat_stream_free(). */
DSV_API int dsv_chat_stream_init(dsv_chat_stream **out, int thinking);
DSV_API void dsv_chat_stream_free(dsv_chat_stream *s);

/* Feeds the next len bytes of output (any split: a marker or a UTF-8
 * character may straddle two calls). Calls fn (if not NULL) for every event
 * that is now certain, in output order. Text that could still become a marker
 * is held back until a later call decides it. Returns DSV_OK, DSV_ERR_NOMEM,
 * or DSV_ERR_ARG if the stream is already finished. */
DSV_API int dsv_chat_stream_feed(dsv_chat_stream *s, const char *text, size_t len,
                         dsv_chat_event_fn fn, void *user);

/* Ends the output: flushes held-back text and closes an unfinished call
 * (TOOL_END with complete = 0). Afterwards the accumulated result equals
 * dsv_chat_parse() of the concatenated input. Returns DSV_OK or
 * DSV_ERR_NOMEM; a second call does nothing. */
DSV_API int dsv_chat_stream_finish(dsv_chat_stream *s, dsv_chat_event_fn fn, void *user);

/* The result, once dsv_chat_stream_finish() has succeeded; NULL before.
 * Owned by s; valid until dsv_chat_stream_free(). */
DSV_API const dsv_chat_result *dsv_chat_stream_result(const dsv_chat_stream *s);

/* ---- The format table ---------------------------------------------------- */

/* One chat format: its name and its render, parse and stream-parse. A NULL
 * format in the functions below means deepseek-v3.2-exp. */
typedef struct dsv_chat_format dsv_chat_format;

/* The format called name ("deepseek-v3.2-exp", "deepseek-v3.2" or
 * "deepseek-v3.1", the V3.1 name of the Exp format), or NULL with an error
 * message that lists the known names. */
DSV_API const dsv_chat_format *dsv_chat_format_find(const char *name);
DSV_API const char *dsv_chat_format_name(const dsv_chat_format *f);
/* "deepseek-v3.2-exp, deepseek-v3.2, deepseek-v3.1": for usage texts and
 * errors. */
DSV_API const char *dsv_chat_format_list(void);

/* The format of a model directory (or of the directory holding a
 * tokenizer.json path): a "chat_template" in tokenizer_config.json means
 * deepseek-v3.2-exp; none, with "model_type": "deepseek_v32" in config.json,
 * means deepseek-v3.2. Anything else (no config at all, another model type)
 * is deepseek-v3.2-exp, today's behaviour. Fails only on a file that exists
 * but is not valid JSON (DSV_ERR_FORMAT, naming the file). */
DSV_API int dsv_chat_format_detect(const char *model_path, const dsv_chat_format **out);

/* dsv_chat_format_detect, and for a GGUF file (a path ending in ".gguf"
 * that is not a directory): its tokenizer.chat_template is matched by
 * dsv_chat_format_match_template; without one, or with one not recognized,
 * general.architecture decides: deepseek32 is deepseek-v3.2, deepseek2
 * (V3/V3.1/R1 and V3.2 without its indexer) deepseek-v3.1. In that last case,
 * a template that was there but not recognized, note[0..note_cap) (may be
 * NULL) gets one line naming the file and the format chosen, for the caller
 * to print as a warning; otherwise note is "". Another architecture with no
 * recognized template is DSV_ERR_MODEL; a file the GGUF reader refuses is its
 * error (naming the file). */
DSV_API int dsv_chat_format_detect_note(const char *model_path, const dsv_chat_format **out, char *note,
                                        size_t note_cap);

/* The format a Jinja chat template (len bytes) is written for, recognized
 * by markers (output strings only that format writes), or NULL:
 * "｜DSML｜" anywhere is deepseek-v3.2; "<｜Assistant｜></think>" with
 * "<｜tool▁sep｜>" and without "<｜tool▁outputs▁begin｜>" (R1's and V3's
 * tool-output wrapper) is deepseek-v3.2-exp (V3.1, V3.1-Terminus, V3.2-Exp).
 * Anything else (V3, R1, other models) is NULL. */
DSV_API const dsv_chat_format *dsv_chat_format_match_template(const char *tmpl, size_t len);

/* dsv_chat_render_json in format f. For deepseek-v3.2 the request may also
 * carry "thinking_mode": "chat"|"thinking" and "response_format"; messages
 * may have the role "developer", and "tools" / "response_format" inside a
 * system or developer message; request-level tools and response_format
 * attach to the first system message (or to a new empty one at index 0);
 * an assistant's "reasoning_content" (or "reasoning") is rendered when it
 * follows the last user message in thinking mode; add_generation_prompt is
 * ignored (a user turn always ends with the assistant prefix). */
DSV_API int dsv_chat_format_render_json(const dsv_chat_format *f, const char *json, size_t len, int thinking,
                                int add_generation_prompt, char **out_text);

/* dsv_chat_parse in format f. For deepseek-v3.2: reasoning runs to the
 * first "</think>" (thinking mode); content runs to the EOS string or to
 * "\n\n<｜DSML｜function_calls>"; a block of invokes follows, each a call
 * once it has parsed up to its "</｜DSML｜invoke>" (arguments: a JSON object
 * text as json.dumps(ensure_ascii=False) writes it; string="true" values as
 * strings, the others parsed as JSON). Markup that does not parse (a cut or
 * broken invoke, a bad attribute, a value that is not JSON, a duplicate
 * parameter) is content, byte for byte, and so is anything after the EOS
 * string. Calls are always complete (complete = 1). */
DSV_API int dsv_chat_format_parse(const dsv_chat_format *f, const char *text, size_t len, int thinking,
                          dsv_chat_result *out);

/* dsv_chat_stream_init in format f. The events are the same for both
 * formats; for deepseek-v3.2 a call's TOOL_BEGIN, TOOL_ARGS (one piece a
 * parameter) and TOOL_END come together once its invoke has parsed, and
 * until then its bytes are held. */
DSV_API int dsv_chat_format_stream_init(const dsv_chat_format *f, dsv_chat_stream **out, int thinking);

/* The markup of an answer that is one call to the tool `name` in format f,
 * around its arguments: what constrained decoding forces for tool_choice
 * "required" or a named function. *prefix and *suffix are malloc'd (the
 * caller frees them); *dsml is 1 when the arguments are DSML parameters
 * (deepseek-v3.2), 0 when they are a JSON object (deepseek-v3.2-exp). */
DSV_API int dsv_chat_format_call_markup(const dsv_chat_format *f, const char *name, char **prefix, char **suffix, int *dsml);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_CHAT_H */
