/*
 * rbfk_seed.c - write one fuzz seed (rbfk_fuzz_format.h) per model of a generated rbfk_cases.h.
 *
 *   gcc -Icsrc/mcu -Icsrc/fuzz -I<cases dir> csrc/fuzz/rbfk_seed.c -o rbfk_seed && ./rbfk_seed CORPUS_DIR
 *
 * The descriptors come from headers written by rbfkern.mcu.export_c (csrc/fuzz/export_models.py),
 * compiled in exactly as firmware compiles them, so the corpus starts from real, valid models
 * (and the first input row of each case); plus one seed for the math helpers.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rbfk.h"
#include "rbfk_fuzz_format.h"

typedef struct {
    const char *name;
    const rbfk_net_f32 *net;
    const float *x;
    int32_t n;
} rbfk_case_f32;

typedef struct {
    const char *name;
    const rbfk_net_q15 *net;
    const int16_t *x;
    int32_t n;
} rbfk_case_q15;

#include "rbfk_cases.h"

#ifndef RBFK_N_CASES_F32
#define RBFK_N_CASES_F32 0
#endif
#ifndef RBFK_N_CASES_Q15
#define RBFK_N_CASES_Q15 0
#endif

static void put(FILE *f, const void *p, size_t n)
{
    if (n > 0 && fwrite(p, 1, n, f) != n) {
        perror("fwrite");
    }
}

static void put_i32(FILE *f, int32_t v)
{
    put(f, &v, sizeof v);
}

static FILE *open_seed(const char *dir, const char *kind, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/seed_%s_%s", dir, kind, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
    }
    return f;
}

/* a NULL pointer in the descriptor is a set bit; the array is then written as zeros (skipped) */
static uint16_t null_bit(const void *p, int bit)
{
    return p == NULL ? (uint16_t)(1u << bit) : 0;
}

static void put_arr(FILE *f, const void *p, int64_t n, size_t elem)
{
    static const uint8_t zero[64] = {0};
    if (p != NULL) {
        put(f, p, (size_t)n * elem);
        return;
    }
    for (size_t k = (size_t)n * elem; k > 0;) {
        size_t m = k < sizeof zero ? k : sizeof zero;
        put(f, zero, m);
        k -= m;
    }
}

#if RBFK_N_CASES_F32 > 0
static void seed_f32(const char *dir, const rbfk_case_f32 *c)
{
    const rbfk_net_f32 *n = c->net;
    int64_t D = n->in_dim, C = n->n_centers, K = n->out_dim;
    uint8_t op = FUZZ_OP_F32;
    uint16_t nulls = null_bit(n->metric_w, FUZZ_NULL_METRIC_W) | null_bit(n->bias, FUZZ_NULL_BIAS) |
                     null_bit(n->in_mean, FUZZ_NULL_IN_MEAN) | null_bit(n->in_scale, FUZZ_NULL_IN_SCALE);
    FILE *f = open_seed(dir, "f32", c->name);
    if (f == NULL || D > FUZZ_MAX_DIM || C > FUZZ_MAX_DIM || K > FUZZ_MAX_DIM) {
        fprintf(stderr, "skip %s (dimensions over FUZZ_MAX_DIM)\n", c->name);
        if (f) fclose(f);
        return;
    }
    put(f, &op, 1);
    put(f, &nulls, sizeof nulls);
    put_i32(f, n->in_dim);
    put_i32(f, n->n_centers);
    put_i32(f, n->out_dim);
    put_i32(f, (int32_t)n->metric);
    put_i32(f, (int32_t)n->kind);
    put(f, &n->shape, sizeof n->shape);
    put_arr(f, n->centers, C * D, sizeof(float));
    put_arr(f, n->metric_w, fuzz_len_metric(n->metric, C, D), sizeof(float));
    put_arr(f, n->sigma, C, sizeof(float));
    put_arr(f, n->weight, K * C, sizeof(float));
    put_arr(f, n->bias, K, sizeof(float));
    put_arr(f, n->in_mean, D, sizeof(float));
    put_arr(f, n->in_scale, D, sizeof(float));
    put_arr(f, c->x, D, sizeof(float));
    fclose(f);
}
#endif

#if RBFK_N_CASES_Q15 > 0
/* fracs != NULL: h_frac, wo_frac, y_frac replaced (formats the exporter never picks but the API accepts) */
static void seed_q15(const char *dir, const rbfk_case_q15 *c, const char *kind, const int32_t *fracs)
{
    const rbfk_net_q15 *n = c->net;
    int64_t D = n->in_dim, C = n->n_centers, K = n->out_dim;
    uint8_t op = FUZZ_OP_Q15;
    uint16_t nulls = null_bit(n->metric_w, FUZZ_NULL_METRIC_W) | null_bit(n->bias, FUZZ_NULL_BIAS);
    FILE *f = open_seed(dir, kind, c->name);
    if (f == NULL || D > FUZZ_MAX_DIM || C > FUZZ_MAX_DIM || K > FUZZ_MAX_DIM) {
        fprintf(stderr, "skip %s (dimensions over FUZZ_MAX_DIM)\n", c->name);
        if (f) fclose(f);
        return;
    }
    put(f, &op, 1);
    put(f, &nulls, sizeof nulls);
    put_i32(f, n->in_dim);
    put_i32(f, n->n_centers);
    put_i32(f, n->out_dim);
    put_i32(f, (int32_t)n->metric);
    put_i32(f, (int32_t)n->kind);
    put_i32(f, n->x_frac);
    put_i32(f, n->w_frac);
    put_i32(f, fracs ? fracs[0] : n->h_frac);
    put_i32(f, fracs ? fracs[1] : n->wo_frac);
    put_i32(f, fracs ? fracs[2] : n->y_frac);
    put_arr(f, n->centers, C * D, sizeof(int16_t));
    put_arr(f, n->metric_w, fuzz_len_metric(n->metric, C, D), sizeof(int16_t));
    put_arr(f, n->gain_m, C, sizeof(int16_t));
    put_arr(f, n->gain_sh, C, sizeof(int8_t));
    put_arr(f, n->weight, K * C, sizeof(int16_t));
    put_arr(f, n->bias, K, sizeof(int32_t));
    put_arr(f, c->x, D, sizeof(int16_t));
    fclose(f);
}
#endif

int main(int argc, char **argv)
{
    static const float math[] = {0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 88.5f, -104.0f, 1e-40f, 3.4e38f, 0.3f, 1.7f, -0.3f};
    const char *dir = argc > 1 ? argv[1] : ".";
    int k;
    FILE *f;
    uint8_t op = FUZZ_OP_MATH;
#if RBFK_N_CASES_F32 > 0
    for (k = 0; k < RBFK_N_CASES_F32; ++k) {
        seed_f32(dir, &rbfk_cases_f32[k]);
    }
#endif
#if RBFK_N_CASES_Q15 > 0
    for (k = 0; k < RBFK_N_CASES_Q15; ++k) {
        /* quadratic allows h_frac < 15: y_frac > wo_frac + h_frac reaches the left-shift output path */
        static const int32_t lshift[3] = {4, -8, 12};
        seed_q15(dir, &rbfk_cases_q15[k], "q15", NULL);
        if (rbfk_cases_q15[k].net->kind == RBFK_QUADRATIC) {
            seed_q15(dir, &rbfk_cases_q15[k], "q15_lshift", lshift);
        }
    }
#endif
    f = open_seed(dir, "math", "helpers");
    if (f == NULL) {
        return 1;
    }
    put(f, &op, 1);
    put(f, math, sizeof math);
    fclose(f);
    (void)k;
    printf("%d f32 + %d q15 model seeds, 1 math seed -> %s\n", RBFK_N_CASES_F32, RBFK_N_CASES_Q15, dir);
    return 0;
}
