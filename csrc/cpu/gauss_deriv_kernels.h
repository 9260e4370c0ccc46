// Gaussian-derivative basis convolution CPU kernels (contract: csrc/cpu/gauss_deriv.h).
// gauss_deriv.cpp compiles this file once per instruction set (csrc/cpu/isa_foreach.h).
// No include guard on purpose.
//
// 2D: separable evaluation, per image n:
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

using simd::VT;
using simd::vload;
using simd::vstore;

// MR rows x NB vectors of C in registers over kc products: a (row r, product kk) at
// a[r * as0 + kk * as1], the B strip packed [kc][NB vectors].
template <class T, int MR, int NB>
RBFKERN_INLINE void gemm_micro(int64_t kc, const T* a, int64_t as0, int64_t as1, const T* pack, T* C, int64_t ldc,
                               bool accum) {
  typedef typename VT<T>::V V;
  constexpr int L = VT<T>::L;
  V c[MR][NB];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NB; ++v) c[r][v] = V{};
  for (int64_t kk = 0; kk < kc; ++kk) {
    V b[NB];
#pragma GCC unroll 2
    for (int v = 0; v < NB; ++v) b[v] = vload<T>(pack + (kk * NB + v) * L);
    const T* ak = a + kk * as1;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const T ar = ak[r * as0];
#pragma GCC unroll 2
      for (int v = 0; v < NB; ++v) c[r][v] += ar * b[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NB; ++v) {
      T* cp = C + r * ldc + v * L;
      vstore<T>(cp, accum ? vload<T>(cp) + c[r][v] : c[r][v]);
    }
}

// One strip of NB vectors of columns from j0, all rows: B's strip is packed (KC x NB vectors,
// contiguous) first: B's rows are often 4 KiB apart (image rows), which would alias in L1/L2 if
// streamed in place.
template <class T, int MR, int NB>
void gemm_strip(int64_t m, int64_t j0, int64_t k, const T* A, int64_t as0, int64_t as1, const T* B, int64_t ldb, T* C,
                int64_t ldc, bool acc) {
  constexpr int L = VT<T>::L;
  constexpr int64_t KC = 256;
  alignas(64) T pack[KC * NB * L];
  for (int64_t k0 = 0; k0 < k; k0 += KC) {
    const int64_t kc = std::min(KC, k - k0);
    for (int64_t kk = 0; kk < kc; ++kk) std::memcpy(pack + kk * NB * L, B + (k0 + kk) * ldb + j0, sizeof(T) * NB * L);
    const bool accum = acc || k0 > 0;
    const T* a = A + k0 * as1;
    int64_t i0 = 0;
    for (; i0 + MR <= m; i0 += MR) gemm_micro<T, MR, NB>(kc, a + i0 * as0, as0, as1, pack, C + i0 * ldc + j0, ldc, accum);
    for (; i0 < m; ++i0) gemm_micro<T, 1, NB>(kc, a + i0 * as0, as0, as1, pack, C + i0 * ldc + j0, ldc, accum);
  }
}

// C[m, n] (+)= sum_k A[m*as0 + k*as1] B[k*ldb + n]: strips of two vectors of columns (6 rows x 2
// vectors in registers, 12 x 2 under AVX-512), then one vector, then single columns. Each element
// sums k in order, in blocks of KC, whatever the strip.
template <class T>
void gemm(int64_t m, int64_t n, int64_t k, const T* A, int64_t as0, int64_t as1, const T* B, int64_t ldb, T* C,
          int64_t ldc, bool acc) {
  constexpr int L = VT<T>::L, MR2 = kVecBytes == 64 ? 12 : 6;
  int64_t j0 = 0;
  for (; j0 + 2 * L <= n; j0 += 2 * L) gemm_strip<T, MR2, 2>(m, j0, k, A, as0, as1, B, ldb, C, ldc, acc);
  for (; j0 + L <= n; j0 += L) gemm_strip<T, 6, 1>(m, j0, k, A, as0, as1, B, ldb, C, ldc, acc);
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
RBFKERN_INLINE void axpy_body(int64_t n, T a, const T* x, int64_t st, T* y) {
  if (st == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i * st];
  }
}

// y[0:n*st:st] += a * x[0:n]
template <class T>
RBFKERN_INLINE void axpy_scatter_body(int64_t n, T a, const T* x, int64_t st, T* y) {
  if (st == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i * st] += a * x[i];
  }
}

// sum_i x[i] y[i*st]
template <class T>
RBFKERN_INLINE T dot_body(int64_t n, const T* x, const T* y, int64_t st) {
  typedef typename VT<T>::V V;
  constexpr int NV = VT<T>::L;
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

// rows of out (nrows x n, row stride ldo): out[r] = sum_a f[a] in[(r*rst + a)*ld : ... : cst]
template <class T>
void corr_rows(int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst, int64_t cst, const T* f,
               int64_t K, T* out, int64_t ldo) {
  if (rst == 1 && cst == 1 && ld == n && ldo == n) {
    n *= nrows;
    nrows = 1;
  }
  for (int64_t r = 0; r < nrows; ++r) {
    T* o = out + r * ldo;
    std::fill(o, o + n, T(0));
    for (int64_t a = 0; a < K; ++a) {
      const T fa = f[a];
      if (fa == T(0)) continue;
      axpy_body<T>(n, fa, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld), cst, o);
    }
  }
}

// transpose of corr_rows: in[(r*rst + a)*ld ...] += f[a] out[r]
template <class T>
void corr_rows_t(int64_t nrows, int64_t n, T* in, int64_t ld, int64_t rst, int64_t cst, const T* f, int64_t K,
                 const T* out, int64_t ldo) {
  if (rst == 1 && cst == 1 && ld == n && ldo == n) {
    n *= nrows;
    nrows = 1;
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const T* o = out + r * ldo;
    for (int64_t a = 0; a < K; ++a) {
      const T fa = f[a];
      if (fa == T(0)) continue;
      axpy_scatter_body<T>(n, fa, o, cst, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld));
    }
  }
}

// gf[a] += sum_r <out[r], in[(r*rst + a)*ld ...]> (the gradient of corr_rows w.r.t. f)
template <class T>
void corr_rows_gf(int64_t nrows, int64_t n, const T* in, int64_t ld, int64_t rst, int64_t cst, int64_t K,
                  const T* out, int64_t ldo, T* gf) {
  if (rst == 1 && cst == 1 && ld == n && ldo == n) {
    n *= nrows;
    nrows = 1;
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const T* o = out + r * ldo;
    for (int64_t a = 0; a < K; ++a) gf[a] += dot_body<T>(n, o, in + (r * rst) * ld + a * (ld == 0 ? 1 : ld), cst);
  }
}

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

// Partial-sum slots of the backward: a constant, so the summation order never depends on the
// number of threads (bitwise-reproducible gradients).
constexpr int64_t kSlots = 8;

// dst[k] += sum over partials (consecutive blocks of len) in order.
template <class T>
void sum_partials(T* dst, const std::vector<T>& parts, int64_t len) {
  if (!dst || len == 0) return;
  for (size_t o = 0; o + (size_t)len <= parts.size(); o += (size_t)len)
    for (int64_t k = 0; k < len; ++k) dst[k] += parts[o + k];
}

// The backward's start, 2D and 3D: zero the gradients asked for (x_size: one input channel's
// elements); false when there is nothing more to compute (out_pixels: one output channel's).
template <class T>
bool zero_grads(const GdProblem<T>& p, int64_t x_size, int64_t out_pixels, T* gx, T* galpha, T* gf) {
  const int64_t J = p.Ci * p.S * p.M;
  if (gx) std::fill_n(gx, p.N * p.Ci * x_size, T(0));
  if (galpha) std::fill_n(galpha, p.Co * J, T(0));
  if (gf) std::fill_n(gf, p.S * p.O1 * p.K, T(0));
  return p.N != 0 && out_pixels != 0 && J != 0 && (gx || galpha || gf);
}

// One thread's buffers for a band of n = J x P basis responses: Z and its transpose Zt (galpha),
// and dZ (gx, tap gradients).
template <class T>
struct BandBuffers {
  std::vector<T> Z, Zt, dZ;
  BandBuffers(int64_t n, bool galpha, bool need_dZ)
      : Z(galpha ? (size_t)n : 0), Zt(galpha ? (size_t)n : 0), dZ(need_dZ ? (size_t)n : 0) {}
  // ga (Co x J) += gout band (Co x P, rows ld apart) Z^T: Z transposed first so the GEMM reads rows.
  void add_galpha(int64_t Co, int64_t J, int64_t P, const T* go, int64_t ld, T* ga) {
    for (int64_t j = 0; j < J; ++j)
      for (int64_t k = 0; k < P; ++k) Zt[k * J + j] = Z[j * P + k];
    gemm(Co, J, P, go, ld, 1, Zt.data(), J, ga, J, true);
  }
};

// One input row's share of the transposed row pass: dR rows of the O1 orders (m-th at
// dr + m*mstride) -> gx row (+=) and the x-role tap gradient gfi (+=; needs the padded x row).
template <class T>
void transposed_row(const GdProblem<T>& p, const T* xrow, const T* dr, int64_t mstride, int64_t s,
                    std::vector<T>& xp, std::vector<T>& gxp, T* gxrow, T* gfi) {
  const int64_t Wp = (p.Wo - 1) * p.stride + p.K;
  if (gfi)
    for (int64_t c = 0; c < Wp; ++c) {
      const int64_t xc = c - p.pad;
      xp[c] = (xc >= 0 && xc < p.W) ? xrow[xc] : T(0);
    }
  if (gxrow) std::fill(gxp.begin(), gxp.end(), T(0));
  for (int64_t m = 0; m < p.O1; ++m) {
    const T* d = dr + m * mstride;
    const T* fm = p.f + (s * p.O1 + m) * p.K;
    if (gxrow) corr_rows_t(1, p.Wo, gxp.data(), 0, 0, p.stride, fm, p.K, d, p.Wo);
    if (gfi) corr_rows_gf(1, p.Wo, xp.data(), 0, 0, p.stride, p.K, d, p.Wo, gfi + (s * p.O1 + m) * p.K);
  }
  if (gxrow)
    for (int64_t c = 0; c < Wp; ++c) {
      const int64_t xc = c - p.pad;
      if (xc >= 0 && xc < p.W) gxrow[xc] += gxp[c];
    }
}

template <class T>
void forward2d(const GdProblem<T>& p, T* out, int nthreads) {
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
void backward2d(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf,
                            int nthreads) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Wp = (p.Wo - 1) * st + p.K;
  const int64_t J = p.Ci * p.S * p.M, HWo = p.Ho * p.Wo;
  const int64_t nf = p.S * p.O1 * p.K;
  if (!zero_grads(p, p.H * p.W, HWo, gx, galpha, gf)) return;
  const bool need_R = galpha || gf, need_dZ = gx || gf;
  const int64_t Tt = tile_rows(p.Ho, p.Wo, p.K, st, true);
  const int64_t ntiles = simd::cdiv(p.Ho, Tt);
  const size_t rsize = (size_t)(p.Ci * p.S * p.O1 * Hp * p.Wo);
  std::vector<T> R(need_R ? rsize : 0), dR(need_dZ ? rsize : 0);
  // Deterministic reductions: tiles of one colour go to a fixed number of slots (slot k owns
  // tiles colour + 2k, colour + 2(k + nslot), ...; one thread per slot), the x-role tap gradient
  // to one partial per input channel; all partials are summed in index order at the end. No
  // result depends on the thread count.
  const int64_t nslot = std::min<int64_t>(kSlots, simd::cdiv(ntiles, 2));
  std::vector<T> ga_slot(galpha ? (size_t)(nslot * p.Co * J) : 0), gf_slot(gf ? (size_t)(nslot * nf) : 0);
  std::vector<T> gf_chan(gf ? (size_t)(p.Ci * nf) : 0);
#pragma omp parallel num_threads(threads_for(nthreads))
  {
    std::vector<T> xp, gxp((size_t)Wp);
    BandBuffers<T> bb(J * Tt * p.Wo, galpha != nullptr, need_dZ);
    for (int64_t n = 0; n < p.N; ++n) {
      const T* go = gout + n * p.Co * HWo;
      if (need_R) row_pass(p, n, R.data(), xp);
      if (need_dZ) {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < (int64_t)rsize; ++c) dR[c] = T(0);
      }
      for (int color = 0; color < 2; ++color) {
#pragma omp for schedule(static)
        for (int64_t slot = 0; slot < nslot; ++slot) {
          T* ga = galpha ? ga_slot.data() + slot * p.Co * J : nullptr;
          T* gft = gf ? gf_slot.data() + slot * nf : nullptr;
          for (int64_t tile = color + 2 * slot; tile < ntiles; tile += 2 * nslot) {
            const int64_t t0 = tile * Tt, tn = std::min(Tt, p.Ho - t0), P = tn * p.Wo;
            if (galpha) {
              col_pass(p, R.data(), t0, tn, bb.Z.data());
              bb.add_galpha(p.Co, J, P, go + t0 * p.Wo, HWo, ga);
            }
            if (!need_dZ) continue;
            // dZ (J x P) = A^T (J x Co) gout_tile (Co x P)
            gemm(J, P, p.Co, p.A, 1, J, go + t0 * p.Wo, HWo, bb.dZ.data(), P, false);
            for (int64_t i = 0; i < p.Ci; ++i)
              for (int64_t s = 0; s < p.S; ++s)
                for (int64_t b = 0; b < p.M; ++b) {
                  const int64_t pp = p.pq[2 * b], q = p.pq[2 * b + 1];
                  const int64_t off = ((i * p.S + s) * p.O1 + pp) * Hp * p.Wo + t0 * st * p.Wo;
                  const T* dz = bb.dZ.data() + ((i * p.S + s) * p.M + b) * P;
                  if (gf)
                    corr_rows_gf(tn, p.Wo, R.data() + off, p.Wo, st, 1, p.K, dz, p.Wo, gft + (s * p.O1 + q) * p.K);
                  corr_rows_t(tn, p.Wo, dR.data() + off, p.Wo, st, 1, p.f + (s * p.O1 + q) * p.K, p.K, dz, p.Wo);
                }
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
        T* gfi = gf ? gf_chan.data() + i * nf : nullptr;
        for (int64_t s = 0; s < p.S; ++s) {
          const T* dRis = dR.data() + (i * p.S + s) * p.O1 * Hp * p.Wo;
          for (int64_t r = 0; r < Hp; ++r) {
            const int64_t y = r - p.pad;
            if (y < 0 || y >= p.H) continue;
            transposed_row(p, xi + y * p.W, dRis + r * p.Wo, Hp * p.Wo, s, xp, gxp, gxi ? gxi + y * p.W : nullptr,
                           gfi);
          }
        }
      }
    }
  }
  sum_partials(galpha, ga_slot, p.Co * J);
  sum_partials(gf, gf_slot, nf);
  sum_partials(gf, gf_chan, nf);
}

// ---------------------------------------------------------------------------------------------
// 3D: x (N, Ci, D, H, W), pq (M, 3) rows (p, q, t): g_p along x, g_q along y, g_t along z.
//   pass 1 (x)  R1[i,s,p](Dp, Hp, Wo)   every padded (z, y) row            (Ci*S*(order+1) maps)
//   pass 2 (y)  R2[i,s,c](Dp, Ho, Wo)   one per distinct pair c = (p, q)   (Ci*S*M2 maps)
//   pass 3 (z)  per tile (output slice zo, band of output rows): Z[j] = f[s,t] (*)_z R2[i,s,c(j)],
//               out(:, tile) = A Z, so the J = Ci*S*M3 basis maps exist one tile at a time.
// Backward: tiles of one band (all zo, in order) run on one thread, so the z-transposed scatter
// into dR2 never races (bands are disjoint in y); then the y- and x-transposed passes per map.
// ---------------------------------------------------------------------------------------------

// The distinct (p, q) pairs of the 3D basis and, per member b, its pair index and t.
struct Pairs3 {
  std::vector<int64_t> p, q, of_b, t;
};

template <class T>
Pairs3 pairs3(const GdProblem<T>& pr) {
  Pairs3 r;
  for (int64_t b = 0; b < pr.M; ++b) {
    const int64_t p = pr.pq[3 * b], q = pr.pq[3 * b + 1];
    int64_t c = 0;
    while (c < (int64_t)r.p.size() && !(r.p[c] == p && r.q[c] == q)) ++c;
    if (c == (int64_t)r.p.size()) r.p.push_back(p), r.q.push_back(q);
    r.of_b.push_back(c);
    r.t.push_back(pr.pq[3 * b + 2]);
  }
  return r;
}

// Passes 1 and 2 of image n: R1 (Ci, S, O1, Dp, Hp, Wo) then R2 (Ci, S, M2, Dp, Ho, Wo).
template <class T>
void xy_passes(const GdProblem<T>& p, const Pairs3& pr, int64_t n, T* R1, T* R2, std::vector<T>& xp) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Dp = (p.Do - 1) * st + p.K;
  const int64_t Wp = (p.Wo - 1) * st + p.K, M2 = (int64_t)pr.p.size(), plane = Hp * p.Wo;
  xp.assign(Wp, T(0));
#pragma omp for collapse(2) schedule(static)
  for (int64_t i = 0; i < p.Ci; ++i) {
    for (int64_t s = 0; s < p.S; ++s) {
      const T* xi = p.x + (n * p.Ci + i) * p.D * p.H * p.W;
      T* Ris = R1 + (i * p.S + s) * p.O1 * Dp * plane;
      for (int64_t r = 0; r < Dp * Hp; ++r) {
        const int64_t z = r / Hp - p.pad, y = r % Hp - p.pad;
        if (z < 0 || z >= p.D || y < 0 || y >= p.H) {
          for (int64_t m = 0; m < p.O1; ++m) std::fill_n(Ris + m * Dp * plane + r * p.Wo, p.Wo, T(0));
          continue;
        }
        for (int64_t c = 0; c < Wp; ++c) {
          const int64_t xc = c - p.pad;
          xp[c] = (xc >= 0 && xc < p.W) ? xi[(z * p.H + y) * p.W + xc] : T(0);
        }
        for (int64_t m = 0; m < p.O1; ++m)
          corr_rows(1, p.Wo, xp.data(), 0, 0, st, p.f + (s * p.O1 + m) * p.K, p.K, Ris + m * Dp * plane + r * p.Wo,
                    p.Wo);
      }
    }
  }
#pragma omp for collapse(3) schedule(static)
  for (int64_t i = 0; i < p.Ci; ++i)
    for (int64_t s = 0; s < p.S; ++s)
      for (int64_t c = 0; c < M2; ++c) {
        const T* in = R1 + ((i * p.S + s) * p.O1 + pr.p[c]) * Dp * plane;
        T* o = R2 + ((i * p.S + s) * M2 + c) * Dp * p.Ho * p.Wo;
        for (int64_t d = 0; d < Dp; ++d)
          corr_rows(p.Ho, p.Wo, in + d * plane, p.Wo, st, 1, p.f + (s * p.O1 + pr.q[c]) * p.K, p.K,
                    o + d * p.Ho * p.Wo, p.Wo);
      }
}

// Pass 3 of one tile (output slice zo, rows y0 .. y0+yn) into Z (J x yn*Wo).
template <class T>
void z_pass(const GdProblem<T>& p, const Pairs3& pr, const T* R2, int64_t zo, int64_t y0, int64_t yn, T* Z) {
  const int64_t Dp = (p.Do - 1) * p.stride + p.K, M2 = (int64_t)pr.p.size(), HWo = p.Ho * p.Wo;
  const int64_t P = yn * p.Wo;
  for (int64_t i = 0; i < p.Ci; ++i)
    for (int64_t s = 0; s < p.S; ++s)
      for (int64_t b = 0; b < p.M; ++b) {
        const T* in = R2 + ((i * p.S + s) * M2 + pr.of_b[b]) * Dp * HWo + zo * p.stride * HWo + y0 * p.Wo;
        corr_rows(1, P, in, HWo, 0, 1, p.f + (s * p.O1 + pr.t[b]) * p.K, p.K, Z + ((i * p.S + s) * p.M + b) * P, P);
      }
}

// Output rows per band: about 1024 pixels a tile, and (backward) at least kSlots bands so that
// both threads get work on small volumes.
int64_t band_rows(int64_t Ho, int64_t Wo, bool backward) {
  int64_t t = std::max<int64_t>(1, (1024 + Wo - 1) / std::max<int64_t>(Wo, 1));
  if (backward) t = std::min(t, std::max<int64_t>(1, simd::cdiv(Ho, kSlots)));
  return std::min(std::max<int64_t>(Ho, 1), t);
}

template <class T>
void forward3d(const GdProblem<T>& p, T* out, int nthreads) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Dp = (p.Do - 1) * st + p.K;
  const int64_t J = p.Ci * p.S * p.M, HWo = p.Ho * p.Wo, DHWo = p.Do * HWo;
  if (p.N == 0 || DHWo == 0) return;
  if (J == 0) {
    std::fill_n(out, p.N * p.Co * DHWo, T(0));
    return;
  }
  const Pairs3 pr = pairs3(p);
  const int64_t M2 = (int64_t)pr.p.size();
  const int64_t yn = band_rows(p.Ho, p.Wo, false), nb = simd::cdiv(p.Ho, yn);
  std::vector<T> R1((size_t)(p.Ci * p.S * p.O1 * Dp * Hp * p.Wo)), R2((size_t)(p.Ci * p.S * M2 * Dp * HWo));
#pragma omp parallel num_threads(threads_for(nthreads))
  {
    std::vector<T> xp, Z((size_t)(J * yn * p.Wo));
    for (int64_t n = 0; n < p.N; ++n) {
      xy_passes(p, pr, n, R1.data(), R2.data(), xp);  // ends with an implicit barrier
#pragma omp for schedule(static)
      for (int64_t u = 0; u < p.Do * nb; ++u) {
        const int64_t zo = u / nb, y0 = (u % nb) * yn, yc = std::min(yn, p.Ho - y0), P = yc * p.Wo;
        z_pass(p, pr, R2.data(), zo, y0, yc, Z.data());
        gemm(p.Co, P, J, p.A, J, 1, Z.data(), P, out + n * p.Co * DHWo + zo * HWo + y0 * p.Wo, DHWo, false);
      }
    }
  }
}

template <class T>
void backward3d(const GdProblem<T>& p, const T* gout, T* gx, T* galpha, T* gf, int nthreads) {
  const int64_t st = p.stride, Hp = (p.Ho - 1) * st + p.K, Dp = (p.Do - 1) * st + p.K;
  const int64_t Wp = (p.Wo - 1) * st + p.K;
  const int64_t J = p.Ci * p.S * p.M, HWo = p.Ho * p.Wo, DHWo = p.Do * HWo, nf = p.S * p.O1 * p.K;
  if (!zero_grads(p, p.D * p.H * p.W, DHWo, gx, galpha, gf)) return;
  const bool need_dZ = gx || gf;
  const Pairs3 pr = pairs3(p);
  const int64_t M2 = (int64_t)pr.p.size(), plane = Hp * p.Wo;
  const int64_t yn = band_rows(p.Ho, p.Wo, true), nb = simd::cdiv(p.Ho, yn);
  const int64_t nslot = std::min<int64_t>(kSlots, nb);
  const size_t r1size = (size_t)(p.Ci * p.S * p.O1 * Dp * plane), r2size = (size_t)(p.Ci * p.S * M2 * Dp * HWo);
  std::vector<T> R1(r1size), R2(r2size), dR1(need_dZ ? r1size : 0), dR2(need_dZ ? r2size : 0);
  // Deterministic partials (summed in index order): per band slot (galpha, z-role taps), per
  // (i, s, p) map (y-role taps), per input channel (x-role taps).
  std::vector<T> ga_slot(galpha ? (size_t)(nslot * p.Co * J) : 0), gf_slot(gf ? (size_t)(nslot * nf) : 0);
  std::vector<T> gf_map(gf ? (size_t)(p.Ci * p.S * p.O1 * nf) : 0), gf_chan(gf ? (size_t)(p.Ci * nf) : 0);
#pragma omp parallel num_threads(threads_for(nthreads))
  {
    std::vector<T> xp, gxp((size_t)Wp);
    BandBuffers<T> bb(J * yn * p.Wo, galpha != nullptr, need_dZ);
    for (int64_t n = 0; n < p.N; ++n) {
      const T* go = gout + n * p.Co * DHWo;
      xy_passes(p, pr, n, R1.data(), R2.data(), xp);
      if (need_dZ) {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < (int64_t)r2size; ++c) dR2[c] = T(0);
      }
#pragma omp for schedule(static)
      for (int64_t slot = 0; slot < nslot; ++slot) {
        T* ga = galpha ? ga_slot.data() + slot * p.Co * J : nullptr;
        T* gft = gf ? gf_slot.data() + slot * nf : nullptr;
        for (int64_t band = slot; band < nb; band += nslot) {
          const int64_t y0 = band * yn, yc = std::min(yn, p.Ho - y0), P = yc * p.Wo;
          for (int64_t zo = 0; zo < p.Do; ++zo) {
            const T* gt = go + zo * HWo + y0 * p.Wo;
            if (galpha) {
              z_pass(p, pr, R2.data(), zo, y0, yc, bb.Z.data());
              bb.add_galpha(p.Co, J, P, gt, DHWo, ga);
            }
            if (!need_dZ) continue;
            gemm(J, P, p.Co, p.A, 1, J, gt, DHWo, bb.dZ.data(), P, false);
            for (int64_t i = 0; i < p.Ci; ++i)
              for (int64_t s = 0; s < p.S; ++s)
                for (int64_t b = 0; b < p.M; ++b) {
                  const int64_t off = ((i * p.S + s) * M2 + pr.of_b[b]) * Dp * HWo + zo * st * HWo + y0 * p.Wo;
                  const T* dz = bb.dZ.data() + ((i * p.S + s) * p.M + b) * P;
                  const int64_t ft = (s * p.O1 + pr.t[b]) * p.K;
                  if (gf) corr_rows_gf(1, P, R2.data() + off, HWo, 0, 1, p.K, dz, P, gft + ft);
                  corr_rows_t(1, P, dR2.data() + off, HWo, 0, 1, p.f + ft, p.K, dz, P);
                }
          }
        }
      }
      if (!need_dZ) continue;
      // y-transposed pass: one thread per row map (i, s, p), over every pair (p, q).
#pragma omp for collapse(3) schedule(static)
      for (int64_t i = 0; i < p.Ci; ++i)
        for (int64_t s = 0; s < p.S; ++s)
          for (int64_t pp = 0; pp < p.O1; ++pp) {
            const int64_t mo = ((i * p.S + s) * p.O1 + pp) * Dp * plane;
            T* gfm = gf ? gf_map.data() + ((i * p.S + s) * p.O1 + pp) * nf : nullptr;
            std::fill_n(dR1.data() + mo, Dp * plane, T(0));
            for (int64_t c = 0; c < M2; ++c) {
              if (pr.p[c] != pp) continue;
              const int64_t fq = (s * p.O1 + pr.q[c]) * p.K;
              const T* d2 = dR2.data() + ((i * p.S + s) * M2 + c) * Dp * HWo;
              for (int64_t d = 0; d < Dp; ++d) {
                if (gf) corr_rows_gf(p.Ho, p.Wo, R1.data() + mo + d * plane, p.Wo, st, 1, p.K, d2 + d * HWo, p.Wo,
                                     gfm + fq);
                corr_rows_t(p.Ho, p.Wo, dR1.data() + mo + d * plane, p.Wo, st, 1, p.f + fq, p.K, d2 + d * HWo, p.Wo);
              }
            }
          }
      // x-transposed pass: gx and the x-role taps, one thread per input channel.
      xp.assign((size_t)Wp, T(0));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < p.Ci; ++i) {
        const T* xi = p.x + (n * p.Ci + i) * p.D * p.H * p.W;
        T* gxi = gx ? gx + (n * p.Ci + i) * p.D * p.H * p.W : nullptr;
        T* gfi = gf ? gf_chan.data() + i * nf : nullptr;
        for (int64_t s = 0; s < p.S; ++s) {
          const T* dRis = dR1.data() + (i * p.S + s) * p.O1 * Dp * plane;
          for (int64_t r = 0; r < Dp * Hp; ++r) {
            const int64_t z = r / Hp - p.pad, y = r % Hp - p.pad;
            if (z < 0 || z >= p.D || y < 0 || y >= p.H) continue;
            const int64_t row = (z * p.H + y) * p.W;
            transposed_row(p, xi + row, dRis + r * p.Wo, Dp * plane, s, xp, gxp, gxi ? gxi + row : nullptr, gfi);
          }
        }
      }
    }
  }
  sum_partials(galpha, ga_slot, p.Co * J);
  sum_partials(gf, gf_slot, nf);
  sum_partials(gf, gf_map, nf);
  sum_partials(gf, gf_chan, nf);
}
