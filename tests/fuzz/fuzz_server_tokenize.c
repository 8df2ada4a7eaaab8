/* fuzz_server_tokenize.c: libFuzzer target for the bodies of POST /tokenize
 * and POST /detokenize: srv_tokenize_parse and srv_detokenize_parse
 * (src/server/tokapi.c), called directly with the embedded tiny model's
 * tokenizer (models/tiny or $DSV32_FUZZ_MODEL; no weights, no HTTP). Byte 0
 * picks the endpoint; the rest is the body. A refused body gets a 4xx/5xx
 * with a message and nothing to free; an accepted /tokenize body gives the
 * exact content (NUL-terminated, tokenizable as the handler does it), an
 * accepted /detokenize body ids that all name a token, which detokenize. */
#include "dsv32_tokenizer.h"
#include "fuzz.h"
#include "server/server.h"

static dsv_tokenizer *tok;

static void init(void) {
    const char *dir = getenv("DSV32_FUZZ_MODEL");
    if (!dir || !*dir) dir = "models/tiny";
    if (dsv_tokenizer_open(&tok, dir)) {
        fprintf(stderr, "fuzz_server_tokenize: %s (run from the repository root or set DSV32_FUZZ_MODEL)\n",
                dsv_errmsg());
        exit(1);
    }
}

static void check_refusal(const srv_error *e) {
    fuzz_check(e->status >= 400 && e->status < 600 && e->message[0] && e->type, "a refusal has a status and a message");
    dsv_buf out = {0};
    srv_error_json(e, &out);
    dsv_buf_free(&out);
}

static void tokenize(const char *body, size_t len) {
    srv_tokenize_req q;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (srv_tokenize_parse(body, len, &q, &e)) {
        check_refusal(&e);
        fuzz_check(q.text == NULL && q.len == 0, "no content on failure");
        return;
    }
    fuzz_check(e.status == 0, "no error on success");
    fuzz_check(q.text && q.len < len && q.text[q.len] == 0, "content within the body, NUL-terminated");
    fuzz_check((q.add_special == 0 || q.add_special == 1) && (q.with_pieces == 0 || q.with_pieces == 1),
               "flags are booleans");
    /* As the handler does it: at most one token per byte. */
    int32_t *ids = malloc((q.len + 1) * sizeof *ids);
    size_t n = 0;
    if (ids) {
        int rc = dsv_tokenize(tok, q.text, q.len, ids, q.len + 1, &n);
        fuzz_check_status(rc);
        if (rc == DSV_OK) {
            fuzz_check(n <= q.len, "at most one token per byte");
            for (size_t i = 0; i < n; i++) fuzz_check(dsv_token_piece(tok, ids[i], NULL) != NULL, "tokens exist");
        }
    }
    free(ids);
    srv_tokenize_req_free(&q);
}

static void detokenize(const char *body, size_t len) {
    srv_detokenize_req q;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (srv_detokenize_parse(tok, body, len, &q, &e)) {
        check_refusal(&e);
        fuzz_check(q.ids == NULL && q.n == 0, "no ids on failure");
        return;
    }
    fuzz_check(e.status == 0, "no error on success");
    fuzz_check(q.ids != NULL && q.n <= SRV_MAX_IDS, "at most SRV_MAX_IDS ids");
    for (size_t i = 0; i < q.n; i++)
        fuzz_check(q.ids[i] >= 0 && dsv_token_piece(tok, q.ids[i], NULL) != NULL, "ids name tokens");
    size_t need = 0;
    int rc = dsv_detokenize(tok, q.ids, q.n, 0, NULL, 0, &need);
    fuzz_check(rc == DSV_OK || rc == DSV_ERR_FULL, "valid ids detokenize");
    if (rc == DSV_ERR_FULL) {
        char *text = malloc(need + 1);
        size_t got = 0;
        if (text) {
            fuzz_check(dsv_detokenize(tok, q.ids, q.n, 0, text, need + 1, &got) == DSV_OK && got == need,
                       "the measured length is the written length");
        }
        free(text);
    }
    srv_detokenize_req_free(&q);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    if (!tok) init();
    char *body = fuzz_copy(data + 1, size - 1);
    if (!body) return 0;
    if (data[0] & 1)
        detokenize(body, size - 1);
    else
        tokenize(body, size - 1);
    free(body);
    return 0;
}
