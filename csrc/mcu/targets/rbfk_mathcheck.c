/*
 * rbfk_mathcheck.c - host-only accuracy check of the float and fixed-point helpers against libm
 * double precision. Prints "<name> <max error>" lines; tests/test_mcu.py compares them with the
 * bounds documented in rbfk.h. Build: cc -std=c99 -O2 -ffp-contract=off rbfk_mathcheck.c ../rbfk_*.c -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "rbfk.h"

static float from_bits(uint32_t u)
{
    union {
        float f;
        uint32_t u;
    } p;
    p.u = u;
    return p.f;
}

int main(void)
{
    double e_exp = 0.0, e_log_abs = 0.0, e_log_rel = 0.0, e_pow = 0.0, e_q15 = 0.0;
    long sqrt_bad = 0, n = 0;
    uint32_t u, t;
    int i;

    /* every 509th positive float: sqrt must be correctly rounded (double sqrt then rounding is exact here) */
    for (u = 1; u < 0x7f800000u; u += 509u) {
        float x = from_bits(u);
        sqrt_bad += rbfk_sqrtf(x) != (float)sqrt((double)x);
        ++n;
    }
    for (i = 0; i <= 500000; ++i) {
        float x = -87.0f + 175.0f * (float)i / 500000.0f;
        double r = exp((double)x), g = (double)rbfk_expf(x);
        double err = fabs(g - r) / r;
        if (err > e_exp) {
            e_exp = err;
        }
    }
    for (i = 0; i <= 500000; ++i) {
        float x = (float)pow(2.0, -60.0 + 120.0 * (double)i / 500000.0);
        double r = log((double)x), g = (double)rbfk_logf(x);
        double err = fabs(g - r);
        if (x >= 0.5f && x <= 2.0f) {
            if (err > e_log_abs) {
                e_log_abs = err;
            }
        } else if (err / fabs(r) > e_log_rel) {
            e_log_rel = err / fabs(r);
        }
    }
    for (i = 0; i <= 200000; ++i) {
        float x = (float)pow(2.0, -20.0 + 40.0 * (double)(i % 20011) / 20011.0);
        float a = -2.0f + 4.0f * (float)(i % 397) / 397.0f;
        double r = pow((double)x, (double)a), g = (double)rbfk_powf(x, a);
        double bound = (fabs((double)a * log((double)x)) + 1.0);
        double err = fabs(g - r) / r / bound;
        if (err > e_pow) {
            e_pow = err;
        }
    }
    for (t = 0; t < (16u << 16); ++t) {
        double r = pow(2.0, -(double)t / 65536.0) * 32768.0;
        double g = (double)rbfk_exp2_neg_q15(t);
        double err = fabs(g - (r > 32767.0 ? 32767.0 : r));
        if (err > e_q15) {
            e_q15 = err;
        }
    }
    printf("sqrt_incorrect %ld of %ld\n", sqrt_bad, n);
    printf("exp_rel %.3e\n", e_exp);
    printf("log_abs_0.5_2 %.3e\n", e_log_abs);
    printf("log_rel %.3e\n", e_log_rel);
    printf("pow_rel_per_bound %.3e\n", e_pow);
    printf("exp2q15_lsb %.3f\n", e_q15);
    return 0;
}
