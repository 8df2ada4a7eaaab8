/* cmd_parse.c: `dsv32 parse`, what the model generated back into a message:
 * reasoning, content and tool calls, in the model's chat format. A thin
 * client of dsv_chat_format_parse(), for checking a format's parser against
 * goldens and for looking at raw completions. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32_chat.h"

static void parse_usage(FILE *f) {
    fprintf(f,
            "usage: dsv32 parse -m MODEL [options]\n"
            "Reads one JSON object per line, {\"completion\": \"...\", \"thinking\": bool}\n"
            "(\"thinking_mode\": \"chat\"|\"thinking\" is accepted too), and writes per line\n"
            "{\"reasoning_content\", \"content\", \"tool_calls\": [{\"name\", \"arguments\"}]}\n"
            "with arguments as a JSON object. Markup that does not parse is content.\n"
            "\n"
            "  -m, --model PATH     model directory or GGUF file, for the chat format\n"
            "                       (required unless --chat-format is given)\n"
            "      --chat-format F  %s (default: detected from the model)\n"
            "  -h, --help           show this help\n",
            dsv_chat_format_list());
}

/* One line: the completion parsed, or NULL with *err set. */
static char *parse_line(const dsv_chat_format *fmt, const char *line, size_t len, const char **err) {
    cJSON *in = cJSON_ParseWithLength(line, len);
    if (!in || !cJSON_IsObject(in)) {
        cJSON_Delete(in);
        *err = "expected a JSON object";
        return NULL;
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(in, "completion");
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(in, "thinking");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(in, "thinking_mode");
    int thinking = cJSON_IsTrue(th) || (cJSON_IsString(mode) && !strcmp(mode->valuestring, "thinking"));
    if (!cJSON_IsString(c) || (th && !cJSON_IsBool(th))) {
        *err = !cJSON_IsString(c) ? "completion: expected a string" : "thinking: expected a boolean";
        cJSON_Delete(in);
        return NULL;
    }
    dsv_chat_result r;
    if (dsv_chat_format_parse(fmt, c->valuestring, strlen(c->valuestring), thinking, &r)) {
        *err = dsv_errmsg();
        cJSON_Delete(in);
        return NULL;
    }
    cJSON_Delete(in);
    cJSON *out = cJSON_CreateObject(), *calls = cJSON_CreateArray();
    cJSON_AddStringToObject(out, "reasoning_content", r.reasoning ? r.reasoning : "");
    cJSON_AddStringToObject(out, "content", r.content ? r.content : "");
    for (int i = 0; i < r.n_tool_calls; i++) {
        cJSON *call = cJSON_CreateObject();
        cJSON_AddStringToObject(call, "name", r.tool_calls[i].name);
        /* Arguments that are not a JSON object (an Exp-format model may write
         * anything there) stay a string, as generated. */
        cJSON *args = cJSON_Parse(r.tool_calls[i].arguments);
        if (!cJSON_IsObject(args)) {
            cJSON_Delete(args);
            args = cJSON_CreateString(r.tool_calls[i].arguments);
        }
        cJSON_AddItemToObject(call, "arguments", args);
        cJSON_AddItemToArray(calls, call);
    }
    cJSON_AddItemToObject(out, "tool_calls", calls);
    dsv_chat_result_free(&r);
    char *s = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    if (!s) *err = "out of memory";
    return s;
}

int cmd_parse(int argc, char **argv) {
    const char *model = NULL, *fmt_name = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            parse_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "--chat-format") && i + 1 < argc) {
            fmt_name = argv[++i];
        } else {
            cli_fail("parse", "unknown or incomplete option '%s' (see dsv32 parse --help)", a);
            return 2;
        }
    }
    const dsv_chat_format *fmt = NULL;
    if (fmt_name) {
        if (!(fmt = dsv_chat_format_find(fmt_name))) {
            cli_fail("parse", "%s", dsv_errmsg());
            return 2;
        }
    } else if (!model) {
        cli_fail("parse", "-m MODEL or --chat-format is required (see dsv32 parse --help)");
        return 2;
    } else if (!(fmt = cli_chat_format("parse", NULL, model))) {
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    for (long no = 1; (got = getline(&line, &cap, stdin)) >= 0; no++) {
        if (strspn(line, " \t\r\n") == (size_t)got) continue;
        const char *err = "";
        char *out = parse_line(fmt, line, (size_t)got, &err);
        if (!out) {
            rc = cli_fail("parse", "stdin line %ld: %s", no, err);
            break;
        }
        puts(out);
        free(out);
    }
    free(line);
    if (!rc && ferror(stdin)) rc = cli_fail("parse", "reading stdin: %s", strerror(errno));
    if (!rc && (fflush(stdout) != 0 || ferror(stdout))) rc = cli_fail("parse", "writing output: %s", strerror(errno));
    return rc;
}
