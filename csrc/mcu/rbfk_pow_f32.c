/*
 * rbfk_pow_f32.c - rbfk_powf(x, a) = exp(a log x) for x > 0, built on rbfk_expf/rbfk_logf.
 * Relative error < (|a ln x| + 1) * 2e-7. a = 0.5 and -0.5 use rbfk_sqrtf (correctly rounded).
 */
#include "rbfk_internal.h"

float rbfk_powf(float x, float a)
{
    if (x != x || a != a || x < 0.0f) {
        return rbfk__float(RBFK__NAN_BITS);
    }
    if (a == 0.0f) {
        return 1.0f;
    }
    if (x == 0.0f) {
        return a > 0.0f ? 0.0f : rbfk__float(RBFK__INF_BITS);
    }
    if (a == 0.5f) {
        return rbfk_sqrtf(x);
    }
    if (a == -0.5f) {
        return 1.0f / rbfk_sqrtf(x);
    }
    if (a == 1.0f) {
        return x;
    }
    if (a == -1.0f) {
        return 1.0f / x;
    }
    return rbfk_expf(a * rbfk_logf(x));
}
