/* route.c: the expert choice of the MoE router (route.h). */
#include "route.h"

#include <math.h>

#include "base/util.h"

/* Selection rank: higher first, lower index on ties. */
static int better(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

void dsv_route_choose(const dsv_config *c, float *sc, int biased, int32_t *idx) {
    const int E = c->n_routed_experts, K = c->n_activated_experts, G = c->n_expert_groups;
    const int per = E / G;
    float gs[1024];
    int gsel[1024];
    DSV_ASSERT(G <= 1024);
    if (G > 1) {
        for (int g = 0; g < G; g++) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sc[e] > b1) { b2 = b1; b1 = sc[e]; }
                else if (sc[e] > b2) b2 = sc[e];
            }
            gs[g] = biased ? b1 + b2 : b1;
            gsel[g] = 0;
        }
        for (int k = 0; k < c->n_limited_groups; k++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!gsel[g] && (best < 0 || better(gs[g], g, gs[best], best))) best = g;
            gsel[best] = 1;
        }
        for (int g = 0; g < G; g++)
            if (!gsel[g])
                for (int e = g * per; e < (g + 1) * per; e++) sc[e] = -INFINITY;
    }
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= idx[j] == e;
            if (!taken && (best < 0 || better(sc[e], e, sc[best], best))) best = e;
        }
        idx[k] = best;
    }
}
