// Fused CPU kernels for the Gaussian-derivative basis convolution (structured receptive fields,
// thesis ch. 3 eq. 20-23, Algorithm 1), forward and backward, float and double.
//
// Problem (all C-contiguous, one dtype):
//   x (N, Ci, H, W); A (Co, J) with J = Ci*S*M, column j = (i*S + s)*M + b (alpha reshaped);
//   f (S, O1, K): the 1D kernels g_m of each scale FLIPPED (f[a] = g(R - a), K = 2R+1), so every
//   pass is a cross-correlation; pq (M, 2): basis member b is g_p along x times g_q along y.
//   out (N, Co, Ho, Wo), Ho = (H + 2 pad - K)/stride + 1, likewise Wo.
//
// Separable evaluation, per image n:
//   phase 1  row pass   R[i,s,m](r, xo) = sum_a f[s,m,a] xpad(r, xo*st + a)        all rows r
//   phase 2  per band of output rows (a tile of P = T*Wo pixels, one per thread):
//            col pass   Z[j](t, xo) = sum_a f[s,q,a] R[i,s,p](t*st + a, xo)       (J x P, in cache)
//            recombine  out(:, tile) = A (Co x J) Z (J x P)                        (register-tiled GEMM)
// so the J = Ci*S*M basis maps exist only one tile at a time; the row maps (Ci*S*(order+1) of
// them, fewer than J) are the only full-image intermediate.
// Backward recomputes R and Z per tile and runs the transposed passes:
//   galpha += gout_tile Z^T,  dZ = A^T gout_tile,
//   gf[s,q] += <dZ, R shifted>  (y role),  dR += f[s,q] (*) dZ  (transposed col pass),
//   gf[s,m] += <dR, xpad shifted> (x role), gx += f[s,m] (*) dR  (transposed row pass).
// Tiles scatter dR into overlapping row ranges; with T >= K/stride only neighbouring tiles
// overlap, so even tiles run in parallel, then odd tiles (no atomics, no per-thread dR copies).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"

// The 64-byte vector helpers are always inlined; the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rbfkern {
namespace cpu {

template <class T>
struct GdProblem {
  int64_t N = 0, Ci = 0, H = 0, W = 0, Co = 0, S = 0, O1 = 0, M = 0, K = 0;
  int64_t stride = 1, pad = 0, Ho = 0, Wo = 0;
  const T* x = nullptr;
  const T* A = nullptr;
  const T* f = nullptr;
  const int64_t* pq = nullptr;
};

namespace {

#define GD_INLINE inline __attribute__((always_inline))

template <class T>
struct Vec;
template <>
struct Vec<float> {
  typedef simd::f32x16 type;
  static constexpr int n = 16;
};
template <>
struct Vec<double> {
  typedef simd::f64x8 type;
  static constexpr int n = 8;
};

template <class T>
GD_INLINE typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
GD_INLINE void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof v);
}

// C[m, n] (+)= sum_k A[m*as0 + k*as1] B[k*ldb + n]; 6 rows x one vector of columns in registers.
// B's column strip is packed (KC x one vector, contiguous) first: B's rows are often 4 KiB apart
// (image rows), which would alias in L1/L2 if streamed in place.
template <class T>
GD_INLINE void gemm_body(int64_t m, int64_t n, int64_t k, const T* A, int64_t as0, int64_t as1,
                         const T* B, int64_t ldb, T* C, int64_t ldc, bool acc) {
  typedef typename Vec<T>::type V;
  constexpr int NV = Vec<T>::n;
  constexpr int MR = 6;
  constexpr int64_t KC = 256;
  alignas(64) T pack[KC * NV];
  int64_t j0 = 0;
  for (; j0 + NV <= n; j0 += NV) {
    for (int64_t k0 = 0; k0 < k; k0 += KC) {
      const int64_t kc = std::min(KC, k - k0);
      for (int64_t kk = 0; kk < kc; ++kk) std::memcpy(pack + kk * NV, B + (k0 + kk) * ldb + j0, sizeof(V));
      const bool accum = acc || k0 > 0;
      int64_t i0 = 0;
      for (; i0 + MR <= m; i0 += MR) {
        V c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {};
        const T* a = A + i0 * as0 + k0 * as1;
        for (int64_t kk = 0; kk < kc; ++kk) {
          V b = vload<T>(pack + kk * NV);
          const T* ak = a + kk * as1;
          c0 += ak[0] * b;
          c1 += ak[as0] * b;
          c2 += ak[2 * as0] * b;
          c3 += ak[3 * as0] * b;
          c4 += ak[4 * as0] * b;
          c5 += ak[5 * as0] * b;
        }
        V* cs[MR] = {&c0, &c1, &c2, &c3, &c4, &c5};
        for (int r = 0; r < MR; ++r) {
          T* cp = C + (i0 + r) * ldc + j0;
          vstore<T>(cp, accum ? vload<T>(cp) + *cs[r] : *cs[r]);
        }
      }
      for (; i0 < m; ++i0) {
        V c = {};
        const T* a = A + i0 * as0 + k0 * as1;
        for (int64_t kk = 0; kk < kc; ++kk) c += a[kk * as1] * vload<T>(pack + kk * NV);
        T* cp = C + i0 * ldc + j0;
        vstore<T>(cp, accum ? vload<T>(cp) + c : c);
      }
    }
  }
  for (; j0 < n; ++j0) {
    for (int64_t i0 = 0; i0 < m; ++i0) {
      T s = 0;
      for (int64_t kk = 0; kk < k; ++kk) s += A[i0 * as0 + kk * as1] * B[kk * ldb + j0];
      T* cp = C + i0 * ldc + j0;
      *cp = acc ? *cp + s : s;
    }
  }
}

// y[0:n] += a * x[0:n*st:st]
template <class T>
GD_INLINE void axpy_body(int64_t n, T a, const T* x, int64_t st, T* y) {
  if (st == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i * st];
  }
}

// y[0:n*st:st] += a * x[0:n]
template <class T>
GD_INLINE void axpy_scatter_body(int64_t n, T a, const T* x, int64_t st, T* y) {
  if (st == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i * st] += a * x[i];
  }
}

// sum_i x[i] y[i*st]
template <class T>
GD_INLINE T dot_body(int64_t n, const T* x, const T* y, int64_t st) {
  typedef typename Vec<T>::type V;
  constexpr int NV = Vec<T>::n;
  T s = 0;
  int64_t i = 0;
  if (st == 1) {
    V a0 = {}, a1 = {};
    for (; i + 2 * NV <= n; i += 2 * NV) {
      a0 += vload<T>(x + i) * vload<T>(y + i);
      a1 += vload<T>(x + i + NV) * vload<T>(y + i + NV);
    }
    a0 += a1;
    for (int l = 0; l < NV; ++l) s += a0[l];
  }
  for (; i < n; ++i) s += x[i] * y[i * st];
  return s;
}

// Hot entry points, compiled once per instruction set (simd.h: AVX-512, AVX2+FMA, baseline) and
// picked at run time by simd::detect_isa() (RBFKERN_CPU_ISA caps it).
#define GD_DEFINE(T, ISA, ATTR)                                                                   \
  ATTR void gemm_##ISA(int64_t m, int64_t n, int64_t k, const T* A, int64_t as0, int64_t as1,      \
                      const T* B, int64_t ldb, T* C, int64_t ldc, bool acc) {                     \
    gemm_body<T>(m, n, k, A, as0, as1, B, ldb, C, ldc, acc);                                      \
  }                                                                                               \
  /* rows of out (nrows x n, row stride ldo): out[r] = sum_a f[a] in[(r*rst + a)*ld : ... : cst] */ \
  ATTR void corr_rows_##ISA(int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst,         \
                           int64_t cst, const T* f, int64_t K, T* out, int64_t ldo) {             \
    if (rst == 1 && cst == 1 && ld == n && ldo == n) { n *= nrows; nrows = 1; }                   \
    for (int64_t r = 0; r < nrows; ++r) {                                                         \
      T* o = out + r * ldo;                                                                       \
      std::fill(o, o + n, T(0));                                                                  \
      for (int64_t a = 0; a < K; ++a) {                                                           \
        const T fa = f[a];                                                                        \
        if (fa == T(0)) continue;                                                                 \
        axpy_body<T>(n, fa, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld), cst, o);               \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  /* transpose of corr_rows: in[(r*rst + a)*ld ...] += f[a] out[r] */                              \
  ATTR void corr_rows_t_##ISA(int64_t nrows, int64_t n, T* in, int64_t ld, int64_t rst,             \
                             int64_t cst, const T* f, int64_t K, const T* out, int64_t ldo) {     \
    if (rst == 1 && cst == 1 && ld == n && ldo == n) { n *= nrows; nrows = 1; }                   \
    for (int64_t r = 0; r < nrows; ++r) {                                                         \
      const T* o = out + r * ldo;                                                                 \
      for (int64_t a = 0; a < K; ++a) {                                                           \
        const T fa = f[a];                                                                        \
        if (fa == T(0)) continue;                                                                 \
        axpy_scatter_body<T>(n, fa, o, cst, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld));        \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  /* gf[a] += sum_r <out[r], in[(r*rst + a)*ld ...]> (the gradient of corr_rows w.r.t. f) */       \
  ATTR void corr_rows_gf_##ISA(int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst,      \
                              int64_t cst, int64_t K, const T* out, int64_t ldo, T* gf) {         \
    if (rst == 1 && cst == 1 && ld == n && ldo == n) { n *= nrows; nrows = 1; }                   \
    for (int64_t r = 0; r < nrows; ++r) {                                                         \
      const T* o = out + r * ldo;                                                                 \
      for (int64_t a = 0; a < K; ++a)                                                             \
        gf[a] += dot_body<T>(n, o, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld), cst);            \
    }                                                                                             \
  }


#if defined(__x86_64__) && defined(__GNUC__)
#define GD_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define GD_AVX2 __attribute__((target("avx2,fma")))
#else
#define GD_AVX512
#define GD_AVX2
#endif
GD_DEFINE(float, avx512, GD_AVX512)
GD_DEFINE(double, avx512, GD_AVX512)
GD_DEFINE(float, avx2, GD_AVX2)
GD_DEFINE(double, avx2, GD_AVX2)
GD_DEFINE(float, base, )
GD_DEFINE(double, base, )

int isa() {
  static const int v = simd::detect_isa();
  return v;
}

#define GD_DISPATCH(NAME, ARGS, CALL)                                      \
  template <class T>                                                       \
  void NAME ARGS {                                                         \
    switch (isa()) {                                                       \
      case simd::kIsaAvx512: return NAME##_avx512 CALL;                    \
      case simd::kIsaAvx2: return NAME##_avx2 CALL;                        \
      default: return NAME##_base CALL;                                    \
    }                                                                      \
  }
GD_DISPATCH(gemm, (int64_t m, int64_t n, int64_t k, const T* A, int64_t as0, int64_t as1, const T* B, int64_t ldb,
                   T* C, int64_t ldc, bool acc), (m, n, k, A, as0, as1, B, ldb, C, ldc, acc))
GD_DISPATCH(corr_rows, (int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst, int64_t cst, const T* f,
                        int64_t K, T* out, int64_t ldo), (nrows, n, in, ld, rst, cst, f, K, out, ldo))
GD_DISPATCH(corr_rows_t, (int64_t nrows, int64_t n, T* in, int64_t ld, int64_t rst, int64_t cst, const T* f,
                          int64_t K, const T* out, int64_t ldo), (nrows, n, in, ld, rst, cst, f, K, out, ldo))
GD_DISPATCH(corr_rows_gf, (int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst, int64_t cst, int64_t K,
                           const T* out, int64_t ldo, T* gf), (nrows, n, in, ld, rst, cst, K, out, ldo, gf))

// Output rows per tile: about 1024 pixels, and (backward) at least K/stride rows so that only
// neighbouring tiles touch the same input rows.
int64_t tile_rows(int64_t Ho, int64_t Wo, int64_t K, int64_t st, bool backward) {
  int64_t t = std::max<int64_t>(1, (1024 + Wo - 1) / std::max<int64_t>(Wo, 1));
  if (backward) t = std::max(t, simd::cdiv(K, st));
  return std::min(std::max<int64_t>(Ho, 1), t);
}

int threads_for(int nthreads) { return std::max(1, nthreads); }

// Phase 1: row pass of image n into R (Ci, S, O1, Hp, Wo), Hp = (Ho-1)*st + K padded rows.
template <class T>
void row_pass(const GdProblem<T>& p, int64_t n, T* R, std::vector<T>& xp) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Wp = (p.Wo - 1) * st + p.K;
  xp.assign(Wp, T(0));
#pragma omp for collapse(2) schedule(static)
  for (int64_t i = 0; i < p.Ci; ++i) {
    for (int64_t s = 0; s < p.S; ++s) {
      const T* xi = p.x + (n * p.Ci + i) * p.H * p.W;
      T* Ris = R + (i * p.S + s) * p.O1 * Hp * p.Wo;
      for (int64_t r = 0; r < Hp; ++r) {
        const int64_t y = r - p.pad;
        if (y < 0 || y >= p.H) {
          for (int64_t m = 0; m < p.O1; ++m) std::fill_n(Ris + (m * Hp + r) * p.Wo, p.Wo, T(0));
          continue;
        }
        for (int64_t c = 0; c < Wp; ++c) {
          const int64_t xc = c - p.pad;
          xp[c] = (xc >= 0 && xc < p.W) ? xi[y * p.W + xc] : T(0);
        }
        for (int64_t m = 0; m < p.O1; ++m)
          corr_rows(1, p.Wo, xp.data(), 0, 0, st, p.f + (s * p.O1 + m) * p.K, p.K,
                    Ris + (m * Hp + r) * p.Wo, p.Wo);
      }
    }
  }
}

// Column pass of one tile (output rows t0 .. t0+tn) into Z (J x tn*Wo).
template <class T>
void col_pass(const GdProblem<T>& p, const T* R, int64_t t0, int64_t tn, T* Z) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, P = tn * p.Wo;
  for (int64_t i = 0; i < p.Ci; ++i)
    for (int64_t s = 0; s < p.S; ++s)
      for (int64_t b = 0; b < p.M; ++b) {
        const int64_t pp = p.pq[2 * b], q = p.pq[2 * b + 1];
        const T* Rp = R + ((i * p.S + s) * p.O1 + pp) * Hp * p.Wo + t0 * st * p.Wo;
        corr_rows(tn, p.Wo, Rp, p.Wo, st, 1, p.f + (s * p.O1 + q) * p.K, p.K,
                  Z + ((i * p.S + s) * p.M + b) * P, p.Wo);
      }
}

}  // namespace

template <class T>
void gauss_deriv2d_forward(const GdProblem<T>& p, T* out, int nthreads) {
  const int64_t Hp = (p.Ho - 1) * p.stride + p.K;
  const int64_t J = p.Ci * p.S * p.M, HWo = p.Ho * p.Wo;
  if (p.N == 0 || HWo == 0) return;
  if (J == 0) {
    std::fill_n(out, p.N * p.Co * HWo, T(0));
    return;
  }
  const int64_t Tt = tile_rows(p.Ho, p.Wo, p.K, p.stride, false);
  const int64_t ntiles = simd::cdiv(p.Ho, Tt);
  std::vector<T> R((size_t)(p.Ci * p.S * p.O1 * Hp * p.Wo));
#pragma omp parallel num_threads(threads_for(nthreads))
  {
    std::vector<T> xp, Z((size_t)(J * Tt * p.Wo));
    for (int64_t n = 0; n < p.N; ++n) {
      row_pass(p, n, R.data(), xp);  // ends with an implicit barrier
#pragma omp for schedule(static)
      for (int64_t tile = 0; tile < ntiles; ++tile) {
        const int64_t t0 = tile * Tt, tn = std::min(Tt, p.Ho - t0), P = tn * p.Wo;
        col_pass(p, R.data(), t0, tn, Z.data());
        gemm(p.Co, P, J, p.A, J, 1, Z.data(), P, out + n * p.Co * HWo + t0 * p.Wo, HWo, false);
      }
    }
  }
}

template <class T>
void gauss_deriv2d_backward(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf,
                            int nthreads) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Wp = (p.Wo - 1) * st + p.K;
  const int64_t J = p.Ci * p.S * p.M, HWo = p.Ho * p.Wo;
  const int64_t nf = p.S * p.O1 * p.K;
  if (gx) std::fill_n(gx, p.N * p.Ci * p.H * p.W, T(0));
  if (galpha) std::fill_n(galpha, p.Co * J, T(0));
  if (gf) std::fill_n(gf, nf, T(0));
  if (p.N == 0 || HWo == 0 || J == 0 || (!gx && !galpha && !gf)) return;
  const bool need_R = galpha || gf, need_dZ = gx || gf;
  const int64_t Tt = tile_rows(p.Ho, p.Wo, p.K, st, true);
  const int64_t ntiles = simd::cdiv(p.Ho, Tt);
  const size_t rsize = (size_t)(p.Ci * p.S * p.O1 * Hp * p.Wo);
  std::vector<T> R(need_R ? rsize : 0), dR(need_dZ ? rsize : 0);
  const int nt = threads_for(nthreads);
  std::vector<std::vector<T>> ga_part(nt), gf_part(nt);
#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    std::vector<T> xp, gxp((size_t)Wp);
    std::vector<T> Z(galpha ? (size_t)(J * Tt * p.Wo) : 0), Zt(galpha ? (size_t)(J * Tt * p.Wo) : 0);
    std::vector<T> dZ(need_dZ ? (size_t)(J * Tt * p.Wo) : 0);
    std::vector<T>& ga = ga_part[tid];
    std::vector<T>& gft = gf_part[tid];
    if (galpha) ga.assign((size_t)(p.Co * J), T(0));
    if (gf) gft.assign((size_t)nf, T(0));
    for (int64_t n = 0; n < p.N; ++n) {
      const T* go = gout + n * p.Co * HWo;
      if (need_R) row_pass(p, n, R.data(), xp);
      if (need_dZ) {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < (int64_t)rsize; ++c) dR[c] = T(0);
      }
      for (int color = 0; color < 2; ++color) {
#pragma omp for schedule(static)
        for (int64_t tile = color; tile < ntiles; tile += 2) {
          const int64_t t0 = tile * Tt, tn = std::min(Tt, p.Ho - t0), P = tn * p.Wo;
          if (galpha) {
            col_pass(p, R.data(), t0, tn, Z.data());
            for (int64_t j = 0; j < J; ++j)
              for (int64_t k = 0; k < P; ++k) Zt[k * J + j] = Z[j * P + k];
            gemm(p.Co, J, P, go + t0 * p.Wo, HWo, 1, Zt.data(), J, ga.data(), J, true);
          }
          if (!need_dZ) continue;
          // dZ (J x P) = A^T (J x Co) gout_tile (Co x P)
          gemm(J, P, p.Co, p.A, 1, J, go + t0 * p.Wo, HWo, dZ.data(), P, false);
          for (int64_t i = 0; i < p.Ci; ++i)
            for (int64_t s = 0; s < p.S; ++s)
              for (int64_t b = 0; b < p.M; ++b) {
                const int64_t pp = p.pq[2 * b], q = p.pq[2 * b + 1];
                const int64_t off = ((i * p.S + s) * p.O1 + pp) * Hp * p.Wo + t0 * st * p.Wo;
                const T* dz = dZ.data() + ((i * p.S + s) * p.M + b) * P;
                if (gf)
                  corr_rows_gf(tn, p.Wo, R.data() + off, p.Wo, st, 1, p.K, dz, p.Wo,
                               gft.data() + (s * p.O1 + q) * p.K);
                corr_rows_t(tn, p.Wo, dR.data() + off, p.Wo, st, 1, p.f + (s * p.O1 + q) * p.K, p.K, dz,
                            p.Wo);
              }
        }
      }
      if (!need_dZ) continue;
      // Transposed row pass: gx and the x-role tap gradient; one thread per input channel.
      xp.assign((size_t)Wp, T(0));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < p.Ci; ++i) {
        const T* xi = p.x + (n * p.Ci + i) * p.H * p.W;
        T* gxi = gx ? gx + (n * p.Ci + i) * p.H * p.W : nullptr;
        for (int64_t s = 0; s < p.S; ++s) {
          const T* dRis = dR.data() + (i * p.S + s) * p.O1 * Hp * p.Wo;
          for (int64_t r = 0; r < Hp; ++r) {
            const int64_t y = r - p.pad;
            if (y < 0 || y >= p.H) continue;
            if (gf) {
              for (int64_t c = 0; c < Wp; ++c) {
                const int64_t xc = c - p.pad;
                xp[c] = (xc >= 0 && xc < p.W) ? xi[y * p.W + xc] : T(0);
              }
            }
            if (gxi) std::fill(gxp.begin(), gxp.end(), T(0));
            for (int64_t m = 0; m < p.O1; ++m) {
              const T* d = dRis + (m * Hp + r) * p.Wo;
              const T* fm = p.f + (s * p.O1 + m) * p.K;
              if (gxi) corr_rows_t(1, p.Wo, gxp.data(), 0, 0, st, fm, p.K, d, p.Wo);
              if (gf) corr_rows_gf(1, p.Wo, xp.data(), 0, 0, st, p.K, d, p.Wo, gft.data() + (s * p.O1 + m) * p.K);
            }
            if (gxi) {
              for (int64_t c = 0; c < Wp; ++c) {
                const int64_t xc = c - p.pad;
                if (xc >= 0 && xc < p.W) gxi[y * p.W + xc] += gxp[c];
              }
            }
          }
        }
      }
    }
  }
  // Per-thread partials, summed in thread order.
  for (int t = 0; t < nt; ++t) {
    if (galpha && !ga_part[t].empty())
      for (int64_t k = 0; k < p.Co * J; ++k) galpha[k] += ga_part[t][k];
    if (gf && !gf_part[t].empty())
      for (int64_t k = 0; k < nf; ++k) gf[k] += gf_part[t][k];
  }
}

template void gauss_deriv2d_forward<float>(const GdProblem<float>&, float*, int);
template void gauss_deriv2d_forward<double>(const GdProblem<double>&, double*, int);
template void gauss_deriv2d_backward<float>(const GdProblem<float>&, const float*, float*, float*,
                                            float*, int);
template void gauss_deriv2d_backward<double>(const GdProblem<double>&, const double*, double*,
                                             double*, double*, int);

}  // namespace cpu
}  // namespace rbfkern
