/*
 * rbfk_fuzz_format.h - the byte layout of one fuzz input, shared by the harness (rbfk_fuzz.c) and
 * the seed writer (rbfk_seed.c). Little-endian; a reader past the end reads zero bytes.
 *
 *   u8   op      FUZZ_OP_F32 / FUZZ_OP_Q15: one network descriptor and one input vector;
 *                FUZZ_OP_MATH: the float/fixed-point helpers on the remaining bytes
 *   u16  nulls   bit FUZZ_NULL_* set: that pointer is NULL
 *   i32  in_dim, n_centers, out_dim   a valid value (1..RBFK_MAX_DIM) is folded into 1..FUZZ_MAX_DIM
 *                so that every array can be allocated at exactly the size the descriptor claims;
 *                an invalid one is passed unchanged (the checks must reject it)
 *   i32  metric, kind                 passed unchanged (unknown values must be rejected)
 *   f32: f32 shape | q15: i32 x_frac, w_frac, h_frac, wo_frac, y_frac
 *   the descriptor's arrays in struct order, each at its exact length (fuzz_len_*), then x (D,)
 *   (q15: gain_sh is int8, bias int32, everything else int16)
 */
#ifndef RBFK_FUZZ_FORMAT_H
#define RBFK_FUZZ_FORMAT_H

#include <stdint.h>

#include "rbfk.h"

enum { FUZZ_OP_F32 = 0, FUZZ_OP_Q15 = 1, FUZZ_OP_MATH = 2, FUZZ_N_OPS = 3 };

/* pointer order in the nulls mask (f32 uses all but GAIN_*, q15 all but SIGMA/MEAN/SCALE) */
enum {
    FUZZ_NULL_NET, FUZZ_NULL_CENTERS, FUZZ_NULL_METRIC_W, FUZZ_NULL_SIGMA, FUZZ_NULL_WEIGHT,
    FUZZ_NULL_BIAS, FUZZ_NULL_IN_MEAN, FUZZ_NULL_IN_SCALE, FUZZ_NULL_GAIN_M, FUZZ_NULL_GAIN_SH,
    FUZZ_NULL_X, FUZZ_NULL_SCRATCH, FUZZ_NULL_Y, FUZZ_NULL_CLS
};

/* largest dimension the harness allocates; the seeds' digits model (64-32-10) fits */
#define FUZZ_MAX_DIM 64

static inline int32_t fuzz_fold_dim(int32_t v)
{
    return (v >= 1 && v <= RBFK_MAX_DIM) ? (v - 1) % FUZZ_MAX_DIM + 1 : v;
}

/* a dimension as an allocation size: invalid dimensions get 1-element arrays (never read) */
static inline int64_t fuzz_alloc_dim(int32_t v)
{
    return (v >= 1 && v <= FUZZ_MAX_DIM) ? v : 1;
}

/* elements of metric_w the descriptor claims (float or int16) */
static inline int64_t fuzz_len_metric(int32_t metric, int64_t C, int64_t D)
{
    switch (metric) {
    case RBFK_METRIC_DIAG:
        return C * D;
    case RBFK_METRIC_SHARED_DIAG:
        return D;
    case RBFK_METRIC_FULL:
        return C * (D * (D + 1) / 2);
    case RBFK_METRIC_SHARED_FULL:
        return D * (D + 1) / 2;
    default:
        return 0; /* NONE or unknown: nothing may be read */
    }
}

#endif /* RBFK_FUZZ_FORMAT_H */
