/* cmd_serve.c: `dsv32 serve`, the OpenAI-compatible HTTP server
 * (include/dsv32_server.h) as a command.
 *
 * SIGINT and SIGTERM are blocked before any thread starts, so every thread
 * inherits the mask and the main thread alone takes them, with sigwait:
 * no handler runs in a random thread, and stopping is ordinary code
 * (dsv_server_close) rather than async-signal-safe gymnastics. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dsv32_chat.h"
#include "dsv32_server.h"

static const char *CMD = "serve";

static void usage(FILE *f) {
    dsv_server_params d = dsv_server_default_params();
    fprintf(f,
            "usage: dsv32 serve -m DIR [options]\n"
            "Serves the model over an OpenAI-compatible HTTP API: POST /v1/chat/completions,\n"
            "POST /v1/completions, GET /v1/models, GET /health, GET /metrics, POST /tokenize,\n"
            "POST /detokenize, and a chat page at GET /. SIGINT or SIGTERM stops it cleanly.\n"
            "\n"
            "  -m, --model DIR       model directory (config.json, weights and tokenizer.json)\n"
            "                        or a .gguf file (required)\n"
            "      --host ADDR       address or host name to listen on; beyond loopback the\n"
            "                        server is open to the network (default: %s)\n"
            "      --port N          TCP port; 0 picks a free one (default: %d)\n"
            "      --parallel N      requests generating at once (default: %d)\n"
            "      --ctx N           tokens per request, prompt and answer together (default: the\n"
            "                        model's max_position_embeddings, at most 4096)\n"
            "      --kv-memory SIZE  KV cache budget in bytes, with an optional K, M or G suffix\n"
            "                        (powers of 1024); requests wait for pages when it is short\n"
            "                        (default: enough for --parallel full contexts)\n"
            "      --batch N         tokens per forward step, decoding and prompt chunks together\n"
            "                        (default: %d)\n"
            "      --queue N         requests waiting for a slot before answering 429 (default: %d)\n"
            "      --max-body SIZE   largest request body before answering 413 (default: %zuM)\n"
            "      --body-budget SIZE  request bodies held at once, all clients together, before\n"
            "                        answering 503 (default: 8 x --max-body)\n"
            "      --discard-max SIZE  body bytes read and dropped so that an early error (413,\n"
            "                        401, 415) reaches a client still sending; past it the\n"
            "                        connection is closed (default: %zuM)\n"
            "      --discard-timeout S  seconds spent dropping such a body (default: %d)\n"
            "      --max-conns N     open connections, each holding a thread (default: %d)\n"
            "      --max-conns-per-client N  open connections from one address (default: %d)\n"
            "      --idle-timeout S  seconds a connection may stay silent or leave its answer\n"
            "                        unread (default: %d)\n"
            "      --header-timeout S  seconds from connecting (or the last answer) to the end of\n"
            "                        the request's headers, however slowly they trickle (default: %d)\n"
            "      --body-timeout S  seconds from the headers to the end of the body (default: %d)\n"
            "      --api-key KEY     require \"Authorization: Bearer KEY\" on every endpoint but\n"
            "                        /health and the chat page (default: $DSV32_API_KEY if set,\n"
            "                        else none)\n"
            "      --alias NAME      model id in the API (default: the directory's name)\n"
            "      --chat-format F   the chat format: %s\n"
            "                        (default: detected from the model directory, or from a\n"
            "                        GGUF's tokenizer.chat_template and architecture)\n"
            "      --think           chat requests that do not say think by default; for\n"
            "                        V3.2-Speciale, which only thinks (default: off)\n"
            "      --topk-file FILE  a top-k per layer (from dsv32 analyze --suggest -o)\n"
            "      --scale-fmt F     activation scale format: ue8m0 or none (default: the\n"
            "                        checkpoint's)\n"
            "      --act-quant Q     GGUF: fp8 or none: quantize the inputs of the linears that\n"
            "                        were fp8 in the checkpoint (default: as the file says)\n"
            "  -t, --threads N       compute threads (default: every core)\n"
            "  -v, --verbose         log the set-up and every request on stderr (default: off)\n"
            "  -h, --help            show this help\n",
            d.host, d.port, d.n_parallel, d.n_batch, d.max_queue, d.max_body >> 20, d.discard_max >> 20,
            d.discard_timeout, d.conn_limit, d.conn_per_client, d.idle_timeout, d.header_timeout, d.body_timeout,
            dsv_chat_format_list());
}

/* "123", "64K", "512M", "2G" (powers of 1024). */
static int parse_size(const char *opt, const char *s, int64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    int64_t mult = 1;
    if (*end == 'K' || *end == 'k') mult = 1 << 10, end++;
    else if (*end == 'M' || *end == 'm') mult = 1 << 20, end++;
    else if (*end == 'G' || *end == 'g') mult = (int64_t)1 << 30, end++;
    if (*end == 'i' && mult > 1) end++;
    if ((*end == 'B' || *end == 'b')) end++;
    if (errno || end == s || *end || !(v > 0) || v * (double)mult > 9e18)
        return cli_fail(CMD, "%s: '%s' is not a size (e.g. 512M, 4G)", opt, s);
    *out = (int64_t)(v * (double)mult);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    dsv_server_params p = dsv_server_default_params();
    /* The engine options come from the parser the other commands share, so
     * names, ranges and messages agree; a bad one is a usage error (2) here
     * as every other bad option of serve is. */
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_CTX | CLI_E_BATCH | CLI_E_TOPK_FILE |
                                   CLI_E_SCALE_FMT | CLI_E_ACT_QUANT);
    e.batch_min = 3; /* as generate: two prompt tokens and the switch to decoding in one step */
    p.api_key = getenv("DSV32_API_KEY");
    if (p.api_key && !p.api_key[0]) p.api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        int64_t size;
#define VALUE() do { if (!(v = cli_value(CMD, argc, argv, &i))) return 2; } while (0)
#define SIZE() do { VALUE(); if (parse_size(a, v, &size)) return 2; } while (0)
#define INT(lo, hi, dst) do { VALUE(); if (cli_int(CMD, a, v, lo, hi, &n)) return 2; dst = (int)n; } while (0)
        int r = cli_engine_opt(CMD, &e, argc, argv, &i);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--host")) { VALUE(); p.host = v; }
        else if (!strcmp(a, "--port")) INT(0, 65535, p.port);
        else if (!strcmp(a, "--parallel")) INT(1, 1024, p.n_parallel);
        else if (!strcmp(a, "--queue")) INT(0, 1 << 20, p.max_queue);
        else if (!strcmp(a, "--kv-memory")) { VALUE(); if (parse_size(a, v, &size)) return 2; p.kv_bytes = size; }
        else if (!strcmp(a, "--max-body")) { VALUE(); if (parse_size(a, v, &size)) return 2; p.max_body = (size_t)size; }
        else if (!strcmp(a, "--body-budget")) { SIZE(); p.body_budget = (size_t)size; }
        else if (!strcmp(a, "--discard-max")) { SIZE(); p.discard_max = (size_t)size; }
        else if (!strcmp(a, "--discard-timeout")) INT(1, 86400, p.discard_timeout);
        else if (!strcmp(a, "--max-conns")) INT(1, 65536, p.conn_limit);
        else if (!strcmp(a, "--max-conns-per-client")) INT(1, 65536, p.conn_per_client);
        else if (!strcmp(a, "--idle-timeout")) INT(1, 86400, p.idle_timeout);
        else if (!strcmp(a, "--header-timeout")) INT(1, 86400, p.header_timeout);
        else if (!strcmp(a, "--body-timeout")) INT(1, 86400, p.body_timeout);
        else if (!strcmp(a, "--api-key")) { VALUE(); p.api_key = v; }
        else if (!strcmp(a, "--alias")) { VALUE(); p.alias = v; }
        else if (!strcmp(a, "--chat-format")) {
            VALUE();
            if (!dsv_chat_format_find(v)) { cli_fail(CMD, "%s", dsv_errmsg()); return 2; }
            p.chat_format = v;
        }
        else if (!strcmp(a, "--think")) p.thinking_default = 1;
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) p.verbose = 1;
        else { cli_fail(CMD, "unknown option '%s' (see dsv32 serve --help)", a); return 2; }
#undef INT
#undef SIZE
#undef VALUE
    }
    if (!e.model) {
        usage(stderr);
        return 2;
    }
    p.model_dir = e.model;
    /* Detected here rather than left to the server, so that a guess is a
     * warning on the terminal that started it. */
    const dsv_chat_format *fmt = cli_chat_format(CMD, p.chat_format, p.model_dir);
    if (!fmt) return 1;
    p.chat_format = dsv_chat_format_name(fmt);
    if (e.threads) p.n_threads = e.threads;
    if (e.n_ctx) p.n_ctx = e.n_ctx;
    if (e.n_batch) p.n_batch = e.n_batch;
    p.scale_fmt = e.scale_fmt;
    p.act_quant = e.act_quant;
    if (p.n_batch < p.n_parallel + 2) p.n_batch = p.n_parallel + 2;
    if (e.topk_file) {
        dsv_config c;
        if (dsv_config_load(&c, p.model_dir)) return cli_fail(CMD, "%s", dsv_errmsg());
        if (cli_topk_file(CMD, e.topk_file, c.n_layers, p.layer_topk)) return 1;
    }

    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is an error return, not a signal */

    dsv_server *srv = NULL;
    if (dsv_server_open(&srv, &p)) return cli_fail(CMD, "%s", dsv_errmsg());
    printf("dsv32 serve: listening on http://%s%s%s:%d/\n", strchr(p.host, ':') ? "[" : "", p.host,
           strchr(p.host, ':') ? "]" : "", dsv_server_port(srv));
    fflush(stdout);
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "dsv32 serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    dsv_server_close(srv);
    return 0;
}
