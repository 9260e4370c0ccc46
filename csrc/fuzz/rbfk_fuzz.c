/*
 * rbfk_fuzz.c - libFuzzer harness for the MCU C API (csrc/mcu/rbfk.h).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc/mcu -Icsrc/fuzz csrc/fuzz/rbfk_fuzz.c \
 *         csrc/mcu/rbfk_*.c -lm -o rbfk_fuzz && ./rbfk_fuzz -max_total_time=30 CORPUS_DIR
 *
 * Each input is a network descriptor as a model header compiled into flash would hand it to the
 * library (layout: rbfk_fuzz_format.h; seeds: rbfk_seed.c from real exported models), with
 * malformed dimensions, unknown enums, NULL pointers and arbitrary values (NaN, inf, negative
 * sigma, out-of-range shifts). Every array is heap-allocated at exactly the size the descriptor
 * claims, so any read past it is an AddressSanitizer report. Beyond "no crash, no sanitizer
 * report" the harness aborts when a documented property fails:
 *   - every status is one of rbfk_status;
 *   - a descriptor rbfk_net_check_* accepts, with finite x and the documented buffers, makes
 *     forward and predict succeed, with 0 <= cls < K;
 *   - forward is deterministic (two calls, same output bits) and scratch sizes match rbfk.h;
 *   - rbfk_sqrtf is correctly rounded, rbfk_expf / rbfk_logf meet their documented error bounds.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rbfk.h"
#include "rbfk_fuzz_format.h"

typedef struct {
    const uint8_t *p;
    size_t n;
} reader;

static void take(reader *r, void *dst, size_t size)
{
    size_t k = size < r->n ? size : r->n;
    memcpy(dst, r->p, k);
    memset((uint8_t *)dst + k, 0, size - k);
    r->p += k;
    r->n -= k;
}

static int32_t take_i32(reader *r)
{
    int32_t v;
    take(r, &v, sizeof v);
    return v;
}

/* a fresh array of n elements filled from the input (exact size: ASan sees any overread) */
static void *take_array(reader *r, int64_t n, size_t elem)
{
    void *a = malloc((size_t)n * elem);
    if (a == NULL) {
        abort();
    }
    take(r, a, (size_t)n * elem);
    return a;
}

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) { \
            abort();  \
        }             \
    } while (0)

/* RBFK_FUZZ_TRACE=1: print the statuses (to see what a seed or a crash input reaches) */
static void trace(const char *what, rbfk_status check, rbfk_status fwd, rbfk_status pred)
{
    static int on = -1;
    if (on < 0) {
        on = getenv("RBFK_FUZZ_TRACE") != NULL;
    }
    if (on) {
        fprintf(stderr, "%s check=%d forward=%d predict=%d\n", what, (int)check, (int)fwd, (int)pred);
    }
}

static int status_ok(rbfk_status s)
{
    return s <= RBFK_OK && s >= RBFK_ERR_NONFINITE;
}

static int is_null(uint16_t nulls, int bit)
{
    return (nulls >> bit) & 1u;
}

static void fuzz_f32(reader *r)
{
    uint16_t nulls;
    rbfk_net_f32 net;
    int64_t D, C, K, nscr, i;
    float *x, *scratch, *y, *y2;
    int32_t cls = -1;
    int x_finite = 1;
    rbfk_status st, sf, sp;

    take(r, &nulls, sizeof nulls);
    memset(&net, 0, sizeof net);
    net.in_dim = fuzz_fold_dim(take_i32(r));
    net.n_centers = fuzz_fold_dim(take_i32(r));
    net.out_dim = fuzz_fold_dim(take_i32(r));
    net.metric = (rbfk_metric)take_i32(r);
    net.kind = (rbfk_kind)take_i32(r);
    take(r, &net.shape, sizeof net.shape);
    D = fuzz_alloc_dim(net.in_dim);
    C = fuzz_alloc_dim(net.n_centers);
    K = fuzz_alloc_dim(net.out_dim);
    net.centers = take_array(r, C * D, sizeof(float));
    net.metric_w = take_array(r, fuzz_len_metric(net.metric, C, D), sizeof(float));
    net.sigma = take_array(r, C, sizeof(float));
    net.weight = take_array(r, K * C, sizeof(float));
    net.bias = take_array(r, K, sizeof(float));
    net.in_mean = take_array(r, D, sizeof(float));
    net.in_scale = take_array(r, D, sizeof(float));
    x = take_array(r, D, sizeof(float));
    for (i = 0; i < D; ++i) {
        x_finite &= isfinite(x[i]) != 0;
    }
    /* NULL where asked; the arrays are still freed through the saved pointers below */
    const void *own[] = {net.centers, net.metric_w, net.sigma, net.weight, net.bias, net.in_mean, net.in_scale};
    if (is_null(nulls, FUZZ_NULL_CENTERS)) net.centers = NULL;
    if (is_null(nulls, FUZZ_NULL_METRIC_W)) net.metric_w = NULL;
    if (is_null(nulls, FUZZ_NULL_SIGMA)) net.sigma = NULL;
    if (is_null(nulls, FUZZ_NULL_WEIGHT)) net.weight = NULL;
    if (is_null(nulls, FUZZ_NULL_BIAS)) net.bias = NULL;
    if (is_null(nulls, FUZZ_NULL_IN_MEAN)) net.in_mean = NULL;
    if (is_null(nulls, FUZZ_NULL_IN_SCALE)) net.in_scale = NULL;
    const rbfk_net_f32 *pn = is_null(nulls, FUZZ_NULL_NET) ? NULL : &net;

    st = rbfk_net_check_f32(pn);
    REQUIRE(status_ok(st));
    nscr = (int64_t)rbfk_net_scratch_size_f32(pn);
    if (st == RBFK_OK) {
        int full = net.metric == RBFK_METRIC_FULL || net.metric == RBFK_METRIC_SHARED_FULL;
        REQUIRE(nscr == (net.in_mean != NULL ? D : 0) + (full ? D : 0));
    }
    scratch = is_null(nulls, FUZZ_NULL_SCRATCH) ? NULL : take_array(r, nscr, sizeof(float));
    y = is_null(nulls, FUZZ_NULL_Y) ? NULL : take_array(r, K, sizeof(float));
    y2 = take_array(r, K, sizeof(float));

    sf = rbfk_net_forward_f32(pn, is_null(nulls, FUZZ_NULL_X) ? NULL : x, scratch, y);
    REQUIRE(status_ok(sf));
    sp = rbfk_net_predict_class_f32(pn, is_null(nulls, FUZZ_NULL_X) ? NULL : x, scratch, y2,
                                    is_null(nulls, FUZZ_NULL_CLS) ? NULL : &cls);
    REQUIRE(status_ok(sp));
    trace("f32", st, sf, sp);
    if (st == RBFK_OK && x_finite && !is_null(nulls, FUZZ_NULL_X) && y != NULL &&
        (scratch != NULL || nscr == 0)) {
        REQUIRE(sf == RBFK_OK);
        if (!is_null(nulls, FUZZ_NULL_CLS)) {
            REQUIRE(sp == RBFK_OK && cls >= 0 && cls < net.out_dim);
            REQUIRE(memcmp(y, y2, (size_t)K * sizeof(float)) == 0); /* deterministic */
        }
    }
    free(x);
    free(scratch);
    free(y);
    free(y2);
    for (i = 0; i < (int64_t)(sizeof own / sizeof own[0]); ++i) {
        free((void *)own[i]);
    }
}

static void fuzz_q15(reader *r)
{
    uint16_t nulls;
    rbfk_net_q15 net;
    int64_t D, C, K, nscr, i;
    int16_t *x, *scratch, *y, *y2;
    int32_t cls = -1;
    rbfk_status st, sf, sp;

    take(r, &nulls, sizeof nulls);
    memset(&net, 0, sizeof net);
    net.in_dim = fuzz_fold_dim(take_i32(r));
    net.n_centers = fuzz_fold_dim(take_i32(r));
    net.out_dim = fuzz_fold_dim(take_i32(r));
    net.metric = (rbfk_metric)take_i32(r);
    net.kind = (rbfk_kind)take_i32(r);
    net.x_frac = take_i32(r);
    net.w_frac = take_i32(r);
    net.h_frac = take_i32(r);
    net.wo_frac = take_i32(r);
    net.y_frac = take_i32(r);
    D = fuzz_alloc_dim(net.in_dim);
    C = fuzz_alloc_dim(net.n_centers);
    K = fuzz_alloc_dim(net.out_dim);
    net.centers = take_array(r, C * D, sizeof(int16_t));
    net.metric_w = take_array(r, fuzz_len_metric(net.metric, C, D), sizeof(int16_t));
    net.gain_m = take_array(r, C, sizeof(int16_t));
    net.gain_sh = take_array(r, C, sizeof(int8_t));
    net.weight = take_array(r, K * C, sizeof(int16_t));
    net.bias = take_array(r, K, sizeof(int32_t));
    x = take_array(r, D, sizeof(int16_t));
    const void *own[] = {net.centers, net.metric_w, net.gain_m, net.gain_sh, net.weight, net.bias};
    if (is_null(nulls, FUZZ_NULL_CENTERS)) net.centers = NULL;
    if (is_null(nulls, FUZZ_NULL_METRIC_W)) net.metric_w = NULL;
    if (is_null(nulls, FUZZ_NULL_GAIN_M)) net.gain_m = NULL;
    if (is_null(nulls, FUZZ_NULL_GAIN_SH)) net.gain_sh = NULL;
    if (is_null(nulls, FUZZ_NULL_WEIGHT)) net.weight = NULL;
    if (is_null(nulls, FUZZ_NULL_BIAS)) net.bias = NULL;
    const rbfk_net_q15 *pn = is_null(nulls, FUZZ_NULL_NET) ? NULL : &net;

    st = rbfk_net_check_q15(pn);
    REQUIRE(status_ok(st));
    nscr = (int64_t)rbfk_net_scratch_size_q15(pn);
    REQUIRE(st != RBFK_OK || nscr == net.n_centers);
    scratch = is_null(nulls, FUZZ_NULL_SCRATCH) ? NULL : take_array(r, nscr, sizeof(int16_t));
    y = is_null(nulls, FUZZ_NULL_Y) ? NULL : take_array(r, K, sizeof(int16_t));
    y2 = take_array(r, K, sizeof(int16_t));

    sf = rbfk_net_forward_q15(pn, is_null(nulls, FUZZ_NULL_X) ? NULL : x, scratch, y);
    REQUIRE(status_ok(sf));
    sp = rbfk_net_predict_class_q15(pn, is_null(nulls, FUZZ_NULL_X) ? NULL : x, scratch, y2,
                                    is_null(nulls, FUZZ_NULL_CLS) ? NULL : &cls);
    REQUIRE(status_ok(sp));
    trace("q15", st, sf, sp);
    if (st == RBFK_OK && !is_null(nulls, FUZZ_NULL_X) && y != NULL && scratch != NULL) {
        REQUIRE(sf == RBFK_OK);
        if (!is_null(nulls, FUZZ_NULL_CLS)) {
            REQUIRE(sp == RBFK_OK && cls >= 0 && cls < net.out_dim);
            REQUIRE(memcmp(y, y2, (size_t)K * sizeof(int16_t)) == 0);
        }
    }
    free(x);
    free(scratch);
    free(y);
    free(y2);
    for (i = 0; i < (int64_t)(sizeof own / sizeof own[0]); ++i) {
        free((void *)own[i]);
    }
}

/* the helpers on arbitrary bit patterns; accuracy bounds as documented in rbfk.h */
static void fuzz_math(reader *r)
{
    while (r->n > 0) {
        float v, a;
        uint32_t t;
        take(r, &v, sizeof v);
        take(r, &a, sizeof a);
        memcpy(&t, &v, sizeof t);
        float s = rbfk_sqrtf(v);
        if (v >= 0.0f) {
            REQUIRE(s == sqrtf(v) || (isnan(s) && isnan(v)));
        }
        float e = rbfk_expf(v);
        if (v >= -87.0f && v <= 88.0f) {
            double ref = exp((double)v);
            REQUIRE(fabs((double)e - ref) <= 1.5e-7 * ref);
        }
        float l = rbfk_logf(v);
        if (isfinite(v) && v >= 1.17549435e-38f) {
            double ref = log((double)v);
            if (v >= 0.5f && v <= 2.0f) {
                REQUIRE(fabs((double)l - ref) < 1e-7);
            } else {
                REQUIRE(fabs((double)l - ref) <= 1.5e-7 * fabs(ref));
            }
        } else if (v < 0.0f) {
            REQUIRE(isnan(l));
        }
        (void)rbfk_powf(v, a);
        int16_t q = rbfk_exp2_neg_q15(t);
        REQUIRE(q >= 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    uint8_t op = 0;
    take(&r, &op, 1);
    switch (op % FUZZ_N_OPS) {
    case FUZZ_OP_F32:
        fuzz_f32(&r);
        break;
    case FUZZ_OP_Q15:
        fuzz_q15(&r);
        break;
    default:
        fuzz_math(&r);
        break;
    }
    return 0;
}
