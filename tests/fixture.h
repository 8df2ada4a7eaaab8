/* fixture.h: test model directories built on the fly. */
#ifndef DSV_TEST_FIXTURE_H
#define DSV_TEST_FIXTURE_H

/* A model directory with a tokenizer: the public_sparse_bf16 conformance
 * weights (random, vocab 777) with a byte-level BPE tokenizer.json (the 256
 * bytes, BOS/EOS/pad at 0/1/2 as the config says, the chat markers and think
 * tags as added tokens, no merges) and the V3.2 tokenizer_config.json.
 * Created in the test's temporary directory; returns its path. */
const char *fixture_text_model(void);

#endif
