/*
 * rbfk_sqrt_f32.c - rbfk_sqrtf: correctly rounded square root with integer arithmetic only.
 *
 * x = m 2^e with a 24-bit integer m; e made even; q = isqrt(m 2^s) with s chosen so q has exactly 24
 * bits; round to nearest (a square root of a float is never a tie, so remainder > q decides).
 * Same bits as an IEEE sqrt instruction on every target, without needing one.
 */
#include "rbfk_internal.h"

float rbfk_sqrtf(float x)
{
    uint32_t u = rbfk__bits(x);
    uint32_t mant;
    int32_t e, s, t;
    uint64_t m, rem, q, bit;

    if (x != x || x < 0.0f) {
        return rbfk__float(RBFK__NAN_BITS);
    }
    if (x == 0.0f || u == RBFK__INF_BITS) {
        return x;
    }
    /* value = mant * 2^e with mant in [2^23, 2^24) */
    if ((u >> 23) == 0) {
        mant = u;
        e = -149;
        while (mant < 0x00800000u) {
            mant <<= 1;
            e -= 1;
        }
    } else {
        mant = (u & 0x007fffffu) | 0x00800000u;
        e = (int32_t)(u >> 23) - 150;
    }
    m = mant;
    if (e & 1) { /* two's complement: odd e, negative or not */
        m <<= 1;
        e -= 1;
    }
    s = (m < 0x01000000u) ? 24 : 22; /* m 2^s in [2^46, 2^48): q in [2^23, 2^24) */
    m <<= s;
    rem = m;
    q = 0;
    bit = (uint64_t)1 << 46;
    while (bit > rem) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (rem >= q + bit) {
            rem -= q + bit;
            q = (q >> 1) + bit;
        } else {
            q >>= 1;
        }
        bit >>= 2;
    }
    if (rem > q) {
        q += 1; /* may carry into 2^24: the addition below then bumps the exponent, which is right */
    }
    /* result = q 2^t with t = (e - s) / 2 (even numerator: exact division) */
    t = (e - s) / 2;
    return rbfk__float(((uint32_t)(t + 23 + 127) << 23) + (uint32_t)(q - 0x00800000u));
}
