/*
 * rbfk.h - portable C99 radial-basis-function network kernel for microcontrollers.
 *
 * One public header (CMSIS-NN style): types, status codes and every public function.
 * One public function per .c file (rbfk_<op>_<dtype>.c). No malloc, no global state, no libc
 * beyond <stdint.h>/<stddef.h>; scratch memory is passed in by the caller, sized by
 * rbfk_net_scratch_size_f32().
 *
 * Network (paper: tinyml-rbf-networks.md, Section 1.1; metric forms: the rbfkern `rbf` op):
 *     x'   = (x - mean) / scale                    optional input standardisation
 *     r2_j = sum_d w_jd (x'_d - c_jd)^2            metric DIAG (per centre) / SHARED_DIAG / NONE (w = 1)
 *     r2_j = || (x' - c_j) L_j ||^2                metric FULL (per centre) / SHARED_FULL, L lower-triangular
 *     h_j  = phi(r2_j; sigma_j, shape)             the eight activations of rbfk_kind
 *     y_k  = sum_j W_kj h_j + b_k
 *
 * Floating point: every f32 result is computed with IEEE single + - * / only and the library's
 * own exp/log/sqrt/pow (rbfk_expf, ...), so with -ffp-contract=off the output bits are identical on
 * the host (x86-64 SSE, aarch64), Cortex-M4F (FPv4-SP), Cortex-M0/M3 (soft float) and RV32 (F or
 * soft float). Define RBFK_USE_LIBM to use <math.h> instead (faster, not bit-reproducible).
 *
 * Accuracy of the float helpers against double precision (measured over 10^6+ inputs each,
 * tests/test_mcu.py::test_math_accuracy re-checks them):
 *     rbfk_sqrtf   correctly rounded (0.5 ulp)
 *     rbfk_expf    < 1.5e-7 relative on [-87, 88] (measured 1.02e-7); 0 below -103.97, inf above 88.72
 *     rbfk_logf    < 1e-7 absolute on [0.5, 2] (measured 4.0e-8), < 1.5e-7 relative elsewhere (8.1e-8)
 *     rbfk_powf    relative error < (|a ln x| + 1) * 2e-7 (measured 1.05e-7 times that factor)
 *     rbfk_exp2_neg_q15  < 1.2 LSB of Q15 (every input in [0, 16))
 */
#ifndef RBFK_H
#define RBFK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RBFK_VERSION_MAJOR 0
#define RBFK_VERSION_MINOR 1

/** Largest accepted dimension (input dim, centres, outputs); keeps every index product in int32. */
#define RBFK_MAX_DIM 4096

/** Status returned by every checked function. */
typedef enum {
    RBFK_OK = 0,
    RBFK_ERR_NULL = -1,       /**< a required pointer is NULL */
    RBFK_ERR_DIM = -2,        /**< a dimension is < 1 or > RBFK_MAX_DIM */
    RBFK_ERR_METRIC = -3,     /**< unknown metric, or metric weights missing / negative */
    RBFK_ERR_KIND = -4,       /**< unknown activation, or one the dtype does not support */
    RBFK_ERR_SIGMA = -5,      /**< sigma not finite and > 0 */
    RBFK_ERR_PARAM = -6,      /**< other parameter out of range (shape, scale, shifts) */
    RBFK_ERR_NONFINITE = -7   /**< non-finite value in the input */
} rbfk_status;

/** Metric form of the squared distance. */
typedef enum {
    RBFK_METRIC_NONE = 0,        /**< Euclidean: metric == NULL */
    RBFK_METRIC_DIAG = 1,        /**< metric (C, D), non-negative */
    RBFK_METRIC_SHARED_DIAG = 2, /**< metric (D,), non-negative */
    RBFK_METRIC_FULL = 3,        /**< metric (C, D(D+1)/2): packed lower triangle of each L_j, row-major */
    RBFK_METRIC_SHARED_FULL = 4  /**< metric (D(D+1)/2,): one packed lower triangle L */
} rbfk_metric;

/** Activation phi(r2) with s = sigma_j, a = shape. */
typedef enum {
    RBFK_LINEAR = 0,               /**< sqrt(r2) */
    RBFK_GAUSSIAN = 1,             /**< exp(-r2 / (2 s^2)) */
    RBFK_THIN_PLATE = 2,           /**< 0.5 r2 ln r2, 0 at r2 = 0 */
    RBFK_LOGISTIC = 3,             /**< 1 / (1 + exp((r2 - a^2) / s^2)) */
    RBFK_INVERSE_MULTIQUADRIC = 4, /**< (r2 + s^2)^(-a) */
    RBFK_MULTIQUADRIC = 5,         /**< (r2 + s^2)^a */
    RBFK_INVERSE_QUADRATIC = 6,    /**< 1 / (1 + r2 / s^2) */
    RBFK_QUADRATIC = 7             /**< 1 - r2 / s^2 */
} rbfk_kind;

/**
 * Float network descriptor. All arrays are caller-owned (typically `static const` in flash, as
 * written by rbfkern.mcu.export_c) and row-major.
 */
typedef struct {
    int32_t in_dim;         /**< D */
    int32_t n_centers;      /**< C */
    int32_t out_dim;        /**< K */
    rbfk_metric metric;
    rbfk_kind kind;
    float shape;            /**< a (logistic, (inverse_)multiquadric); ignored otherwise */
    const float *centers;   /**< (C, D) */
    const float *metric_w;  /**< see rbfk_metric; NULL for RBFK_METRIC_NONE */
    const float *sigma;     /**< (C,), each finite and > 0 */
    const float *weight;    /**< (K, C) */
    const float *bias;      /**< (K,) or NULL */
    const float *in_mean;   /**< (D,) or NULL: no standardisation (then in_scale must be NULL too) */
    const float *in_scale;  /**< (D,), each finite and > 0 */
} rbfk_net_f32;

/**
 * Fixed-point network descriptor (cores without an FPU). Supports RBFK_METRIC_NONE / DIAG /
 * SHARED_DIAG and the GAUSSIAN, INVERSE_QUADRATIC and QUADRATIC activations.
 *
 * Formats (real value = integer * 2^-frac):
 *   inputs x and centres: int16, frac bits `x_frac` (inputs are already standardised);
 *   metric weights: int16 in [0, 32767], real w = metric_w * 2^-w_frac;
 *   per-centre activation scale: z_j = r2_j * g_j with g_j = log2(e)/(2 s^2) (gaussian: h = 2^-z)
 *     or 1/s^2 (inverse_quadratic, quadratic),
 *     stored as mantissa gain_m[j] in [16384, 32767] and shift gain_sh[j] so that
 *     z (Q16.16) = (acc * gain_m[j]) >> gain_sh[j] (rounded, saturated to 32 bits) where
 *     acc = sum_d round(|dx_d| w_d / 2^15) |dx_d| (DIAG) or sum_d dx_d^2 (NONE), dx = sat16(x - c);
 *   hidden activations: int16 with frac bits `h_frac`;
 *   output weights: int16 with frac bits `wo_frac`; bias: int32 with frac bits wo_frac + h_frac;
 *   outputs y: int16 with frac bits `y_frac` (saturated).
 * rbfkern.mcu.export_c(..., dtype="q15") chooses the formats; the error bound against float64
 * (per sample, first-order propagation of every rounding, x1.25 + 2 output LSB) is
 * rbfkern.mcu.export.q15_error_bound. Digits (64-32-10): max |error| 1.3e-4, bound 3.2e-3.
 */
typedef struct {
    int32_t in_dim;
    int32_t n_centers;
    int32_t out_dim;
    rbfk_metric metric;      /**< NONE, DIAG or SHARED_DIAG */
    rbfk_kind kind;          /**< GAUSSIAN, INVERSE_QUADRATIC or QUADRATIC */
    int32_t x_frac;          /**< -15..15 */
    int32_t w_frac;          /**< -30..30 */
    int32_t h_frac;          /**< 0..15 */
    int32_t wo_frac;         /**< -30..30 */
    int32_t y_frac;          /**< -30..30, and wo_frac + h_frac - y_frac <= 62 */
    const int16_t *centers;  /**< (C, D) */
    const int16_t *metric_w; /**< (C, D) / (D,) / NULL */
    const int16_t *gain_m;   /**< (C,) */
    const int8_t *gain_sh;   /**< (C,), 0..62 */
    const int16_t *weight;   /**< (K, C) */
    const int32_t *bias;     /**< (K,) or NULL */
} rbfk_net_q15;

/* ---- float helpers (rbfk_exp_f32.c, rbfk_log_f32.c, rbfk_sqrt_f32.c, rbfk_pow_f32.c) ---- */
float rbfk_expf(float x);
float rbfk_logf(float x);   /**< NaN for x < 0 or NaN, -inf at 0 */
float rbfk_sqrtf(float x);  /**< correctly rounded; NaN for x < 0 */
float rbfk_powf(float x, float a); /**< x > 0: exp(a log x); x == 0: 0 (a > 0), 1 (a == 0), inf (a < 0) */

/* ---- fixed-point helper (rbfk_exp_q15.c) ---- */
/** 2^-t for t >= 0 in Q16.16; result in Q15 (1 -> 32767, saturated). Max error 1.2 LSB. */
int16_t rbfk_exp2_neg_q15(uint32_t t_q16);

/* ---- float network (rbfk_net_f32.c, rbfk_check_f32.c, rbfk_scratch_f32.c, rbfk_predict_f32.c) ---- */
/** Validate a descriptor (dimensions, pointers, enums, sigma > 0, metric weights >= 0, scale > 0). */
rbfk_status rbfk_net_check_f32(const rbfk_net_f32 *net);
/** Floats of scratch rbfk_net_forward_f32 needs (0 for an invalid descriptor; may be 0 when valid). */
size_t rbfk_net_scratch_size_f32(const rbfk_net_f32 *net);
/**
 * y (K,) = network(x (D,)). scratch: rbfk_net_scratch_size_f32(net) floats (NULL allowed when that
 * is 0). Checks the descriptor's structure, sigma and in_scale on every call (O(C + D)); the metric
 * weights' values are checked by rbfk_net_check_f32 only. On error y is unspecified.
 */
rbfk_status rbfk_net_forward_f32(const rbfk_net_f32 *net, const float *x, float *scratch, float *y);
/** argmax_k y_k (first on ties) through rbfk_net_forward_f32; y (K,) is caller scratch and keeps the outputs. */
rbfk_status rbfk_net_predict_class_f32(const rbfk_net_f32 *net, const float *x, float *scratch, float *y,
                                       int32_t *cls);

/* ---- fixed-point network (rbfk_net_q15.c, rbfk_check_q15.c, rbfk_scratch_q15.c, rbfk_predict_q15.c) ---- */
rbfk_status rbfk_net_check_q15(const rbfk_net_q15 *net);
/** int16 scratch elements rbfk_net_forward_q15 needs (C); 0 for an invalid descriptor. */
size_t rbfk_net_scratch_size_q15(const rbfk_net_q15 *net);
/**
 * y (K,) with y_frac bits = network(x (D,) with x_frac bits, already standardised). scratch: C int16
 * (the hidden activations). Checks structure and gains per call (O(C)); metric weights' values
 * only in rbfk_net_check_q15.
 */
rbfk_status rbfk_net_forward_q15(const rbfk_net_q15 *net, const int16_t *x, int16_t *scratch, int16_t *y);
rbfk_status rbfk_net_predict_class_q15(const rbfk_net_q15 *net, const int16_t *x, int16_t *scratch, int16_t *y,
                                       int32_t *cls);

/** Generic name of the API: the float predict. */
#define rbfk_net_predict_class rbfk_net_predict_class_f32

#ifdef __cplusplus
}
#endif
#endif /* RBFK_H */
