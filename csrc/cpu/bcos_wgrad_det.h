// Weight gradient of the raw linear map for torch.use_deterministic_algorithms:
// gw[r, c, i, j] = sum over images and output pixels of gl[n, r, pixel] * x[n, group's c, tap (i, j)],
// each value summed by one task in an order fixed by the sizes, so the result does not depend on
// the thread count (oneDNN's weight gradient and MKL's short GEMMs do, even for one sample).
//
// No include guard on purpose: part of bcos_kernels.h, compiled once per instruction set (its
// vector width: DirectVec, bcos_direct.h).

// Any geometry (column stride > 1 included): one task per (r, c) sums in a fixed order (images,
// rows, then each tap's per-column partials left to right). Scratch: kh * kw * Wo column
// partials per thread.
template <typename T>
void wgrad_det_loop(const Geom& g, const T* gl, const T* x, T* gw, int nt) {
  const int64_t OM = g.O * g.M, Cg = g.C / g.G, OMg = OM / g.G, P = g.P(), KK = g.kh * g.kw, Wo = g.Wo;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> acc(static_cast<size_t>(KK * Wo));
    std::vector<int64_t> wlo(static_cast<size_t>(g.kw)), whi(static_cast<size_t>(g.kw));
    for (int64_t j = 0; j < g.kw; ++j) tap_range(j * g.dw - g.pw, g.sw, g.W, Wo, &wlo[j], &whi[j]);
#pragma omp for schedule(dynamic, 1)
    for (int64_t rc = 0; rc < OM * Cg; ++rc) {
      const int64_t r = rc / Cg, cin = (r / OMg) * Cg + rc % Cg;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t n = 0; n < g.N; ++n) {
        const T* xn = x + (n * g.C + cin) * g.H * g.W;
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
          const T* __restrict glr = gl + (n * OM + r) * P + ho * Wo;
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t hi = ho * g.sh - g.ph + i * g.dh;
            if (hi < 0 || hi >= g.H) continue;
            const T* __restrict xr = xn + hi * g.W;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t off = j * g.dw - g.pw, lo = wlo[j], hi_w = whi[j];
              T* __restrict a = acc.data() + (i * g.kw + j) * Wo;
              if (g.sw == 1) {
                for (int64_t wo = lo; wo < hi_w; ++wo) a[wo] += glr[wo] * xr[wo + off];
              } else {
                for (int64_t wo = lo; wo < hi_w; ++wo) a[wo] += glr[wo] * xr[wo * g.sw + off];
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < KK; ++k) {
        T s = T(0);
        for (int64_t wo = 0; wo < Wo; ++wo) s += acc[k * Wo + wo];
        gw[rc * KK + k] = s;
      }
    }
  }
}

// Column stride 1: register tiles of RB weight rows x KB (channel, tap) columns, each a vector of
// partial sums over output columns. One task per block of RB rows: per image, every column block
// of the tile sweeps the image's output rows (the rows' gradients stay in L1, the image's padded
// input in L2), its partials parked in a per-task buffer between images; the lanes of each
// partial are added left to right at the end. Lanes past Wo load zeros from both operands (an inf
// in x there must not reach the sum).

// The first m values at p, zeros in the lanes after them (the column tail; returned by value so
// the callers' vectors stay in registers).
template <typename V, typename T>
inline V load_lanes(const T* p, int64_t m) {
  T tmp[sizeof(V) / sizeof(T)] = {};
  std::memcpy(tmp, p, sizeof(T) * static_cast<size_t>(m));
  V v;
  std::memcpy(&v, tmp, sizeof(V));
  return v;
}

// One image into one tile's partials accp [RB][KB][lanes]: grow = the gradient rows of the tile's first
// weight row for this image (rows P apart), xn = the image's padded group input, koff = the tile's
// (channel, tap) offsets in it; rows past nr / columns past nk repeat the first (dropped later).
template <typename T, int RB, int KB>
void wgrad_tile_image(const Geom& g, const T* grow, const T* xn, int64_t Wp, int64_t nr, const int64_t* koff,
                      int64_t nk, T* accp) {
  using V = typename DirectVec<T>::V;
  constexpr int L = DirectVec<T>::kLanes;
  const int64_t P = g.P(), Wo = g.Wo;
  V acc[RB][KB];
  for (int a = 0; a < RB; ++a)
    for (int b = 0; b < KB; ++b) std::memcpy(&acc[a][b], accp + (a * KB + b) * L, sizeof(V));
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const T* xrow = xn + ho * g.sh * Wp;
    const T* grw = grow + ho * Wo;
    int64_t wo0 = 0;
    for (; wo0 + L <= Wo; wo0 += L) {
      V gv[RB], xv[KB];
      for (int a = 0; a < RB; ++a) std::memcpy(&gv[a], grw + (a < nr ? a : 0) * P + wo0, sizeof(V));
      for (int b = 0; b < KB; ++b) std::memcpy(&xv[b], xrow + koff[b < nk ? b : 0] + wo0, sizeof(V));
      for (int a = 0; a < RB; ++a)
        for (int b = 0; b < KB; ++b) acc[a][b] += gv[a] * xv[b];
    }
    if (wo0 < Wo) {
      const int64_t m = Wo - wo0;
      V gv[RB], xv[KB];
      for (int a = 0; a < RB; ++a) gv[a] = load_lanes<V>(grw + (a < nr ? a : 0) * P + wo0, m);
      for (int b = 0; b < KB; ++b) xv[b] = load_lanes<V>(xrow + koff[b < nk ? b : 0] + wo0, m);
      for (int a = 0; a < RB; ++a)
        for (int b = 0; b < KB; ++b) acc[a][b] += gv[a] * xv[b];
    }
  }
  for (int a = 0; a < RB; ++a)
    for (int b = 0; b < KB; ++b) std::memcpy(accp + (a * KB + b) * L, &acc[a][b], sizeof(V));
}

template <typename T>
void wgrad_det(const Geom& g, const T* gl, const T* x, T* gw, int nt) {
  if (g.sw != 1) return wgrad_det_loop(g, gl, x, gw, nt);
  constexpr int L = DirectVec<T>::kLanes, RB = 4, KB = DirectVec<T>::kAcc == 24 ? 6 : 3;
  const int64_t OM = g.O * g.M, Cg = g.C / g.G, OMg = OM / g.G, KK = g.kh * g.kw, K = Cg * KK;
  const int64_t Hp = (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  const int64_t Wp = (g.Wo + L - 1) / L * L + (g.kw - 1) * g.dw, plane = Hp * Wp;
  std::vector<T> xpad(static_cast<size_t>(g.N * g.C * plane));  // zero-padded x [N][C][Hp][Wp]
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t nc = 0; nc < g.N * g.C; ++nc) pad_channel(g, x + nc * g.H * g.W, xpad.data() + nc * plane, Hp, Wp);
  std::vector<int64_t> koff(static_cast<size_t>(K));  // (channel, tap) -> offset in a group's padded planes
  for (int64_t k = 0; k < K; ++k) {
    const int64_t c = k / KK, i = (k % KK) / g.kw, j = k % g.kw;
    koff[k] = c * plane + i * g.dh * Wp + j * g.dw;
  }
  const int64_t nrb = (OMg + RB - 1) / RB, nkb = (K + KB - 1) / KB;
#pragma omp parallel num_threads(nt)
  {
    // partial-sum vectors as plain T (std::vector does not promise a vector type's alignment)
    std::vector<T> part(static_cast<size_t>(nkb * RB * KB * L));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < g.G * nrb; ++t) {
      const int64_t gg = t / nrb, rb = t % nrb, r0 = gg * OMg + rb * RB, nr = std::min<int64_t>(RB, OMg - rb * RB);
      std::fill(part.begin(), part.end(), T(0));
      for (int64_t n = 0; n < g.N; ++n) {
        const T* xn = xpad.data() + (n * g.C + gg * Cg) * plane;
        for (int64_t kb = 0; kb < nkb; ++kb)
          wgrad_tile_image<T, RB, KB>(g, gl + (n * OM + r0) * g.P(), xn, Wp, nr, koff.data() + kb * KB,
                                      std::min<int64_t>(KB, K - kb * KB), part.data() + kb * RB * KB * L);
      }
      for (int64_t kb = 0; kb < nkb; ++kb)
        for (int64_t a = 0; a < nr; ++a)
          for (int64_t b = 0; b < std::min<int64_t>(KB, K - kb * KB); ++b) {
            const T* v = part.data() + ((kb * RB + a) * KB + b) * L;
            T s = T(0);
            for (int l = 0; l < L; ++l) s += v[l];
            gw[(r0 + a) * K + kb * KB + b] = s;
          }
    }
  }
}
