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
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace rbfkern {
namespace {

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
  for (int64_t p = 0; p < P; ++p) {
    T best = lo[p];
    uint8_t bi = 0;
    for (int64_t m = 1; m < mm; ++m) {
      const T v = lo[m * P + p];
      const bool gt = v > best;
      best = gt ? v : best;
      bi = gt ? static_cast<uint8_t>(m) : bi;
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
      const T tq = std::pow(t, p1 - T(1));  // t^(B-2)
      gv = (EXPLAIN ? t * tq : t * tq + p1 * s * tq) * gyo[p];
      if (QN) qa[p] -= p1 * lo[p] * s * tq / nn * gyo[p];
    }
    const int im = io[p];
    for (int64_t m = 0; m < mm; ++m) glo[m * P + p] = im == m ? gv : T(0);
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

// Unit-norm filters W-hat = W / ||W||_row and their backward gW = (g - W-hat <g, W-hat>) / ||W||.
// Serial on purpose: the weight is small, and a parallel region costs more than it saves.
template <typename T>
void unit_weight(const T* w, T* wh, int64_t R, int64_t K) {
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict wr = w + r * K;
    T* __restrict hr = wh + r * K;
    T ss = T(0);
    for (int64_t k = 0; k < K; ++k) ss += wr[k] * wr[k];
    const T nrm = std::sqrt(ss);
    for (int64_t k = 0; k < K; ++k) hr[k] = wr[k] / nrm;
  }
}

template <typename T>
void unit_weight_bwd(const T* w, const T* g, T* gw, int64_t R, int64_t K) {
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict wr = w + r * K;
    const T* __restrict gr = g + r * K;
    T* __restrict out = gw + r * K;
    T ss = T(0);
    for (int64_t k = 0; k < K; ++k) ss += wr[k] * wr[k];
    const T nrm = std::sqrt(ss);
    T dot = T(0);
    for (int64_t k = 0; k < K; ++k) dot += gr[k] * (wr[k] / nrm);
    for (int64_t k = 0; k < K; ++k) out[k] = (gr[k] - (wr[k] / nrm) * dot) / nrm;
  }
}

}  // namespace

// Flat entry points for csrc/cpu/bcos_bind.cpp (declared there; no shared header).
#define RBFKERN_BCOS_ENTRY(T, SUF)                                                              \
  void bcos_fwd_##SUF(const int64_t* geom, double b, double eps_in, double eps_out, const T* x, \
                      const T* l, T* y, T* lmax, uint8_t* idx, T* root, bool save, int nt) {    \
    fwd<T>(Geom(geom), b, eps_in, eps_out, x, l, y, lmax, idx, root, save, nt);                 \
  }                                                                                              \
  void bcos_bwd_epilogue_##SUF(const int64_t* geom, double b, double eps_out, const T* gy,     \
                               const T* lmax, const uint8_t* idx, const T* root, T* gl, T* q,   \
                               bool explain, bool need_q, int nt) {                             \
    bwd_epilogue<T>(Geom(geom), b, eps_out, gy, lmax, idx, root, gl, q, explain, need_q, nt);   \
  }                                                                                              \
  void bcos_bwd_norm_##SUF(const int64_t* geom, const T* x, const T* q, T* gx, int nt) {       \
    bwd_norm<T>(Geom(geom), x, q, gx, nt);                                                       \
  }                                                                                              \
  void bcos_unit_weight_##SUF(const T* w, T* wh, int64_t R, int64_t K) {                         \
    unit_weight<T>(w, wh, R, K);                                                                 \
  }                                                                                              \
  void bcos_unit_weight_bwd_##SUF(const T* w, const T* g, T* gw, int64_t R, int64_t K) {         \
    unit_weight_bwd<T>(w, g, gw, R, K);                                                          \
  }

RBFKERN_BCOS_ENTRY(float, f32)
RBFKERN_BCOS_ENTRY(double, f64)
#undef RBFKERN_BCOS_ENTRY

}  // namespace rbfkern
