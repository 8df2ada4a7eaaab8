/* cmd_chat.c: `dsv32 chat`, a multi-turn conversation in the terminal in the
 * DeepSeek-V3.2 chat format.
 *
 * Each turn renders the whole conversation with the V3.2 template, keeps the
 * longest prefix of tokens already in the KV cache and feeds only the rest
 * (the template drops earlier turns' reasoning, so the cache cannot simply
 * grow). The answer streams; reasoning is shown apart (dimmed on a terminal).
 * /exit quits and /clear starts over, as in the reference generate.py.
 * --input-file runs prompts (separated by blank lines) as one batch of
 * single-turn chats, like the reference's batch mode. Ctrl-C (SIGINT) on a
 * terminal first resets its text attributes (an answer cut inside the
 * dimmed reasoning would leave the shell dimmed), then ends as SIGINT does. */
#include <signal.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32_chat.h"
#include "gen.h"

static void usage(void) {
    printf("usage: dsv32 chat -m DIR [options]\n"
           "\n"
           "Chats in the terminal. Type a message and press Enter; /clear starts a new\n"
           "conversation, /exit (or end of input) quits.\n"
           "\n"
           "  --system TEXT      system prompt (default: none)\n"
           "  --think            thinking mode: the model reasons first (shown dimmed);\n"
           "                     V3.2-Speciale only thinks: run it with --think\n"
           "  --chat-format F    the chat format: %s\n"
           "                     (default: detected from the model directory, or from a\n"
           "                     GGUF's tokenizer.chat_template and architecture)\n"
           "  --input-file F     answer the prompts of F (separated by blank lines) as one\n"
           "                     batch of single-turn chats, printed in input order\n"
           "%s"
           "  -h, --help         this help\n",
           dsv_chat_format_list(), gen_opts_help);
}

/* The chat format of this run (detected, or --chat-format). */
static const dsv_chat_format *chat_fmt;

struct printer {
    int tty, in_reasoning;
    dsv_chat_stream *ps;
    int32_t *cached;          /* tokens of the conversation, as fed */
    int n_cached, cap;
};

static void end_reasoning(struct printer *p) {
    if (!p->in_reasoning) return;
    fputs(p->tty ? "\033[0m\n" : "\n[/reasoning]\n", stdout);
    p->in_reasoning = 0;
}

static void on_event(void *user, const dsv_chat_event *ev) {
    struct printer *p = user;
    switch (ev->kind) {
    case DSV_CHAT_EV_REASONING:
        if (!p->in_reasoning) { fputs(p->tty ? "\033[2m" : "[reasoning]\n", stdout); p->in_reasoning = 1; }
        fwrite(ev->text, 1, ev->len, stdout);
        break;
    case DSV_CHAT_EV_CONTENT:
        end_reasoning(p);
        fwrite(ev->text, 1, ev->len, stdout);
        break;
    case DSV_CHAT_EV_TOOL_END:
        end_reasoning(p);
        printf("\n[tool call] %s(%.*s)\n", ev->name ? ev->name : "?", (int)ev->len, ev->text ? ev->text : "");
        break;
    default:
        break;
    }
    fflush(stdout);
}

static void emit_parser(void *user, int32_t id, const char *text, size_t len) {
    struct printer *p = user;
    if (p->n_cached < p->cap) p->cached[p->n_cached++] = id;
    if (len) dsv_chat_stream_feed(p->ps, text, len, on_event, p);
}

struct buf { char *p; size_t n; };
static void emit_buf(void *user, int32_t id, const char *text, size_t len) {
    struct buf *b = user;
    (void)id;
    char *q = realloc(b->p, b->n + len + 1);
    if (!q) return;
    memcpy(q + b->n, text, len);
    b->p = q;
    b->n += len;
    q[b->n] = 0;
}

/* Renders messages and encodes the prompt (the template writes BOS itself). */
static int render(gen *g, cJSON *msgs, int think, int32_t **ids, int *n) {
    char *json = cJSON_PrintUnformatted(msgs), *text = NULL;
    int rc = !json || dsv_chat_format_render_json(chat_fmt, json, strlen(json), think, 1, &text);
    if (rc) cli_fail(g->cmd, "%s", json ? dsv_errmsg() : "out of memory");
    else rc = gen_encode(g, text, ids, n);
    free(json);
    free(text);
    return rc;
}

static cJSON *new_conversation(const char *system) {
    cJSON *msgs = cJSON_CreateArray();
    if (system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
        cJSON_AddItemToArray(msgs, m);
    }
    return msgs;
}

static void add_message(cJSON *msgs, const char *role, const char *content, const char *reasoning) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", content ? content : "");
    if (reasoning && *reasoning) cJSON_AddStringToObject(m, "reasoning_content", reasoning);
    cJSON_AddItemToArray(msgs, m);
}

/* Async-signal-safe: write(2) the reset, then die of the signal as usual. */
static void on_sigint(int sig) {
    static const char reset[] = "\033[0m\n";
    ssize_t w = write(1, reset, sizeof reset - 1);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int interactive(gen *g, const char *system, int think) {
    const int tty_in = isatty(0);
    struct printer pr = {.tty = isatty(1)};
    if (pr.tty) {
        struct sigaction sa = {.sa_handler = on_sigint};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
    }
    cJSON *msgs = new_conversation(system);
    pr.cap = g->o.n_ctx;
    pr.cached = malloc((size_t)pr.cap * sizeof *pr.cached);
    int rc = pr.cached ? 0 : cli_fail(g->cmd, "out of memory");
    char *line = NULL;
    size_t cap = 0;
    while (!rc) {
        if (tty_in) { fputs("> ", stdout); fflush(stdout); }
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit")) break;
        if (!strcmp(line, "/clear")) {
            cJSON_Delete(msgs);
            msgs = new_conversation(system);
            dsv_seq_reset(g->ctx, 0);
            pr.n_cached = 0;
            printf("(conversation cleared)\n");
            continue;
        }
        if (!got) continue;
        add_message(msgs, "user", line, NULL);
        int32_t *ids;
        int n;
        if ((rc = render(g, msgs, think, &ids, &n))) break;
        if (n + g->o.n_predict > g->o.n_ctx) {
            /* Out of room: start over with just this turn. */
            fprintf(stderr, "(context full: earlier turns dropped)\n");
            cJSON *last = cJSON_DetachItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
            cJSON_Delete(msgs);
            msgs = new_conversation(system);
            cJSON_AddItemToArray(msgs, last);
            free(ids);
            if ((rc = render(g, msgs, think, &ids, &n))) break;
            if (n + g->o.n_predict > g->o.n_ctx) { free(ids); rc = cli_fail(g->cmd, "message too long for the context (--ctx %d)", g->o.n_ctx); break; }
        }
        int keep = 0;
        while (keep < pr.n_cached && keep < n - 1 && pr.cached[keep] == ids[keep]) keep++;
        dsv_seq_truncate(g->ctx, 0, keep);
        memcpy(pr.cached, ids, (size_t)n * sizeof *ids);
        pr.n_cached = n;
        dsv_gen_slot *slot = NULL;
        rc = gen_slot(g, &slot, 0, ids, n, keep);
        free(ids);
        if (!rc && dsv_chat_format_stream_init(chat_fmt, &pr.ps, think)) rc = cli_fail(g->cmd, "%s", dsv_errmsg());
        if (!rc) {
            void *user = &pr;
            rc = gen_run(g, 1, &slot, emit_parser, &user);
            dsv_chat_stream_finish(pr.ps, on_event, &pr);
            end_reasoning(&pr);
            const dsv_chat_result *res = dsv_chat_stream_result(pr.ps);
            add_message(msgs, "assistant", res ? res->content : "", res ? res->reasoning : NULL);
        }
        /* The token that ended the answer was never fed: the cache holds
         * what the sequence holds. */
        pr.n_cached = dsv_seq_len(g->ctx, 0);
        dsv_chat_stream_free(pr.ps);
        pr.ps = NULL;
        dsv_gen_slot_free(slot);
        printf("\n");
        fflush(stdout);
    }
    free(line);
    free(pr.cached);
    cJSON_Delete(msgs);
    return rc;
}

static int batch(gen *g, char **prompts, int n, const char *system, int think) {
    int rc = 0;
    int32_t **ids = calloc((size_t)n, sizeof *ids);
    dsv_gen_slot **slots = calloc((size_t)n, sizeof *slots);
    struct buf *outs = calloc((size_t)n, sizeof *outs);
    void **users = calloc((size_t)n, sizeof *users);
    if (!ids || !slots || !outs || !users) rc = cli_fail(g->cmd, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        cJSON *msgs = new_conversation(system);
        add_message(msgs, "user", prompts[i], NULL);
        int len;
        rc = render(g, msgs, think, &ids[i], &len);
        cJSON_Delete(msgs);
        if (!rc && len + g->o.n_predict > g->o.n_ctx) rc = cli_fail(g->cmd, "prompt %d is too long for the context", i + 1);
        if (!rc) rc = gen_slot(g, &slots[i], i, ids[i], len, 0);
        users[i] = &outs[i];
    }
    if (!rc) rc = gen_run(g, n, slots, emit_buf, users);
    for (int i = 0; !rc && i < n; i++) {
        dsv_chat_result r;
        const char *text = outs[i].p ? outs[i].p : "";
        printf("Prompt: %s\n", prompts[i]);
        if (dsv_chat_format_parse(chat_fmt, text, strlen(text), think, &r) == DSV_OK) {
            if (r.reasoning && *r.reasoning) printf("Reasoning: %s\n", r.reasoning);
            printf("Answer: %s\n\n", r.content ? r.content : "");
            dsv_chat_result_free(&r);
        } else {
            printf("Answer: %s\n\n", text);
        }
    }
    for (int i = 0; i < n; i++) {
        if (ids) free(ids[i]);
        if (outs) free(outs[i].p);
        if (slots) dsv_gen_slot_free(slots[i]);
    }
    free(ids); free(slots); free(outs); free(users);
    return rc;
}

int cmd_chat(int argc, char **argv) {
    const char *cmd = "chat", *system = NULL, *input = NULL, *fmt_name = NULL;
    int think = 0;
    gen_opts o;
    gen_default_opts(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        int r = gen_parse_opt(cmd, &o, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(a, "--think")) think = 1;
        else if (!strcmp(a, "--system")) { if (!(system = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--input-file")) { if (!(input = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--chat-format")) {
            if (!(fmt_name = cli_value(cmd, argc, argv, &i))) return 1;
            if (!dsv_chat_format_find(fmt_name)) { cli_fail(cmd, "%s", dsv_errmsg()); return 2; }
        }
        else return cli_fail(cmd, "unknown option '%s' (see dsv32 chat --help)", a);
    }
    if ((fmt_name || o.model) && !(chat_fmt = cli_chat_format(cmd, fmt_name, o.model))) return 1;
    char **prompts = NULL;
    int n = 1;
    if (input && read_prompt_file(cmd, input, &prompts, &n)) return 1;
    if (n > 256) return cli_fail(cmd, "%s: %d prompts; at most 256 run in one batch", input, n);
    gen g;
    int rc = gen_open(&g, cmd, &o, n);
    if (!rc) rc = input ? batch(&g, prompts, n, system, think) : interactive(&g, system, think);
    if (!rc && input) gen_report(&g);
    for (int i = 0; input && i < n; i++) free(prompts[i]);
    free(prompts);
    if (g.m) gen_close(&g);
    return rc;
}
