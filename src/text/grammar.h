/* grammar.h: token constraints for the sampler (dsv_token_constraint of
 * include/dsv32_sampler.h): what a structured answer may say next
 * (internal to the library; the server installs them per request).
 *
 *  - forced: exactly a given token sequence, then EOS (tests make the model
 *    emit a chosen completion through the real generation path);
 *  - JSON: a JSON value, free-form or following a JSON Schema (the subset
 *    listed at dsv_grammar_json), then only EOS; optionally after free text
 *    up to a marker (reasoning up to "</think>") and between a literal prefix
 *    and suffix (a tool call's markup around its arguments).
 *
 * Caps that keep every answer finite: 16 whitespace bytes in a row, 512
 * characters in a string without maxLength (64 in a free-form key), 15
 * integer and 6 fraction digits (no exponent), free-form objects of 16
 * members and arrays of 32 items, nested 8 deep.
 *
 * The JSON matcher works on bytes. A vocabulary index (dsv_vocab_index,
 * built once per tokenizer) holds every token's bytes in a trie, plus the
 * set of tokens that are "plain" inside a JSON string (no quote, backslash,
 * control byte, and whole UTF-8 characters) or a raw DSML parameter, by
 * character count, so the mask for a step costs a trie walk over the tokens
 * that can change the state and a bitset copy for the rest. */
#ifndef DSV_GRAMMAR_H
#define DSV_GRAMMAR_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "dsv32_sampler.h"
#include "dsv32_tokenizer.h"

typedef struct dsv_grammar dsv_grammar;
typedef struct dsv_vocab_index dsv_vocab_index;

/* The constraint to put in dsv_sampler_params.constraint; owned by g. */
const dsv_token_constraint *dsv_grammar_constraint(dsv_grammar *g);
void dsv_grammar_free(dsv_grammar *g);
/* 1 once the constrained answer is complete (only EOS may follow). */
int dsv_grammar_done(const dsv_grammar *g);

/* Exactly ids[0..n), then eos (copied). */
int dsv_grammar_forced(dsv_grammar **out, const int32_t *ids, int n, int32_t eos);

/* The index of tok's vocabulary (every id below dsv_tokenizer_n_vocab that
 * has a piece). Free with dsv_vocab_index_free. */
int dsv_vocab_index_build(dsv_vocab_index **out, const dsv_tokenizer *tok);
void dsv_vocab_index_free(dsv_vocab_index *vi);

/* One way the answer may go: prefix, then a value, then suffix. */
typedef struct dsv_grammar_branch {
    const char *prefix;   /* NULL: none; forced text before the value */
    const char *suffix;   /* NULL: none; forced text after it */
    const cJSON *schema;  /* NULL: any JSON object */
    /* The value is the DSML parameters of an object schema (V3.2 tool
     * calls: properties in order, string properties raw, others JSON), not
     * JSON. */
    int dsml;
} dsv_grammar_branch;

typedef struct dsv_grammar_json_opts {
    const dsv_grammar_branch *branches; /* one of them (at most 16) */
    int n_branches;
    const char *until;    /* NULL, or free text is allowed up to and including this marker first */
    int32_t eos;          /* the token allowed at the end */
} dsv_grammar_json_opts;

/* Checks a JSON Schema against the supported subset without building
 * anything: DSV_OK, or DSV_ERR_UNSUPPORTED naming the keyword and where it
 * is ("schema.properties.a: keyword \"pattern\" is not supported"), or
 * DSV_ERR_ARG for a malformed schema. Supported: type (object, array,
 * string, number, integer, boolean, null, or a list of them), properties,
 * required, additionalProperties (false, or true / absent: only the listed
 * properties are generated either way), enum, const, items, minItems,
 * maxItems, anyOf, minLength, maxLength, minimum, maximum, and the
 * annotations title, description, default, examples, $schema, strict. */
int dsv_grammar_check_schema(const cJSON *schema);

/* A structured answer (see dsv_grammar_json_opts) over vi's vocabulary; vi
 * must outlive g. Errors as dsv_grammar_check_schema (a DSML branch's schema
 * must be an object with properties, or have none), DSV_ERR_NOMEM. */
int dsv_grammar_json(dsv_grammar **out, const dsv_vocab_index *vi, const dsv_grammar_json_opts *o);

/* The reference for the mask: every token tried on its own, bytes through
 * the matcher (what the trie walk and the bitsets must equal). Slow. */
int dsv_grammar_allowed_slow(dsv_grammar *g, uint32_t *allowed);

#endif
