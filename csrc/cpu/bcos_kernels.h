// B-cos CPU kernels (contract and formulas: csrc/cpu/bcos.h). bcos.cpp compiles this file once
// per instruction set (csrc/cpu/isa_foreach.h), with bcos_direct.h (the direct-convolution
// forward) and bcos_wgrad_det.h (the deterministic weight gradient) at its end. No include guard
// on purpose.

using Geom = BcosGeom;

constexpr double kCosEps = 1e-6;  // added to |cos| before the power (B != 2), as bcos does

#include "cpu/bcos_vpow.h"  // NOLINT(build/include): part of the kernel section

// Output columns [lo, hi) whose tap at input column wo * st + off lies in [0, len): the inner
// loops then run branch-free over a contiguous range (and vectorise).
inline void tap_range(int64_t off, int64_t st, int64_t len, int64_t n_out, int64_t* lo, int64_t* hi) {
  *lo = off >= 0 ? 0 : (-off + st - 1) / st;
  *hi = off > len - 1 ? 0 : std::min(n_out, (len - 1 - off) / st + 1);
}

// The patch norm's window sums of one (n, g) plane s of channel sums of squares (H x W),
// separably: hs = window sums along each input row (H x Wo scratch), then down the columns into
// root = sqrt(sum + eps_in) (Ho x Wo).
template <typename T>
void window_root(const Geom& g, const T* __restrict s, T* __restrict hs, T* __restrict root, double eps_in) {
  const int64_t Wo = g.Wo;
  for (int64_t h = 0; h < g.H; ++h) {
    const T* __restrict sr = s + h * g.W;
    T* __restrict hr = hs + h * Wo;
    for (int64_t wo = 0; wo < Wo; ++wo) hr[wo] = T(0);
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t off = j * g.dw - g.pw;
      int64_t lo, hi;
      tap_range(off, g.sw, g.W, Wo, &lo, &hi);
      if (g.sw == 1) {
        for (int64_t wo = lo; wo < hi; ++wo) hr[wo] += sr[wo + off];
      } else {
        for (int64_t wo = lo; wo < hi; ++wo) hr[wo] += sr[wo * g.sw + off];
      }
    }
  }
  const T ein = T(eps_in);
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    T* __restrict rr = root + ho * Wo;
    for (int64_t wo = 0; wo < Wo; ++wo) rr[wo] = T(0);
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t hi = ho * g.sh - g.ph + i * g.dh;
      if (hi < 0 || hi >= g.H) continue;
      const T* __restrict hr = hs + hi * Wo;
      for (int64_t wo = 0; wo < Wo; ++wo) rr[wo] += hr[wo];
    }
    for (int64_t wo = 0; wo < Wo; ++wo) rr[wo] = std::sqrt(rr[wo] + ein);
  }
}

// Sum of a row / dot product of two with 16 lane accumulators: vectorises (a single accumulator
// is a serial add chain) and keeps a fixed summation order.
template <typename T, typename Term>
T lane_reduce(Term term, int64_t K) {
  constexpr int L = 16;
  T acc[L] = {};
  int64_t k = 0;
  for (; k + L <= K; k += L)
    for (int j = 0; j < L; ++j) acc[j] += term(k + j);
  for (int j = 0; k + j < K; ++j) acc[j] += term(k + j);
  T s = T(0);
  for (int j = 0; j < L; ++j) s += acc[j];
  return s;
}

template <typename T>
T row_dot(const T* __restrict a, const T* __restrict b, int64_t K) {
  return lane_reduce<T>([&](int64_t k) { return a[k] * b[k]; }, K);
}

template <typename T>
T row_sum(const T* __restrict a, int64_t K) {
  return lane_reduce<T>([&](int64_t k) { return a[k]; }, K);
}

// One (n, g) plane of the patch norm from NCHW x: s = channel sums of squares (H x W), then
// window_root. Writes root and rinv = 1 / (root + eps_out) (the scale the epilogue multiplies
// by). Scratch: s (H*W), hs (H*Wo).
template <typename T>
void patch_root_plane(const Geom& g, const T* x_ng, T* __restrict s, T* __restrict hs, T* __restrict root,
                      T* __restrict rinv, double eps_in, T eo) {
  const int64_t HW = g.H * g.W, Cg = g.C / g.G, P = g.P();
  if (HW == 1) {
    // a linear layer's row (or a 1 x 1 plane): the channel loop is the long one, and as a scalar
    // sum it is one chain of dependent adds, which took longer than the layer's GEMM
    s[0] = row_dot(x_ng, x_ng, Cg);
  } else {
    for (int64_t i = 0; i < HW; ++i) s[i] = T(0);
    for (int64_t c = 0; c < Cg; ++c) {
      const T* __restrict xr = x_ng + c * HW;
      for (int64_t i = 0; i < HW; ++i) s[i] += xr[i] * xr[i];
    }
  }
  window_root(g, s, hs, root, eps_in);
  for (int64_t p = 0; p < P; ++p) rinv[p] = T(1) / (root[p] + eo);
}

// Pixels per block of the power pass (B other than 1, 2): a stack buffer of doubles.
constexpr int64_t kPowBlock = 256;

// Where a row's MaxOut units lie. NCHW (PIX false): the row is one output channel over P pixels,
// unit m of pixel i at lo[m * P + i] with one scale per unit; NHWC (PIX true): the row is one
// pixel's output channels, the units of channel i interleaved at lo[i * mm + m], one scale per raw
// channel.
template <bool PIX>
inline int64_t unit_index(int64_t i, int64_t m, int64_t mm, int64_t P) {
  return PIX ? i * mm + m : m * P + i;
}

// The scale of unit m of element i: sc[i * mm + m] for a pixel row, else the caller's hoisted
// sc[m] (a channel row keeps its scales in registers).
template <bool PIX, typename T>
inline T unit_scale(const T* __restrict sc, int64_t i, int64_t m, int64_t mm, T hoisted) {
  if constexpr (PIX) return sc[i * mm + m];
  (void)sc;
  return hoisted;
}

template <bool PIX, typename T>
inline T unit_at(const T* __restrict lo, const T* __restrict sc, int64_t i, int64_t m, int64_t mm, int64_t P,
                 T hoisted) {
  return lo[unit_index<PIX>(i, m, mm, P)] * unit_scale<PIX>(sc, i, m, mm, hoisted);
}

// fwd_row for B = 1, 2 and MM = 1..3 units in planes (unit m of element i at lo[m * ld + i], scaled
// by s[m]), on vectors with masked tails. GCC's own loop over fwd_row's body takes 64 elements a
// step (the uint8 index sets its width), so rows shorter than that (a head of 10 outputs, a 7 x 7
// plane) ran scalar. The same operations in the same order: the same bits.
template <typename T, int MM, int MODE, bool SAVE>
void fwd_row_vec(const T* lo, int64_t ld, const T (&s)[3], int64_t n, const T* ri, T* yo, T* lmo, uint8_t* io) {
  typedef typename simd::VT<T>::V V;
  typedef typename simd::VT<T>::VI I;
  constexpr int L = simd::VT<T>::L;
  typedef uint8_t U8 __attribute__((vector_size(L)));  // the index lanes as bytes
  for (int64_t i = 0; i < n; i += L) {
    const int64_t k = n - i;
    V best = simd::vload_part(lo + i, k) * s[0];
    I bi = {};
#pragma GCC unroll 3
    for (int m = 1; m < MM; ++m) {
      const V v = simd::vload_part(lo + m * ld + i, k) * s[m];
      const I gt = v > best;
      bi = gt ? I{} + m : bi;
      best = gt ? v : best;
    }
    const V y = MODE == 2 ? (simd::vabs(best) * simd::vload_part(ri + i, k)) * best : best;
    simd::vstore_part(yo + i, y, k);
    if (SAVE) {
      simd::vstore_part(lmo + i, best, k);
      const U8 b8 = __builtin_convertvector(bi, U8);
      if (k >= L) std::memcpy(io + i, &b8, L);
      else std::memcpy(io + i, &b8, static_cast<size_t>(k));
    }
  }
}

// One row of the forward epilogue (P elements: pixels of a channel, or channels of a pixel, see
// unit_at): MaxOut over MM (compile time; 0 = runtime M) raw channels, then the power; ri =
// 1 / (root + eps_out) per element. Branch-free so the loop vectorises.
template <typename T, int MM, int MODE, bool SAVE, bool PIX = false>
void fwd_row(const T* __restrict lo, const T* __restrict sc, int64_t P, int64_t M, const T* __restrict ri,
             T* __restrict yo, T* __restrict lmo, uint8_t* __restrict io, T pw1, T ce) {
  if constexpr (!PIX && MODE != 0 && MM >= 1 && MM <= 3) {
    const T s[3] = {sc[0], MM > 1 ? sc[1] : T(1), MM > 2 ? sc[2] : T(1)};
    fwd_row_vec<T, MM, MODE, SAVE>(lo, P, s, P, ri, yo, lmo, io);
    return;
  }
  const int64_t mm = MM > 0 ? MM : M;
  // a channel row's scales in registers (read through sc in the loop, GCC reloads them per element)
  const T s0 = PIX ? T(0) : sc[0], s1 = !PIX && mm > 1 ? sc[1] : T(0), s2 = !PIX && mm > 2 ? sc[2] : T(0);
  int64_t bad = 0;  // power arguments outside the range of pow_row (NaN, inf, huge)
  // B other than 1, 2: blocks of pixels, |cos| + eps gathered in tb, the power by pow_row
  const int64_t blk = MODE == 0 ? kPowBlock : P;
  double tb[MODE == 0 ? kPowBlock : 1];
  for (int64_t p0 = 0; p0 < P; p0 += blk) {
    const int64_t pe = std::min(P, p0 + blk);
    for (int64_t p = p0; p < pe; ++p) {
      T best = unit_at<PIX>(lo, sc, p, 0, mm, P, s0);
      uint8_t bi = 0;
      // MaxOut written out for MM = 2, 3: GCC does not vectorise the p loop around an inner loop.
      if (MM == 2 || MM == 3) {
        const T v1 = unit_at<PIX>(lo, sc, p, 1, mm, P, s1);
        bi = v1 > best ? uint8_t(1) : bi;
        best = v1 > best ? v1 : best;
        if (MM == 3) {
          const T v2 = unit_at<PIX>(lo, sc, p, 2, mm, P, s2);
          bi = v2 > best ? uint8_t(2) : bi;
          best = v2 > best ? v2 : best;
        }
      } else if (MM != 1) {
        for (int64_t m = 1; m < mm; ++m) {
          const T v = unit_at<PIX>(lo, sc, p, m, mm, P, PIX ? T(0) : sc[m]);
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
        yo[p] = (std::abs(best) * ri[p]) * best;
      } else {
        const double t = static_cast<double>(std::abs(best) * ri[p] + ce);
        bad += bpow::out_of_range(t);
        tb[p - p0] = t;
        yo[p] = best;
      }
    }
    if (MODE == 0) {
      pow_row(tb, pe - p0, static_cast<double>(pw1));
      for (int64_t p = p0; p < pe; ++p) yo[p] = static_cast<T>(tb[p - p0]) * yo[p];
    }
  }
  if (MODE == 0 && bad) {  // rare: redo the row with the library pow
    for (int64_t p = 0; p < P; ++p) {
      T best = unit_at<PIX>(lo, sc, p, 0, mm, P, s0);
      for (int64_t m = 1; m < mm; ++m) {
        const T v = unit_at<PIX>(lo, sc, p, m, mm, P, PIX ? T(0) : sc[m]);
        best = v > best ? v : best;
      }
      yo[p] = std::pow(std::abs(best) * ri[p] + ce, pw1) * best;
    }
  }
}

template <typename T, int MODE, bool SAVE, bool PIX = false>
void fwd_row_m(const T* lo, const T* sc, int64_t P, int64_t M, const T* ri, T* yo, T* lmo, uint8_t* io, T pw1,
               T ce) {
  switch (M) {
    case 1: fwd_row<T, 1, MODE, SAVE, PIX>(lo, sc, P, M, ri, yo, lmo, io, pw1, ce); break;
    case 2: fwd_row<T, 2, MODE, SAVE, PIX>(lo, sc, P, M, ri, yo, lmo, io, pw1, ce); break;
    case 3: fwd_row<T, 3, MODE, SAVE, PIX>(lo, sc, P, M, ri, yo, lmo, io, pw1, ce); break;
    default: fwd_row<T, 0, MODE, SAVE, PIX>(lo, sc, P, M, ri, yo, lmo, io, pw1, ce); break;
  }
}

// Forward, one task per (n, g): the patch norm of the plane (kept in cache) and the epilogue of
// the group's output channels, with no barrier in between. (A one_pixel map, a linear layer,
// takes fwd_nhwc_all: here each of its outputs would be a row of one element.)
template <typename T, int MODE, bool SAVE>
void fwd_all(const Geom& g, double eps_in, const T* x, const T* l, const T* ws, T* y, T* lmax, uint8_t* idx,
             T* root, T pw1, T eo, T ce, int nt) {
  const int64_t P = g.P(), Og = g.O / g.G, M = g.M, HW = g.H * g.W, Cg = g.C / g.G, NG = g.N * g.G;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> sbuf, hbuf, rbuf, ibuf;
    if (MODE != 1) {
      sbuf.resize(static_cast<size_t>(HW));
      hbuf.resize(static_cast<size_t>(g.H * g.Wo));
      ibuf.resize(static_cast<size_t>(P));
      if (!SAVE) rbuf.resize(static_cast<size_t>(P));
    }
#pragma omp for schedule(static)
    for (int64_t ng = 0; ng < NG; ++ng) {
      if (MODE != 1) {
        T* r = SAVE ? root + ng * P : rbuf.data();
        patch_root_plane(g, x + ng * Cg * HW, sbuf.data(), hbuf.data(), r, ibuf.data(), eps_in, eo);
      }
      const int64_t n = ng / g.G, gg = ng % g.G;
      for (int64_t oo = 0; oo < Og; ++oo) {
        const int64_t no = n * g.O + gg * Og + oo;
        fwd_row_m<T, MODE, SAVE>(l + no * M * P, ws + (gg * Og + oo) * M, P, M, ibuf.data(), y + no * P,
                                 SAVE ? lmax + no * P : nullptr, SAVE ? idx + no * P : nullptr, pw1, ce);
      }
    }
  }
}

// Elements per step of GCC's vector loop over an epilogue row: the uint8 index map sets it (64
// bytes a step). A shorter row runs none of that loop, only its scalar remainder.
constexpr int64_t kAutoVecRow = 64;

// bwd_row for B = 1, 2 and MM = 1..3 units in planes (unit m of element i at glo[m * ld + i],
// scaled by s[m]), on vectors with masked tails, for rows shorter than kAutoVecRow (a 7 x 7
// plane's row ran scalar, 20x the time per element of a 32 x 32 one). The same operations in the
// same order as bwd_row's loop: the same bits.
template <typename T, int MM, int MODE, bool EXPLAIN, bool QN>
void bwd_row_vec(const T* gyo, const T* lo, const uint8_t* io, const T* ri, const T (&s)[3], T* glo, int64_t ld,
                 T* qa, int64_t n) {
  typedef typename simd::VT<T>::V V;
  typedef typename simd::VT<T>::VI I;
  constexpr int L = simd::VT<T>::L;
  for (int64_t i = 0; i < n; i += L) {
    const int64_t k = n - i;
    const V g = simd::vload_part(gyo + i, k);
    V gv = g;
    if (MODE == 2) {
      const V l = simd::vload_part(lo + i, k), r = simd::vload_part(ri + i, k);
      const V sv = simd::vabs(l) * r;
      gv = (EXPLAIN ? sv : T(2) * sv) * g;
      if (QN) simd::vstore_part(qa + i, V(simd::vload_part(qa + i, k) - ((sv * l) * r) * g), k);
    }
    if (MM == 1) {
      simd::vstore_part(glo + i, V(gv * s[0]), k);
      continue;
    }
    const I im = simd::vload_u8<T>(io + i, k);
#pragma GCC unroll 3
    for (int m = 0; m < MM; ++m) simd::vstore_part(glo + m * ld + i, V(im == I{} + m ? gv * s[m] : V{}), k);
  }
}

// The backward's spread for a pixel row of MaxOut 2 units: g[p] (p < n, in place in g) goes to
// g[2p + idx[p]] scaled by sc[2p + idx[p]], the other unit 0. On vectors, last block first (a
// block's stores start at 2 p0 >= p0, so they only overwrite gradients already read); the scalar
// loop this replaces took three quarters of a linear layer's backward epilogue at MaxOut 2.
template <typename T>
void spread_pairs(T* g, const uint8_t* idx, const T* sc, int64_t n) {
  typedef typename simd::VT<T>::V V;
  typedef typename simd::VT<T>::VI I;
  constexpr int L = simd::VT<T>::L;
  I lo, hi, unit;  // lane l of the low / high output vector takes element l / 2 (+ L / 2), unit l % 2
#pragma GCC unroll 16
  for (int l = 0; l < L; ++l) {
    lo[l] = l / 2;
    hi[l] = L / 2 + l / 2;
    unit[l] = l % 2;
  }
  for (int64_t p0 = n > 0 ? (n - 1) / L * L : -1; p0 >= 0; p0 -= L) {
    const int64_t k = n - p0;
    const V gv = simd::vload_part(g + p0, k);
    const I im = simd::vload_u8<T>(idx + p0, k);
    const V s0 = simd::vload_part(sc + 2 * p0, 2 * k), s1 = simd::vload_part(sc + 2 * p0 + L, 2 * k - L);
    const V o0 = __builtin_shuffle(im, lo) == unit ? __builtin_shuffle(gv, lo) * s0 : V{};
    const V o1 = __builtin_shuffle(im, hi) == unit ? __builtin_shuffle(gv, hi) * s1 : V{};
    simd::vstore_part(g + 2 * p0, o0, 2 * k);
    simd::vstore_part(g + 2 * p0 + L, o1, 2 * k - L);
  }
}

// One row of the backward epilogue (np elements; the units lie as in fwd_row, PIX: one pixel's
// channels): gl for the MM raw channels (the gradient goes to the argmax only) and the patch-norm
// gradient accumulated into qa per element. ri = 1 / (root + eps_out) per element. MODE: 1 (B =
// 1), 2 (B = 2), 0 (other B); QN: accumulate the norm gradient.
template <typename T, int MM, int MODE, bool EXPLAIN, bool QN, bool PIX = false>
void bwd_row(const T* __restrict gyo, const T* __restrict lo, const uint8_t* __restrict io,
             const T* __restrict ri, const T* __restrict sc, T* __restrict glo, T* __restrict qa, int64_t np, int64_t P,
             int64_t M, T p1, T ce) {
  if constexpr (!PIX && MODE != 0 && MM >= 1 && MM <= 3) {
    if (np < kAutoVecRow) {  // longer rows: GCC's loop below was 5-10% faster
      const T s[3] = {sc[0], MM > 1 ? sc[1] : T(0), MM > 2 ? sc[2] : T(0)};
      bwd_row_vec<T, MM, MODE, EXPLAIN, QN>(gyo, lo, io, ri, s, glo, P, qa, np);
      return;
    }
  }
  const int64_t mm = MM > 0 ? MM : M;
  // scales in registers: read through sc inside the loop, GCC assumes the gl stores may change
  // them and falls back to a scalar, branchy loop (4.5x slower)
  const T s0 = PIX ? T(0) : sc[0], s1 = !PIX && mm > 1 ? sc[1] : T(0), s2 = !PIX && mm > 2 ? sc[2] : T(0);
  int64_t bad = 0;
  // B other than 1, 2: blocks of elements, t = |cos| + eps gathered in tb and t^(B-2) by pow_row
  const int64_t blk = MODE == 0 ? kPowBlock : np;
  double tb[MODE == 0 ? kPowBlock : 1];
  for (int64_t p0 = 0; p0 < np; p0 += blk) {
    const int64_t pe = std::min(np, p0 + blk);
    if (MODE == 0) {
      for (int64_t p = p0; p < pe; ++p) {
        const double t = static_cast<double>(std::abs(lo[p]) * ri[p] + ce);
        bad += bpow::out_of_range(t);
        tb[p - p0] = t;
      }
      pow_row(tb, pe - p0, static_cast<double>(p1) - 1.0);
    }
    for (int64_t p = p0; p < pe; ++p) {
      T gv;
      if (MODE == 1) {
        gv = gyo[p];
      } else if (MODE == 2) {
        const T s = std::abs(lo[p]) * ri[p];
        gv = (EXPLAIN ? s : T(2) * s) * gyo[p];
        if (QN) qa[p] -= s * lo[p] * ri[p] * gyo[p];
      } else {
        const T s = std::abs(lo[p]) * ri[p], t = s + ce;
        const T tq = static_cast<T>(tb[p - p0]);  // t^(B-2)
        gv = (EXPLAIN ? t * tq : t * tq + p1 * s * tq) * gyo[p];
        if (QN) qa[p] -= p1 * lo[p] * s * tq * ri[p] * gyo[p];
      }
      const int im = io[p];
      if (PIX && MM != 1) {
        glo[p] = gv;  // spread to the argmax unit after the loop: interleaved stores do not vectorise
      } else if (MM == 1) {
        glo[unit_index<PIX>(p, 0, mm, P)] = gv * unit_scale<PIX>(sc, p, 0, mm, s0);
      } else if (MM == 2 || MM == 3) {  // written out, as in fwd_row
        glo[unit_index<PIX>(p, 0, mm, P)] = im == 0 ? gv * unit_scale<PIX>(sc, p, 0, mm, s0) : T(0);
        glo[unit_index<PIX>(p, 1, mm, P)] = im == 1 ? gv * unit_scale<PIX>(sc, p, 1, mm, s1) : T(0);
        if (MM == 3) glo[unit_index<PIX>(p, 2, mm, P)] = im == 2 ? gv * unit_scale<PIX>(sc, p, 2, mm, s2) : T(0);
      } else {
        for (int64_t m = 0; m < mm; ++m)
          glo[unit_index<PIX>(p, m, mm, P)] = im == m ? gv * unit_scale<PIX>(sc, p, m, mm, PIX ? T(0) : sc[m]) : T(0);
      }
    }
  }
  if (MODE == 0 && bad) {  // rare (t = inf or NaN): the library pow for those pixels' gl; their
    // norm-gradient term has the factor s = inf / NaN either way, so qa is left as it is.
    for (int64_t p = 0; p < np; ++p) {
      const T s = std::abs(lo[p]) * ri[p], t = s + ce;
      if (!bpow::out_of_range(static_cast<double>(t))) continue;
      const T tq = std::pow(t, p1 - T(1));
      const int64_t m = io[p];
      const T gb = (EXPLAIN ? t * tq : t * tq + p1 * s * tq) * gyo[p];
      if (PIX && MM != 1) glo[p] = gb;
      else glo[unit_index<PIX>(p, m, mm, P)] = gb * unit_scale<PIX>(sc, p, m, mm, PIX ? T(0) : sc[m]);
    }
  }
  if (PIX && MM == 2) {
    spread_pairs(glo, io, sc, np);
  } else if (PIX && MM != 1) {  // in place, last channel first: channel p's units start at p * mm >= p
    for (int64_t p = np - 1; p >= 0; --p) {
      const T gv = glo[p];
      const int64_t im = io[p];
      for (int64_t m = 0; m < mm; ++m) glo[p * mm + m] = T(0);
      glo[p * mm + im] = gv * sc[p * mm + im];
    }
  }
}

template <typename T, int MODE, bool EXPLAIN, bool QN, bool PIX = false>
void bwd_row_m(const T* gyo, const T* lo, const uint8_t* io, const T* ri, const T* sc, T* glo, T* qa, int64_t np,
               int64_t P, int64_t M, T p1, T ce) {
  switch (M) {
    case 1: bwd_row<T, 1, MODE, EXPLAIN, QN, PIX>(gyo, lo, io, ri, sc, glo, qa, np, P, M, p1, ce); break;
    case 2: bwd_row<T, 2, MODE, EXPLAIN, QN, PIX>(gyo, lo, io, ri, sc, glo, qa, np, P, M, p1, ce); break;
    case 3: bwd_row<T, 3, MODE, EXPLAIN, QN, PIX>(gyo, lo, io, ri, sc, glo, qa, np, P, M, p1, ce); break;
    default: bwd_row<T, 0, MODE, EXPLAIN, QN, PIX>(gyo, lo, io, ri, sc, glo, qa, np, P, M, p1, ce); break;
  }
}

// Backward epilogue, one task per (n, g, chunk of pixels): loops over the group's channels,
// accumulating the patch-norm gradient of the chunk privately (no atomics, deterministic).
template <typename T, int MODE, bool EXPLAIN, bool QN>
void bwd_all(const Geom& g, const T* gy, const T* lmax, const uint8_t* idx, const T* root, const T* ws, T* gl,
             T* q,
             T p1, T eo, T ce, int nt) {
  const int64_t P = g.P(), Og = g.O / g.G, M = g.M;
  const int64_t CH = 1024;  // output pixels per task
  const int64_t nchunk = (P + CH - 1) / CH;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> qa(static_cast<size_t>(CH)), rv(static_cast<size_t>(CH));
#pragma omp for collapse(2) schedule(static)
    for (int64_t ng = 0; ng < g.N * g.G; ++ng) {
      for (int64_t c = 0; c < nchunk; ++c) {
        const int64_t n = ng / g.G, gg = ng % g.G;
        const int64_t p0 = c * CH, np = (P - p0) < CH ? (P - p0) : CH;
        const T* r = MODE == 1 ? nullptr : root + ng * P + p0;
        T* qap = qa.data();
        T* riv = rv.data();  // 1 / (root + eps_out), once per pixel rather than per channel
        if (MODE != 1)
          for (int64_t p = 0; p < np; ++p) riv[p] = T(1) / (r[p] + eo);
        if (QN) std::fill(qap, qap + np, T(0));
        for (int64_t oo = 0; oo < Og; ++oo) {
          const int64_t no = n * g.O + gg * Og + oo;
          bwd_row_m<T, MODE, EXPLAIN, QN>(gy + no * P + p0, lmax + no * P + p0, idx + no * P + p0, riv,
                                          ws + (gg * Og + oo) * M,
                                          gl + no * M * P + p0, qap, np, P, M, p1, ce);
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

// R (W values) = box-sum^T(q) along input row h: the sum of q over the output pixels whose window
// covers (h, w), separably: V (Wo) sums the output rows whose window covers row h, then R the
// columns covering w. q: one (n, g) plane of Ho x Wo values, qs apart (1 for NCHW, G for NHWC).
template <typename T>
void window_sums_t(const Geom& g, const T* qp, int64_t qs, int64_t h, T* __restrict V, T* __restrict R) {
  for (int64_t wo = 0; wo < g.Wo; ++wo) V[wo] = T(0);
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t a = h + g.ph - i * g.dh;
    if (a < 0 || a % g.sh != 0 || a / g.sh >= g.Ho) continue;
    const T* __restrict qr = qp + (a / g.sh) * g.Wo * qs;
    if (qs == 1) {
      for (int64_t wo = 0; wo < g.Wo; ++wo) V[wo] += qr[wo];
    } else {
      for (int64_t wo = 0; wo < g.Wo; ++wo) V[wo] += qr[wo * qs];
    }
  }
  for (int64_t w = 0; w < g.W; ++w) R[w] = T(0);
  for (int64_t j = 0; j < g.kw; ++j) {
    const int64_t off = g.pw - j * g.dw;  // covers w from output column (w + off) / sw
    if (g.sw == 1) {
      const int64_t lo = std::max<int64_t>(0, -off), hi = std::min(g.W, g.Wo - off);
      for (int64_t w = lo; w < hi; ++w) R[w] += V[w + off];
    } else {
      for (int64_t w = 0; w < g.W; ++w) {
        const int64_t bb = w + off;
        if (bb >= 0 && bb % g.sw == 0 && bb / g.sw < g.Wo) R[w] += V[bb / g.sw];
      }
    }
  }
}

// gr = sr + xr * r over n channels; in place where sr is gr (the unchunked backward), written
// through one pointer there so that __restrict holds.
template <typename T>
inline void add_scaled_row(const T* __restrict xr, T r, const T* sr, T* gr, int64_t n) {
  if (sr == gr) {
    T* __restrict g = gr;
    for (int64_t c = 0; c < n; ++c) g[c] += xr[c] * r;
  } else {
    const T* __restrict s = sr;
    T* __restrict g = gr;
    for (int64_t c = 0; c < n; ++c) g[c] = s[c] + xr[c] * r;
  }
}

template <typename T>
void bwd_norm(const Geom& g, const T* x, const T* q, const T* gsrc, T* gx, int nt) {
  const int64_t Cg = g.C / g.G, P = g.P();
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> R(static_cast<size_t>(g.W)), V(static_cast<size_t>(g.Wo));
#pragma omp for collapse(3) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t gg = 0; gg < g.G; ++gg) {
        for (int64_t h = 0; h < g.H; ++h) {
          window_sums_t(g, q + (n * g.G + gg) * P, 1, h, V.data(), R.data());
          const T* __restrict Rp = R.data();
          if (g.H * g.W == 1) {
            // a 1 x 1 image: one scale for C contiguous channels, one loop over them (the loop
            // below runs one pixel per channel and does not vectorise)
            const int64_t off = n * g.C + gg * Cg;
            add_scaled_row(x + off, Rp[0], gsrc + off, gx + off, Cg);
            continue;
          }
          for (int64_t c = 0; c < Cg; ++c) {
            const int64_t off = ((n * g.C + gg * Cg + c) * g.H + h) * g.W;
            const T* __restrict xr = x + off;
            T* __restrict gr = gx + off;
            if (gsrc == gx) {
              for (int64_t w = 0; w < g.W; ++w) gr[w] += xr[w] * Rp[w];
            } else {
              const T* __restrict sr = gsrc + off;
              for (int64_t w = 0; w < g.W; ++w) gr[w] = sr[w] + xr[w] * Rp[w];
            }
          }
        }
      }
    }
  }
}

// Weight scales ws = 1 / ||W||_row, and the weight gradient gW = g - W <g, W> / <W, W> given
// g = the weight gradient of the raw-weight map with ws-scaled output gradients (that is
// (dL/dW-hat - W-hat <dL/dW-hat, W-hat>) / ||W||). Each row's result depends on that row alone,
// so the bits do not depend on the thread count; a weight of fewer elements than
// kWeightParallelMin runs on one thread, where a parallel region costs more than it saves.
constexpr int64_t kWeightParallelMin = int64_t(1) << 16;

template <typename T>
void weight_scale(const T* w, T* ws, int64_t R, int64_t K, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (R * K >= kWeightParallelMin)
  for (int64_t r = 0; r < R; ++r) ws[r] = T(1) / std::sqrt(row_dot(w + r * K, w + r * K, K));
}

// gW is written over g. A > 0: each row of g holds the transpose of the weight's row (the weight's
// row read as an A x K/A matrix): the channels-last gradient of a contiguous conv weight, or the
// reverse. Such a row is first gathered into the weight's order, so the result has the same bits
// as for a gradient in the weight's own layout.
template <typename T>
void weight_grad(const T* w, T* g, int64_t R, int64_t K, int64_t A, int nt) {
#pragma omp parallel num_threads(nt) if (R * K >= kWeightParallelMin)
  {
    std::vector<T> gathered(A > 0 ? K : 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const T* __restrict wr = w + r * K;
      T* gr = g + r * K;
      const T* src = gr;
      if (A > 0) {
        T* __restrict s = gathered.data();
        const int64_t B = K / A;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t a = 0; a < A; ++a) s[a * B + b] = gr[b * A + a];
        src = s;
      }
      const T c = row_dot(src, wr, K) / row_dot(wr, wr, K);
      for (int64_t k = 0; k < K; ++k) gr[k] = src[k] - wr[k] * c;
    }
  }
}

#include "cpu/bcos_direct.h"  // NOLINT(build/include): part of the kernel section
#include "cpu/bcos_wgrad_det.h"  // NOLINT(build/include)
#include "cpu/bcos_nhwc.h"  // NOLINT(build/include)

// The entry points of the epilogues: the compile-time case of b (MODE 1: B = 1, 2: B = 2, 0:
// other B), save / explain / the norm gradient, and the layout (NCHW or channels-last).
template <int V>
using int_c = std::integral_constant<int, V>;

template <typename Run>
void with_mode(double b, Run&& run) {
  if (b == 1.0) run(int_c<1>{});
  else if (b == 2.0) run(int_c<2>{});
  else run(int_c<0>{});
}

template <typename T>
void fwd(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* l, const T* ws, T* y,
         T* lmax, uint8_t* idx, T* root, bool save, bool nhwc, int nt) {
  const T pw1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
  with_mode(b, [&](auto mode) {
    constexpr int MODE = decltype(mode)::value;
    const auto run = [&](auto sv) {
      constexpr bool SAVE = decltype(sv)::value;
      if (nhwc || g.one_pixel())
        fwd_nhwc_all<T, MODE, SAVE>(g, eps_in, x, l, ws, y, lmax, idx, root, pw1, eo, ce, nt);
      else
        fwd_all<T, MODE, SAVE>(g, eps_in, x, l, ws, y, lmax, idx, root, pw1, eo, ce, nt);
    };
    if (save) run(std::true_type{});
    else run(std::false_type{});
  });
}

template <typename T>
void bwd_epilogue(const Geom& g, double b, double eps_out, const T* gy, const T* lmax, const uint8_t* idx,
                  const T* root, const T* ws, T* gl, T* q, bool explain, bool need_q, bool nhwc, int nt) {
  T* qq = need_q ? q : nullptr;
  const T p1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
  with_mode(b, [&](auto mode) {
    constexpr int MODE = decltype(mode)::value;
    const auto run = [&](auto ex, auto qn) {
      constexpr bool EX = decltype(ex)::value, QN = decltype(qn)::value && MODE != 1 && !EX;
      if (nhwc || g.one_pixel())
        bwd_nhwc_all<T, MODE, EX, QN>(g, gy, lmax, idx, root, ws, gl, qq, p1, eo, ce, nt);
      else
        bwd_all<T, MODE, EX, QN>(g, gy, lmax, idx, root, ws, gl, qq, p1, eo, ce, nt);
    };
    if (MODE == 1) run(std::false_type{}, std::false_type{});  // B = 1: no explain factor, no norm
    else if (explain) run(std::true_type{}, std::false_type{});
    else if (need_q) run(std::false_type{}, std::true_type{});
    else run(std::false_type{}, std::false_type{});
  });
}

#include "cpu/gemm_tile.h"    // NOLINT(build/include): per instruction set, like this file
#include "cpu/bcos_linear.h"  // NOLINT(build/include): part of the kernel section (uses fwd above)
