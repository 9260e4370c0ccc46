/*
 * rbfk_exp_f32.c - rbfk_expf: float exp from + - * only (bit-reproducible on every target).
 *
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, ln2 split into a 16-bit head (k * LN2_HI is
 * exact for |k| < 256) and a tail; exp(r) by its degree-7 Taylor polynomial in Horner form
 * (truncation < 2.2e-9 relative); 2^k applied by building the exponent bits, in two steps where
 * the result is subnormal or k = 128.  Max relative error vs double: < 1.5e-7 (about 1.2 ulp).
 */
#include "rbfk_internal.h"

#define RBFK__LOG2E 1.44269504088896341f
#define RBFK__LN2_HI 0.693145751953125f       /* 0x3f317200: 16 significant bits */
#define RBFK__LN2_LO 1.42860682030941723e-06f /* ln2 - LN2_HI */

float rbfk_expf(float x)
{
    float kf, r, p;
    int32_t k;

    if (x != x) {
        return x;
    }
    if (x > 88.7228394f) {
        return rbfk__float(RBFK__INF_BITS);
    }
    if (x < -103.972084f) {
        return 0.0f;
    }
    kf = x * RBFK__LOG2E;
    /* round half away from zero; the conversion truncates toward zero */
    k = (int32_t)(kf >= 0.0f ? kf + 0.5f : kf - 0.5f);
    kf = (float)k;
    r = (x - kf * RBFK__LN2_HI) - kf * RBFK__LN2_LO;
    p = 1.0f / 5040.0f;
    p = 1.0f / 720.0f + r * p;
    p = 1.0f / 120.0f + r * p;
    p = 1.0f / 24.0f + r * p;
    p = 1.0f / 6.0f + r * p;
    p = 0.5f + r * p;
    p = 1.0f + r * p;
    p = 1.0f + r * p;
    if (k > 127) {
        return (p * rbfk__pow2i(k - 1)) * 2.0f;
    }
    if (k < -126) {
        /* two exactly-representable scalings: only the last multiply rounds into a subnormal */
        return (p * rbfk__pow2i(k + 100)) * rbfk__pow2i(-100);
    }
    return p * rbfk__pow2i(k);
}
