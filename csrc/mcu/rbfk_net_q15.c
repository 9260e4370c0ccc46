/*
 * rbfk_net_q15.c - rbfk_net_forward_q15: one fixed-point inference (no FPU, no division in the
 * inner loops; the formats are documented at rbfk_net_q15 in rbfk.h).
 *
 * Per centre: dx = sat16(x - c); acc (uint64) = sum dx^2 (NONE) or sum round(|dx| w / 2^15) |dx|
 * (DIAG; the two 32-bit products never overflow: |dx| <= 32767, w <= 32767);
 * z (Q16.16) = round(acc * gain_m >> gain_sh), saturated; h = 2^-z | 1/(1+z) | 1-z.
 * Output: int64 sum of int16 x int16 products plus bias, rounded and saturated to int16.
 * Only unsigned shifts: no implementation-defined right shifts of negative values.
 */
#include "rbfk_internal.h"

/* round(v / 2^sh) half away from zero, sh in [0, 63]; sh == 0 returns v */
static int64_t rbfk__rshift_round(int64_t v, int32_t sh)
{
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (sh > 0) {
        mag = (mag >> sh) + ((mag >> (sh - 1)) & 1u);
    }
    return v < 0 ? -(int64_t)mag : (int64_t)mag;
}

static int16_t rbfk__sat16(int64_t v)
{
    return (int16_t)(v > 32767 ? 32767 : (v < -32768 ? -32768 : v));
}

/* |x - c| saturated to 32767 */
static inline uint32_t rbfk__absdiff(int16_t x, int16_t c)
{
    int32_t dx = (int32_t)x - (int32_t)c;
    uint32_t adx = dx < 0 ? (uint32_t)-dx : (uint32_t)dx;
    return adx > 32767u ? 32767u : adx;
}

/* sum dx^2: each term <= 2^30, exact */
static uint64_t rbfk__acc_none(const int16_t *x, const int16_t *c, int32_t D)
{
    uint64_t acc = 0;
    int32_t d;
    for (d = 0; d < D; ++d) {
        uint32_t adx = rbfk__absdiff(x[d], c[d]);
        acc += adx * adx;
    }
    return acc;
}

/* sum round(|dx| w / 2^15) |dx|: both products < 2^30 */
static uint64_t rbfk__acc_diag(const int16_t *x, const int16_t *c, const int16_t *w, int32_t D)
{
    uint64_t acc = 0;
    int32_t d;
    for (d = 0; d < D; ++d) {
        uint32_t adx = rbfk__absdiff(x[d], c[d]);
        acc += ((adx * (uint32_t)w[d] + 16384u) >> 15) * adx;
    }
    return acc;
}

static int16_t rbfk__hidden(uint32_t z, rbfk_kind kind, int32_t h_frac)
{
    if (kind == RBFK_GAUSSIAN) {
        return rbfk_exp2_neg_q15(z);
    }
    if (kind == RBFK_INVERSE_QUADRATIC) {
        uint32_t den;
        if (z >= 0xffff0000u) {
            return 0; /* 1 / (1 + z) < 2^-16: rounds to 0 */
        }
        den = 65536u + z;
        den = ((1u << 31) + (den >> 1)) / den; /* Q15 */
        return (int16_t)(den > 32767u ? 32767u : den);
    }
    /* quadratic: 1 - z (Q16.16) to h_frac bits */
    return rbfk__sat16(rbfk__rshift_round((int64_t)65536 - (int64_t)z, 16 - h_frac));
}

rbfk_status rbfk_net_forward_q15(const rbfk_net_q15 *net, const int16_t *x, int16_t *scratch, int16_t *y)
{
    rbfk_status st = rbfk__check_q15(net, 0);
    int32_t D, C, K, j, k, sh;

    if (st != RBFK_OK) {
        return st;
    }
    if (x == NULL || y == NULL || scratch == NULL) {
        return RBFK_ERR_NULL;
    }
    D = net->in_dim;
    C = net->n_centers;
    K = net->out_dim;
    for (j = 0; j < C; ++j) {
        const int16_t *c = net->centers + (size_t)j * (size_t)D;
        const int16_t *w = NULL;
        uint64_t acc, zz;
        uint32_t z;
        int32_t gsh = net->gain_sh[j];

        if (net->metric == RBFK_METRIC_DIAG) {
            w = net->metric_w + (size_t)j * (size_t)D;
        } else if (net->metric == RBFK_METRIC_SHARED_DIAG) {
            w = net->metric_w;
        }
        acc = w == NULL ? rbfk__acc_none(x, c, D) : rbfk__acc_diag(x, c, w, D);
        zz = acc * (uint64_t)net->gain_m[j];
        if (gsh > 0) {
            zz = (zz >> gsh) + ((zz >> (gsh - 1)) & 1u);
        }
        z = zz > 0xffffffffu ? 0xffffffffu : (uint32_t)zz;
        scratch[j] = rbfk__hidden(z, net->kind, net->h_frac);
    }
    sh = net->wo_frac + net->h_frac - net->y_frac;
    for (k = 0; k < K; ++k) {
        const int16_t *wk = net->weight + (size_t)k * (size_t)C;
        int64_t a = net->bias != NULL ? (int64_t)net->bias[k] : 0;
        for (j = 0; j < C; ++j) {
            a += (int32_t)wk[j] * (int32_t)scratch[j];
        }
        if (sh >= 0) {
            y[k] = rbfk__sat16(rbfk__rshift_round(a, sh));
        } else {
            /* y_frac > wo_frac + h_frac: scale up, saturating before the shift can overflow */
            int32_t shl = -sh;
            y[k] = (a > (int64_t)(32767 >> (shl > 15 ? 15 : shl)) || a < -(int64_t)(32768 >> (shl > 15 ? 15 : shl)))
                       ? (int16_t)(a > 0 ? 32767 : -32768)
                       : rbfk__sat16(a * ((int64_t)1 << shl));
        }
    }
    return RBFK_OK;
}
