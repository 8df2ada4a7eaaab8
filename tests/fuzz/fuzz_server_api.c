/* fuzz_server_api.c: libFuzzer target for the server's request bodies:
 * srv_api_parse (src/server/api.c), the parse of /v1/chat/completions and
 * /v1/completions, called directly on a server state that holds only what
 * parsing reads (the embedded tiny model's config and tokenizer, from
 * models/tiny or $DSV32_FUZZ_MODEL; no model weights, no HTTP). Byte 0 picks
 * the endpoint; the rest is the body. A refused body gets a 4xx/5xx with a
 * message; an accepted one is a request the scheduler can run (prompt ids in
 * the vocabulary, room for max_tokens). */
#include "dsv32_tokenizer.h"
#include "fuzz.h"
#include "server/server.h"

static dsv_server S;
static dsv_config cfg;

static void init(void) {
    const char *dir = getenv("DSV32_FUZZ_MODEL");
    if (!dir || !*dir) dir = "models/tiny";
    if (dsv_config_load(&cfg, dir) || dsv_tokenizer_open(&S.tok, dir)) {
        fprintf(stderr, "fuzz_server_api: %s (run from the repository root or set DSV32_FUZZ_MODEL)\n", dsv_errmsg());
        exit(1);
    }
    S.cfg = &cfg;
    S.model_id = "tiny";
    S.max_total = 256;
    S.bos = dsv_tokenizer_bos(S.tok) >= 0 ? dsv_tokenizer_bos(S.tok) : cfg.bos_id;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    if (!S.tok) init();
    char *body = fuzz_copy(data + 1, size - 1);
    if (!body) return 0;
    srv_gen g;
    srv_error e;
    memset(&e, 0, sizeof e);
    int rc = srv_api_parse(&S, data[0] & 1, body, size - 1, &g, &e);
    if (rc) {
        fuzz_check(e.status >= 400 && e.status < 600 && e.message[0] && e.type, "a refusal has a status and a message");
        fuzz_check(g.req == NULL, "no request on failure");
        dsv_buf out = {0};
        srv_error_json(&e, &out);
        dsv_buf_free(&out);
    } else {
        const srv_req *r = g.req;
        fuzz_check(r && r->n_prompt > 0 && r->n_prompt < S.max_total, "prompt length");
        fuzz_check(r->max_tokens >= 1 && r->n_prompt + r->max_tokens <= S.max_total, "room for max_tokens");
        for (int i = 0; i < r->n_prompt; i++)
            fuzz_check(r->prompt[i] >= 0 && r->prompt[i] < cfg.vocab_size, "prompt ids in the vocabulary");
        for (int i = 0; i < r->sampling.n_logit_bias; i++)
            fuzz_check(r->bias[i].id >= 0 && r->bias[i].id < cfg.vocab_size, "logit_bias ids in the vocabulary");
        srv_req_free(g.req);
    }
    free(body);
    return 0;
}
