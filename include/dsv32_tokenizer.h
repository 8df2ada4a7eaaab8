/* dsv32_tokenizer.h: the Hugging Face byte-level BPE tokenizer (tokenizer.json).
 *
 * Encodes text to token ids and back, exactly as the Hugging Face `tokenizers`
 * library does for the DeepSeek-V3 family (V3, V3.1, V3.2-Exp), with
 * add_special_tokens=false: dsv_tokenize never adds BOS or any other token.
 *
 * What a tokenizer.json may contain (anything else is refused at open time
 * with DSV_ERR_UNSUPPORTED and a message naming the field, never ignored):
 * - normalizer: null, or a Sequence of such (DeepSeek has an empty Sequence);
 * - pre_tokenizer: a ByteLevel pre-tokenizer (add_prefix_space=false), alone
 *   or last in a Sequence whose other members are Split pre-tokenizers with
 *   behavior "Isolated", invert=false and a Regex or String pattern;
 * - model: BPE with byte_fallback=false, no dropout, no subword prefix or
 *   suffix, merges as "a b" strings or ["a", "b"] arrays, optional
 *   ignore_merges; every one of the 256 byte-level characters must be in the
 *   vocabulary (so unk_token and fuse_unk can never take effect);
 * - added_tokens with lstrip, rstrip and single_word false;
 * - decoder: ByteLevel; post_processor: anything (it only adds special
 *   tokens, which this API never asks for); truncation and padding: null.
 *
 * Text is bytes. Regexes run in PCRE2 with Unicode properties (PCRE2_UTF |
 * PCRE2_UCP), so `\s` is PCRE2's: it matches U+0085 and U+180E but not U+FEFF
 * (Oniguruma, used by the Rust library, agrees except on U+180E; JavaScript
 * differs on all three). Input need not be valid UTF-8: it is split at every
 * byte that does not begin a well-formed character, and each such byte is a
 * pre-token of its own (so it becomes that byte's token). Decoding returns the
 * exact bytes of the tokens, so decode(encode(x)) == x for any bytes x.
 *
 * A tokenizer is immutable once open: any number of threads may use one at
 * the same time. A tok argument must be an open tokenizer unless a function
 * says otherwise. Conventions of dsv32.h hold (status codes, dsv_errmsg()),
 * with one documented exception: on DSV_ERR_FULL, the size a call needs is
 * written to its count output so that the caller can grow the buffer.
 */
#ifndef DSV32_TOKENIZER_H
#define DSV32_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsv_tokenizer dsv_tokenizer;

/* Opens a tokenizer. path is a model directory holding tokenizer.json, or a
 * tokenizer.json file itself. tokenizer_config.json in the same directory is
 * read when present, for add_bos_token (default false) and bos_token /
 * eos_token (a string, or an object whose "content" is the string).
 * Returns DSV_OK and *out, or DSV_ERR_IO (missing or unreadable file),
 * DSV_ERR_FORMAT (bad JSON, missing or mistyped field, a merge naming an
 * unknown token, a bad regex), DSV_ERR_UNSUPPORTED (a feature listed above as
 * refused), DSV_ERR_CONFIG (a bos/eos token that is not a token) or
 * DSV_ERR_NOMEM. The message starts with the file's path. */
DSV_API int dsv_tokenizer_open(dsv_tokenizer **out, const char *path);

/* Frees the tokenizer. NULL is a no-op. */
DSV_API void dsv_tokenizer_close(dsv_tokenizer *tok);

/* One more than the highest token id (BPE vocabulary and added tokens). Ids
 * below it may still have no token (gaps); dsv_token_piece tells. */
DSV_API int32_t dsv_tokenizer_n_vocab(const dsv_tokenizer *tok);

/* The BOS and EOS ids from tokenizer_config.json, or -1 when not given. */
DSV_API int32_t dsv_tokenizer_bos(const dsv_tokenizer *tok);
DSV_API int32_t dsv_tokenizer_eos(const dsv_tokenizer *tok);

/* 1 when tokenizer_config.json says add_bos_token: true, else 0. This API
 * never adds BOS itself; a caller that encodes a raw prompt consults this. */
DSV_API int dsv_tokenizer_add_bos(const dsv_tokenizer *tok);

/* Encodes text[0..len) (any bytes; NUL is an ordinary character) into ids.
 * Added tokens (such as "<｜User｜>" or "<think>") are matched first, whole
 * and byte for byte, leftmost then longest; the text between them goes
 * through the pre-tokenizer and BPE. No BOS is added.
 * Never more than len ids result, so cap >= len always suffices.
 * Returns DSV_OK with *n_ids ids in ids[]; DSV_ERR_FULL when cap is too
 * small, with *n_ids set to the number needed and ids[0..cap) holding the
 * first cap ids (ids may be NULL when cap is 0, to ask for the count);
 * DSV_ERR_ARG for NULL arguments or len >= 2^31 - 1; DSV_ERR_NOMEM. */
DSV_API int dsv_tokenize(const dsv_tokenizer *tok, const char *text, size_t len,
                 int32_t *ids, size_t cap, size_t *n_ids);

/* Splits text[0..len) into the pieces that BPE encodes separately, as
 * dsv_tokenize does (an added token, or an ill-formed byte, is a piece of its
 * own), for inspection and tests. Pieces are contiguous: ends[i] is the byte
 * offset where piece i ends. Capacity and return values as dsv_tokenize
 * (cap >= len suffices). */
DSV_API int dsv_pretokenize(const dsv_tokenizer *tok, const char *text, size_t len,
                    size_t *ends, size_t cap, size_t *n_pieces);

/* The bytes of token id, not NUL-terminated, with their count in *len (len
 * may be NULL): the byte-level decoding of a BPE token, or the content of an
 * added token. Returns NULL (and *len = 0) when no token has this id. The
 * bytes live as long as the tokenizer. */
DSV_API const char *dsv_token_piece(const dsv_tokenizer *tok, int32_t id, size_t *len);

/* The id of the token whose text is exactly str: an added token's content
 * (e.g. "<｜end▁of▁sentence｜>"), else the BPE token whose bytes are str
 * (e.g. " the"). Returns -1 when there is none. */
DSV_API int32_t dsv_token_id(const dsv_tokenizer *tok, const char *str);

/* 1 when id is an added token marked "special": true (BOS, EOS, padding and
 * placeholders here; not "<think>" or the chat markers), else 0. */
DSV_API int dsv_token_is_special(const dsv_tokenizer *tok, int32_t id);

/* Decodes ids[0..n) to the concatenation of their pieces, byte-exact (it may
 * therefore be ill-formed UTF-8 where the ids split a character; the
 * streaming decoder below is the one that guarantees well-formed output).
 * skip_special != 0 leaves out tokens for which dsv_token_is_special is 1.
 * out is not NUL-terminated. Returns DSV_OK with *len bytes in out;
 * DSV_ERR_FULL when cap is too small, with *len = the size needed (out may be
 * NULL when cap is 0); DSV_ERR_ARG for NULL arguments or an id with no
 * token. */
DSV_API int dsv_detokenize(const dsv_tokenizer *tok, const int32_t *ids, size_t n,
                   int skip_special, char *out, size_t cap, size_t *len);

/* Streaming decoder: text for one token at a time, always well-formed UTF-8.
 * Bytes of a character split across tokens are held back until the character
 * completes. A byte sequence that can no longer complete becomes U+FFFD as
 * soon as that is known, one U+FFFD per maximal ill-formed subsequence (the
 * Unicode / WHATWG practice, as Rust's from_utf8_lossy and the Hugging Face
 * decoders do); a sequence still incomplete at dsv_detok_flush becomes one
 * U+FFFD. So for any ids, the concatenation of every push and the flush is
 * the lossy UTF-8 conversion of dsv_detokenize's output, and equals it when
 * that is well-formed.
 * The struct lives wherever the caller likes (no allocation, nothing to
 * free); its fields are private. */
typedef struct dsv_detok {
    const dsv_tokenizer *tok;
    int skip_special;
    int n_pend;                 /* bytes held back: a proper prefix of a character */
    unsigned char pend[3];
} dsv_detok;

/* Starts a stream. skip_special as in dsv_detokenize. */
DSV_API void dsv_detok_init(dsv_detok *d, const dsv_tokenizer *tok, int skip_special);

/* The most bytes one dsv_detok_push or dsv_detok_flush can write. */
DSV_API size_t dsv_detok_bound(const dsv_tokenizer *tok);

/* Adds token id and writes the text that is now complete to out (possibly
 * nothing). Returns DSV_OK with *len bytes in out; DSV_ERR_FULL when cap is
 * too small, with *len = the size needed and the stream unchanged;
 * DSV_ERR_ARG for an id with no token (the stream is unchanged). */
DSV_API int dsv_detok_push(dsv_detok *d, int32_t id, char *out, size_t cap, size_t *len);

/* Ends the stream: writes U+FFFD if a character was left incomplete, and
 * resets the stream for reuse. Returns as dsv_detok_push. */
DSV_API int dsv_detok_flush(dsv_detok *d, char *out, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_TOKENIZER_H */
