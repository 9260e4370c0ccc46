// B-cos linear forward for a few outputs (part of bcos_kernels.h, compiled once per instruction
// set; no include guard on purpose): the raw map l = x W^T by the register-blocked GEMM tile of
// gemm_tile.h, then the epilogue fwd() over it, in one call. For a head of a few outputs the
// GEMM through torch (its K cut into chunks of 256 so that results do not depend on the thread
// count, rbfkern/ops/bcos_cpp.py) and the separate epilogue call cost more than the arithmetic.
//
// Each l[n, j] is one lane of one tile: its sum runs over k in blocks of kLinearKb in order
// (gemm_tile's two-level sum), so it depends on the operands only, not on the thread count, the
// row tiling or the vector width (the baseline set, without FMA, rounds each product: other bits).

constexpr int64_t kLinearKb = 256;
// Below this many multiply-adds one thread does the whole call: waking a second one cost more
// than the half of the work it took over. The results do not depend on the thread count.
constexpr int64_t kLinearMinParallelMacs = int64_t(1) << 18;

// Rows [r0, r0 + nr) of x against every panel of the packed weight bp ([np][K][NV * L], columns
// past OM zero) into l (N x OM); a: those rows, lda apart, zero rows up to R.
template <typename T, int R, int NV>
void linear_tiles(const T* a, int64_t lda, int64_t K, const T* bp, int64_t np, int64_t OM, int64_t r0, int64_t nr,
                  T* tile, T* l) {
  constexpr int P = NV * simd::VT<T>::L;
  for (int64_t p = 0; p < np; ++p) {
    gemm_tile<T, R, NV>(a, lda, bp + p * K * P, K, kLinearKb, K, tile, tile);
    const int64_t nc = std::min<int64_t>(P, OM - p * P);
    for (int64_t r = 0; r < nr; ++r) std::copy(tile + r * P, tile + r * P + nc, l + (r0 + r) * OM + p * P);
  }
}

template <typename T, int R, int NV>
void linear_map(const Geom& g, const T* x, const T* w, T* l, int nt) {
  constexpr int P = NV * simd::VT<T>::L;
  const int64_t N = g.N, K = g.C, OM = g.O * g.M, np = simd::cdiv(OM, P), nrt = simd::cdiv(N, R);
  // Packed a block of kPackKb panel rows at a time, each weight row read sequentially: reading
  // the weight down its columns (one row element per panel row) put the nc rows, K apart, into
  // a few L1 sets, and each load missed. The block's panel rows stay in L1; padding stays zero.
  constexpr int64_t kPackKb = 64;
  const int64_t nkb = simd::cdiv(K, kPackKb);
  std::vector<T> bp((size_t)(np * K * P), T(0));
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t pb = 0; pb < np * nkb; ++pb) {  // k block pb % nkb of panel pb / nkb
      const int64_t p = pb / nkb, k0 = (pb % nkb) * kPackKb, nk = std::min(kPackKb, K - k0), j0 = p * P;
      const int64_t nc = std::min<int64_t>(P, OM - j0);
      T* dst = bp.data() + (p * K + k0) * P;
      for (int64_t j = 0; j < nc; ++j) {
        const T* src = w + (j0 + j) * K + k0;
        for (int64_t k = 0; k < nk; ++k) dst[k * P + j] = src[k];
      }
    }
    // A row tile is read in place, except the last, partial one (copied, zero rows up to R) and
    // rows a multiple of 4 KiB apart, which all fall into one L1 set and evict each other: those
    // are copied one cache line further apart. (A copy of every tile cost more than it saved
    // where x streams from memory: in place, the prefetcher loads it while the tile computes.)
    const bool one_set = K * (int64_t)sizeof(T) % 4096 == 0;
    const int64_t ld = one_set ? gemm_row_ld<T>(K) : K;
    std::vector<T> tile((size_t)(R * P)), copy;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nrt; ++t) {
      const int64_t r0 = t * R, nr = std::min<int64_t>(R, N - r0);
      const T* a = x + r0 * K;
      int64_t lda = K;
      if (nr < R || one_set) {
        copy.resize((size_t)(R * ld));
        for (int64_t r = 0; r < R; ++r) {
          T* dst = copy.data() + r * ld;
          if (r < nr) std::copy(a + r * K, a + (r + 1) * K, dst);
          else std::fill(dst, dst + K, T(0));
        }
        a = copy.data();
        lda = ld;
      }
      linear_tiles<T, R, NV>(a, lda, K, bp.data(), np, OM, r0, nr, tile.data(), l);
    }
  }
}

// false (nothing written) where g is not a linear layer.
template <typename T>
bool linear_fwd(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* w, const T* ws, T* y,
                T* lmax, uint8_t* idx, T* root, bool save, int nt) {
  if (g.H != 1 || g.W != 1 || g.kh != 1 || g.kw != 1 || g.G != 1) return false;
  if (g.N * g.C * g.O * g.M < kLinearMinParallelMacs) nt = 1;
  std::vector<T> l((size_t)(g.N * g.O * g.M));
  // One vector of columns where the outputs fit in it (a two-vector panel would be mostly padding).
  if (g.O * g.M <= simd::VT<T>::L) linear_map<T, kGemmR1, 1>(g, x, w, l.data(), nt);
  else linear_map<T, kGemmR, kGemmNV>(g, x, w, l.data(), nt);
  fwd<T>(g, b, eps_in, eps_out, x, l.data(), ws, y, lmax, idx, root, save, false, nt);
  return true;
}
