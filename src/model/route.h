/* route.h: which experts a token goes to (model.py Gate.forward's choice),
 * shared by the engine (moe.c) and training (train_ops.c). */
#ifndef DSV_ROUTE_H
#define DSV_ROUTE_H

#include <stdint.h>

#include "dsv32.h"

/* Chooses the K = n_activated_experts experts from the selection scores
 * sc [n_routed_experts] (scores plus e_score_correction_bias when `biased`):
 * with several expert groups, first the n_limited_groups groups with the
 * best sum of their two best scores (biased) or their best score, then the
 * K best experts of those, into idx in rank order. Ties go to the lower
 * index (torch.topk leaves them unspecified; this is deterministic). sc is
 * clobbered (experts of dropped groups become -inf). */
void dsv_route_choose(const dsv_config *c, float *sc, int biased, int32_t *idx);

#endif
