// B-cos CPU kernels: everything around the convolution / GEMM (which PyTorch runs).
//
// Geometry (int64 g[17]): N, C, H, W, G, O, M, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw.
// Layouts, all contiguous: x [N, C, H, W]; raw linear output l [N, O*M, P] with P = Ho*Wo;
// y, lmax [N, O, P]; idx uint8 [N, O, P]; root, q [N, G, P]. A linear layer is the case
// H = W = Ho = Wo = 1 with a 1x1 window and G = 1.
//
// Forward   n = root + eps_out, root = sqrt(box-sum of x^2 over the window and the group's
//           channels + eps_in); l* = max_m l[o*M + m] (ties -> first);
//           y = l* (B = 1), (|l*|/n) l* (B = 2), (|l*|/n + 1e-6)^(B-1) l* (otherwise).
// Backward  gl = dy/dl* gy scattered to the argmax channel; q = sum_o dy/dn gy / root per
//           group; gx += x * box-sum^T(q) (d root / d x_c = x_c / root).
//
// The kernel section below is compiled once per instruction set (AVX-512, AVX2 + FMA, baseline;
// the wheel has no -march) by including this file into itself, as csrc/cpu/rbf.cpp does, and
// the entry points pick one at run time (simd::detect_isa, RBFKERN_CPU_ISA caps it). The ISA
// is fixed per process, so results do not depend on the thread count.
#ifndef RBFKERN_BCOS_ISA_PASS

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/simd.h"

#pragma GCC diagnostic ignored "-Wpsabi"

#define RBFKERN_BCOS_ISA_PASS 1
#if defined(__x86_64__) || defined(__i386__)
#define RBFKERN_BCOS_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,popcnt,lzcnt,prefer-vector-width=512")
namespace rbfkern {
namespace bcos_avx512 {
#include "bcos.cpp"  // NOLINT(build/include): kernel section, AVX-512
}  // namespace bcos_avx512
}  // namespace rbfkern
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt,lzcnt")
namespace rbfkern {
namespace bcos_avx2 {
#include "bcos.cpp"  // NOLINT(build/include): kernel section, AVX2 + FMA
}  // namespace bcos_avx2
}  // namespace rbfkern
#pragma GCC pop_options
#endif
namespace rbfkern {
namespace bcos_default {
#include "bcos.cpp"  // NOLINT(build/include): kernel section, baseline
}  // namespace bcos_default
}  // namespace rbfkern
#undef RBFKERN_BCOS_ISA_PASS

namespace rbfkern {
namespace {

int bcos_isa() {
  static const int isa = simd::detect_isa();
  return isa;
}

}  // namespace

// Run F<T> from the kernel section of the detected instruction set.
#ifdef RBFKERN_BCOS_X86
#define RBFKERN_BCOS_DISPATCH(CALL)                                      \
  switch (bcos_isa()) {                                                  \
    case simd::kIsaAvx512: { namespace NS = bcos_avx512; CALL; return; }  \
    case simd::kIsaAvx2: { namespace NS = bcos_avx2; CALL; return; }      \
    default: { namespace NS = bcos_default; CALL; return; }               \
  }
#else
#define RBFKERN_BCOS_DISPATCH(CALL) { namespace NS = bcos_default; CALL; }
#endif

// Flat entry points for csrc/cpu/bcos_bind.cpp (declared there; no shared header).
#define RBFKERN_BCOS_ENTRY(T, SUF)                                                              \
  void bcos_fwd_##SUF(const int64_t* geom, double b, double eps_in, double eps_out, const T* x, \
                      const T* l, T* y, T* lmax, uint8_t* idx, T* root, bool save, int nt) {    \
    RBFKERN_BCOS_DISPATCH(NS::fwd<T>(NS::Geom(geom), b, eps_in, eps_out, x, l, y, lmax, idx, root, save, nt)) \
  }                                                                                              \
  void bcos_bwd_epilogue_##SUF(const int64_t* geom, double b, double eps_out, const T* gy,     \
                               const T* lmax, const uint8_t* idx, const T* root, T* gl, T* q,   \
                               bool explain, bool need_q, int nt) {                             \
    RBFKERN_BCOS_DISPATCH(NS::bwd_epilogue<T>(NS::Geom(geom), b, eps_out, gy, lmax, idx, root, gl, q, explain, need_q, nt)) \
  }                                                                                              \
  void bcos_bwd_norm_##SUF(const int64_t* geom, const T* x, const T* q, T* gx, int nt) {       \
    RBFKERN_BCOS_DISPATCH(NS::bwd_norm<T>(NS::Geom(geom), x, q, gx, nt))                                 \
  }                                                                                              \
  void bcos_unit_weight_##SUF(const T* w, T* wh, int64_t R, int64_t K) {                         \
    RBFKERN_BCOS_DISPATCH(NS::unit_weight<T>(w, wh, R, K))                                           \
  }                                                                                              \
  void bcos_unit_weight_bwd_##SUF(const T* w, const T* g, T* gw, int64_t R, int64_t K) {         \
    RBFKERN_BCOS_DISPATCH(NS::unit_weight_bwd<T>(w, g, gw, R, K))                                    \
  }

RBFKERN_BCOS_ENTRY(float, f32)
RBFKERN_BCOS_ENTRY(double, f64)
#undef RBFKERN_BCOS_ENTRY
#undef RBFKERN_BCOS_DISPATCH

}  // namespace rbfkern

#else  // RBFKERN_BCOS_ISA_PASS: kernel section, included once per instruction set

#include "cpu/bcos_simd.h"


constexpr double kCosEps = 1e-6;  // added to |cos| before the power (B != 2), as bcos does

struct Geom {
  int64_t N, C, H, W, G, O, M, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
  explicit Geom(const int64_t* v)
      : N(v[0]), C(v[1]), H(v[2]), W(v[3]), G(v[4]), O(v[5]), M(v[6]), Ho(v[7]), Wo(v[8]),
        kh(v[9]), kw(v[10]), sh(v[11]), sw(v[12]), ph(v[13]), pw(v[14]), dh(v[15]), dw(v[16]) {}
  int64_t P() const { return Ho * Wo; }
};

// One (n, g) plane of the patch norm: s = channel sums of squares (scratch, H*W), then
// root[p] = sqrt(window sum of s + eps_in) (zero padding, dilation aware).
template <typename T>
void patch_root_plane(const Geom& g, const T* x_ng, T* __restrict s, T* __restrict root, double eps_in) {
  const int64_t HW = g.H * g.W, Cg = g.C / g.G;
  for (int64_t i = 0; i < HW; ++i) s[i] = T(0);
  for (int64_t c = 0; c < Cg; ++c) {
    const T* __restrict xr = x_ng + c * HW;
    for (int64_t i = 0; i < HW; ++i) s[i] += xr[i] * xr[i];
  }
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    T* rrow = root + ho * g.Wo;
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      T acc = T(0);
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t hi = ho * g.sh - g.ph + i * g.dh;
        if (hi < 0 || hi >= g.H) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t wi = wo * g.sw - g.pw + j * g.dw;
          if (wi < 0 || wi >= g.W) continue;
          acc += s[hi * g.W + wi];
        }
      }
      rrow[wo] = std::sqrt(acc + T(eps_in));
    }
  }
}

// One (n, o) row of the forward epilogue: MaxOut over MM (compile time; 0 = runtime M) raw
// channels, then the power. Branch-free so the p loop vectorises.
template <typename T, int MM, int MODE, bool SAVE>
void fwd_row(const T* __restrict lo, int64_t P, int64_t M, const T* __restrict r, T* __restrict yo,
             T* __restrict lmo, uint8_t* __restrict io, T pw1, T eo, T ce) {
  const int64_t mm = MM > 0 ? MM : M;
  int64_t bad = 0;  // power arguments outside the range of bpow::pow_pos (NaN, inf, huge)
  for (int64_t p = 0; p < P; ++p) {
    T best = lo[p];
    uint8_t bi = 0;
    // MaxOut written out for MM = 2, 3: GCC does not vectorise the p loop around an inner loop.
    if (MM == 2 || MM == 3) {
      const T v1 = lo[P + p];
      bi = v1 > best ? uint8_t(1) : bi;
      best = v1 > best ? v1 : best;
      if (MM == 3) {
        const T v2 = lo[2 * P + p];
        bi = v2 > best ? uint8_t(2) : bi;
        best = v2 > best ? v2 : best;
      }
    } else if (MM != 1) {
      for (int64_t m = 1; m < mm; ++m) {
        const T v = lo[m * P + p];
        const bool gt = v > best;
        best = gt ? v : best;
        bi = gt ? static_cast<uint8_t>(m) : bi;
      }
    }
    if (SAVE) {
      lmo[p] = best;
      io[p] = bi;
    }
    if (MODE == 1) {
      yo[p] = best;
    } else if (MODE == 2) {
      yo[p] = (std::abs(best) / (r[p] + eo)) * best;
    } else {
      const double t = static_cast<double>(std::abs(best) / (r[p] + eo) + ce);
      bad += bpow::out_of_range(t);
      yo[p] = static_cast<T>(bpow::pow_pos(t, static_cast<double>(pw1))) * best;
    }
  }
  if (MODE == 0 && bad) {  // rare: redo the row with the library pow
    for (int64_t p = 0; p < P; ++p) {
      T best = lo[p];
      for (int64_t m = 1; m < mm; ++m) best = lo[m * P + p] > best ? lo[m * P + p] : best;
      yo[p] = std::pow(std::abs(best) / (r[p] + eo) + ce, pw1) * best;
    }
  }
}

template <typename T, int MODE, bool SAVE>
void fwd_row_m(const T* lo, int64_t P, int64_t M, const T* r, T* yo, T* lmo, uint8_t* io, T pw1, T eo, T ce) {
  switch (M) {
    case 1: fwd_row<T, 1, MODE, SAVE>(lo, P, M, r, yo, lmo, io, pw1, eo, ce); break;
    case 2: fwd_row<T, 2, MODE, SAVE>(lo, P, M, r, yo, lmo, io, pw1, eo, ce); break;
    case 3: fwd_row<T, 3, MODE, SAVE>(lo, P, M, r, yo, lmo, io, pw1, eo, ce); break;
    default: fwd_row<T, 0, MODE, SAVE>(lo, P, M, r, yo, lmo, io, pw1, eo, ce); break;
  }
}

// Forward, one task per (n, g): the patch norm of the plane (kept in cache) and the epilogue of
// the group's output channels, with no barrier in between. A linear layer (1x1 window, H = W = 1)
// has one task per row.
template <typename T, int MODE, bool SAVE>
void fwd_all(const Geom& g, double eps_in, const T* x, const T* l, T* y, T* lmax, uint8_t* idx, T* root,
             T pw1, T eo, T ce, int nt) {
  const int64_t P = g.P(), Og = g.O / g.G, M = g.M, HW = g.H * g.W, Cg = g.C / g.G, NG = g.N * g.G;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> sbuf, rbuf;
    if (MODE != 1) {
      sbuf.resize(static_cast<size_t>(HW));
      if (!SAVE) rbuf.resize(static_cast<size_t>(P));
    }
#pragma omp for schedule(static)
    for (int64_t ng = 0; ng < NG; ++ng) {
      T* r = nullptr;
      if (MODE != 1) {
        r = SAVE ? root + ng * P : rbuf.data();
        patch_root_plane(g, x + ng * Cg * HW, sbuf.data(), r, eps_in);
      }
      const int64_t n = ng / g.G, gg = ng % g.G;
      for (int64_t oo = 0; oo < Og; ++oo) {
        const int64_t no = n * g.O + gg * Og + oo;
        fwd_row_m<T, MODE, SAVE>(l + no * M * P, P, M, r, y + no * P, SAVE ? lmax + no * P : nullptr,
                                 SAVE ? idx + no * P : nullptr, pw1, eo, ce);
      }
    }
  }
}

template <typename T>
void fwd(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* l, T* y,
         T* lmax, uint8_t* idx, T* root, bool save, int nt) {
  const T pw1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
  const int mode = b == 1.0 ? 1 : (b == 2.0 ? 2 : 0);
#define RBFKERN_FWD_CASE(MODE)                                                               \
  if (save) fwd_all<T, MODE, true>(g, eps_in, x, l, y, lmax, idx, root, pw1, eo, ce, nt);    \
  else fwd_all<T, MODE, false>(g, eps_in, x, l, y, lmax, idx, root, pw1, eo, ce, nt);
  if (mode == 1) {
    RBFKERN_FWD_CASE(1)
  } else if (mode == 2) {
    RBFKERN_FWD_CASE(2)
  } else {
    RBFKERN_FWD_CASE(0)
  }
#undef RBFKERN_FWD_CASE
}

// One (n, o) row (a chunk of pixels) of the backward epilogue: gl for the MM raw channels (the
// gradient goes to the argmax only) and the patch-norm gradient accumulated into qa.
// MODE: 1 (B = 1), 2 (B = 2), 0 (other B); QN: accumulate the norm gradient.
template <typename T, int MM, int MODE, bool EXPLAIN, bool QN>
void bwd_row(const T* __restrict gyo, const T* __restrict lo, const uint8_t* __restrict io,
             const T* __restrict r, T* __restrict glo, T* __restrict qa, int64_t np, int64_t P,
             int64_t M, T p1, T eo, T ce) {
  const int64_t mm = MM > 0 ? MM : M;
  int64_t bad = 0;
  for (int64_t p = 0; p < np; ++p) {
    T gv;
    if (MODE == 1) {
      gv = gyo[p];
    } else if (MODE == 2) {
      const T nn = r[p] + eo, s = std::abs(lo[p]) / nn;
      gv = (EXPLAIN ? s : T(2) * s) * gyo[p];
      if (QN) qa[p] -= s * lo[p] / nn * gyo[p];
    } else {
      const T nn = r[p] + eo, s = std::abs(lo[p]) / nn, t = s + ce;
      bad += bpow::out_of_range(static_cast<double>(t));
      const T tq = static_cast<T>(bpow::pow_pos(static_cast<double>(t), static_cast<double>(p1) - 1.0));  // t^(B-2)
      gv = (EXPLAIN ? t * tq : t * tq + p1 * s * tq) * gyo[p];
      if (QN) qa[p] -= p1 * lo[p] * s * tq / nn * gyo[p];
    }
    const int im = io[p];
    if (MM == 1) {
      glo[p] = gv;
    } else if (MM == 2 || MM == 3) {  // written out, as in fwd_row
      glo[p] = im == 0 ? gv : T(0);
      glo[P + p] = im == 1 ? gv : T(0);
      if (MM == 3) glo[2 * P + p] = im == 2 ? gv : T(0);
    } else {
      for (int64_t m = 0; m < mm; ++m) glo[m * P + p] = im == m ? gv : T(0);
    }
  }
  if (MODE == 0 && bad) {  // rare (t = inf or NaN): the library pow for those pixels' gl; their
    // norm-gradient term has the factor s = inf / NaN either way, so qa is left as it is.
    for (int64_t p = 0; p < np; ++p) {
      const T nn = r[p] + eo, s = std::abs(lo[p]) / nn, t = s + ce;
      if (!bpow::out_of_range(static_cast<double>(t))) continue;
      const T tq = std::pow(t, p1 - T(1));
      glo[io[p] * P + p] = (EXPLAIN ? t * tq : t * tq + p1 * s * tq) * gyo[p];
    }
  }
}

template <typename T, int MODE, bool EXPLAIN, bool QN>
void bwd_row_m(const T* gyo, const T* lo, const uint8_t* io, const T* r, T* glo, T* qa, int64_t np,
               int64_t P, int64_t M, T p1, T eo, T ce) {
  switch (M) {
    case 1: bwd_row<T, 1, MODE, EXPLAIN, QN>(gyo, lo, io, r, glo, qa, np, P, M, p1, eo, ce); break;
    case 2: bwd_row<T, 2, MODE, EXPLAIN, QN>(gyo, lo, io, r, glo, qa, np, P, M, p1, eo, ce); break;
    case 3: bwd_row<T, 3, MODE, EXPLAIN, QN>(gyo, lo, io, r, glo, qa, np, P, M, p1, eo, ce); break;
    default: bwd_row<T, 0, MODE, EXPLAIN, QN>(gyo, lo, io, r, glo, qa, np, P, M, p1, eo, ce); break;
  }
}

// Backward epilogue, one task per (n, g, chunk of pixels): loops over the group's channels,
// accumulating the patch-norm gradient of the chunk privately (no atomics, deterministic).
template <typename T, int MODE, bool EXPLAIN, bool QN>
void bwd_all(const Geom& g, const T* gy, const T* lmax, const uint8_t* idx, const T* root, T* gl, T* q,
             T p1, T eo, T ce, int nt) {
  const int64_t P = g.P(), Og = g.O / g.G, M = g.M;
  const int64_t CH = 1024;  // output pixels per task
  const int64_t nchunk = (P + CH - 1) / CH;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> qa(static_cast<size_t>(CH));
#pragma omp for collapse(2) schedule(static)
    for (int64_t ng = 0; ng < g.N * g.G; ++ng) {
      for (int64_t c = 0; c < nchunk; ++c) {
        const int64_t n = ng / g.G, gg = ng % g.G;
        const int64_t p0 = c * CH, np = (P - p0) < CH ? (P - p0) : CH;
        const T* r = MODE == 1 ? nullptr : root + ng * P + p0;
        T* qap = qa.data();
        if (QN) std::fill(qap, qap + np, T(0));
        for (int64_t oo = 0; oo < Og; ++oo) {
          const int64_t no = n * g.O + gg * Og + oo;
          bwd_row_m<T, MODE, EXPLAIN, QN>(gy + no * P + p0, lmax + no * P + p0, idx + no * P + p0, r,
                                          gl + no * M * P + p0, qap, np, P, M, p1, eo, ce);
        }
        if (q != nullptr) {
          T* qo = q + ng * P + p0;
          if (!QN) {
            std::fill(qo, qo + np, T(0));
          } else {
            for (int64_t p = 0; p < np; ++p) qo[p] = r[p] > T(0) ? qap[p] / r[p] : T(0);
          }
        }
      }
    }
  }
}

template <typename T>
void bwd_epilogue(const Geom& g, double b, double eps_out, const T* gy, const T* lmax,
                  const uint8_t* idx, const T* root, T* gl, T* q, bool explain, bool need_q,
                  int nt) {
  const int mode = b == 1.0 ? 1 : (b == 2.0 ? 2 : 0);
  const bool qn = need_q && !explain && mode != 1;
  T* qq = need_q ? q : nullptr;
  const T p1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
#define RBFKERN_BWD(MODE, EX, QN) bwd_all<T, MODE, EX, QN>(g, gy, lmax, idx, root, gl, qq, p1, eo, ce, nt)
  if (mode == 1) {
    RBFKERN_BWD(1, false, false);
  } else if (mode == 2) {
    if (explain) RBFKERN_BWD(2, true, false);
    else if (qn) RBFKERN_BWD(2, false, true);
    else RBFKERN_BWD(2, false, false);
  } else {
    if (explain) RBFKERN_BWD(0, true, false);
    else if (qn) RBFKERN_BWD(0, false, true);
    else RBFKERN_BWD(0, false, false);
  }
#undef RBFKERN_BWD
}

template <typename T>
void bwd_norm(const Geom& g, const T* x, const T* q, T* gx, int nt) {
  const int64_t Cg = g.C / g.G, P = g.P();
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> R(static_cast<size_t>(g.W));
#pragma omp for collapse(3) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t gg = 0; gg < g.G; ++gg) {
        for (int64_t h = 0; h < g.H; ++h) {
          const T* qp = q + (n * g.G + gg) * P;
          // R[w] = sum of q over the output pixels whose window covers (h, w).
          for (int64_t w = 0; w < g.W; ++w) {
            T acc = T(0);
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t a = h + g.ph - i * g.dh;
              if (a < 0 || a % g.sh != 0) continue;
              const int64_t ho = a / g.sh;
              if (ho >= g.Ho) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                const int64_t bb = w + g.pw - j * g.dw;
                if (bb < 0 || bb % g.sw != 0) continue;
                const int64_t wo = bb / g.sw;
                if (wo >= g.Wo) continue;
                acc += qp[ho * g.Wo + wo];
              }
            }
            R[w] = acc;
          }
          const T* __restrict Rp = R.data();
          for (int64_t c = 0; c < Cg; ++c) {
            const int64_t off = ((n * g.C + gg * Cg + c) * g.H + h) * g.W;
            const T* __restrict xr = x + off;
            T* __restrict gr = gx + off;
            for (int64_t w = 0; w < g.W; ++w) gr[w] += xr[w] * Rp[w];
          }
        }
      }
    }
  }
}

// Sum of squares / dot product of a row with 16 lane accumulators: vectorises (a single
// accumulator is a serial add chain) and keeps a fixed summation order.
template <typename T>
T row_dot(const T* __restrict a, const T* __restrict b, int64_t K) {
  constexpr int L = 16;
  T acc[L] = {};
  int64_t k = 0;
  for (; k + L <= K; k += L)
    for (int j = 0; j < L; ++j) acc[j] += a[k + j] * b[k + j];
  for (int j = 0; k + j < K; ++j) acc[j] += a[k + j] * b[k + j];
  T s = T(0);
  for (int j = 0; j < L; ++j) s += acc[j];
  return s;
}

// Unit-norm filters W-hat = W / ||W||_row and their backward gW = (g - W-hat <g, W-hat>) / ||W||.
// Serial on purpose: the weight is small, and a parallel region costs more than it saves.
template <typename T>
void unit_weight(const T* w, T* wh, int64_t R, int64_t K) {
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict wr = w + r * K;
    T* __restrict hr = wh + r * K;
    const T nrm = std::sqrt(row_dot(wr, wr, K));
    for (int64_t k = 0; k < K; ++k) hr[k] = wr[k] / nrm;
  }
}

template <typename T>
void unit_weight_bwd(const T* w, const T* g, T* gw, int64_t R, int64_t K) {
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict wr = w + r * K;
    const T* __restrict gr = g + r * K;
    T* __restrict out = gw + r * K;
    const T nrm = std::sqrt(row_dot(wr, wr, K));
    const T dot = row_dot(gr, wr, K) / nrm;
    for (int64_t k = 0; k < K; ++k) out[k] = (gr[k] - (wr[k] / nrm) * dot) / nrm;
  }
}

#endif  // RBFKERN_BCOS_ISA_PASS
