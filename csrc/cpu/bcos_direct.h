// B-cos forward as one direct convolution with the epilogue in registers (CPU, conv layers whose
// column stride is 1): no raw output map l is ever written. Per (image, group) plane: the patch
// norm (patch_root_plane), a zero-padded copy of the plane's input, then per block of outputs a
// sweep of register tiles (KO outputs x M MaxOut units x NV vectors of output columns) over the
// group's channels and the window taps, each tile ending in MaxOut (ties -> the first unit),
// written as the MaxOut value and its 1-byte argmax; the power pass (fwd_row with one unit)
// then reads them back from cache. The weight is packed once per call, pre-scaled by
// ws = 1 / ||W_c|| (the unit-norm filter), zero-padded to whole tiles.
//
// The convolution / GEMM of the other path comes from oneDNN, which wins at large C_in; this
// one wins where the raw map costs more than the GEMM (few input channels): the caller picks
// (rbfkern/ops/bcos.py).
//
// No include guard on purpose: the kernel section of bcos.cpp includes this once per instruction
// set, with RBFKERN_BCOS_VBYTES the vector width of that set in bytes.

template <typename T>
struct DirectVec {
  static constexpr int kBytes = RBFKERN_BCOS_VBYTES;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  // accumulators a tile keeps in registers: 24 of AVX-512's 32, 12 of AVX2's / SSE's 16
  static constexpr int kAcc = kBytes == 64 ? 24 : 12;
  typedef T V __attribute__((vector_size(kBytes)));
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I IV __attribute__((vector_size(kBytes)));
};

// One register tile: KO outputs (ko of them real) x M units x NV vectors of output pixels, the
// second vector xstep / ostep further in the padded input / the output (the next columns of a
// wide row, or the next row of a narrow one), with n0 / n1 valid lanes. xp: the padded input at
// (channel 0, the tile's first row, its first column); cs / rs: the channel / dilated-row steps;
// wb: the block's packed weight [Cg][kh][kw][KO * M].
template <typename T, int M, int KO, int NV>
void direct_tile(const T* __restrict xp, int64_t cs, int64_t rs, int64_t xstep, int64_t Cg, int64_t kh, int64_t kw,
                 int64_t dw, const T* __restrict wb, T* __restrict best, uint8_t* __restrict bidx, int64_t P,
                 int64_t ostep, int64_t n0, int64_t n1, int64_t ko) {
  using D = DirectVec<T>;
  using V = typename D::V;
  using IV = typename D::IV;
  constexpr int R = KO * M, L = D::kLanes;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  const T* __restrict w = wb;
  for (int64_t c = 0; c < Cg; ++c) {
    for (int64_t i = 0; i < kh; ++i) {
      const T* __restrict xr = xp + c * cs + i * rs;
      for (int64_t j = 0; j < kw; ++j, w += R) {
        V xv[NV];
        for (int v = 0; v < NV; ++v) std::memcpy(&xv[v], xr + j * dw + v * xstep, sizeof(V));
        for (int r = 0; r < R; ++r) {
          const V wv = w[r] - V{};  // a broadcast: w - 0 is w for every w (w + 0 is not, at -0)
          for (int v = 0; v < NV; ++v) acc[r][v] += xv[v] * wv;
        }
      }
    }
  }
  for (int o = 0; o < KO && o < ko; ++o) {
    for (int v = 0; v < NV; ++v) {
      V b = acc[o * M][v];
      IV bi = IV{};
      for (int m = 1; m < M; ++m) {
        const IV gt = acc[o * M + m][v] > b;
        b = gt ? acc[o * M + m][v] : b;
        bi = gt ? IV{} + m : bi;
      }
      const int64_t n = v == 0 ? n0 : n1;
      if (n <= 0) break;
      T* dst = best + o * P + v * ostep;
      if (n == L) {
        std::memcpy(dst, &b, sizeof(V));
      } else {
        for (int64_t l = 0; l < n; ++l) dst[l] = b[l];
      }
      if (bidx != nullptr) {
        uint8_t* di = bidx + o * P + v * ostep;
        for (int64_t l = 0; l < n; ++l) di[l] = static_cast<uint8_t>(bi[l]);
      }
    }
  }
}

// The tiles of one block of KO outputs (ko of them real) of one (image, group) plane: best /
// bidx [ko, P] (bidx may be null); wb: the block's packed weight. ROWS: the two vectors of a tile
// are two output rows (rows no wider than a vector), else two column vectors.
template <typename T, int M, int NV, bool ROWS>
void direct_block(const Geom& g, const T* xpad, int64_t Hp, int64_t Wp, const T* wb, int64_t ko, T* best,
                  uint8_t* bidx) {
  constexpr int L = DirectVec<T>::kLanes, KO = DirectVec<T>::kAcc / (M * NV), TW = ROWS ? L : NV * L;
  const int64_t Cg = g.C / g.G, P = g.P();
  const int64_t xstep = ROWS ? g.sh * Wp : L, ostep = ROWS ? g.Wo : L;
  for (int64_t ho = 0; ho < g.Ho; ho += ROWS ? 2 : 1) {
    const T* xrow = xpad + ho * g.sh * Wp;
    for (int64_t wo0 = 0; wo0 < g.Wo; wo0 += TW) {
      const int64_t off = ho * g.Wo + wo0, nw = g.Wo - wo0;
      const int64_t n0 = std::min<int64_t>(L, nw), n1 = ROWS ? (ho + 1 < g.Ho ? nw : 0) : std::min<int64_t>(L, nw - L);
      direct_tile<T, M, KO, NV>(xrow + wo0, Hp * Wp, g.dh * Wp, xstep, Cg, g.kh, g.kw, g.dw, wb, best + off,
                                bidx ? bidx + off : nullptr, P, ostep, n0, n1, ko);
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

// Planes in chunks of at most chunk_bytes of padded input (at least one plane). Per chunk, two parallel loops: the planes' patch
// norms and padded copies, then one task per (plane, output block): its tiles and the power of
// its rows. Each value is computed by one task in a fixed order, so the result does not depend
// on the thread count, and a batch of one image still keeps every thread busy.
template <typename T, int M, int NV, bool ROWS>
void direct_fwd_mn(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* w, const T* ws,
                   T* y, T* lmax, uint8_t* idx, T* root, bool save, int64_t chunk_bytes, int nt) {
  constexpr int L = DirectVec<T>::kLanes, KO = DirectVec<T>::kAcc / (M * NV), TW = ROWS ? L : NV * L, R = KO * M;
  const int64_t Og = g.O / g.G, Cg = g.C / g.G, P = g.P(), HW = g.H * g.W, KK = g.kh * g.kw, NG = g.N * g.G;
  const int64_t nblk = (Og + KO - 1) / KO, ntile = (g.Wo + TW - 1) / TW, Kb = Cg * KK * R;
  // rows read: up to the last output row's window, one output row further for ROWS (an odd Ho)
  const int64_t Hp = (g.Ho - 1 + (ROWS ? 1 : 0)) * g.sh + (g.kh - 1) * g.dh + 1, Wp = ntile * TW + (g.kw - 1) * g.dw;
  const int64_t plane = Cg * Hp * Wp, step = std::max<int64_t>(1, chunk_bytes / (plane * int64_t(sizeof(T))));
  // packed weight [G][block][Cg][kh][kw][R], unit-norm, zero rows past the last output
  std::vector<T> wpk(static_cast<size_t>(g.G * nblk * Kb), T(0));
  for (int64_t gg = 0; gg < g.G; ++gg)
    for (int64_t o = 0; o < Og; ++o)
      for (int64_t m = 0; m < M; ++m) {
        const int64_t raw = (gg * Og + o) * M + m, blk = o / KO, r = (o % KO) * M + m;
        T* dst = wpk.data() + (gg * nblk + blk) * Kb + r;
        const T* src = w + raw * Cg * KK;
        for (int64_t k = 0; k < Cg * KK; ++k) dst[k * R] = src[k] * ws[raw];
      }
  const int mode = b == 1.0 ? 1 : (b == 2.0 ? 2 : 0);
  const T pw1 = T(b - 1.0), eo = T(eps_out), ce = T(kCosEps);
  const int64_t nchunk = std::min(NG, step);
  std::vector<T> xpad(static_cast<size_t>(nchunk * plane)), rinv(static_cast<size_t>(mode != 1 ? nchunk * P : 0));
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
        for (int64_t c = 0; c < Cg; ++c)  // zero-padded plane: padded (row, col) = input (row - ph, col - pw)
          for (int64_t hp = 0; hp < Hp; ++hp) {
            T* dst = xp + (c * Hp + hp) * Wp;
            const int64_t h = hp - g.ph;
            std::fill(dst, dst + Wp, T(0));
            if (h < 0 || h >= g.H) continue;
            const int64_t w0 = std::max<int64_t>(0, g.pw), w1 = std::min<int64_t>(Wp, g.pw + g.W);
            if (w1 > w0) std::memcpy(dst + w0, xg + (c * g.H + h) * g.W + (w0 - g.pw), sizeof(T) * (w1 - w0));
          }
      }
      if (!save) bbuf.resize(static_cast<size_t>(KO * P));
#pragma omp for schedule(static)
      for (int64_t t = 0; t < (ng1 - ng0) * nblk; ++t) {
        const int64_t ng = ng0 + t / nblk, blk = t % nblk, n = ng / g.G, gg = ng % g.G;
        const int64_t ko = std::min<int64_t>(KO, Og - blk * KO), row0 = (n * g.O + gg * Og + blk * KO) * P;
        T* best = save ? lmax + row0 : bbuf.data();
        direct_block<T, M, NV, ROWS>(g, xpad.data() + (ng - ng0) * plane, Hp, Wp, wpk.data() + (gg * nblk + blk) * Kb,
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
  // two vectors per tile (each weight broadcast feeds two FMAs): two column vectors of a wide
  // row, else two rows; one vector only for a single narrow row
  const bool cols = g.Wo > DirectVec<T>::kLanes, rows = !cols && g.Ho > 1;
#define RBFKERN_DIRECT_CASE(MM)                                                                             \
  if (g.M == MM) {                                                                                         \
    if (cols) direct_fwd_mn<T, MM, 2, false>(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt); \
    else if (rows) direct_fwd_mn<T, MM, 2, true>(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt); \
    else direct_fwd_mn<T, MM, 1, false>(g, b, eps_in, eps_out, x, w, ws, y, lmax, idx, root, save, chunk_bytes, nt);     \
    return true;                                                                                           \
  }
  RBFKERN_DIRECT_CASE(1)
  RBFKERN_DIRECT_CASE(2)
  RBFKERN_DIRECT_CASE(3)
#undef RBFKERN_DIRECT_CASE
  return false;
}
