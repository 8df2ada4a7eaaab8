/* chat_util.c: the goldens' reader and the stream-against-one-shot check
 * of chat_util.h. */
#include "chat_util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

void str_add(struct str *s, const char *p, size_t n) {
    s->p = realloc(s->p, s->n + n + 1);
    REQUIRE(s->p);
    memcpy(s->p + s->n, p, n);
    s->n += n;
    s->p[s->n] = 0;
}

int same_opt(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

int for_each_golden(const char *path, void (*fn)(const cJSON *c, const char *json, void *u), void *u) {
    char *data = test_read_file(path, NULL);
    REQUIREF(data, "missing fixture %s", path);
    int n = 0;
    for (char *line = data, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line) - 1;
        else *nl = 0;
        if (!*line) continue;
        cJSON *c = cJSON_Parse(line);
        REQUIREF(c, "bad JSON line in %s", path);
        fn(c, line, u);
        cJSON_Delete(c);
        n++;
    }
    free(data);
    return n;
}

const char *jstr(const cJSON *c, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

void check_text(const char *name, const char *got, const char *want) {
    if (got && want && !strcmp(got, want)) return;
    size_t i = 0;
    while (got && want && got[i] && got[i] == want[i]) i++;
    test_fail(__FILE__, __LINE__, "%s: rendered text differs at byte %zu:\n      got  ...%.80s\n      want ...%.80s",
              name, i, got ? got + (i > 20 ? i - 20 : 0) : "(null)", want ? want + (i > 20 ? i - 20 : 0) : "(null)");
}

/* 1 if p[0..n) ends inside a multi-byte UTF-8 character. */
static int cuts_utf8(const char *p, size_t n) {
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char c = (unsigned char)p[n - back];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return c < 0xF8 && need > back;
    }
    return 0;
}

void stream_on_event(void *u, const dsv_chat_event *ev) {
    stream_seen *s = u;
    switch (ev->kind) {
    case DSV_CHAT_EV_REASONING:
    case DSV_CHAT_EV_CONTENT:
    case DSV_CHAT_EV_TOOL_ARGS:
        CHECK(ev->len > 0);
        if (s->o->check_utf8) CHECKF(!cuts_utf8(ev->text, ev->len), "a text event ends inside a UTF-8 character");
        if (ev->kind == DSV_CHAT_EV_TOOL_ARGS) {
            REQUIRE(ev->index == s->n_begin - 1 && ev->index == s->n_end);
            str_add(&s->args[ev->index], ev->text, ev->len);
        } else {
            str_add(ev->kind == DSV_CHAT_EV_CONTENT ? &s->content : &s->reasoning, ev->text, ev->len);
        }
        break;
    case DSV_CHAT_EV_TOOL_BEGIN:
        REQUIRE(ev->index == s->n_begin && ev->index == s->n_end && ev->index < STREAM_MAX_CALLS);
        str_add(&s->names[s->n_begin++], ev->name, strlen(ev->name));
        str_add(&s->args[ev->index], "", 0);
        break;
    case DSV_CHAT_EV_TOOL_END:
        REQUIRE(ev->index == s->n_end && ev->index == s->n_begin - 1);
        CHECK(!strcmp(ev->name, s->names[ev->index].p));
        /* The whole arguments equal the concatenated deltas. */
        CHECK(ev->len == s->args[ev->index].n && !memcmp(ev->text, s->args[ev->index].p, ev->len));
        if (s->o->calls_complete) CHECK(ev->complete == 1);
        s->complete[s->n_end++] = ev->complete;
        break;
    }
}

void stream_seen_free(stream_seen *s) {
    free(s->reasoning.p);
    free(s->content.p);
    for (int i = 0; i < STREAM_MAX_CALLS; i++) { free(s->names[i].p); free(s->args[i].p); }
}

static int same_result(const dsv_chat_result *a, const dsv_chat_result *b) {
    if (!same_opt(a->reasoning, b->reasoning) || !same_opt(a->content, b->content)) return 0;
    if (a->n_tool_calls != b->n_tool_calls) return 0;
    for (int i = 0; i < a->n_tool_calls; i++)
        if (strcmp(a->tool_calls[i].name, b->tool_calls[i].name) ||
            strcmp(a->tool_calls[i].arguments, b->tool_calls[i].arguments) ||
            a->tool_calls[i].complete != b->tool_calls[i].complete) return 0;
    return 1;
}

/* The events agree with the result they add up to. */
static int seen_matches(const stream_seen *s, const dsv_chat_result *r) {
    if (!same_opt(s->reasoning.p, r->reasoning) || !same_opt(s->content.p, r->content)) return 0;
    if (s->n_end != r->n_tool_calls || s->n_begin != s->n_end) return 0;
    for (int i = 0; i < s->n_end; i++)
        if (strcmp(s->names[i].p, r->tool_calls[i].name) || strcmp(s->args[i].p, r->tool_calls[i].arguments) ||
            s->complete[i] != r->tool_calls[i].complete) return 0;
    return 1;
}

void stream_check_cuts(const stream_check *o, const char *text, size_t len, const size_t *cuts, int n_cuts,
                       const dsv_chat_result *want) {
    dsv_chat_stream *st = NULL;
    REQUIRE((o->fmt ? dsv_chat_format_stream_init(o->fmt, &st, o->thinking) : dsv_chat_stream_init(&st, o->thinking)) ==
            DSV_OK);
    stream_seen seen = {.o = o};
    size_t pos = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        REQUIRE(dsv_chat_stream_feed(st, text + pos, end - pos, stream_on_event, &seen) == DSV_OK);
        pos = end;
    }
    CHECK(dsv_chat_stream_result(st) == NULL);
    REQUIRE(dsv_chat_stream_finish(st, stream_on_event, &seen) == DSV_OK);
    const dsv_chat_result *got = dsv_chat_stream_result(st);
    REQUIRE(got);
    if (!same_result(got, want) || !seen_matches(&seen, got)) {
        char where[128] = "";
        for (int i = 0, n = 0; i < n_cuts && n < 100; i++) n += snprintf(where + n, sizeof where - n, " %zu", cuts[i]);
        test_fail(__FILE__, __LINE__, "stream differs from one-shot (thinking %d, cuts:%s) for \"%.*s\"", o->thinking,
                  where, (int)len, text);
        test_abort();
    }
    stream_seen_free(&seen);
    dsv_chat_stream_free(st);
}

void stream_check_every_cut(const stream_check *o, const char *text, size_t len, const dsv_chat_result *want,
                            int n_random) {
    stream_check_cuts(o, text, len, NULL, 0, want);
    for (size_t i = 0; i <= len; i++) stream_check_cuts(o, text, len, &i, 1, want);
    size_t *cuts = calloc(len + 1, sizeof *cuts);
    REQUIRE(cuts);
    for (size_t i = 0; i < len; i++) cuts[i] = i;
    stream_check_cuts(o, text, len, cuts, (int)len, want);
    uint32_t rng = (uint32_t)len * 2654435761u + 1;
    for (int r = 0; r < n_random && len; r++) {
        int n = 0;
        for (size_t i = 1; i < len; i++) {
            rng = rng * 1664525u + 1013904223u;
            if ((rng >> 24) < 64) cuts[n++] = i;
        }
        stream_check_cuts(o, text, len, cuts, n, want);
    }
    free(cuts);
}
