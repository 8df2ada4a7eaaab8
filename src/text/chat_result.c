/* chat_result.c: the parsed message both chat formats fill
 * (dsv_chat_result of include/dsv32_chat.h). Its own file so that the two
 * formats' parsers (chat.c, dsml.c) share it without calling each other. */
#include <stdlib.h>

#include "dsv32_chat.h"

void dsv_chat_result_free(dsv_chat_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n_tool_calls; i++) {
        free(r->tool_calls[i].name);
        free(r->tool_calls[i].arguments);
    }
    free(r->tool_calls);
    free(r->reasoning);
    free(r->content);
    *r = (dsv_chat_result){0};
}
