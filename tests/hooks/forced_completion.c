/* forced_completion.c: the completion-injection hook of the test build.
 *
 * Linked into build/dsv32-test only (see the Makefile), never into
 * build/dsv32: src/server/api.c holds a weak reference to this function,
 * which stays NULL in the shipped binary. A chat request with a string
 * "dsv32_test_completion" then gets exactly that answer, token by token
 * through the real sampler, detokenizer, stop matcher, chat parser and
 * response writers, so the server's streaming and parsing of model output
 * (DSML tool calls, malformed markup) are tested with output that a small
 * test model would never produce on its own. */
#include <cjson/cJSON.h>

const char *srv_test_forced_completion(const cJSON *request);

const char *srv_test_forced_completion(const cJSON *request) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(request, "dsv32_test_completion");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
