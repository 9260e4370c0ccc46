// B-cos forward as one direct convolution with the epilogue in registers (CPU, conv layers whose
// column stride is 1): no raw output map l is ever written. Per (image, group) plane: the patch
// norm (patch_root_plane), a zero-padded copy of the plane's input, then per block of outputs a
// sweep of register tiles (KO outputs x M MaxOut units x VR rows x VC vectors of columns) over the
// group's channels and the window taps, each tile ending in MaxOut (ties -> the first unit),
// written as the MaxOut value and its 1-byte argmax; the power pass (fwd_row with one unit)
// then reads them back from cache. The weight is packed once per call, pre-scaled by
// ws = 1 / ||W_c|| (the unit-norm filter), zero-padded to whole tiles.
//
// The other path runs the convolution in oneDNN and the epilogue over its raw map; oneDNN wins at
// long reductions (C/groups * kh * kw above ~1536) and on narrow rows that leave vectors half
// empty, this kernel elsewhere: the caller picks from the sizes (rbfkern/ops/bcos_cpp.py).
//
// No include guard on purpose: part of bcos_kernels.h, compiled once per instruction set, with
// kVecBytes (isa_foreach.h) the vector width of that set in bytes.

template <typename T>
struct DirectVec {
  static constexpr int kBytes = kVecBytes;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  // accumulators a tile keeps in registers: 24 of AVX-512's 32, 12 of AVX2's / SSE's 16
  static constexpr int kAcc = kBytes == 64 ? 24 : 12;
  typedef T V __attribute__((vector_size(kBytes)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I IV __attribute__((vector_size(kBytes)));
};

// One register tile: KO outputs (ko of them real) x M units x VR output rows (nrows of them real)
// x VC vectors of output columns (nw real columns from the tile's first). xp: the padded input at
// (channel 0, the tile's first row, its first column); cs / rs / xrs: the channel / dilated-row /
// output-row steps in it; wb: the block's packed weight [Cg][kh][kw][KO * M]; best / bidx at the
// tile's first pixel of output 0 (outputs P apart, rows Wo apart).
template <typename T, int M, int KO, int VR, int VC>
void direct_tile(const T* __restrict xp, int64_t cs, int64_t rs, int64_t xrs, int64_t Cg, int64_t kh, int64_t kw,
                 int64_t dw, const T* __restrict wb, T* __restrict best, uint8_t* __restrict bidx, int64_t P,
                 int64_t Wo, int64_t nrows, int64_t nw, int64_t ko) {
  using D = DirectVec<T>;
  using V = typename D::V;
  using IV = typename D::IV;
  constexpr int R = KO * M, L = D::kLanes, NV = VR * VC;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  const T* __restrict w = wb;
  for (int64_t c = 0; c < Cg; ++c) {
    for (int64_t i = 0; i < kh; ++i) {
      const T* __restrict xr = xp + c * cs + i * rs;
      for (int64_t j = 0; j < kw; ++j, w += R) {
        V xv[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&xv[v], xr + j * dw + (v / VC) * xrs + (v % VC) * L, sizeof(V));
        for (int r = 0; r < R; ++r) {
          const V wv = w[r] - V{};  // a broadcast: w - 0 is w for every w (w + 0 is not, at -0)
          for (int v = 0; v < NV; ++v) acc[r][v] += xv[v] * wv;
        }
      }
    }
  }
  for (int o = 0; o < KO && o < ko; ++o) {
    for (int v = 0; v < NV && v / VC < nrows; ++v) {
      const int64_t n = std::min<int64_t>(L, nw - (v % VC) * L);
      if (n <= 0) continue;
      V b = acc[o * M][v];
      IV bi = IV{};
      for (int m = 1; m < M; ++m) {
        const IV gt = acc[o * M + m][v] > b;
        b = gt ? acc[o * M + m][v] : b;
        bi = gt ? IV{} + m : bi;
      }
      const int64_t off = o * P + (v / VC) * Wo + (v % VC) * L;
      if (n == L) {
        std::memcpy(best + off, &b, sizeof(V));
      } else {
        for (int64_t l = 0; l < n; ++l) best[off + l] = b[l];
      }
      if (bidx != nullptr)
        for (int64_t l = 0; l < n; ++l) bidx[off + l] = static_cast<uint8_t>(bi[l]);
    }
  }
}

// The tiles (VR rows x VC column vectors) of one block of KO outputs (ko of them real) of one
// (image, group) plane: best / bidx [ko, P] (bidx may be null); wb: the block's packed weight.
template <typename T, int M, int VR, int VC>
void direct_block(const Geom& g, const T* xpad, int64_t Hp, int64_t Wp, const T* wb, int64_t ko, T* best,
                  uint8_t* bidx) {
  constexpr int L = DirectVec<T>::kLanes, KO = DirectVec<T>::kAcc / (M * VR * VC), TW = VC * L;
  const int64_t Cg = g.C / g.G, P = g.P();
  for (int64_t ho = 0; ho < g.Ho; ho += VR) {
    const T* xrow = xpad + ho * g.sh * Wp;
    for (int64_t wo0 = 0; wo0 < g.Wo; wo0 += TW) {
      const int64_t off = ho * g.Wo + wo0;
      direct_tile<T, M, KO, VR, VC>(xrow + wo0, Hp * Wp, g.dh * Wp, g.sh * Wp, Cg, g.kh, g.kw, g.dw, wb, best + off,
                                    bidx ? bidx + off : nullptr, P, g.Wo, std::min<int64_t>(VR, g.Ho - ho),
                                    g.Wo - wo0, ko);
    }
  }
}

// The power (B) of the MaxOut values, one output row at a time (fwd_row with a single unit).
template <typename T>
void power_rows(int mode, const T* best, int64_t rows, int64_t P, const T* ri, T* y, T pw1, T ce) {
  const T one[1] = {T(1)};
  for (int64_t o = 0; o < rows; ++o) {
    if (mode == 1) {
      std::memcpy(y + o * P, best + o * P, sizeof(T) * static_cast<size_t>(P));
    } else if (mode == 2) {
      fwd_row<T, 1, 2, false>(best + o * P, one, P, 1, ri, y + o * P, nullptr, nullptr, pw1, ce);
    } else {
      fwd_row<T, 1, 0, false>(best + o * P, one, P, 1, ri, y + o * P, nullptr, nullptr, pw1, ce);
    }
  }
}

// One input channel (H x W) into its zero-padded copy dst (Hp x Wp): padded (row, col) = input
// (row - ph, col - pw).
template <typename T>
void pad_channel(const Geom& g, const T* src, T* dst, int64_t Hp, int64_t Wp) {
  const int64_t w0 = std::max<int64_t>(0, g.pw), w1 = std::min<int64_t>(Wp, g.pw + g.W);
  for (int64_t hp = 0; hp < Hp; ++hp) {
    T* row = dst + hp * Wp;
    const int64_t h = hp - g.ph;
    std::fill(row, row + Wp, T(0));
    if (h >= 0 && h < g.H && w1 > w0) std::memcpy(row + w0, src + h * g.W + (w0 - g.pw), sizeof(T) * (w1 - w0));
  }
}

// Scratch buffer `slot` of the calling thread, resized to n: kept between calls, so a layer called
// every step reuses its pages (fresh multi-MiB allocations each call cost page faults comparable
// to a small convolution). Per calling thread, so concurrent calls from Python threads are safe.
template <typename T>
std::vector<T>& direct_scratch(int slot, int64_t n) {
  thread_local std::vector<T> bufs[3];
  bufs[slot].resize(static_cast<size_t>(n));
  return bufs[slot];
}

// Planes in chunks of at most chunk_bytes of padded input (at least one plane). Per chunk, two
// parallel loops: the planes' patch norms and padded copies, then one task per (plane, output
// block): its tiles and the power of its rows. Each value is computed by one task in a fixed
// order, so the result does not depend on the thread count, and a batch of one image still keeps
// every thread busy.
template <typename T, int M, int VR, int VC>
void direct_fwd_mn(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* w, const T* ws,
                   T* y, T* lmax, uint8_t* idx, T* root, bool save, int64_t chunk_bytes, int nt) {
  constexpr int L = DirectVec<T>::kLanes, KO = DirectVec<T>::kAcc / (M * VR * VC), TW = VC * L, R = KO * M;
  static_assert(KO >= 1, "a tile holds at least one output");
  const int64_t Og = g.O / g.G, Cg = g.C / g.G, P = g.P(), HW = g.H * g.W, KK = g.kh * g.kw, NG = g.N * g.G;
  const int64_t nblk = (Og + KO - 1) / KO, ntile = (g.Wo + TW - 1) / TW, Kb = Cg * KK * R;
  // rows read: up to the window of the last tile's last row (up to VR - 1 rows past Ho)
  const int64_t Hp = (g.Ho - 1 + VR - 1) * g.sh + (g.kh - 1) * g.dh + 1, Wp = ntile * TW + (g.kw - 1) * g.dw;
  const int64_t plane = Cg * Hp * Wp, step = std::max<int64_t>(1, chunk_bytes / (plane * int64_t(sizeof(T))));
  // packed weight [G][block][Cg][kh][kw][R], unit-norm, zero rows past the last output
  std::vector<T>& wpk = direct_scratch<T>(0, g.G * nblk * Kb);
  std::fill(wpk.begin(), wpk.end(), T(0));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t raw = 0; raw < g.O * M; ++raw) {  // raw channel (gg * Og + o) * M + m
    const int64_t gg = raw / (Og * M), o = (raw / M) % Og, m = raw % M;
    T* dst = wpk.data() + (gg * nblk + o / KO) * Kb + (o % KO) * M + m;
    const T* src = w + raw * Cg * KK;
    for (int64_t k = 0; k < Cg * KK; ++k) dst[k * R] = src[k] * ws[raw];
  }
  const int mode = b == 1.0 ? 1 : (b == 2.0 ? 2 : 0);
  const T pw1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
  const int64_t nchunk = std::min(NG, step);
  std::vector<T>& xpad = direct_scratch<T>(1, nchunk * plane);  // every element written per chunk
  std::vector<T>& rinv = direct_scratch<T>(2, mode != 1 ? nchunk * P : 0);
  for (int64_t ng0 = 0; ng0 < NG; ng0 += step) {
    const int64_t ng1 = std::min(NG, ng0 + step);
#pragma omp parallel num_threads(nt)
    {
      std::vector<T> sbuf, hbuf, rbuf, bbuf;
      if (mode != 1) {
        sbuf.resize(static_cast<size_t>(HW));
        hbuf.resize(static_cast<size_t>(g.H * g.Wo));
        if (!save) rbuf.resize(static_cast<size_t>(P));
      }
#pragma omp for schedule(static)
      for (int64_t ng = ng0; ng < ng1; ++ng) {
        const T* xg = x + ng * Cg * HW;
        if (mode != 1)
          patch_root_plane(g, xg, sbuf.data(), hbuf.data(), save ? root + ng * P : rbuf.data(),
                           rinv.data() + (ng - ng0) * P, eps_in, eo);
        T* xp = xpad.data() + (ng - ng0) * plane;
        for (int64_t c = 0; c < Cg; ++c) pad_channel(g, xg + c * HW, xp + c * Hp * Wp, Hp, Wp);
      }
      if (!save) bbuf.resize(static_cast<size_t>(KO * P));
#pragma omp for schedule(static)
      for (int64_t t = 0; t < (ng1 - ng0) * nblk; ++t) {
        const int64_t ng = ng0 + t / nblk, blk = t % nblk, n = ng / g.G, gg = ng % g.G;
        const int64_t ko = std::min<int64_t>(KO, Og - blk * KO), row0 = (n * g.O + gg * Og + blk * KO) * P;
        T* best = save ? lmax + row0 : bbuf.data();
        direct_block<T, M, VR, VC>(g, xpad.data() + (ng - ng0) * plane, Hp, Wp, wpk.data() + (gg * nblk + blk) * Kb,
                                     ko, best, save ? idx + row0 : nullptr);
        power_rows(mode, best, ko, P, mode != 1 ? rinv.data() + (ng - ng0) * P : nullptr, y + row0, pw1, ce);
      }
    }
  }
}

// false: not handled here (column stride > 1 or max_out > 3); the caller takes the oneDNN path.
template <typename T>
bool direct_fwd(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* w, const T* ws, T* y,
                T* lmax, uint8_t* idx, T* root, bool save, int64_t chunk_bytes, int nt) {
  if (g.sw != 1 || g.M > 3) return false;
  // Tiles of 4 vectors where 32 registers hold 24 accumulators (each weight broadcast feeds 4
  // FMAs, the packed weight block per tile is 6 rows), else 2: column vectors of a wide row,
  // output rows of a narrow one; fewer only for one or two output rows.
  constexpr bool four = DirectVec<T>::kAcc == 24;
  const bool wide = g.Wo > DirectVec<T>::kLanes;
#define RBFKERN_DIRECT_CALL(MM, VR, VC) \
  direct_fwd_mn<T, MM, VR, VC>(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt)
#define RBFKERN_DIRECT_CASE(MM)                                                     \
  if (g.M == MM) {                                                                 \
    if constexpr (four) {                                                          \
      if (wide && g.Ho > 1) RBFKERN_DIRECT_CALL(MM, 2, 2);                         \
      else if (wide) RBFKERN_DIRECT_CALL(MM, 1, 2);                                \
      else if (g.Ho > 2) RBFKERN_DIRECT_CALL(MM, 4, 1);                            \
      else if (g.Ho > 1) RBFKERN_DIRECT_CALL(MM, 2, 1);                            \
      else RBFKERN_DIRECT_CALL(MM, 1, 1);                                          \
    } else {                                                                       \
      if (wide) RBFKERN_DIRECT_CALL(MM, 1, 2);                                     \
      else if (g.Ho > 1) RBFKERN_DIRECT_CALL(MM, 2, 1);                            \
      else RBFKERN_DIRECT_CALL(MM, 1, 1);                                          \
    }                                                                              \
    return true;                                                                   \
  }
  RBFKERN_DIRECT_CASE(1)
  RBFKERN_DIRECT_CASE(2)
  RBFKERN_DIRECT_CASE(3)
#undef RBFKERN_DIRECT_CASE
#undef RBFKERN_DIRECT_CALL
  return false;
}
