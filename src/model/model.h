/* model.h: the weights of a DeepSeek-V3.2 model, borrowed from the mapped
 * checkpoint (Hugging Face names and layout), with shapes checked against the
 * config at load. Only the small fp32 vectors (norm weights, biases) are
 * copied; every matrix stays in the file's dtype where it was mapped. */
#ifndef DSV_MODEL_H
#define DSV_MODEL_H

#include "dsv32.h"
#include "kernels/ops.h"
#include "coll.h"
#include "format/shard.h"
#include "format/safetensors.h"
#include "format/gguf.h"

typedef struct dsv_expert {
    dsv_linear w1, w2, w3;      /* gate_proj [inter, dim], down_proj [dim, inter], up_proj [inter, dim] */
} dsv_expert;

typedef struct dsv_layer {
    const float *attn_norm;     /* input_layernorm [dim] */
    const float *ffn_norm;      /* post_attention_layernorm [dim] */
    /* MLA */
    dsv_linear wq_a;            /* q_a_proj [q_lora, dim] */
    const float *q_norm;        /* q_a_layernorm [q_lora] */
    dsv_linear wq_b;            /* q_b_proj [H*(nope+rope), q_lora]; per head [nope | rope] */
    dsv_linear wkv_a;           /* kv_a_proj_with_mqa [kv_lora+rope, dim]; [latent | k_pe] */
    const float *kv_norm;       /* kv_a_layernorm [kv_lora] */
    dsv_linear wkv_b;           /* kv_b_proj [H*(nope+v), kv_lora]; per head [k_nope | v] */
    /* A GGUF's block-quantized attn_k_b / attn_v_b as the file holds them,
     * this rank's heads, for the absorbed (decode) path to multiply with
     * float activations (quant.h, dsv_q_absorb) instead of reading the bf16
     * wkv_b built from them (which the MHA prefill path still reads);
     * gtype 0 when the tensors are float, unsplit or of a type without
     * decode kernels. */
    dsv_linear k_b;             /* [H*kv_lora, nope]: head h's row c = its key half's column c */
    dsv_linear v_b;             /* [H*v, kv_lora]: head h's value rows */
    dsv_linear wo;              /* o_proj [dim, H*v] */
    /* Lightning indexer */
    dsv_linear idx_wq_b;        /* indexer.wq_b [Hi*128, q_lora]; per head [rope | nope] */
    dsv_linear idx_wk;          /* indexer.wk [128, dim] */
    const float *idx_k_norm_w;  /* indexer.k_norm.weight [128] */
    const float *idx_k_norm_b;  /* indexer.k_norm.bias [128] */
    dsv_linear idx_wproj;       /* indexer.weights_proj [Hi, dim], used in fp32 */
    /* FFN: a dense MLP (layer < first_k_dense_replace) or a MoE */
    int is_moe;
    dsv_expert mlp;             /* dense MLP [inter_dim] */
    dsv_linear gate;            /* mlp.gate [n_experts, dim], used in fp32 */
    const float *gate_bias;     /* e_score_correction_bias [n_experts], or NULL */
    dsv_expert *experts;        /* [n_routed_experts]; a split model holds [expert0, expert1) */
    dsv_expert shared;          /* shared_experts [n_shared*moe_inter]; absent if n_shared = 0 */
} dsv_layer;

/* In a model split across processes (format/shard.h), every matrix below is this
 * rank's part: shapes in comments are the whole model's, cut as sh says. */
struct dsv_model {
    dsv_config cfg;
    dsv_shard sh;               /* this rank's part (everything when not split) */
    int n_local_heads;          /* sh.head1 - sh.head0: the heads MLA computes here */
    int par_id;                 /* the leader's name for it, in a split model */
    const dsv_coll *coll;       /* the collectives it was opened with (coll.h) */
    int *par_vocab;             /* [2][size]: every rank's first vocabulary row and count */
    dsv_st *st;
    dsv_gguf *gguf;             /* a model opened from GGUF (model_gguf.c) instead of st */
    void *owned;                /* weights built at load (GGUF: wkv_b, a quantized embedding) */
    int no_indexer;             /* no lightning indexer (GGUF deepseek2): contexts attend densely */
    const void *embed;          /* embed_tokens [vocab, dim] */
    dsv_dtype embed_dtype;      /* BF16, F16 or F32 */
    const float *norm;          /* model.norm [dim] */
    dsv_linear head;            /* lm_head [vocab, dim], used in fp32 */
    dsv_layer *layers;          /* [n_layers] */
    dsv_expert *expert_store;   /* backing array of every layer's experts */
    float *vecs;                /* backing store of the fp32 vectors */
    uint64_t weight_bytes;      /* bytes of matrices the forward pass streams */
};

/* A GGUF file or split set (model_gguf.c), in two steps around the plan:
 * open reads and checks the metadata into m->cfg and says where column cuts
 * may fall; load, once m->sh is this rank's part, maps the part. Open is a
 * collective: its outcome is agreed by every rank (a failing rank's status
 * and message on all of them), and the ranks check they hold the same file,
 * so after a failed open no rank builds anything. The caller frees m on
 * failure as after a failed safetensors load. */
int dsv_model_open_gguf(dsv_model *m, const char *path, const dsv_model_params *params, dsv_shard_blocks *blocks);
int dsv_model_load_gguf(dsv_model *m, const char *path, const dsv_model_params *params);
/* DSV_OK when columns [lo, hi) of a GGUF tensor of `type` whose rows are
 * n_in long start and end between its blocks (the end of a row counts),
 * else DSV_ERR_UNSUPPORTED with a message naming the file, the tensor, the
 * type and the cut (model_gguf.c; checked for every column cut of a split). */
int dsv_model_gguf_check_cut(const char *path, const char *name, uint32_t type, int n_in, int lo, int hi, int rank,
                             int size);

#endif
