/* chat_util.h: what test_chat.c and test_dsml.c share: reading the JSONL
 * goldens, and the stream check (a completion fed to a chat format's
 * stream parser in pieces must give the one-shot parse's result, and the
 * events it sent on the way must add up to that result: text deltas, call
 * begin/arguments/end in order). */
#ifndef DSV_TEST_CHAT_UTIL_H
#define DSV_TEST_CHAT_UTIL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "dsv32_chat.h"

/* Calls fn(case object, its JSON line, u) for each non-empty line of a
 * JSONL golden file; returns the count. A missing file or a bad line stops
 * the test. */
int for_each_golden(const char *path, void (*fn)(const cJSON *c, const char *json, void *u), void *u);
/* The string member key of c, or NULL. */
const char *jstr(const cJSON *c, const char *key);
/* Fails the test, showing where got and want first differ, unless they are
 * equal (a failed golden made readable). */
void check_text(const char *name, const char *got, const char *want);

/* A growable string (p is NUL-terminated once anything was added). */
struct str { char *p; size_t n; };
void str_add(struct str *s, const char *p, size_t n);
/* Both NULL, or both strings and equal. */
int same_opt(const char *a, const char *b);

typedef struct stream_check {
    const dsv_chat_format *fmt; /* NULL: dsv_chat_stream_init's own format */
    int thinking;               /* the stream starts inside the reasoning */
    int check_utf8;             /* no text event may end inside a UTF-8 character (valid UTF-8 input) */
    int calls_complete;         /* every call must end complete */
} stream_check;

/* What a stream's callback saw, rebuilt into a result: stream_on_event as
 * the callback, a zeroed stream_seen with o set as its user pointer; each
 * event is checked against the ones before it (and o's rules) as it comes. */
#define STREAM_MAX_CALLS 64
typedef struct stream_seen {
    const stream_check *o;
    struct str reasoning, content, names[STREAM_MAX_CALLS], args[STREAM_MAX_CALLS];
    int complete[STREAM_MAX_CALLS];
    int n_begin, n_end;         /* calls begun, calls ended */
} stream_seen;
void stream_on_event(void *seen, const dsv_chat_event *ev);
void stream_seen_free(stream_seen *s);

/* Feeds text cut at cuts[0..n_cuts) (ascending, within len) and compares
 * the stream with want, the one-shot parse; a difference stops the test,
 * naming the cuts and the text. */
void stream_check_cuts(const stream_check *o, const char *text, size_t len, const size_t *cuts, int n_cuts,
                       const dsv_chat_result *want);
/* The same whole, at every single cut, one byte at a time, and in n_random
 * random many-way splits (a fixed seed from len). */
void stream_check_every_cut(const stream_check *o, const char *text, size_t len, const dsv_chat_result *want,
                            int n_random);

#endif
