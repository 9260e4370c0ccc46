/*
 * rbfk_log_f32.c - rbfk_logf: natural log from + - * / only (bit-reproducible on every target).
 *
 * x = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f); then, as in fdlibm,
 * log(1 + f) = f - (f^2/2 - s (f^2/2 + R(s^2))) with R the Taylor series of (log((1+s)/(1-s)) - 2s)/s
 * to s^10 (|s| < 0.1716: truncation < 1e-10), and log x = e ln2_hi + (log(1+f) + e ln2_lo).
 * Max error vs double: < 1e-7 absolute on [0.5, 2], < 1.5e-7 relative elsewhere.
 */
#include "rbfk_internal.h"

#define RBFK__LN2_HI 0.693145751953125f
#define RBFK__LN2_LO 1.42860682030941723e-06f

float rbfk_logf(float x)
{
    uint32_t u = rbfk__bits(x);
    int32_t e;
    float m, f, s, z, hfsq, r, ef;

    if (x != x || x < 0.0f) {
        return rbfk__float(RBFK__NAN_BITS);
    }
    if (x == 0.0f) {
        return -rbfk__float(RBFK__INF_BITS);
    }
    if (u == RBFK__INF_BITS) {
        return x;
    }
    e = 0;
    if (u < 0x00800000u) { /* subnormal: scale by 2^25 first */
        x = x * 33554432.0f;
        u = rbfk__bits(x);
        e = -25;
    }
    e += (int32_t)(u >> 23) - 127;
    u = (u & 0x007fffffu) | 0x3f800000u; /* m in [1, 2) */
    if (u > 0x3fb504f3u) {               /* m > sqrt(2): use m / 2 */
        u -= 0x00800000u;
        e += 1;
    }
    m = rbfk__float(u);
    f = m - 1.0f;
    s = f / (2.0f + f);
    z = s * s;
    r = 2.0f / 11.0f;
    r = 2.0f / 9.0f + z * r;
    r = 2.0f / 7.0f + z * r;
    r = 2.0f / 5.0f + z * r;
    r = 2.0f / 3.0f + z * r;
    r = z * r;
    hfsq = 0.5f * f * f;
    r = f - (hfsq - s * (hfsq + r));
    ef = (float)e;
    return ef * RBFK__LN2_HI + (r + ef * RBFK__LN2_LO);
}
