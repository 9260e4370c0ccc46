// Channels-last (NHWC) epilogues of the B-cos forward and backward around oneDNN's convolution
// (layouts: csrc/cpu/bcos.h). A pixel's channels are contiguous, so each epilogue walks one
// pixel's output channels (fwd_row / bwd_row with PIX) with a per-channel copy of the pixel's
// norm scale, and the patch norm first sums each pixel's channels. Part of the kernel section of
// bcos_kernels.h (compiled once per instruction set); no include guard on purpose.

// The patch-norm root of every (pixel, group) of NHWC x into root [N, P, G]: channel sums of
// squares per input pixel (s [N, G, H, W], scratch), then the window sums per (n, g) plane.
// Call inside a parallel region (two work-shared loops, each ending in a barrier).
template <typename T>
void nhwc_root(const Geom& g, double eps_in, const T* x, T* s, T* root) {
  const int64_t HW = g.H * g.W, P = g.P(), G = g.G, Cg = g.C / g.G;
  if (g.one_pixel()) {  // a window sum of one term: the same bits as window_root's, without its loops
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t gg = 0; gg < G; ++gg) {
        const T* xp = x + n * g.C + gg * Cg;
        root[n * G + gg] = std::sqrt(row_dot(xp, xp, Cg) + T(eps_in));
      }
    }
    return;
  }
#pragma omp for schedule(static)
  for (int64_t i = 0; i < g.N * HW; ++i) {
    const int64_t n = i / HW, hw = i % HW;
    for (int64_t gg = 0; gg < G; ++gg) {
      const T* xp = x + i * g.C + gg * Cg;
      s[(n * G + gg) * HW + hw] = row_dot(xp, xp, Cg);
    }
  }
  std::vector<T> hs(static_cast<size_t>(g.H * g.Wo)), plane(static_cast<size_t>(P));
#pragma omp for schedule(static)
  for (int64_t ng = 0; ng < g.N * G; ++ng) {
    window_root(g, s + ng * HW, hs.data(), plane.data(), eps_in);
    const int64_t n = ng / G, gg = ng % G;
    for (int64_t p = 0; p < P; ++p) root[(n * P + p) * G + gg] = plane[p];
  }
}

// rv[o] = 1 / (root + eps_out) of output channel o's group at one pixel (r: its G roots).
template <typename T>
inline void nhwc_rinv(const T* r, int64_t G, int64_t Og, T eo, T* rv) {
  for (int64_t gg = 0; gg < G; ++gg) {
    const T v = T(1) / (r[gg] + eo);
    for (int64_t o = 0; o < Og; ++o) rv[gg * Og + o] = v;
  }
}

// Forward: the patch norm, then one epilogue row per output pixel.
template <typename T, int MODE, bool SAVE>
void fwd_nhwc_all(const Geom& g, double eps_in, const T* x, const T* l, const T* ws, T* y, T* lmax, uint8_t* idx,
                  T* root, T pw1, T eo, T ce, int nt) {
  const int64_t NP = g.N * g.P(), O = g.O, M = g.M, G = g.G;
  std::vector<T> s, rs;
  if (MODE != 1) {
    s.resize(static_cast<size_t>(g.N * G * g.H * g.W));
    if (!SAVE) rs.resize(static_cast<size_t>(NP * G));
  }
  T* rt = SAVE ? root : rs.data();
#pragma omp parallel num_threads(nt)
  {
    if (MODE != 1) nhwc_root(g, eps_in, x, s.data(), rt);
    std::vector<T> rv(static_cast<size_t>(O), T(0));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < NP; ++r) {
      if (MODE != 1) nhwc_rinv(rt + r * G, G, O / G, eo, rv.data());
      fwd_row_m<T, MODE, SAVE, true>(l + r * O * M, ws, O, M, rv.data(), y + r * O,
                                     SAVE ? lmax + r * O : nullptr, SAVE ? idx + r * O : nullptr, pw1, ce);
    }
  }
}

// Backward epilogue, one output pixel per step: gl for its O*M raw channels and, per group, the
// patch-norm gradient q = sum over the group's channels / root (summed in lanes, a fixed order).
template <typename T, int MODE, bool EXPLAIN, bool QN>
void bwd_nhwc_all(const Geom& g, const T* gy, const T* lmax, const uint8_t* idx, const T* root, const T* ws, T* gl,
                  T* q, T p1, T eo, T ce, int nt) {
  const int64_t NP = g.N * g.P(), O = g.O, M = g.M, G = g.G, Og = g.O / g.G;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> rv(static_cast<size_t>(O), T(0)), qa(static_cast<size_t>(O));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < NP; ++r) {
      if (MODE != 1) nhwc_rinv(root + r * G, G, Og, eo, rv.data());
      if (QN) std::fill(qa.begin(), qa.end(), T(0));
      bwd_row_m<T, MODE, EXPLAIN, QN, true>(gy + r * O, lmax + r * O, idx + r * O, rv.data(), ws, gl + r * O * M,
                                            qa.data(), O, 1, M, p1, ce);
      if (q == nullptr) continue;
      for (int64_t gg = 0; gg < G; ++gg) {
        const T rr = MODE == 1 ? T(0) : root[r * G + gg];
        q[r * G + gg] = QN && rr > T(0) ? row_sum(qa.data() + gg * Og, Og) / rr : T(0);
      }
    }
  }
}

// gx = gsrc + x * box-sum^T(q) on NHWC x / gsrc / gx and q [N, P, G], one task per input row
// (for a one_pixel map, per image: the box sum is q itself).
template <typename T>
void bwd_norm_nhwc(const Geom& g, const T* x, const T* q, const T* gsrc, T* gx, int nt) {
  const int64_t G = g.G, Cg = g.C / g.G, P = g.P();
  if (g.one_pixel()) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t gg = 0; gg < G; ++gg) {
        const int64_t off = n * g.C + gg * Cg;
        add_scaled_row(x + off, q[n * G + gg], gsrc + off, gx + off, Cg);
      }
    }
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> R(static_cast<size_t>(G * g.W)), V(static_cast<size_t>(g.Wo));
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t gg = 0; gg < G; ++gg) window_sums_t(g, q + n * P * G + gg, G, h, V.data(), R.data() + gg * g.W);
        for (int64_t w = 0; w < g.W; ++w) {
          const int64_t off = ((n * g.H + h) * g.W + w) * g.C;
          for (int64_t gg = 0; gg < G; ++gg) {
            const int64_t o = off + gg * Cg;
            add_scaled_row(x + o, R[gg * g.W + w], gsrc + o, gx + o, Cg);
          }
        }
      }
    }
  }
}
