/* adapt.h: the test hook of indexer adaptation (the rest is public in
 * include/dsv32_adapt.h). */
#ifndef DSV_ADAPT_H
#define DSV_ADAPT_H

#include "dsv32_adapt.h"

/* The stage's loss on one window of ctx ids (the mean KL per query and
 * layer, as a step with batch 1 sees it) and, in *grad, its gradient with
 * respect to every trained parameter, in the order of dsv_adapt_tensor
 * (valid until the next call on the adapter). Nothing is updated. */
int dsv_adapt_loss_grad(dsv_adapter *a, const int32_t *window, double *loss, const float **grad);

#endif
