/*
 * rbfk_internal.h - private helpers shared by the rbfk_*.c files (not part of the API).
 */
#ifndef RBFK_INTERNAL_H
#define RBFK_INTERNAL_H

#include <stdint.h>

#include "rbfk.h"

/* Bit casts through a union (defined in C99 TC3, 6.5.2.3 note 82; no libc memcpy needed). */
typedef union {
    float f;
    uint32_t u;
} rbfk__pun;

static inline uint32_t rbfk__bits(float f)
{
    rbfk__pun p;
    p.f = f;
    return p.u;
}

static inline float rbfk__float(uint32_t u)
{
    rbfk__pun p;
    p.u = u;
    return p.f;
}

/* finite: exponent field not all ones (works without <math.h> and under -ffast-math). */
static inline int rbfk__finite(float f)
{
    return (rbfk__bits(f) & 0x7f800000u) != 0x7f800000u;
}

/* 2^k as a float for -126 <= k <= 127. */
static inline float rbfk__pow2i(int32_t k)
{
    return rbfk__float((uint32_t)(k + 127) << 23);
}

#define RBFK__INF_BITS 0x7f800000u
#define RBFK__NAN_BITS 0x7fc00000u

/* The float activations use the library's own functions unless RBFK_USE_LIBM is defined. */
#ifdef RBFK_USE_LIBM
#include <math.h>
#define RBFK__EXPF expf
#define RBFK__LOGF logf
#define RBFK__SQRTF sqrtf
#define RBFK__POWF powf
#else
#define RBFK__EXPF rbfk_expf
#define RBFK__LOGF rbfk_logf
#define RBFK__SQRTF rbfk_sqrtf
#define RBFK__POWF rbfk_powf
#endif

/* rbfk_check_f32.c: deep = 0 skips reading the metric weights (see there). */
rbfk_status rbfk__check_f32(const rbfk_net_f32 *net, int deep);
/* rbfk_check_q15.c */
rbfk_status rbfk__check_q15(const rbfk_net_q15 *net, int deep);

#endif /* RBFK_INTERNAL_H */
