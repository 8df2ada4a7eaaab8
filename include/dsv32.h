/* dsv32.h: the public C API of dsv32, an inference engine for DeepSeek-V3.2-Exp
 * and other models built on DeepSeek Sparse Attention (DSA).
 *
 * Conventions (they hold for every function below):
 * - Functions that can fail return a dsv_status (0 on success, a negative code
 *   otherwise) and leave a one-line, human-readable reason in a thread-local
 *   buffer that dsv_errmsg() returns. The message names the file, tensor or
 *   field at fault. Library code never exits or aborts on bad input.
 * - Objects come in _open/_close or _init/_free pairs; closing NULL is a no-op.
 * - Output pointers are only written on success.
 *
 * Lifetimes: a dsv_model must outlive every context opened on it (close the
 * contexts first). Besides its model, a context holds on to only the dump
 * callback's user pointer (dsv_context_set_dump), which must stay valid
 * while the callback is set. A tokenizer (dsv32_tokenizer.h) is independent
 * of both. Pointers the
 * library hands out (dsv_model_config, dsv_context_get_params,
 * dsv_seq_pages, dsv_errmsg) live as long as the object they came from, or
 * as the next change of it where the function says so.
 *
 * Threads: a model is read-only once open, and contexts on one model (or on
 * different ones) may run dsv_forward on different threads at once. One
 * context is used by one thread at a time: every function taking a
 * dsv_context, the dsv_seq_* and dsv_kv_* ones included. Each context
 * holds its own kernel set, so contexts of different levels may run at once.
 * A split model (dsv_parallel_*) is
 * driven from one thread. A tokenizer is immutable once open and may be
 * used by any number of threads. Error messages are per thread.
 */
#ifndef DSV32_H
#define DSV32_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DSV_API marks what the library exports. It is compiled with
 * -fvisibility=hidden, so a function without the mark stays inside it (tests
 * that link the archive still reach every function), and every exported
 * symbol starts with dsv_ (tests/check-symbols.sh). */
#ifndef DSV_API
#if defined(__GNUC__)
#define DSV_API __attribute__((visibility("default")))
#else
#define DSV_API
#endif
#endif

typedef enum dsv_status {
    DSV_OK              =  0,
    DSV_ERR_IO          = -1, /* a file is missing or unreadable */
    DSV_ERR_FORMAT      = -2, /* a file's contents are malformed (JSON, safetensors) */
    DSV_ERR_CONFIG      = -3, /* config.json lacks a field or is inconsistent */
    DSV_ERR_MODEL       = -4, /* a tensor is missing or has the wrong dtype/shape */
    DSV_ERR_ARG         = -5, /* the caller passed an invalid argument */
    DSV_ERR_NOMEM       = -6, /* an allocation failed */
    DSV_ERR_UNSUPPORTED = -7, /* valid input this build cannot handle */
    DSV_ERR_FULL        = -8, /* a capacity (KV cache, batch) is exhausted */
} dsv_status;

/* The reason for the last failure on this thread ("" if none). */
DSV_API const char *dsv_errmsg(void);
/* A short name for a status code ("ok", "i/o error", ...). */
DSV_API const char *dsv_status_str(int status);

/* ------------------------------------------------------------------------ */
/* Model configuration: the Hugging Face config.json of a DeepSeek-V3.2 model,
 * with the reference's names (model.py ModelArgs) in comments. */

enum { DSV_SCORE_SIGMOID = 0, DSV_SCORE_SOFTMAX = 1 };
/* Layers a per-layer top-k list can name (config and context parameters). */
#define DSV_MAX_TOPK_LAYERS 256
enum { DSV_SCALE_FMT_NONE = 0, DSV_SCALE_FMT_UE8M0 = 1 };
/* dsv_model_params.act_quant. */
enum { DSV_ACT_QUANT_NONE = 0, DSV_ACT_QUANT_FP8 = 1 };

typedef struct dsv_config {
    int vocab_size;
    int dim;                 /* hidden_size */
    int inter_dim;           /* intermediate_size: dense MLP */
    int moe_inter_dim;       /* moe_intermediate_size: one expert */
    int n_layers;            /* num_hidden_layers (MTP layers excluded) */
    int n_dense_layers;      /* first_k_dense_replace */
    int n_heads;             /* num_attention_heads */
    int n_routed_experts, n_shared_experts, n_activated_experts; /* ..., num_experts_per_tok */
    int n_expert_groups;     /* n_group */
    int n_limited_groups;    /* topk_group */
    int score_func;          /* scoring_func: DSV_SCORE_* */
    int norm_topk_prob;      /* normalize the chosen sigmoid weights */
    float route_scale;       /* routed_scaling_factor */
    int q_lora_rank, kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int index_n_heads, index_head_dim, index_topk;
    /* dsa_topk_per_layer (optional, a list of num_hidden_layers values, e.g.
     * from `dsv32 analyze --suggest`): layer l keeps index_topk_layer[l]
     * positions; 0 where the config has no list (index_topk). */
    int index_topk_layer[DSV_MAX_TOPK_LAYERS];
    float rms_norm_eps;
    float rope_theta;
    int yarn;                /* YaRN active (rope_scaling yarn and max_position_embeddings > original) */
    float rope_factor;       /* rope_scaling.factor */
    int original_seq_len;    /* rope_scaling.original_max_position_embeddings */
    float beta_fast, beta_slow, mscale;
    int max_position_embeddings;
    int n_mtp_layers;        /* num_nextn_predict_layers: present in the files, skipped */
    int bos_id, eos_id;
    int fp8;                 /* quantization_config: fp8 e4m3 weights with 128x128 block scales */
    int scale_fmt;           /* activation scale format: DSV_SCALE_FMT_* (spec 4.1b) */
    /* Derived. */
    float softmax_scale;     /* MLA: (nope+rope)^-0.5 * mscale^2 when YaRN is on */
} dsv_config;

/* Parses a Hugging Face config.json (a path to the file or to its directory).
 * Every field the model needs must be present and consistent; the error names
 * the field. Unknown architectures are rejected. */
DSV_API int dsv_config_load(dsv_config *cfg, const char *path);
/* The same from JSON text; `name` is used in error messages. */
DSV_API int dsv_config_parse(dsv_config *cfg, const char *json, const char *name);

/* ------------------------------------------------------------------------ */
/* Model: the weights of a model directory, memory-mapped and validated. */

typedef struct dsv_model dsv_model;

typedef struct dsv_model_params {
    /* Overrides quantization_config.scale_fmt: -1 = as the checkpoint says,
     * else DSV_SCALE_FMT_NONE or DSV_SCALE_FMT_UE8M0. */
    int scale_fmt;
    /* GGUF models only: whether the linears that were fp8 in the original
     * checkpoint quantize their inputs as the reference's act_quant does
     * (e4m3 per 128 values) before multiplying by their float (BF16, F16,
     * F32) weights. -1 = as the file's dsv32.act_quant key says (none when
     * absent), else DSV_ACT_QUANT_NONE or DSV_ACT_QUANT_FP8. Block-quantized
     * weights are not affected (their inputs are quantized to 8 bits anyway). */
    int act_quant;
    /* Called now and then while tensors are mapped and checked, as
     * progress(done, total, progress_user) with done <= total bytes (one
     * call per file opened); may be NULL. */
    void (*progress)(uint64_t done, uint64_t total, void *user);
    void *progress_user;
} dsv_model_params;

DSV_API dsv_model_params dsv_model_default_params(void);

/* Opens a Hugging Face model directory: config.json plus model.safetensors or
 * the shards listed in model.safetensors.index.json; or a GGUF file whose
 * name ends in .gguf (the first of a split set), arch deepseek32 or deepseek2
 * (see README, GGUF models). Every tensor the config
 * implies is checked for presence, dtype and shape; no weight is converted or
 * copied. p may be NULL for the defaults. */
DSV_API int dsv_model_open(dsv_model **out, const char *dir, const dsv_model_params *p);
DSV_API void dsv_model_close(dsv_model *m);
DSV_API const dsv_config *dsv_model_config(const dsv_model *m);
/* Total bytes of the weights the forward pass reads. */
DSV_API uint64_t dsv_model_weight_bytes(const dsv_model *m);
/* What the weights are, for reports. label: "bf16" or "fp8" for safetensors;
 * for a GGUF "gguf " and llama.cpp's name of its general.file_type ("gguf
 * Q4_K_M", "gguf Q8_0", "gguf BF16"), or without that key the type holding
 * the most matrix bytes. mix: each matrix type's share of the matrix bytes,
 * largest first ("Q4_K 58%, Q6_K 21%, BF16 12%, F32 9%"; safetensors dtypes
 * by their names, fp8 scales counted with F8_E4M3). Either may be NULL;
 * both are cut to their capacity. In a split model: this process's part. */
DSV_API void dsv_model_weight_types(const dsv_model *m, char *label, size_t label_cap, char *mix, size_t mix_cap);
/* Reads one byte of every page of the weights (matrices, scales, embedding),
 * so that a measurement after it reads none of them from disk and takes no
 * page fault on them. progress(done, total, user) is called about ten times
 * a second and once at the end (may be NULL). Returns the bytes covered.
 * In a split model: this process's part. */
DSV_API uint64_t dsv_model_touch(const dsv_model *m, void (*progress)(uint64_t done, uint64_t total, void *user),
                                 void *user);

/* ------------------------------------------------------------------------ */
/* Context: KV cache, scratch memory and threads for running a model. All
 * memory is allocated here; the forward pass allocates nothing. */

typedef struct dsv_context dsv_context;

enum { DSV_ATTN_SPARSE = 0, DSV_ATTN_DENSE = 1 };

typedef struct dsv_context_params {
    int n_ctx;        /* max tokens per sequence (0: min(max_position_embeddings, 4096));
                       * rounded up to a multiple of DSV_PAGE (64): the context
                       * holds whole KV pages. dsv_context_get_params gives the
                       * rounded value, which is what dsv_forward enforces. */
    int n_seq;        /* sequences that can hold state at once (default 1) */
    int n_batch;      /* max tokens in one dsv_forward call (default 512) */
    int n_threads;    /* worker threads including the caller (0: the CPUs this process may use) */
    int64_t n_pages;  /* KV pages of DSV_PAGE tokens (0: n_seq * ceil(n_ctx / DSV_PAGE)) */
    int attn;         /* DSV_ATTN_SPARSE (the model's top-k) or DSV_ATTN_DENSE (every position) */
    int topk;         /* override index_topk (0: the config's) */
    /* Per-layer top-k: layer l keeps layer_topk[l] positions where it is > 0,
     * else topk, else the config's dsa_topk_per_layer, else index_topk.
     * Entries past num_hidden_layers must be 0. */
    int layer_topk[DSV_MAX_TOPK_LAYERS];
    /* A multi-token call whose sequence spans at most this many positions
     * uses the reference's non-absorbed (MHA) prefill maths; longer ones use
     * the absorbed (MQA) maths of decoding, whose cost does not grow with the
     * context (0: 4096). */
    int mha_max_keys;
    /* The kernel level this context runs ("generic", "avx2", "avx512" or
     * "amx"; "": DSV32_ISA when set, else the best this machine supports).
     * Each context has its own: contexts of different levels may run at
     * once in one process. */
    char kernels[16];
} dsv_context_params;

#define DSV_PAGE 64

DSV_API dsv_context_params dsv_context_default_params(void);
DSV_API int dsv_context_open(dsv_context **out, dsv_model *m, const dsv_context_params *p);
DSV_API void dsv_context_close(dsv_context *ctx);
DSV_API const dsv_context_params *dsv_context_get_params(const dsv_context *ctx);
/* The kernel level the context runs (see dsv_context_params.kernels). */
DSV_API const char *dsv_context_kernels(const dsv_context *ctx);

/* Number of tokens sequence `seq` holds (its next position). */
DSV_API int dsv_seq_len(const dsv_context *ctx, int seq);
/* Forgets a sequence: length 0, its KV pages returned to the pool. */
DSV_API int dsv_seq_reset(dsv_context *ctx, int seq);
/* Keeps the first n tokens of a sequence (n <= length). If the page that
 * the next token goes into is shared, the sequence first gets its own copy
 * of it (DSV_ERR_FULL, nothing changed, when the pool has no page for it). */
DSV_API int dsv_seq_truncate(dsv_context *ctx, int seq, int n);

/* Appends n_tokens positions of random but valid cache contents to a
 * sequence, in every layer, as a prefill would have written them: latent
 * fp8 codes with act_quant scales of unit-size values, unit-size k_pe, and
 * indexer keys with their scales. For benchmarks: a decode step at a depth
 * of 128K tokens costs what it costs after a real prefill, without computing
 * that prefill (what it outputs is meaningless). The contents depend only on
 * the seed and the positions, not on the thread count. All or nothing:
 * DSV_ERR_FULL if the sequence or the page pool cannot take n_tokens more. */
DSV_API int dsv_seq_fill_random(dsv_context *ctx, int seq, int n_tokens, uint64_t seed);

/* Prefix sharing. The KV cache is a pool of pages of DSV_PAGE positions
 * (every layer's latent and indexer keys). A page's contents depend on every
 * token up to its end, so sequences whose first k * DSV_PAGE tokens are equal
 * can map the same k pages. Pages are reference-counted: each sequence that
 * maps a page holds one reference, and so does each dsv_kv_page_ref; the
 * last reference returns the page to the pool. A sequence only ever writes
 * past its length, so a full page behind it never changes: share only full
 * pages (a page being filled still changes). */

/* The page ids of a sequence in position order (ceil(length / DSV_PAGE) of
 * them). The array is valid until the sequence changes. */
DSV_API int dsv_seq_pages(const dsv_context *ctx, int seq, const int32_t **pages, int *n_pages);
/* Starts an empty sequence on n_pages full pages, taking a reference on
 * each: its length becomes n_pages * DSV_PAGE, and the next token goes into
 * a page of its own. Every page must be in use (referenced). Computing on
 * from there gives bit for bit what the same chunks computed from scratch
 * give. DSV_ERR_ARG if the sequence is not empty, a page is free or out of
 * range, or n_pages exceeds the context size. */
DSV_API int dsv_seq_attach(dsv_context *ctx, int seq, const int32_t *pages, int n_pages);
/* Takes / drops a reference on a page in use (DSV_ERR_ARG for a free page
 * or an id out of range). */
DSV_API int dsv_kv_page_ref(dsv_context *ctx, int32_t page);
DSV_API int dsv_kv_page_unref(dsv_context *ctx, int32_t page);
/* References on a page (0 when free); -1 for an id out of range. */
DSV_API int dsv_kv_page_refs(const dsv_context *ctx, int32_t page);
/* Pages in the pool: in use (referenced) and free; either may be NULL. */
DSV_API void dsv_kv_stats(const dsv_context *ctx, int64_t *used, int64_t *free_pages);
/* Bytes of one KV page for this configuration (what a KV memory budget is
 * divided by to get dsv_context_params.n_pages). */
DSV_API uint64_t dsv_kv_page_bytes(const dsv_config *cfg);

enum { DSV_LOGITS_NONE = 0, DSV_LOGITS_LAST = 1, DSV_LOGITS_ALL = 2 };

/* One sequence's part of a forward call: n_tokens new tokens appended at the
 * sequence's current length. */
typedef struct dsv_batch_entry {
    int seq;
    int n_tokens;
    const int32_t *tokens;
    int logits;       /* DSV_LOGITS_*: which positions get logits */
} dsv_batch_entry;

/* Runs the model over every entry (each sequence at most once per call) and
 * writes float32 logits [rows, vocab_size] for the requested positions, in
 * entry order; logits must hold dsv_batch_logit_rows(entries, n_entries) *
 * vocab_size floats (it may be NULL when that is 0). Sequences are
 * independent: results do not depend on what else is in the batch. The whole
 * call is checked before anything runs, and on error nothing changes (no
 * sequence grows). Errors:
 *   DSV_ERR_ARG   ctx is NULL; n_entries < 0, or > 0 with entries NULL;
 *                 more entries than the context's n_seq; a sequence out of
 *                 range or twice in the call; an entry with no tokens or a
 *                 logits mode not DSV_LOGITS_*; a token id outside
 *                 [0, vocab_size); more tokens in all than n_batch.
 *   DSV_ERR_FULL  a sequence would pass n_ctx (as rounded); the KV page
 *                 pool has too few free pages for the new positions.
 * Nothing fails once the call has started (the forward pass allocates
 * nothing). */
DSV_API int dsv_forward(dsv_context *ctx, const dsv_batch_entry *entries, int n_entries, float *logits);
/* Rows of logits dsv_forward writes for these entries. */
DSV_API int dsv_batch_logit_rows(const dsv_batch_entry *entries, int n_entries);

/* Statistics: where a context's dsv_forward calls spend their time and what
 * they read, accumulated until reset. Time is wall clock, read at phase
 * boundaries (a clock read per operation, nothing per element); the phases
 * add up to the time spent inside dsv_forward. Dump callbacks (below) are
 * timed with whatever phase they interrupt: switch them off to measure. */
enum {
    DSV_PHASE_INDEXER = 0, /* lightning indexer: q/k RoPE, Hadamard, fp8 codes, scoring the keys */
    DSV_PHASE_TOPK,        /* choosing each query's positions (dense mode: listing them all) */
    DSV_PHASE_ATTN,        /* attention over the chosen positions: gather, absorb, softmax, values */
    DSV_PHASE_LINEAR,      /* linear layers outside the MoE: projections, dense MLP, lm head */
    DSV_PHASE_MOE,         /* router and experts, their linear layers included */
    DSV_PHASE_OTHER,       /* embedding, norms, RoPE of MLA, conversions, bookkeeping */
    DSV_PHASE_COMM,        /* a model split across processes: sums and gathers between ranks, the leader's
                            * commands (time waiting for slower ranks included) */
    DSV_PHASE_COUNT
};

typedef struct dsv_context_stats {
    uint64_t ns[DSV_PHASE_COUNT]; /* wall time per DSV_PHASE_* */
    uint64_t n_calls;             /* dsv_forward calls */
    uint64_t n_tokens;            /* tokens processed */
    uint64_t n_keys;              /* positions attended, summed over tokens and layers */
    uint64_t n_index_keys;        /* positions the indexer scored, summed over tokens and layers */
    /* Weight bytes read: every matrix a call uses, once per call (a call
     * reads each matrix once for all its tokens), only the experts the
     * router chose, the embedding rows of the call's tokens, and wkv_b once
     * per token on the absorbed path (which applies it token by token). At
     * one token per call: the bytes streamed per decoded token. */
    uint64_t weight_bytes;
    uint64_t linear_flops;        /* 2*m*n*k of the linear layers of DSV_PHASE_LINEAR */
    uint64_t moe_flops;           /* the same for the router and experts */
    uint64_t kv_read_bytes;       /* cache bytes of the positions attended and scored, per query */
    uint64_t kv_token_bytes;      /* cache bytes one token takes, all layers (a constant of the layout) */
    /* A model split across processes: fp32 bytes this rank summed with the
     * other ranks (the reference's all-reduces: after o_proj, the dense MLP
     * and the MoE of every layer, and after the embedding) and logits bytes
     * it gathered to rank 0. */
    uint64_t comm_sum_bytes, comm_gather_bytes;
    uint64_t n_comm;              /* sums and gathers */
    /* Thread-pool runs that woke the other threads, and the barriers inside
     * them: each makes every thread wait for the slowest (0 with one thread). */
    uint64_t n_pool_runs, n_pool_barriers;
} dsv_context_stats;

/* Copies the statistics since the context opened or was last reset. */
DSV_API void dsv_context_get_stats(const dsv_context *ctx, dsv_context_stats *out);
DSV_API void dsv_context_reset_stats(dsv_context *ctx);

/* Named intermediates ("dumps"), as llama.cpp's cb_eval: during dsv_forward
 * the callback receives tensors by name and layer for the tokens of the call,
 * in call order. Names: "attn_out" (f32 [tokens, dim]: attention after the
 * output projection, before the residual add), "topk" (i32 [tokens, topk]:
 * selected positions in descending index score, -1 padded), "index_weights"
 * (f32 [tokens, index_n_heads]: raw weights_proj output), "moe_gate_weights"
 * (f32 [tokens, n_activated]), "moe_gate_indices" (i32 [tokens, n_activated]),
 * "attn_norm" (f32 [tokens, dim]: the RMSNorm before attention) and "qr"
 * (f32 [tokens, q_lora_rank]: the normalized query latent); the last two are
 * bf16 in the engine, widened and passed in chunks of rows (one callback per
 * chunk). The data is valid during the call only.
 * Dumping costs time; pass fn = NULL to turn it off. */
enum { DSV_DUMP_F32 = 0, DSV_DUMP_I32 = 1 };
typedef void (*dsv_dump_fn)(const char *name, int layer, int dtype, int rows, int cols,
                            const void *data, void *user);
DSV_API void dsv_context_set_dump(dsv_context *ctx, dsv_dump_fn fn, void *user);

/* ------------------------------------------------------------------------ */
/* Model parallelism across processes (tensor and expert parallel, as the
 * reference's --model-parallel ranks): `mpirun -np N program` starts N
 * processes of one program; each holds a part of every model it opens and
 * they compute every forward call together. Only rank 0, the leader, runs
 * the program's logic: it reads input, prints, serves. The other ranks, the
 * followers, call dsv_parallel_follow, which replays each model and context
 * call the leader makes (open, close, dsv_forward, the dsv_seq_* and
 * dsv_kv_page_* calls that change state) with that rank's part of the
 * weights, until the leader calls dsv_parallel_finalize. So a program
 * written for one process runs split unchanged once it calls init,
 * follow and finalize (tools/main.c does).
 *
 * The leader's results are those of the split model: dsv_forward's logits
 * arrive on the leader only, its dump callbacks run on the leader (every
 * dumped tensor is whole), its statistics count its own part. A rank that
 * fails to open a model or a context fails the open on every rank, with the
 * failing rank's message ("rank R of N: ..."); a rank that dies ends the
 * whole job (the launcher's default), never leaving one waiting. Models must
 * be opened after init; a context of a split model runs the lowest of the
 * kernel levels its ranks chose (a level named in its parameters must exist
 * on every rank). */

/* Joins the launcher's process group when mpirun (or a PMI/PMIx launcher)
 * started this process and the library was built with MPI; otherwise the
 * process is a group of one and everything else here is a no-op. Call once,
 * first, from the main thread. DSV_ERR_UNSUPPORTED when launched as several
 * ranks by a library built without MPI. */
DSV_API int dsv_parallel_init(int *argc, char ***argv);
/* This process's rank (0: the leader) and the group's size (1: alone). */
DSV_API int dsv_parallel_rank(void);
DSV_API int dsv_parallel_size(void);
/* 1 if the library was built with MPI (make MPI=1). */
DSV_API int dsv_parallel_available(void);
/* Followers: replays the leader's calls until it finalizes, then closes
 * what is still open and returns the status the leader passed to
 * dsv_parallel_finalize. Returns 0 at once on the leader or when alone. */
DSV_API int dsv_parallel_follow(void);
/* Leaves the group. On the leader, first tells the followers to return
 * `status` from dsv_parallel_follow. From the thread that called init. */
DSV_API void dsv_parallel_finalize(int status);

/* ------------------------------------------------------------------------ */
/* CPU kernels. Each context runs one kernel set, chosen when it opens from
 * what the CPU and OS support: "amx" (AMX tiles with AVX-512), "avx512",
 * "avx2", or "generic" (plain C, the reference the others are tested
 * against). dsv_context_params.kernels or the environment variable
 * DSV32_ISA names a level; every level computes the same model within
 * small rounding differences. */

/* The level a context opened now with kernels "" would run ("generic" if
 * DSV32_ISA names a level this machine lacks). Changes nothing. */
DSV_API const char *dsv_kernels_name(void);
/* The levels this build knows, lowest first: the name of level i ("generic",
 * "avx2", "avx512", "amx"), NULL past the last. Whether this machine has a
 * level: dsv_kernels_supported says. */
DSV_API const char *dsv_kernels_level(int i);
/* DSV_OK if this machine runs the level called `level`; DSV_ERR_ARG for an
 * unknown name, DSV_ERR_UNSUPPORTED for a level this machine lacks. */
DSV_API int dsv_kernels_supported(const char *level);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_H */
