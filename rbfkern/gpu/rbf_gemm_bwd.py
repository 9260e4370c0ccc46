"""Triton backward of the RBF op for the none / diag metrics in the GEMM form, on tensor cores.

With G = grad_act df/dr2 + grad_r2 per pair and x' = x - mu, c' = c - mu (mu: the centres' mean,
as in the forward), the gradients are GEMMs of G:

    gx  = 2 w x' (G 1)  - 2 G (w c')           (per-centre w: 2 x' (G W) - 2 G (W c'))
    S_j = sum_n G (x - c_j)  = G^T x' - c'_j (1^T G)              gc = -2 w_j S_j
    T_j = sum_n G (x - c_j)^2 = G^T x'^2 - 2 c'_j G^T x' + c'^2_j (1^T G)    gw = T (summed for a shared w)

run as 3xTF32 tl.dot. Their rounding errs by a few units of |x'| + |c'| per pair, not of |x - c|:
a pair's relative error grows like (|x'| + |c'|)^2 / r2. So a pair is *near* when
    r2 < KAPPA (X_n + C_j)          (X_n = sum_d w x'^2, C_j = sum_d w_j c'^2; a per-centre w_j
                                     bounds X_nj by max_d(w_j) |x'|^2)
or r2 is not finite, and its terms leave the GEMMs and are added in the difference form. A far
pair's error is then at most 2 / KAPPA = 8 times the GEMM's relative error of its own term
(T: X + C + 2 sqrt(X C) <= 2 (X + C) <= 8 r2; gx and S: sqrt(2 / KAPPA)).

Near pairs are few per row (a row near a handful of centres), many per centre (a cluster), so:
  _bwd_rownorm_kernel  KAPPA X_n per row, stored once (every near test reads the same bits)
  _bwd_prep_kernel   per row block: the row's near centres in order (up to K; more makes the row
                     an *overflow* row)
  _bwd_near_x_kernel [BN rows, BD features]: 2 G w (x - c) over a row's near pairs (float32): the
                     listed ones one slot at a time, an overflow row's among every centre
  _bwd_gx_kernel     [BN rows, BD features]: the GEMMs over far pairs, plus the near part
  _bwd_c_kernel      [BC centres, BD features] x row splits: the GEMMs over far pairs, the partial
                     S and T finished in-tile; the sigma partials from every pair
  _bwd_near_c_kernel per centre: its listed near pairs (the list sorted by centre, stably) and the
                     near pairs of the overflow rows, in the difference form
No atomics: every sum runs in a fixed order, so the gradients are deterministic. No host sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch
from .rbf import _load_g, _n_split, _np2, _row_col_block, _split_block
from .rbf_gemm import _rbf_gemm_panel_kernel, _shifted

# Pairs with r2 < KAPPA (X_n + C_j) are near.
KAPPA = 0.25
_FLT_MAX = tl.constexpr(3.4028234663852886e38)
# Near centres listed per row; a row with more is an overflow row.
SLOTS = 8
# Test hooks: which pairs are near ("auto": the test above, "all", "none"); a list that collects each
# call's near count per row (a copy: it costs a kernel, no sync).
NEAR = "auto"
COUNTS = None


@triton.jit
def _near(b_r2, b_iw, b_xk, b_ck, METRIC: tl.constexpr):
    """Near pairs (r2 as float32; the other operands broadcast against it): not (r2 [/ max w_j] >=
    xk_n + ck_j) or r2 not finite. One product, one sum and the comparisons, on the same stored
    operands, so that every kernel draws the same line."""
    if METRIC == 2:
        b_r = b_r2 * b_iw
    else:
        b_r = b_r2
    return ((b_r >= b_xk + b_ck) & (b_r2 <= _FLT_MAX)) == 0


@triton.jit
def _finite_or_zero(b_v):
    """v where finite, else 0: a GEMM operand of a row or centre whose every pair is near (its r2
    not finite) must not turn the GEMM's 0 * inf into NaN for the other pairs."""
    return tl.where(tl.abs(b_v) <= _FLT_MAX, b_v, 0.)


@triton.jit
def _bwd_rownorm_kernel(x, mu, w, xk, N, D, kappa, METRIC: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    # xk = KAPPA X_n, stored once: every kernel's near test reads these same bits
    i_n = tl.program_id(0)
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN)
    m_n = o_n < N
    b_X = tl.zeros([BN], dtype=tl.float32)
    for i_d in range(0, D, BD):
        o_d = i_d + tl.arange(0, BD)
        m_d = o_d < D
        b_xs = _shifted(x, mu, o_n, o_d, m_n, m_d, D)
        b_sq = b_xs * b_xs
        if METRIC == 1:
            b_sq = b_sq * tl.load(w + o_d, mask=m_d, other=0).to(tl.float32)[None, :]
        b_X += tl.sum(b_sq, 1)
    tl.store(xk + o_n, tl.cast(kappa, tl.float32) * b_X, mask=m_n)


@triton.jit
def _bwd_prep_kernel(r2, iw, ck, xk, nidx, ncnt, N, C, METRIC: tl.constexpr, K: tl.constexpr,
                     BN: tl.constexpr, BC: tl.constexpr):
    # each row's near centres, in order, in its K slots of nidx; their count (> K: an overflow row)
    i_n = tl.program_id(0)
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN)
    m_n = o_n < N
    b_xk = tl.load(xk + o_n, mask=m_n, other=0)
    b_cnt = tl.zeros([BN], dtype=tl.int32)
    for i_c in range(0, C, BC):
        o_c = i_c + tl.arange(0, BC)
        m_c = o_c < C
        m_nc = m_n[:, None] & m_c[None, :]
        b_r2 = tl.load(r2 + o_n[:, None] * C + o_c[None, :], mask=m_nc, other=0).to(tl.float32)
        b_iw = tl.load(iw + o_c, mask=m_c, other=1)
        b_ck = tl.load(ck + o_c, mask=m_c, other=0)
        i_near = (_near(b_r2, b_iw[None, :], b_xk[:, None], b_ck[None, :], METRIC) & m_nc).to(tl.int32)
        # slot of each near centre: the row's count so far plus its rank in the chunk
        i_slot = b_cnt[:, None] + tl.cumsum(i_near, 1) - i_near
        tl.store(nidx + o_n[:, None] * K + i_slot, o_c[None, :] + 0 * i_slot,
                 mask=(i_near != 0) & (i_slot < K))
        b_cnt += tl.sum(i_near, 1)
    tl.store(ncnt + o_n, b_cnt, mask=m_n)


@triton.jit
def _g_near(sig, prm, r2, ga, gr, iw, ck, o_n, o_c, m_n, m_c, b_xk, C, kind,
            HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, METRIC: tl.constexpr):
    """G, grad_act df/dsigma and the near mask of a [rows, centres] tile (zero / false outside)."""
    return _g_pairs(sig, prm, r2, ga, gr, iw, ck, o_n[:, None], o_c[None, :], m_n[:, None] & m_c[None, :],
                    b_xk[:, None], C, kind, HAS_GA, HAS_GR, METRIC)


@triton.jit
def _g_pairs(sig, prm, r2, ga, gr, iw, ck, o_n, o_j, m, b_xk, C, kind,
             HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, METRIC: tl.constexpr):
    """G, grad_act df/dsigma and the near mask of the pairs (o_n, o_j) (broadcast together; b_xk
    shaped like o_n) where m: zero / false elsewhere."""
    o_nc = o_n * C + o_j
    b_r2 = tl.load(r2 + o_nc, mask=m, other=1).to(tl.float32)
    b_s = tl.load(sig + o_j, mask=m, other=1).to(tl.float32)
    a = tl.load(prm).to(tl.float32)
    b_g, b_gs = _load_g(ga, gr, o_nc, m, b_r2, b_s, a, kind, HAS_GA, HAS_GR, tl.float32)
    b_iw = tl.load(iw + o_j, mask=m, other=1)
    b_ck = tl.load(ck + o_j, mask=m, other=0)
    return b_g, b_gs, _near(b_r2, b_iw, b_xk, b_ck, METRIC) & m


@triton.jit
def _bwd_near_x_kernel(x, c, w, sig, prm, r2, ga, gr, iw, ck, xk, nidx, ncnt, gxn, N, C, D, stride_wc, kind,
                       HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, METRIC: tl.constexpr, K: tl.constexpr,
                       BN: tl.constexpr, BD: tl.constexpr):
    # gxn = 2 sum over a row's near pairs of G w (x - c) (float32): its listed centres one slot at a
    # time; an overflow row's near centres among all, in a block that has one
    o_n, o_d, m_n, m_d = _row_col_block(N, D, BN, BD)
    m_x = m_n[:, None] & m_d[None, :]
    b_x = tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m_x, other=0).to(tl.float32)
    b_xk = tl.load(xk + o_n, mask=m_n, other=0)
    b_cnt = tl.load(ncnt + o_n, mask=m_n, other=0)
    m_ovf = m_n & (b_cnt > K)
    b_acc = tl.zeros([BN, BD], dtype=tl.float32)
    for i_k in range(0, K):
        m_k = m_n & (b_cnt <= K) & (i_k < b_cnt)
        o_j = tl.load(nidx + o_n * K + i_k, mask=m_k, other=0).to(tl.int64)
        # a listed pair is near by construction: no test
        b_g, b_gs, m_j = _g_pairs(sig, prm, r2, ga, gr, iw, ck, o_n, o_j, m_k, b_xk, C, kind,
                                  HAS_GA, HAS_GR, METRIC)
        b_acc += _diff_term(b_x, c, w, o_j, o_d, m_k, m_d, stride_wc, D, b_g, METRIC)
    if tl.max(m_ovf.to(tl.int32), 0) > 0:
        for i_j in range(0, C):
            o_j = o_n * 0 + i_j
            b_g, b_gs, m_j = _g_pairs(sig, prm, r2, ga, gr, iw, ck, o_n, o_j, m_ovf, b_xk, C, kind,
                                      HAS_GA, HAS_GR, METRIC)
            b_acc += _diff_term(b_x, c, w, o_j, o_d, m_j, m_d, stride_wc, D, b_g, METRIC)
    tl.store(gxn + o_n[:, None] * D + o_d[None, :], 2 * b_acc, mask=m_x)


@triton.jit
def _bwd_gx_kernel(x, mu, w, pnl, sig, prm, r2, ga, gr, iw, ck, xk, gxn, gx, N, C, D, stride_wc, kind,
                   HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, METRIC: tl.constexpr,
                   BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # gx = the GEMMs over far pairs + gxn (the near pairs)
    o_n, o_d, m_n, m_d = _row_col_block(N, D, BN, BD)
    m_x = m_n[:, None] & m_d[None, :]
    b_xk = tl.load(xk + o_n, mask=m_n, other=0)
    b_cross = tl.zeros([BN, BD], dtype=tl.float32)  # sum_j G (-2 w_j c'_j)
    if METRIC == 2:
        b_gw = tl.zeros([BN, BD], dtype=tl.float32)  # sum_j G w_j
    else:
        b_rs = tl.zeros([BN], dtype=tl.float32)  # sum_j G
    for i_c in range(0, C, BC):
        o_c = i_c + tl.arange(0, BC).to(tl.int64)
        m_c = o_c < C
        b_g, b_gs, m_near = _g_near(sig, prm, r2, ga, gr, iw, ck, o_n, o_c, m_n, m_c, b_xk, C, kind,
                                    HAS_GA, HAS_GR, METRIC)
        b_gf = tl.where(m_near, 0., b_g)
        m_cd = m_c[:, None] & m_d[None, :]
        b_b = _finite_or_zero(tl.load(pnl + o_c[:, None] * D + o_d[None, :], mask=m_cd, other=0))
        b_cross = tl.dot(b_gf, b_b, b_cross, input_precision="tf32x3", out_dtype=tl.float32)
        if METRIC == 2:
            b_w = _finite_or_zero(tl.load(w + o_c[:, None] * stride_wc + o_d[None, :], mask=m_cd, other=0)
                                  .to(tl.float32))
            b_gw = tl.dot(b_gf, b_w, b_gw, input_precision="tf32x3", out_dtype=tl.float32)
        else:
            b_rs += tl.sum(b_gf, 1)
    b_xs = _finite_or_zero(_shifted(x, mu, o_n, o_d, m_n, m_d, D))
    if METRIC == 2:
        b_gx = b_xs * b_gw
    elif METRIC == 1:
        b_gx = _finite_or_zero(tl.load(w + o_d, mask=m_d, other=0).to(tl.float32))[None, :] * (b_xs * b_rs[:, None])
    else:
        b_gx = b_xs * b_rs[:, None]
    b_gx = 2 * b_gx + b_cross + tl.load(gxn + o_n[:, None] * D + o_d[None, :], mask=m_x, other=0)
    tl.store(gx + o_n[:, None] * D + o_d[None, :], b_gx.to(gx.dtype.element_ty), mask=m_x)


@triton.jit
def _diff_term(b_x, c, w, o_j, o_d, m_p, m_d, stride_wc, D, b_g, METRIC: tl.constexpr):
    """G_n w_j (x_n - c_j) for one centre j = o_j[n] per row where m_p (0 elsewhere; where m_p holds,
    even a zero G times a non-finite difference, as the difference form gives)."""
    m = m_p[:, None] & m_d[None, :]
    b_c = tl.load(c + o_j[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    b_t = tl.where(m, b_x - b_c, 0.)
    if METRIC == 2:
        b_t = b_t * tl.load(w + o_j[:, None] * stride_wc + o_d[None, :], mask=m, other=0).to(tl.float32)
    elif METRIC == 1:
        b_t = b_t * tl.load(w + o_d, mask=m_d, other=0).to(tl.float32)[None, :]
    return b_g[:, None] * b_t


@triton.jit
def _bwd_c_kernel(x, c, mu, sig, prm, r2, ga, gr, iw, ck, xk, s_out, t_out, gs_out, N, C, D, n_per, n_split,
                  kind, HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, NEED_T: tl.constexpr, NEED_SIG: tl.constexpr,
                  METRIC: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # partials over row split i_s (far pairs): S = G^T x' - c' (1^T G), T = G^T x'^2 - 2 c' G^T x' + c'^2 (1^T G);
    # gsig over every pair (written by the i_d == 0 programs)
    i_s, i_d, o_c, o_d, m_c, m_d = _split_block(C, D, n_split, tl.cdiv(D, BD), BC, BD)
    m_cd = m_c[:, None] & m_d[None, :]
    b_S = tl.zeros([BC, BD], dtype=tl.float32)
    b_T = tl.zeros([BC, BD], dtype=tl.float32)
    b_col = tl.zeros([BC], dtype=tl.float32)
    b_sig = tl.zeros([BC], dtype=tl.float32)
    n_lo = i_s * n_per
    n_hi = tl.minimum(n_lo + n_per, N)
    for i_n in range(n_lo, n_hi, BN):
        o_n = i_n + tl.arange(0, BN).to(tl.int64)
        m_n = o_n < n_hi
        b_xk = tl.load(xk + o_n, mask=m_n, other=0)
        b_g, b_gs, m_near = _g_near(sig, prm, r2, ga, gr, iw, ck, o_n, o_c, m_n, m_c, b_xk, C, kind,
                                    HAS_GA, HAS_GR, METRIC)
        b_sig += tl.sum(b_gs, 0)
        b_gf = tl.trans(tl.where(m_near, 0., b_g))
        b_xs = _finite_or_zero(_shifted(x, mu, o_n, o_d, m_n, m_d, D))
        b_S = tl.dot(b_gf, b_xs, b_S, input_precision="tf32x3", out_dtype=tl.float32)
        if NEED_T:
            b_T = tl.dot(b_gf, _finite_or_zero(b_xs * b_xs), b_T, input_precision="tf32x3", out_dtype=tl.float32)
        b_col += tl.sum(b_gf, 1)
    b_cs = _finite_or_zero(_shifted(c, mu, o_c, o_d, m_c, m_d, D))
    b_cc = b_cs * b_col[:, None]
    o_cd = (i_s.to(tl.int64) * C + o_c[:, None]) * D + o_d[None, :]
    tl.store(s_out + o_cd, b_S - b_cc, mask=m_cd)
    if NEED_T:
        tl.store(t_out + o_cd, b_T - b_cs * (2 * b_S - b_cc), mask=m_cd)
    if NEED_SIG:
        if i_d == 0:
            tl.store(gs_out + i_s.to(tl.int64) * C + o_c, b_sig, mask=m_c)


@triton.jit
def _bwd_near_c_kernel(x, c, sig, prm, r2, ga, gr, iw, ck, xk, perm, offs, ovf_rows, n_ovf, s_out, t_out,
                       N, C, D, kind, HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, NEED_T: tl.constexpr,
                       METRIC: tl.constexpr, K: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr):
    # S_j, T_j over centre j's near pairs: its segment of the sorted list, then the overflow rows
    i_p = tl.program_id(0)
    nb_d = tl.cdiv(D, BD)
    i_j, i_d = i_p // nb_d, i_p % nb_d
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_c = tl.load(c + i_j.to(tl.int64) * D + o_d, mask=m_d, other=0).to(tl.float32)
    o_j = tl.zeros([BV], dtype=tl.int64) + i_j
    b_S = tl.zeros([BD], dtype=tl.float32)
    b_T = tl.zeros([BD], dtype=tl.float32)
    e_lo = tl.load(offs + i_j)
    e_hi = tl.load(offs + i_j + 1)
    n_o = tl.load(n_ovf)
    # e counts the listed pairs, then (from e_hi) the overflow rows
    for i_e in range(e_lo, e_hi + n_o, BV):
        o_e = i_e + tl.arange(0, BV)
        m_l = o_e < e_hi
        m_o = (o_e >= e_hi) & (o_e < e_hi + n_o)
        o_n = tl.where(m_l, tl.load(perm + o_e, mask=m_l, other=0) // K,
                       tl.load(ovf_rows + (o_e - e_hi), mask=m_o, other=0))
        m_e = m_l | m_o
        b_xk = tl.load(xk + o_n, mask=m_e, other=0)
        b_g, b_gs, m_near = _g_pairs(sig, prm, r2, ga, gr, iw, ck, o_n, o_j, m_e, b_xk, C, kind,
                                     HAS_GA, HAS_GR, METRIC)
        # a listed pair is near by construction; an overflow row counts where it is near j
        m_p = m_l | m_near
        b_g = tl.where(m_p, b_g, 0.)
        m = m_p[:, None] & m_d[None, :]
        b_t = tl.where(m, tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
                       - b_c[None, :], 0.)
        b_gt = b_g[:, None] * b_t
        b_S += tl.sum(b_gt, 0)
        if NEED_T:
            b_T += tl.sum(b_gt * b_t, 0)
    o_cd = i_j.to(tl.int64) * D + o_d
    tl.store(s_out + o_cd, b_S, mask=m_d)
    if NEED_T:
        tl.store(t_out + o_cd, b_T, mask=m_d)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------

# The row-wise kernels without a GEMM: no pipelining, and a register cap; without it ptxas put
# 8-16 B in the stack of some variants at 96 registers (triton 3.6 / 3.9); with it, none.
_GATHER_OPTS = {"num_warps": 4, "num_stages": 1, "maxnreg": 128}


def pick_blocks(N, C, D, kernel):
    """Tiles, small for small shapes (the interpreter), at least 16 where tl.dot reads them. The
    GEMM kernels' tiles: the largest for which the aot report shows no spills on sm_90 under
    triton 3.6 and 3.8 (3.9 puts 8 B in the stack of one bfloat16 variant); to be tuned on the
    device."""
    n, c, d = _np2(N), _np2(C), _np2(D)
    if kernel == "prep":
        return dict(BN=min(n, 32), BC=min(c, 32), BD=min(d, 64)), _GATHER_OPTS
    if kernel == "gx":
        blk = dict(BN=min(max(n, 16), 64), BC=16, BD=min(max(d, 16), 64))
        return blk, {"num_warps": 8 if blk["BN"] * blk["BD"] >= 64 * 64 else 4, "num_stages": 1}
    if kernel == "c":
        return dict(BN=16, BC=min(max(c, 16), 32), BD=min(max(d, 16), 64)), {"num_warps": 4, "num_stages": 3}
    if kernel == "near_x":
        return dict(BN=min(n, 16), BD=min(d, 32)), _GATHER_OPTS
    if kernel == "near_c":
        return dict(BV=min(n, 32), BD=min(d, 64)), {"num_warps": 4}
    raise KeyError(kernel)


def _near_operands(centers, diag, metric, dev):
    """mu, the panel -2 w c' (float32 [C, D]) and the per-centre parts of the near test: 1 / max w_j
    (per-centre metric) and ck_j = KAPPA C_j [/ max w_j]; the NEAR hook moves every pair to one side."""
    C, D = centers.shape
    f32 = torch.float32
    mu = torch.mean(centers, 0, dtype=torch.float64)
    pnl = torch.empty((C, D), dtype=f32, device=dev)
    cn = torch.empty(C, dtype=f32, device=dev)
    spare = torch.empty(C, dtype=f32, device=dev)  # the panel's acceptance constants: not used here
    cnt = torch.empty(1, dtype=torch.int64, device=dev)
    BCp, BDp = min(_np2(C), 32), min(_np2(D), 32)
    launch(_rbf_gemm_panel_kernel)[(triton.cdiv(C, BCp),)](
        centers, diag if diag is not None else centers, mu, pnl, cn, spare, cnt, C, D, D if metric == 2 else 0,
        0.0, 0.0, 0.0, METRIC=metric, BC=BCp, BD=BDp, num_warps=4)
    if metric == 2:
        iw = 1.0 / diag.to(f32).amax(1)
        ck = (KAPPA * cn) * iw
    else:
        iw = torch.ones(C, dtype=f32, device=dev)
        ck = KAPPA * cn
    if NEAR != "auto":
        ck = torch.full_like(ck, float("inf") if NEAR == "all" else -float("inf"))
    return mu, pnl, iw, ck


def backward(p_ga, p_gr, flags, x, centers, diag, sigma, r2, kid, prm, gx, need_c, need_w, need_sig):
    """The none / diag backward in the GEMM form: fills gx (when given) and returns (gc, gw, gsigma)
    in float32 / the inputs' dtypes, None where not needed (gsigma None too when neither gc nor gw is:
    the caller's sigma-only kernel is cheaper)."""
    N, D = x.shape
    C = centers.shape[0]
    dev = x.device
    metric = 0 if diag is None else (2 if diag.dim() == 2 else 1)
    w = diag if diag is not None else centers
    stride_wc = D if metric == 2 else 0
    mu, pnl, iw, ck = _near_operands(centers, diag, metric, dev)
    xk = torch.empty(N, dtype=torch.float32, device=dev)
    nidx = torch.empty(N * SLOTS, dtype=torch.int32, device=dev)
    ncnt = torch.empty(N, dtype=torch.int32, device=dev)
    blk, opts = pick_blocks(N, C, D, "prep")
    launch(_bwd_rownorm_kernel)[(triton.cdiv(N, blk["BN"]),)](x, mu, w, xk, N, D, KAPPA, METRIC=metric,
                                                             BN=blk["BN"], BD=blk["BD"], **opts)
    launch(_bwd_prep_kernel)[(triton.cdiv(N, blk["BN"]),)](r2, iw, ck, xk, nidx, ncnt, N, C, METRIC=metric, K=SLOTS,
                                                          BN=blk["BN"], BC=blk["BC"], **opts)
    if COUNTS is not None:
        COUNTS.append(ncnt.clone())
    if gx is not None:
        gxn = torch.empty((N, D), dtype=torch.float32, device=dev)
        blk, opts = pick_blocks(N, C, D, "near_x")
        grid = (triton.cdiv(N, blk["BN"]) * triton.cdiv(D, blk["BD"]),)
        launch(_bwd_near_x_kernel)[grid](x, centers, w, sigma, prm, r2, p_ga, p_gr, iw, ck, xk, nidx, ncnt, gxn,
                                         N, C, D, stride_wc, kid, **flags, METRIC=metric, K=SLOTS, **blk, **opts)
        blk, opts = pick_blocks(N, C, D, "gx")
        grid = (triton.cdiv(N, blk["BN"]) * triton.cdiv(D, blk["BD"]),)
        launch(_bwd_gx_kernel)[grid](x, mu, w, pnl, sigma, prm, r2, p_ga, p_gr, iw, ck, xk, gxn, gx, N, C, D,
                                     stride_wc, kid, **flags, METRIC=metric, **blk, **opts)
    if not (need_c or need_w):
        return None, None, None
    return _centre_grads(p_ga, p_gr, flags, x, centers, diag, sigma, r2, kid, prm, mu, iw, ck, xk, nidx, ncnt,
                         metric, need_c, need_w, need_sig)


def _centre_grads(p_ga, p_gr, flags, x, centers, diag, sigma, r2, kid, prm, mu, iw, ck, xk, nidx, ncnt,
                  metric, need_c, need_w, need_sig):
    N, D = x.shape
    C = centers.shape[0]
    dev = x.device
    f32 = torch.float32
    blk, opts = pick_blocks(N, C, D, "c")
    nb_c, nb_d = triton.cdiv(C, blk["BC"]), triton.cdiv(D, blk["BD"])
    n_split, n_per = _n_split(nb_c * nb_d, N, blk["BN"])
    S = torch.empty((n_split, C, D), dtype=f32, device=dev)
    T = torch.empty((n_split, C, D), dtype=f32, device=dev) if need_w else S
    GS = torch.empty((n_split, C), dtype=f32, device=dev) if need_sig else S
    launch(_bwd_c_kernel)[(nb_c * nb_d * n_split,)](
        x, centers, mu, sigma, prm, r2, p_ga, p_gr, iw, ck, xk, S, T, GS, N, C, D, n_per, n_split, kid, **flags,
        NEED_T=need_w, NEED_SIG=need_sig, METRIC=metric, **blk, **opts)
    # the near pairs, by centre: the listed ones sorted by centre (stable: by row within a centre),
    # then the overflow rows; offsets and counts stay on the device
    slot = torch.arange(SLOTS, device=dev, dtype=torch.int32)
    valid = (slot[None, :] < ncnt[:, None]) & (ncnt[:, None] <= SLOTS)
    keys = torch.where(valid, nidx.view(N, SLOTS), C).flatten()
    skeys, perm = torch.sort(keys, stable=True)
    offs = torch.searchsorted(skeys, torch.arange(C + 1, device=dev, dtype=torch.int32))
    ovf = ncnt > SLOTS
    ovf_rows = torch.argsort((~ovf).to(torch.int8), stable=True)
    n_ovf = ovf.sum(dtype=torch.int64).reshape(1)
    SN = torch.empty((C, D), dtype=f32, device=dev)
    TN = torch.empty((C, D), dtype=f32, device=dev) if need_w else SN
    blk, opts = pick_blocks(N, C, D, "near_c")
    launch(_bwd_near_c_kernel)[(C * triton.cdiv(D, blk["BD"]),)](
        x, centers, sigma, prm, r2, p_ga, p_gr, iw, ck, xk, perm, offs, ovf_rows, n_ovf, SN, TN, N, C, D, kid,
        **flags, NEED_T=need_w, METRIC=metric, K=SLOTS, **blk, **opts)
    gc = gw = gs = None
    if need_c:
        s = S.sum(0) + SN
        gc = (-2 * (s if diag is None else diag.to(f32) * s)).to(centers.dtype)
    if need_w:
        t = T.sum(0) + TN
        gw = (t if metric == 2 else t.sum(0)).to(diag.dtype)
    if need_sig:
        gs = GS.sum(0).to(sigma.dtype)
    return gc, gw, gs


def aot_specs():
    """(name, kernel, signature, constexprs, options) of the six kernels for every metric, in
    float32 and bfloat16, with the tiles of the issue's large shapes."""
    ce, i32, f = "constexpr", "i32", "fp32"
    grads = dict(HAS_GA=True, HAS_GR=True)
    specs = []
    for dt in ("fp32", "bf16"):
        p = "*" + dt
        for metric in (0, 1, 2):
            blk, opts = pick_blocks(1 << 16, 4096, 128, "prep")
            s = dict(x=p, mu="*fp64", w=p, xk="*fp32", N=i32, D=i32, kappa=f, METRIC=ce, BN=ce, BD=ce)
            specs.append((f"rbf_gemm_bwd_rownorm_m{metric}_{dt}", _bwd_rownorm_kernel, s,
                          dict(METRIC=metric, BN=blk["BN"], BD=blk["BD"]), opts))
            s = dict(r2=p, iw="*fp32", ck="*fp32", xk="*fp32", nidx="*i32", ncnt="*i32", N=i32, C=i32,
                     METRIC=ce, K=ce, BN=ce, BC=ce)
            specs.append((f"rbf_gemm_bwd_prep_m{metric}_{dt}", _bwd_prep_kernel, s,
                          dict(METRIC=metric, K=SLOTS, BN=blk["BN"], BC=blk["BC"]), opts))
            near = dict(iw="*fp32", ck="*fp32", xk="*fp32")
            blk, opts = pick_blocks(1 << 16, 4096, 128, "near_x")
            s = dict(x=p, c=p, w=p, sig=p, prm="*fp32", r2=p, ga=p, gr=p, **near, nidx="*i32", ncnt="*i32",
                     gxn="*fp32", N=i32, C=i32, D=i32, stride_wc=i32, kind=i32, HAS_GA=ce, HAS_GR=ce, METRIC=ce,
                     K=ce, BN=ce, BD=ce)
            specs.append((f"rbf_gemm_bwd_near_x_m{metric}_{dt}", _bwd_near_x_kernel, s,
                          dict(METRIC=metric, K=SLOTS, **grads, **blk), opts))
            blk, opts = pick_blocks(1 << 16, 4096, 128, "gx")
            s = dict(x=p, mu="*fp64", w=p, pnl="*fp32", sig=p, prm="*fp32", r2=p, ga=p, gr=p, **near,
                     gxn="*fp32", gx=p, N=i32, C=i32, D=i32, stride_wc=i32, kind=i32, HAS_GA=ce, HAS_GR=ce,
                     METRIC=ce, BN=ce, BC=ce, BD=ce)
            specs.append((f"rbf_gemm_bwd_gx_m{metric}_{dt}", _bwd_gx_kernel, s,
                          dict(METRIC=metric, **grads, **blk), opts))
            blk, opts = pick_blocks(1 << 16, 4096, 128, "c")
            s = dict(x=p, c=p, mu="*fp64", sig=p, prm="*fp32", r2=p, ga=p, gr=p, **near, s_out="*fp32",
                     t_out="*fp32", gs_out="*fp32", N=i32, C=i32, D=i32, n_per=i32, n_split=i32, kind=i32,
                     HAS_GA=ce, HAS_GR=ce, NEED_T=ce, NEED_SIG=ce, METRIC=ce, BN=ce, BC=ce, BD=ce)
            specs.append((f"rbf_gemm_bwd_c_m{metric}_{dt}", _bwd_c_kernel, s,
                          dict(METRIC=metric, NEED_T=metric > 0, NEED_SIG=True, **grads, **blk), opts))
            blk, opts = pick_blocks(1 << 16, 4096, 128, "near_c")
            s = dict(x=p, c=p, sig=p, prm="*fp32", r2=p, ga=p, gr=p, **near, perm="*i64", offs="*i64",
                     ovf_rows="*i64", n_ovf="*i64", s_out="*fp32", t_out="*fp32", N=i32, C=i32, D=i32, kind=i32,
                     HAS_GA=ce, HAS_GR=ce, NEED_T=ce, METRIC=ce, K=ce, BV=ce, BD=ce)
            specs.append((f"rbf_gemm_bwd_near_c_m{metric}_{dt}", _bwd_near_c_kernel, s,
                          dict(METRIC=metric, NEED_T=metric > 0, K=SLOTS, **grads, **blk), opts))
    return specs
