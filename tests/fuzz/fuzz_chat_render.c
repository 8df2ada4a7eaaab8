/* fuzz_chat_render.c: libFuzzer target for the chat renderer's JSON front
 * end (dsv_chat_render_json: the messages of a request -> prompt text).
 * Byte 0 picks thinking and add_generation_prompt; the rest is the JSON.
 * What renders is a NUL-terminated string whose length the caller can take. */
#include "dsv32_chat.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    char *json = fuzz_copy(data + 1, size - 1);
    if (!json) return 0;
    char *text = NULL;
    int rc = dsv_chat_render_json(json, size - 1, data[0] & 1, (data[0] >> 1) & 1, &text);
    fuzz_check_status(rc);
    fuzz_check((rc == DSV_OK) == (text != NULL), "text exactly on success");
    if (text) {
        volatile size_t n = strlen(text);
        (void)n;
        free(text);
    }
    free(json);
    return 0;
}
