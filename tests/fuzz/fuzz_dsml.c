/* fuzz_dsml.c: libFuzzer target for the DeepSeek-V3.2 (DSML) output parser.
 *
 * Built and run by `make fuzz` (target dsml; seeds in tests/fuzz/seeds/dsml/: the parse
 * goldens' completions behind a flags byte, dictionary tests/fuzz/seeds/dsml.dict);
 * tests/test_dsml.c runs a seeded random version of the same checks in `make test`.
 *
 * Input layout: byte 0: bit 0 is thinking mode, the other bits seed where
 * the stream is cut; the rest is the model's output. Checked promises:
 *  - the stream, fed in pieces, ends with the same result as the one-shot
 *    parse, and its events add up to that result;
 *  - no bytes are lost: without calls (and not in thinking mode) the content
 *    is the input with its first EOS string removed; in any case no more text
 *    comes out than went in. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv32_chat.h"

#define EOS "<｜end▁of▁sentence｜>"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_dsml: broken promise: %s\n", what);
        abort();
    }
}

struct acc {
    char *text[2]; /* reasoning, content as the events gave them */
    size_t len[2];
    int calls;
};

static void add(struct acc *a, int k, const char *p, size_t n) {
    char *q = realloc(a->text[k], a->len[k] + n + 1);
    check(q != NULL, "memory");
    memcpy(q + a->len[k], p, n);
    a->len[k] += n;
    q[a->len[k]] = 0;
    a->text[k] = q;
}

static void on_event(void *user, const dsv_chat_event *ev) {
    struct acc *a = user;
    if (ev->kind == DSV_CHAT_EV_REASONING) add(a, 0, ev->text, ev->len);
    else if (ev->kind == DSV_CHAT_EV_CONTENT) add(a, 1, ev->text, ev->len);
    else if (ev->kind == DSV_CHAT_EV_TOOL_END) a->calls++;
}

static int same(const char *a, size_t alen, const char *b) {
    size_t blen = b ? strlen(b) : 0;
    return alen == blen && (!alen || !memcmp(a, b, alen));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const dsv_chat_format *f = dsv_chat_format_find("deepseek-v3.2");
    check(f != NULL, "the format exists");
    int thinking = data[0] & 1;
    uint32_t seed = data[0] >> 1;
    size_t len = size - 1;
    char *copy = malloc(len + 1);
    check(copy != NULL, "memory");
    for (size_t i = 0; i < len; i++) copy[i] = data[i + 1] ? (char)data[i + 1] : 1;
    copy[len] = 0;
    const char *text = copy;

    dsv_chat_result whole;
    check(dsv_chat_format_parse(f, text, len, thinking, &whole) == DSV_OK, "parse never fails");
    size_t out = (whole.content ? strlen(whole.content) : 0) + (whole.reasoning ? strlen(whole.reasoning) : 0);
    check(out <= len, "no more text out than in");
    if (!thinking && !whole.n_tool_calls) {
        const char *e = NULL;
        for (size_t i = 0; i + strlen(EOS) <= len && !e; i++)
            if (!memcmp(text + i, EOS, strlen(EOS))) e = text + i;
        size_t want = e ? len - strlen(EOS) : len;
        check(whole.content ? strlen(whole.content) == want : want == 0, "content is the input without EOS");
        if (e) {
            /* (An input that is only EOS leaves no content: nothing to compare,
             * and whole.content may be NULL.) */
            size_t pre = (size_t)(e - text);
            if (want)
                check(!memcmp(whole.content, text, pre) &&
                          !memcmp(whole.content + pre, e + strlen(EOS), len - pre - strlen(EOS)),
                      "content bytes equal the input's");
        } else if (len) {
            check(!memcmp(whole.content, text, len), "content bytes equal the input's");
        }
    }

    dsv_chat_stream *st = NULL;
    check(dsv_chat_format_stream_init(f, &st, thinking) == DSV_OK, "stream init");
    struct acc a = {0};
    size_t pos = 0;
    while (pos < len) {
        seed = seed * 1103515245u + 12345u;
        size_t step = 1 + (seed >> 16) % 24;
        if (step > len - pos) step = len - pos;
        check(dsv_chat_stream_feed(st, text + pos, step, on_event, &a) == DSV_OK, "feed");
        pos += step;
    }
    check(dsv_chat_stream_finish(st, on_event, &a) == DSV_OK, "finish");
    const dsv_chat_result *r = dsv_chat_stream_result(st);
    check(r != NULL, "result after finish");
    check(same(a.text[0], a.len[0], r->reasoning) && same(a.text[1], a.len[1], r->content), "events add up");
    check(a.calls == r->n_tool_calls, "one TOOL_END a call");
    check((!r->reasoning) == (!whole.reasoning) && (!r->reasoning || !strcmp(r->reasoning, whole.reasoning)),
          "stream reasoning == whole");
    check((!r->content) == (!whole.content) && (!r->content || !strcmp(r->content, whole.content)),
          "stream content == whole");
    check(r->n_tool_calls == whole.n_tool_calls, "stream calls == whole");
    for (int i = 0; i < r->n_tool_calls; i++)
        check(!strcmp(r->tool_calls[i].name, whole.tool_calls[i].name) &&
                  !strcmp(r->tool_calls[i].arguments, whole.tool_calls[i].arguments),
              "stream call == whole");
    free(a.text[0]);
    free(a.text[1]);
    dsv_chat_stream_free(st);
    dsv_chat_result_free(&whole);
    free(copy);
    return 0;
}
