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

// Rows [r0, r0 + nr) of x against every panel of the packed weight bp ([np][K][NV * L], columns
// past OM zero) into l (N x OM); a is x's rows, or a zero-padded copy where fewer than R remain.
template <typename T, int R, int NV>
void linear_tiles(const T* a, int64_t K, const T* bp, int64_t np, int64_t OM, int64_t r0, int64_t nr, T* tile,
                  T* l) {
  constexpr int P = NV * simd::VT<T>::L;
  for (int64_t p = 0; p < np; ++p) {
    gemm_tile<T, R, NV>(a, K, bp + p * K * P, K, kLinearKb, K, tile, tile);
    const int64_t nc = std::min<int64_t>(P, OM - p * P);
    for (int64_t r = 0; r < nr; ++r) std::copy(tile + r * P, tile + r * P + nc, l + (r0 + r) * OM + p * P);
  }
}

template <typename T, int R, int NV>
void linear_map(const Geom& g, const T* x, const T* w, T* l, int nt) {
  constexpr int P = NV * simd::VT<T>::L;
  const int64_t N = g.N, K = g.C, OM = g.O * g.M, np = simd::cdiv(OM, P), nrt = simd::cdiv(N, R);
  // Packed by panel rows (k), each written once and contiguously; the weight's rows are read as
  // nc sequential streams. Padding columns are zero.
  std::vector<T> bp((size_t)(np * K * P));
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t pk = 0; pk < np * K; ++pk) {  // panel row k of panel p
      const int64_t p = pk / K, k = pk % K, j0 = p * P, nc = std::min<int64_t>(P, OM - j0);
      T* row = bp.data() + pk * P;
      for (int64_t j = 0; j < nc; ++j) row[j] = w[(j0 + j) * K + k];
      for (int64_t j = nc; j < P; ++j) row[j] = T(0);
    }
    std::vector<T> tile((size_t)(R * P)), pad;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nrt; ++t) {
      const int64_t r0 = t * R, nr = std::min<int64_t>(R, N - r0);
      const T* a = x + r0 * K;
      if (nr < R) {  // the last rows: a tile reads R rows
        pad.assign((size_t)(R * K), T(0));
        std::copy(a, a + nr * K, pad.data());
        a = pad.data();
      }
      linear_tiles<T, R, NV>(a, K, bp.data(), np, OM, r0, nr, tile.data(), l);
    }
  }
}

// false (nothing written) where g is not a linear layer.
template <typename T>
bool linear_fwd(const Geom& g, double b, double eps_in, double eps_out, const T* x, const T* w, const T* ws, T* y,
                T* lmax, uint8_t* idx, T* root, bool save, int nt) {
  if (g.H != 1 || g.W != 1 || g.kh != 1 || g.kw != 1 || g.G != 1) return false;
  std::vector<T> l((size_t)(g.N * g.O * g.M));
  // One vector of columns where the outputs fit in it (a two-vector panel would be mostly padding).
  if (g.O * g.M <= simd::VT<T>::L) linear_map<T, kGemmR1, 1>(g, x, w, l.data(), nt);
  else linear_map<T, kGemmR, kGemmNV>(g, x, w, l.data(), nt);
  fwd<T>(g, b, eps_in, eps_out, x, l.data(), ws, y, lmax, idx, root, save, false, nt);
  return true;
}
