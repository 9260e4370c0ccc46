/*
 * rbfk_check_q15.c - rbfk_net_check_q15: validate a fixed-point network descriptor.
 */
#include "rbfk_internal.h"

static int rbfk__in(int32_t v, int32_t lo, int32_t hi)
{
    return v >= lo && v <= hi;
}

/* deep != 0 also reads the (C, D) metric weights; the forward pass uses deep == 0 (O(C) work). */
rbfk_status rbfk__check_q15(const rbfk_net_q15 *net, int deep)
{
    int32_t C, j, n;

    if (net == NULL) {
        return RBFK_ERR_NULL;
    }
    C = net->n_centers;
    if (!rbfk__in(net->in_dim, 1, RBFK_MAX_DIM) || !rbfk__in(C, 1, RBFK_MAX_DIM) ||
        !rbfk__in(net->out_dim, 1, RBFK_MAX_DIM)) {
        return RBFK_ERR_DIM;
    }
    if (net->centers == NULL || net->gain_m == NULL || net->gain_sh == NULL || net->weight == NULL) {
        return RBFK_ERR_NULL;
    }
    switch (net->metric) {
    case RBFK_METRIC_NONE:
        n = 0;
        break;
    case RBFK_METRIC_DIAG:
        n = C * net->in_dim;
        break;
    case RBFK_METRIC_SHARED_DIAG:
        n = net->in_dim;
        break;
    default: /* FULL metrics have no fixed-point path */
        return RBFK_ERR_METRIC;
    }
    if (n > 0 && net->metric_w == NULL) {
        return RBFK_ERR_METRIC;
    }
    if (deep) {
        for (j = 0; j < n; ++j) {
            if (net->metric_w[j] < 0) {
                return RBFK_ERR_METRIC;
            }
        }
    }
    if (net->kind != RBFK_GAUSSIAN && net->kind != RBFK_INVERSE_QUADRATIC && net->kind != RBFK_QUADRATIC) {
        return RBFK_ERR_KIND;
    }
    /* x_frac and w_frac only document the formats (the gains absorb them); negative fractional
     * bits mean LSBs larger than 1 (large values) */
    if (!rbfk__in(net->x_frac, -15, 15) || !rbfk__in(net->w_frac, -30, 30) || !rbfk__in(net->h_frac, 0, 15) ||
        !rbfk__in(net->wo_frac, -30, 30) || !rbfk__in(net->y_frac, -30, 30) ||
        net->wo_frac + net->h_frac - net->y_frac > 62) {
        return RBFK_ERR_PARAM;
    }
    if (net->kind != RBFK_QUADRATIC && net->h_frac != 15) {
        return RBFK_ERR_PARAM; /* gaussian and inverse_quadratic produce Q15 directly */
    }
    for (j = 0; j < C; ++j) {
        /* the gain encodes the width: a non-positive one is a non-positive sigma */
        if (net->gain_m[j] <= 0) {
            return RBFK_ERR_SIGMA;
        }
        if (!rbfk__in(net->gain_sh[j], 0, 62)) {
            return RBFK_ERR_PARAM;
        }
    }
    return RBFK_OK;
}

rbfk_status rbfk_net_check_q15(const rbfk_net_q15 *net)
{
    return rbfk__check_q15(net, 1);
}
