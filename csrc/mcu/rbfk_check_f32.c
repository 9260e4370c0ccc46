/*
 * rbfk_check_f32.c - rbfk_net_check_f32: validate a float network descriptor.
 */
#include "rbfk_internal.h"

static int rbfk__dim_ok(int32_t n)
{
    return n >= 1 && n <= RBFK_MAX_DIM;
}

/* every element finite and >= 0 (strictly > 0 when positive != 0) */
static int rbfk__all_ok(const float *v, int32_t n, int positive)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (!rbfk__finite(v[i]) || v[i] < 0.0f || (positive && v[i] == 0.0f)) {
            return 0;
        }
    }
    return 1;
}

static int rbfk__all_finite(const float *v, int32_t n)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (!rbfk__finite(v[i])) {
            return 0;
        }
    }
    return 1;
}

/*
 * deep != 0 also reads every metric weight (O(C D) or O(C D^2)); the forward pass calls it with
 * deep == 0: structure, enums, sigma (O(C)) and in_scale (O(D)) only.
 */
rbfk_status rbfk__check_f32(const rbfk_net_f32 *net, int deep)
{
    int32_t D, C, tri;

    if (net == NULL) {
        return RBFK_ERR_NULL;
    }
    D = net->in_dim;
    C = net->n_centers;
    if (!rbfk__dim_ok(D) || !rbfk__dim_ok(C) || !rbfk__dim_ok(net->out_dim)) {
        return RBFK_ERR_DIM;
    }
    if (net->centers == NULL || net->sigma == NULL || net->weight == NULL) {
        return RBFK_ERR_NULL;
    }
    if ((net->in_mean == NULL) != (net->in_scale == NULL)) {
        return RBFK_ERR_NULL;
    }
    tri = D * (D + 1) / 2;
    switch (net->metric) {
    case RBFK_METRIC_NONE:
        break;
    case RBFK_METRIC_DIAG:
    case RBFK_METRIC_SHARED_DIAG:
        if (net->metric_w == NULL) {
            return RBFK_ERR_METRIC;
        }
        if (deep && !rbfk__all_ok(net->metric_w, net->metric == RBFK_METRIC_DIAG ? C * D : D, 0)) {
            return RBFK_ERR_METRIC;
        }
        break;
    case RBFK_METRIC_FULL:
    case RBFK_METRIC_SHARED_FULL:
        if (net->metric_w == NULL) {
            return RBFK_ERR_METRIC;
        }
        /* C * tri can exceed int32 for huge D and C: check the size first */
        if (net->metric == RBFK_METRIC_FULL && (int64_t)C * tri > (int64_t)0x7fffffff) {
            return RBFK_ERR_DIM;
        }
        if (deep && !rbfk__all_finite(net->metric_w, net->metric == RBFK_METRIC_FULL ? C * tri : tri)) {
            return RBFK_ERR_METRIC;
        }
        break;
    default:
        return RBFK_ERR_METRIC;
    }
    if ((uint32_t)net->kind > (uint32_t)RBFK_QUADRATIC) { /* also catches negative values */
        return RBFK_ERR_KIND;
    }
    if (!rbfk__all_ok(net->sigma, C, 1)) {
        return RBFK_ERR_SIGMA;
    }
    if (!rbfk__finite(net->shape)) {
        return RBFK_ERR_PARAM;
    }
    if (net->in_scale != NULL && (!rbfk__all_ok(net->in_scale, D, 1) || !rbfk__all_finite(net->in_mean, D))) {
        return RBFK_ERR_PARAM;
    }
    return RBFK_OK;
}

rbfk_status rbfk_net_check_f32(const rbfk_net_f32 *net)
{
    return rbfk__check_f32(net, 1);
}
