/* fixture.h: test model directories built on the fly. */
#ifndef DSV_TEST_FIXTURE_H
#define DSV_TEST_FIXTURE_H

/* Model fixtures in the test's directory, each a conformance model (vocab
 * 777) with a byte-level tokenizer.json that fits its vocabulary: BOS, EOS
 * and pad at ids 0-2, the 256 bytes at 3-258, merged words after them, and
 * the chat markers (<think>, <｜User｜>, tool markers, ...) at the top.
 * - random: the conformance weights as they are (real, varied computation);
 * - scripted: the same with every layer's output projections zeroed, so the
 *   model is a bigram table written into the embeddings and the head: after
 *   "<think>" it says "Greeting detected</think>", after "</think>" it says
 *   "Hello world!" (or, with logit_bias {TOOL_CALLS_BEGIN: 20}, calls the
 *   tool weather with {"city": "Paris"}), after a tool result it says
 *   "Sunny and warm"; everything else ends the answer. */
const char *fixture_random(void);
const char *fixture_scripted(void);
/* Writes either fixture into dir (which must exist). */
void fixture_write(const char *dir, int scripted);
/* config.json of the real DeepSeek-V3.2-Exp (spec 2.2), for plans of its
 * shape (shards, synth sizes); never written with weights. */
extern const char fixture_full_config[];
/* Token ids of the fixture tokenizer. */
enum { FX_BOS = 0, FX_EOS = 1, FX_TOOL_CALLS_BEGIN = 768 };

#endif
