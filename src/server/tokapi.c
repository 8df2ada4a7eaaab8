/* tokapi.c: the request bodies of POST /tokenize and POST /detokenize.
 *
 * Parsed here, apart from the HTTP handlers in http.c, so that they can be
 * called on bytes alone (no connection, no I/O) and fuzzed
 * (tests/fuzz/fuzz_server_tokenize.c). Each refusal is a 4xx (or a 500 when
 * memory runs out) naming the field, as in api.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dsv32_util.h"
#include "server.h"

int srv_tokenize_parse(const char *body, size_t len, srv_tokenize_req *r, srv_error *e) {
    memset(r, 0, sizeof *r);
    if (!body) body = "";
    /* A NUL is allowed in the content only: it is read exactly below. */
    if (srv_check_json(body, len, "content", e)) return -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(root, "content");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(root, "add_special");
    const cJSON *pieces = cJSON_GetObjectItemCaseSensitive(root, "with_pieces");
    int rc = -1;
    if (!cJSON_IsObject(root))
        srv_fail(e, 400, "invalid_request_error", NULL, NULL, "the body must be a JSON object");
    else if (!cJSON_IsString(content))
        srv_fail(e, 400, "invalid_request_error", NULL, "content", "'content' must be a string");
    else if (add && !cJSON_IsBool(add))
        srv_fail(e, 400, "invalid_request_error", NULL, "add_special", "'add_special' must be a boolean");
    else if (pieces && !cJSON_IsBool(pieces))
        srv_fail(e, 400, "invalid_request_error", NULL, "with_pieces", "'with_pieces' must be a boolean");
    /* The exact string: cJSON's would end at an escaped NUL. */
    else if (dsv_json_get_string(body, len, "content", &r->text, &r->len))
        srv_fail(e, 400, "invalid_request_error", NULL, "content", "'content': %s", dsv_errmsg());
    else
        rc = 0;
    r->add_special = cJSON_IsTrue(add);
    r->with_pieces = cJSON_IsTrue(pieces);
    cJSON_Delete(root);
    if (rc) srv_tokenize_req_free(r);
    return rc;
}

void srv_tokenize_req_free(srv_tokenize_req *r) {
    free(r->text);
    memset(r, 0, sizeof *r);
}

int srv_detokenize_parse(const dsv_tokenizer *tok, const char *body, size_t len, srv_detokenize_req *r,
                         srv_error *e) {
    memset(r, 0, sizeof *r);
    if (!body) body = "";
    if (srv_check_json(body, len, NULL, e)) return -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    int n = cJSON_GetArraySize(toks), i = 0, rc = 0;
    if (!cJSON_IsObject(root))
        rc = srv_fail(e, 400, "invalid_request_error", NULL, NULL, "the body must be a JSON object");
    else if (!cJSON_IsArray(toks))
        rc = srv_fail(e, 400, "invalid_request_error", NULL, "tokens", "'tokens' must be an array of token ids");
    else if (n > SRV_MAX_IDS)
        rc = srv_fail(e, 400, "invalid_request_error", NULL, "tokens", "'tokens' holds at most %d ids", SRV_MAX_IDS);
    else if (!(r->ids = malloc(((size_t)n + 1) * sizeof *r->ids)))
        rc = srv_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    /* Each id is range-checked on the double, then must name a token. */
    for (const cJSON *t = toks ? toks->child : NULL; !rc && t; t = t->next, i++) {
        int64_t id;
        if (!srv_json_int(t, 0, INT32_MAX, &id) || !dsv_token_piece(tok, (int32_t)id, NULL))
            rc = srv_fail(e, 400, "invalid_request_error", NULL, "tokens", "tokens[%d] is not a token id", i);
        else
            r->ids[i] = (int32_t)id;
    }
    cJSON_Delete(root);
    if (rc) {
        srv_detokenize_req_free(r);
        return -1;
    }
    r->n = (size_t)n;
    return 0;
}

void srv_detokenize_req_free(srv_detokenize_req *r) {
    free(r->ids);
    memset(r, 0, sizeof *r);
}
