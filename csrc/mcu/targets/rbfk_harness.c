/*
 * rbfk_harness.c - test/benchmark main for the host and every QEMU target.
 *
 * Includes the generated "rbfk_cases.h" (rbfkern.mcu writes it: one or more exported models and
 * their inputs), runs every case and prints, one line each (hex bits, so the comparison with the
 * host build is exact and no float printf is needed):
 *   F <case> <sample> <status> <y0 bits> <y1 bits> ...      float network
 *   Q <case> <sample> <status> <y0 as uint16> ...           fixed-point network
 *   E <name> <status>                                       malformed-descriptor checks
 *   M <name> <checksum>                                     math helper sweep checksums
 *   END <failures>
 * Each inference runs between rbfk_bench_begin() and rbfk_bench_end(), the markers the QEMU
 * instruction-count plugin (qemu_plugin/rbfk_icount.c) watches.
 */
#include <stdint.h>
#include <stdio.h>

#include "rbfk.h"

typedef struct {
    const char *name;
    const rbfk_net_f32 *net;
    const float *x; /* (n, D) */
    int32_t n;
} rbfk_case_f32;

typedef struct {
    const char *name;
    const rbfk_net_q15 *net;
    const int16_t *x; /* (n, D) */
    int32_t n;
} rbfk_case_q15;

#include "rbfk_cases.h"

/* the generated header defines RBFK_N_CASES_F32/Q15 and, when > 0, rbfk_cases_f32/q15 */
#ifndef RBFK_N_CASES_F32
#define RBFK_N_CASES_F32 0
#endif
#ifndef RBFK_N_CASES_Q15
#define RBFK_N_CASES_Q15 0
#endif
#ifndef RBFK_HARNESS_MAX_D
#define RBFK_HARNESS_MAX_D 16
#endif
#ifndef RBFK_HARNESS_MAX_C
#define RBFK_HARNESS_MAX_C 16
#endif
#ifndef RBFK_HARNESS_MAX_K
#define RBFK_HARNESS_MAX_K 16
#endif

void rbfk_bench_begin(void);
void rbfk_bench_end(void);

__attribute__((noinline)) void rbfk_bench_begin(void)
{
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void rbfk_bench_end(void)
{
    __asm__ volatile("" ::: "memory");
}

#if RBFK_N_CASES_F32 > 0 || !defined(RBFK_HARNESS_NO_SELFTEST)
static uint32_t rbfk_h_bits(float f)
{
    union {
        float f;
        uint32_t u;
    } p;
    p.f = f;
    return p.u;
}
#endif

static int failures = 0;

#if RBFK_N_CASES_F32 > 0
static float scratch_f32[2 * RBFK_HARNESS_MAX_D + 1];
static float y_f32[RBFK_HARNESS_MAX_K];

static void run_f32(void)
{
    int32_t i, s, k;
    for (i = 0; i < RBFK_N_CASES_F32; ++i) {
        const rbfk_case_f32 *c = &rbfk_cases_f32[i];
        int32_t D = c->net->in_dim;
        if (rbfk_net_check_f32(c->net) != RBFK_OK ||
            rbfk_net_scratch_size_f32(c->net) > sizeof scratch_f32 / sizeof scratch_f32[0]) {
            printf("F %ld -1 %d\n", (long)i, (int)rbfk_net_check_f32(c->net));
            ++failures;
            continue;
        }
        for (s = 0; s < c->n; ++s) {
            rbfk_status st;
            rbfk_bench_begin();
            st = rbfk_net_forward_f32(c->net, c->x + (size_t)s * (size_t)D, scratch_f32, y_f32);
            rbfk_bench_end();
            printf("F %ld %ld %d", (long)i, (long)s, (int)st);
            for (k = 0; k < c->net->out_dim; ++k) {
                printf(" %08lx", (unsigned long)rbfk_h_bits(y_f32[k]));
            }
            printf("\n");
            failures += st != RBFK_OK;
        }
    }
}
#endif

#if RBFK_N_CASES_Q15 > 0
static int16_t scratch_q15[RBFK_HARNESS_MAX_C];
static int16_t y_q15[RBFK_HARNESS_MAX_K];

static void run_q15(void)
{
    int32_t i, s, k;
    for (i = 0; i < RBFK_N_CASES_Q15; ++i) {
        const rbfk_case_q15 *c = &rbfk_cases_q15[i];
        int32_t D = c->net->in_dim;
        if (rbfk_net_check_q15(c->net) != RBFK_OK ||
            rbfk_net_scratch_size_q15(c->net) > sizeof scratch_q15 / sizeof scratch_q15[0]) {
            printf("Q %ld -1 %d\n", (long)i, (int)rbfk_net_check_q15(c->net));
            ++failures;
            continue;
        }
        for (s = 0; s < c->n; ++s) {
            rbfk_status st;
            rbfk_bench_begin();
            st = rbfk_net_forward_q15(c->net, c->x + (size_t)s * (size_t)D, scratch_q15, y_q15);
            rbfk_bench_end();
            printf("Q %ld %ld %d", (long)i, (long)s, (int)st);
            for (k = 0; k < c->net->out_dim; ++k) {
                printf(" %04x", (unsigned)(uint16_t)y_q15[k]);
            }
            printf("\n");
            failures += st != RBFK_OK;
        }
    }
}
#endif

#ifndef RBFK_HARNESS_NO_SELFTEST
/* ---- malformed descriptors: each must return the given error, never crash ---- */
static const float t_centers[6] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f}; /* C = 3, D = 2 */
static const float t_metric[6] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
static const float t_negmetric[6] = {1.0f, -1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
static const float t_sigma[3] = {1.0f, 1.0f, 1.0f};
static const float t_negsigma[3] = {1.0f, -0.5f, 1.0f};
static const float t_zerosigma[3] = {1.0f, 0.0f, 1.0f};
static const float t_weight[6] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f}; /* K = 2 */
static const float t_scale_bad[2] = {1.0f, 0.0f};
static const float t_mean[2] = {0.0f, 0.0f};
static const int16_t q_centers[6] = {0, 100, 200, 300, 400, 500};
static const int16_t q_gain[3] = {20000, 20000, 20000};
static const int16_t q_badgain[3] = {20000, -3, 20000};
static const int8_t q_sh[3] = {20, 20, 20};
static const int8_t q_badsh[3] = {20, 70, 20};
static const int16_t q_weight[6] = {1, 2, 3, 4, 5, 6};
static const int16_t q_negmetric[6] = {100, -1, 100, 100, 100, 100};

static void expect(const char *name, rbfk_status got, rbfk_status want)
{
    printf("E %s %d\n", name, (int)got);
    failures += got != want;
}

static void selftest_errors(void)
{
    const rbfk_net_f32 good = {2, 3, 2, RBFK_METRIC_DIAG, RBFK_GAUSSIAN, 0.5f, t_centers, t_metric, t_sigma,
                               t_weight, NULL, NULL, NULL};
    const rbfk_net_q15 qgood = {2, 3, 2, RBFK_METRIC_NONE, RBFK_GAUSSIAN, 12, 0, 15, 10, 8,
                                q_centers, NULL, q_gain, q_sh, q_weight, NULL};
    rbfk_net_f32 n;
    rbfk_net_q15 q;
    float x[2] = {0.5f, 0.25f}, y[2], scr[4];
    int16_t xq[2] = {10, 20}, yq[2], sq[3];
    int32_t cls = -1;

    expect("ok", rbfk_net_forward_f32(&good, x, scr, y), RBFK_OK);
    expect("null_net", rbfk_net_forward_f32(NULL, x, scr, y), RBFK_ERR_NULL);
    expect("null_x", rbfk_net_forward_f32(&good, NULL, scr, y), RBFK_ERR_NULL);
    expect("null_y", rbfk_net_forward_f32(&good, x, scr, NULL), RBFK_ERR_NULL);
    expect("null_cls", rbfk_net_predict_class_f32(&good, x, scr, y, NULL), RBFK_ERR_NULL);
    n = good; n.in_dim = 0;
    expect("zero_in_dim", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_DIM);
    n = good; n.n_centers = 0;
    expect("zero_centers", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_DIM);
    n = good; n.out_dim = -1;
    expect("neg_out_dim", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_DIM);
    n = good; n.in_dim = RBFK_MAX_DIM + 1;
    expect("huge_in_dim", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_DIM);
    n = good; n.centers = NULL;
    expect("null_centers", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_NULL);
    n = good; n.sigma = NULL;
    expect("null_sigma", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_NULL);
    n = good; n.weight = NULL;
    expect("null_weight", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_NULL);
    n = good; n.metric_w = NULL;
    expect("null_metric", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_METRIC);
    n = good; n.metric = (rbfk_metric)9;
    expect("bad_metric", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_METRIC);
    n = good; n.metric_w = t_negmetric;
    expect("neg_metric", rbfk_net_check_f32(&n), RBFK_ERR_METRIC);
    n = good; n.kind = (rbfk_kind)8;
    expect("bad_kind", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_KIND);
    n = good; n.sigma = t_negsigma;
    expect("neg_sigma", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_SIGMA);
    n = good; n.sigma = t_zerosigma;
    expect("zero_sigma", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_SIGMA);
    n = good; n.in_mean = t_mean;
    expect("mean_without_scale", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_NULL);
    n = good; n.in_mean = t_mean; n.in_scale = t_scale_bad;
    expect("zero_scale", rbfk_net_forward_f32(&n, x, scr, y), RBFK_ERR_PARAM);
    n = good; n.in_mean = t_mean; n.in_scale = t_metric;
    expect("null_scratch", rbfk_net_forward_f32(&n, x, NULL, y), RBFK_ERR_NULL);
    expect("scratch_size_invalid", (rbfk_status)(int)rbfk_net_scratch_size_f32(NULL), RBFK_OK);
    x[1] = 1.0f / (x[0] - x[0]) * 0.0f; /* NaN without <math.h> */
    expect("nan_input", rbfk_net_forward_f32(&good, x, scr, y), RBFK_ERR_NONFINITE);

    expect("q_ok", rbfk_net_forward_q15(&qgood, xq, sq, yq), RBFK_OK);
    expect("q_null_net", rbfk_net_forward_q15(NULL, xq, sq, yq), RBFK_ERR_NULL);
    expect("q_null_scratch", rbfk_net_forward_q15(&qgood, xq, NULL, yq), RBFK_ERR_NULL);
    q = qgood; q.in_dim = 0;
    expect("q_zero_in_dim", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_DIM);
    q = qgood; q.metric = RBFK_METRIC_FULL;
    expect("q_full_metric", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_METRIC);
    q = qgood; q.metric = RBFK_METRIC_DIAG; q.metric_w = q_negmetric;
    expect("q_neg_metric", rbfk_net_check_q15(&q), RBFK_ERR_METRIC);
    q = qgood; q.kind = RBFK_LINEAR;
    expect("q_unsupported_kind", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_KIND);
    q = qgood; q.gain_m = q_badgain;
    expect("q_neg_sigma", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_SIGMA);
    q = qgood; q.gain_sh = q_badsh;
    expect("q_bad_shift", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_PARAM);
    q = qgood; q.x_frac = 16;
    expect("q_bad_frac", rbfk_net_forward_q15(&q, xq, sq, yq), RBFK_ERR_PARAM);
    expect("q_predict", rbfk_net_predict_class_q15(&qgood, xq, sq, yq, &cls), RBFK_OK);
}

/* ---- math helpers: a checksum of the result bits over a fixed sweep (must match the host) ---- */
static void selftest_math(void)
{
    uint32_t he = 0, hl = 0, hs = 0, hp = 0, hq = 0;
    int32_t i;
    for (i = 0; i < 600; ++i) {
        float t = (float)(i - 300) * 0.37f + (float)i * 1.0e-3f;
        float u = (float)(i + 1) * (float)(i + 1) * 7.3e-4f;
        he = he * 31u + rbfk_h_bits(rbfk_expf(t * 0.35f));
        hl = hl * 31u + rbfk_h_bits(rbfk_logf(u));
        hs = hs * 31u + rbfk_h_bits(rbfk_sqrtf(u * 0.01f + (float)i));
        hp = hp * 31u + rbfk_h_bits(rbfk_powf(u, -0.3f + (float)(i % 7) * 0.25f));
        hq = hq * 31u + (uint32_t)(uint16_t)rbfk_exp2_neg_q15((uint32_t)i * 1777u);
    }
    printf("M exp %08lx\nM log %08lx\nM sqrt %08lx\nM pow %08lx\nM exp2q15 %08lx\n", (unsigned long)he,
           (unsigned long)hl, (unsigned long)hs, (unsigned long)hp, (unsigned long)hq);
}
#endif

int main(void)
{
    /* an empty region first: the instruction-count plugin's region_first is the marker overhead */
    rbfk_bench_begin();
    rbfk_bench_end();
#ifndef RBFK_HARNESS_NO_SELFTEST
    selftest_errors();
    selftest_math();
#endif
#if RBFK_N_CASES_F32 > 0
    run_f32();
#endif
#if RBFK_N_CASES_Q15 > 0
    run_q15();
#endif
    printf("END %d\n", failures);
    return failures != 0;
}
