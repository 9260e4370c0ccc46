/*
 * rbfk_net_f32.c - rbfk_net_forward_f32: one float inference of an RBF network.
 *
 * Order of evaluation (fixed, so every target produces the same bits):
 *   x'_d = (x_d - mean_d) / scale_d;  r2_j accumulated over d in increasing order;
 *   h_j from r2_j; y_k = (sum over j in increasing order of W_kj h_j) + b_k.
 * The output layer is accumulated centre by centre into y, so no (C,) buffer is needed.
 * Per call the descriptor's structure, sigma and in_scale are checked (O(C + D)); the metric
 * weights' values only by rbfk_net_check_f32 (call it once after loading a model).
 */
#include "rbfk_internal.h"

/* r2 of centre j: diag/shared-diag/Euclidean, w == NULL for Euclidean */
static float rbfk__r2_diag(const float *x, const float *c, const float *w, int32_t D)
{
    float acc = 0.0f;
    int32_t d;
    if (w == NULL) {
        for (d = 0; d < D; ++d) {
            float t = x[d] - c[d];
            acc += t * t;
        }
    } else {
        for (d = 0; d < D; ++d) {
            float t = x[d] - c[d];
            acc += t * t * w[d];
        }
    }
    return acc;
}

/* r2 = ||(x - c) L||^2, L packed lower triangle: L[d][k] (k <= d) at d (d + 1) / 2 + k */
static float rbfk__r2_tril(const float *x, const float *c, const float *L, int32_t D, float *diff)
{
    float acc = 0.0f;
    int32_t d, k;
    for (d = 0; d < D; ++d) {
        diff[d] = x[d] - c[d];
    }
    for (k = 0; k < D; ++k) {
        float u = 0.0f;
        int32_t idx = k * (k + 1) / 2 + k; /* L[k][k] */
        for (d = k; d < D; ++d) {
            u += diff[d] * L[idx];
            idx += d + 1; /* L[d][k] -> L[d + 1][k] */
        }
        acc += u * u;
    }
    return acc;
}

static float rbfk__activation(float r2, rbfk_kind kind, float s, float a)
{
    float s2 = s * s;
    switch (kind) {
    case RBFK_LINEAR:
        return RBFK__SQRTF(r2);
    case RBFK_GAUSSIAN:
        return RBFK__EXPF(-r2 / (2.0f * s2));
    case RBFK_THIN_PLATE:
        return r2 > 0.0f ? 0.5f * r2 * RBFK__LOGF(r2) : 0.0f;
    case RBFK_LOGISTIC:
        return 1.0f / (1.0f + RBFK__EXPF((r2 - a * a) / s2));
    case RBFK_INVERSE_MULTIQUADRIC:
        return RBFK__POWF(r2 + s2, -a);
    case RBFK_MULTIQUADRIC:
        return RBFK__POWF(r2 + s2, a);
    case RBFK_INVERSE_QUADRATIC:
        return 1.0f / (1.0f + r2 / s2);
    case RBFK_QUADRATIC:
    default: /* the kind was checked */
        return 1.0f - r2 / s2;
    }
}

rbfk_status rbfk_net_forward_f32(const rbfk_net_f32 *net, const float *x, float *scratch, float *y)
{
    rbfk_status st = rbfk__check_f32(net, 0);
    const float *xs;
    float *diff = scratch;
    int32_t D, C, K, j, k, d, tri;

    if (st != RBFK_OK) {
        return st;
    }
    if (x == NULL || y == NULL) {
        return RBFK_ERR_NULL;
    }
    if (rbfk_net_scratch_size_f32(net) > 0 && scratch == NULL) {
        return RBFK_ERR_NULL;
    }
    D = net->in_dim;
    C = net->n_centers;
    K = net->out_dim;
    tri = D * (D + 1) / 2;
    for (d = 0; d < D; ++d) {
        if (!rbfk__finite(x[d])) {
            return RBFK_ERR_NONFINITE;
        }
    }
    xs = x;
    if (net->in_mean != NULL) {
        for (d = 0; d < D; ++d) {
            scratch[d] = (x[d] - net->in_mean[d]) / net->in_scale[d];
        }
        xs = scratch;
        diff = scratch + D;
    }
    for (k = 0; k < K; ++k) {
        y[k] = 0.0f;
    }
    for (j = 0; j < C; ++j) {
        const float *c = net->centers + (size_t)j * (size_t)D;
        float r2, h;
        switch (net->metric) {
        case RBFK_METRIC_DIAG:
            r2 = rbfk__r2_diag(xs, c, net->metric_w + (size_t)j * (size_t)D, D);
            break;
        case RBFK_METRIC_SHARED_DIAG:
            r2 = rbfk__r2_diag(xs, c, net->metric_w, D);
            break;
        case RBFK_METRIC_FULL:
            r2 = rbfk__r2_tril(xs, c, net->metric_w + (size_t)j * (size_t)tri, D, diff);
            break;
        case RBFK_METRIC_SHARED_FULL:
            r2 = rbfk__r2_tril(xs, c, net->metric_w, D, diff);
            break;
        case RBFK_METRIC_NONE:
        default:
            r2 = rbfk__r2_diag(xs, c, NULL, D);
            break;
        }
        h = rbfk__activation(r2, net->kind, net->sigma[j], net->shape);
        for (k = 0; k < K; ++k) {
            y[k] += net->weight[(size_t)k * (size_t)C + (size_t)j] * h;
        }
    }
    if (net->bias != NULL) {
        for (k = 0; k < K; ++k) {
            y[k] += net->bias[k];
        }
    }
    return RBFK_OK;
}
