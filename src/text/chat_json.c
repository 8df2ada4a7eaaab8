/* chat_json.c: the request readers both chat formats share (chat_json.h). */
#include "chat_json.h"

#include <string.h>

#include "base/util.h"

const char *dsv_json_type_name(const cJSON *v) {
    return !v ? "missing" : cJSON_IsNull(v) ? "null" : cJSON_IsBool(v) ? "a boolean"
         : cJSON_IsNumber(v) ? "a number" : cJSON_IsString(v) ? "a string"
         : cJSON_IsArray(v) ? "an array" : "an object";
}

int dsv_json_opt_bool(const cJSON *obj, const char *key, const char *path, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return DSV_OK;
    if (!cJSON_IsBool(v))
        return dsv_error(DSV_ERR_ARG, "%s%s: expected a boolean, got %s", path, key, dsv_json_type_name(v));
    *out = cJSON_IsTrue(v);
    return DSV_OK;
}

int dsv_chat_json_content(const cJSON *msg, int i, int optional, dsv_chat_own_fn own, void *owner, const char **out) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    *out = NULL;
    if (cJSON_IsString(c)) { *out = c->valuestring; return DSV_OK; }
    if ((!c || cJSON_IsNull(c)) && optional) return DSV_OK;
    if (!cJSON_IsArray(c))
        return dsv_error(DSV_ERR_ARG, "messages[%d].content: expected a string or an array of text parts, got %s",
                         i, dsv_json_type_name(c));
    dsv_buf b = {0};
    int k = 0;
    for (const cJSON *part = c->child; part; part = part->next, k++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        int rc = DSV_OK;
        if (!cJSON_IsObject(part))
            rc = dsv_error(DSV_ERR_ARG, "messages[%d].content[%d]: expected an object, got %s", i, k,
                           dsv_json_type_name(part));
        else if (!cJSON_IsString(type))
            rc = dsv_error(DSV_ERR_ARG, "messages[%d].content[%d].type: expected a string, got %s", i, k,
                           dsv_json_type_name(type));
        else if (strcmp(type->valuestring, "text") != 0)
            rc = dsv_error(DSV_ERR_UNSUPPORTED, "messages[%d].content[%d].type: \"%s\" parts are not supported (text only)",
                           i, k, type->valuestring);
        else if (!cJSON_IsString(text))
            rc = dsv_error(DSV_ERR_ARG, "messages[%d].content[%d].text: expected a string, got %s", i, k,
                           dsv_json_type_name(text));
        if (rc) { dsv_buf_free(&b); return rc; }
        if (k) dsv_buf_add(&b, "\n", 1);
        dsv_buf_adds(&b, text->valuestring);
    }
    if (!(*out = own(owner, &b))) return dsv_error(DSV_ERR_NOMEM, "chat: out of memory");
    return DSV_OK;
}
