/* fuzz_chat_parse.c: libFuzzer target for the parser of model output
 * (reasoning, content, tool calls: dsv_chat_parse) and its streaming twin.
 * Byte 0 picks thinking and the chunk size for the stream; the rest is the
 * generated text. The stream, fed in chunks, must end with the same result
 * as the one-shot parse (the promise in include/dsv32_chat.h). */
#include "dsv32_chat.h"
#include "fuzz.h"

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    const int thinking = data[0] & 1;
    const size_t chunk = 1 + (data[0] >> 1);
    char *text = fuzz_copy(data + 1, size - 1);
    if (!text) return 0;
    const size_t len = size - 1;
    dsv_chat_result r;
    int rc = dsv_chat_parse(text, len, thinking, &r);
    fuzz_check_status(rc);
    dsv_chat_stream *s = NULL;
    if (rc == DSV_OK && dsv_chat_stream_init(&s, thinking) == DSV_OK) {
        int ok = 1;
        for (size_t o = 0; o < len && ok; o += chunk)
            ok = dsv_chat_stream_feed(s, text + o, len - o < chunk ? len - o : chunk, NULL, NULL) == DSV_OK;
        if (ok && dsv_chat_stream_finish(s, NULL, NULL) == DSV_OK) {
            const dsv_chat_result *q = dsv_chat_stream_result(s);
            fuzz_check(q != NULL, "a finished stream has a result");
            fuzz_check(same_str(q->reasoning, r.reasoning) && same_str(q->content, r.content) &&
                           q->n_tool_calls == r.n_tool_calls,
                       "stream == one-shot parse");
            for (int i = 0; i < r.n_tool_calls; i++)
                fuzz_check(same_str(q->tool_calls[i].name, r.tool_calls[i].name) &&
                               same_str(q->tool_calls[i].arguments, r.tool_calls[i].arguments) &&
                               q->tool_calls[i].complete == r.tool_calls[i].complete,
                           "stream == one-shot parse (tool calls)");
        }
        dsv_chat_stream_free(s);
    }
    if (rc == DSV_OK) dsv_chat_result_free(&r);
    free(text);
    return 0;
}
