"""Triton forward of the RBF op for the none / diag metrics in the GEMM form, on tensor cores.

    r2 = X - 2 x'.(w c') + C_j     on x' = x - mu, c' = c - mu (mu: the centres' mean)

float32 / bfloat16 / float16 inputs, computed in float32; the cross term (and, for a per-centre w,
X = x'^2 . w_j) runs as a 3xTF32 tl.dot. Every pair carries a certified rounding bound
(rbf_gemm_bound.py: |r2^ - r2| <= tau r2^ when alpha r2^ >= xi X^ + zeta C^_j + theta); the pairs
that fail it (near a centre, relative to their distance from mu; non-finite) are recomputed in the
difference form, each from its own operands only, so the outputs do not depend on the order in
which they are found. No (N, C, D) tensor, no host sync (CUDA graphs capture the four launches).

Kernels:
  _rbf_gemm_panel_kernel  per centre: B_j = -2 fl(w_j c'_j), C^_j (float64 sum), zeta C^_j + theta_j;
                          zeroes the flag counter
  _rbf_gemm_fwd_kernel    [BN, BC] tiles: the GEMM, r2^, the test, act; flagged pairs read -1; a
                          tile with few lists them in a device list (one atomic add reserves its
                          segment, capacity `cap`), one with many (or past the capacity) is marked
  _rbf_gemm_fix_kernel    fixed grid over groups of T tiles (one load of their counts): the listed
                          pairs, or the pairs reading -1 of a marked tile, in the difference form
                          (sequential over d, the same code for both)
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._launch import launch
from .rbf import _act_fwd, _np2, _pair_block
from .rbf_gemm_bound import ABS_L1, gemm_bound

PATHS = ("auto", "gemm", "diff")
# The smallest D that takes the GEMM form by default (below it the difference form costs no more).
MIN_D = 16
# Test hooks: which pairs the GEMM kernel flags ("bound": the certificate, "all", "none"), and
# overrides of the list capacity and of the per-tile flag count from which a tile is recomputed whole.
FLAGS = "bound"
LIST_CAP = None
DENSE_MIN = None
_FLT_MAX = tl.constexpr(3.4028234663852886e38)


def choose_path(x, centers, tril, direction="fwd") -> str:
    """'gemm' or 'diff' for the none / diag forward (direction "fwd") or backward ("bwd"):
    ``RBFKERN_RBF_FWD`` / ``RBFKERN_RBF_BWD`` = auto|gemm|diff (read at call time); auto takes the
    GEMM form for float32 / bfloat16 / float16 at D >= MIN_D."""
    name = f"RBFKERN_RBF_{direction.upper()}"
    env = os.environ.get(name, "auto").strip().lower() or "auto"
    if env not in PATHS:
        raise ValueError(f"{name} must be one of {PATHS}, got {env!r}")
    if tril is not None or x.dtype == torch.float64 or env == "diff" or centers.shape[0] >= 1 << 24:
        return "diff"  # (C < 2^24: the GEMM kernels' in-tile offsets are int32)
    return "gemm" if env == "gemm" or x.shape[1] >= MIN_D else "diff"


@triton.jit
def _shifted(p, mu, o_r, o_d, m_r, m_d, D):
    """Rows o_r, features o_d of a row-major [*, D] tensor at p, in float32, less mu: v' = v - mu
    (0 outside the masks). The forward and the backward shift x and c by the same mu this way."""
    m = m_r[:, None] & m_d[None, :]
    b_v = tl.load(p + o_r[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    return tl.where(m, b_v - tl.load(mu + o_d, mask=m_d, other=0).to(tl.float32)[None, :], 0.)


@triton.jit
def _rbf_gemm_panel_kernel(c, w, mu, pnl, cn, gam, cnt, C, D, stride_wc, zeta, abs_l1, abs_const,
                           METRIC: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # METRIC: 0 none, 1 shared diag, 2 per-centre diag
    i_c = tl.program_id(0)
    o_c = i_c.to(tl.int64) * BC + tl.arange(0, BC)
    m_c = o_c < C
    b_cn = tl.zeros([BC], dtype=tl.float64)
    b_l1 = tl.zeros([BC], dtype=tl.float32)
    for i_d in range(0, D, BD):
        o_d = i_d + tl.arange(0, BD)
        m_d = o_d < D
        m_cd = m_c[:, None] & m_d[None, :]
        b_cs = _shifted(c, mu, o_c, o_d, m_c, m_d, D)
        if METRIC == 0:
            b_b = -2 * b_cs
            b_cn += tl.sum(b_cs.to(tl.float64) * b_cs.to(tl.float64), 1)
        else:
            b_w = tl.load(w + o_c[:, None] * stride_wc + o_d[None, :], mask=m_cd, other=0).to(tl.float32)
            b_b = -2 * (b_w * b_cs)
            b_cn += tl.sum(b_w.to(tl.float64) * b_cs.to(tl.float64) * b_cs.to(tl.float64), 1)
            if METRIC == 2:
                b_l1 += tl.sum(tl.abs(b_w), 1)
        b_l1 += tl.sum(tl.abs(b_b), 1)
        tl.store(pnl + o_c[:, None] * D + o_d[None, :], b_b, mask=m_cd)
    b_cn32 = b_cn.to(tl.float32)
    tl.store(cn + o_c, b_cn32, mask=m_c)
    tl.store(gam + o_c, tl.cast(zeta, tl.float32) * b_cn32 + (tl.cast(abs_l1, tl.float32) * b_l1 + tl.cast(abs_const, tl.float32)),
             mask=m_c)
    if i_c == 0:
        tl.store(cnt, tl.zeros([], dtype=tl.int64))


@triton.jit
def _rbf_gemm_fwd_kernel(x, mu, pnl, w, cn, gam, sig, prm, r2, act, lst, cnt, hdr, N, C, D, stride_wc,
                         kind, need_act, cap, dense_min, flag_all, flag_none, alpha, xi, abs_l1,
                         METRIC: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    i_p = tl.program_id(0)
    i_n, i_c, o_n, o_c, m_n, m_c = _pair_block(N, C, BN, BC)
    b_s = tl.zeros([BN, BC], dtype=tl.float32)  # -2 x'.(w c')
    if METRIC == 2:
        b_xx = tl.zeros([BN, BC], dtype=tl.float32)  # x'^2 . w_j per pair
    b_xr = tl.zeros([BN], dtype=tl.float32)  # shared metric: X per row
    b_l1 = tl.zeros([BN], dtype=tl.float32)  # |x'|_1 (+ |x'^2|_1) per row, for theta_n
    for i_k in range(0, D, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < D
        m_b = m_c[:, None] & m_k[None, :]
        b_xs = _shifted(x, mu, o_n, o_k, m_n, m_k, D)
        b_b = tl.load(pnl + o_c[:, None] * D + o_k[None, :], mask=m_b, other=0)
        b_s = tl.dot(b_xs, tl.trans(b_b), b_s, input_precision="tf32x3", out_dtype=tl.float32)
        b_sq = b_xs * b_xs
        if METRIC == 2:
            b_w = tl.load(w + o_c[:, None] * stride_wc + o_k[None, :], mask=m_b, other=0).to(tl.float32)
            b_xx = tl.dot(b_sq, tl.trans(b_w), b_xx, input_precision="tf32x3", out_dtype=tl.float32)
            b_l1 += tl.sum(tl.abs(b_xs) + b_sq, 1)
        else:
            if METRIC == 1:
                b_wv = tl.load(w + o_k, mask=m_k, other=0).to(tl.float32)
                b_xr += tl.sum(b_wv[None, :] * b_sq, 1)
            else:
                b_xr += tl.sum(b_sq, 1)
            b_l1 += tl.sum(tl.abs(b_xs), 1)
    if METRIC == 2:
        b_X = b_xx
    else:
        b_X = b_xr[:, None]
    b_cn = tl.load(cn + o_c, mask=m_c, other=0)
    b_gam = tl.load(gam + o_c, mask=m_c, other=0)
    b_r2 = (b_s + b_X) + b_cn[None, :]
    b_rhs = tl.cast(xi, tl.float32) * b_X + b_gam[None, :] + (tl.cast(abs_l1, tl.float32) * b_l1)[:, None]
    b_ok = (tl.cast(alpha, tl.float32) * b_r2 >= b_rhs) & (b_r2 <= _FLT_MAX)
    m_nc = m_n[:, None] & m_c[None, :]
    # flagged pairs as int32 (0/1); flag_all / flag_none are the test hooks
    i_m = m_nc.to(tl.int32)
    i_bad = tl.maximum(i_m * (1 - b_ok.to(tl.int32)) * (1 - flag_none), i_m * flag_all)
    # int32 offsets in the tile from a 64-bit tile base (the launcher keeps BN * C < 2^31): fewer
    # registers than 64-bit offsets per pair
    i_loc = tl.arange(0, BN)[:, None] * C + tl.arange(0, BC)[None, :]
    t_base = i_n.to(tl.int64) * BN * C + i_c.to(tl.int64) * BC
    # flagged pairs read -1 until the fix kernel writes them (an accepted r2^ is > 0)
    tl.store(r2 + t_base + i_loc, tl.where(i_bad != 0, -1., b_r2).to(r2.dtype.element_ty), mask=m_nc)
    if need_act != 0:
        a = tl.load(prm).to(tl.float32)
        b_sg = tl.load(sig + o_c, mask=m_c, other=1).to(tl.float32)
        b_f = _act_fwd(b_r2, b_sg[None, :], a, kind)
        tl.store(act + t_base + i_loc, b_f.to(act.dtype.element_ty), mask=m_nc)
    # A tile with few flags lists them (their offsets i_loc, in rank order, at a place reserved with
    # one atomic add) and says where in hdr: (start, count); one with many, or past the list's
    # capacity, says (0, -1): the fix kernel recomputes its pairs that read -1.
    n_bad = tl.sum(tl.sum(i_bad, 1), 0)
    i_start = n_bad * 0
    i_count = tl.where(n_bad >= dense_min, -1, 0)
    if n_bad > 0:
        if n_bad < dense_min:
            base = tl.atomic_add(cnt, n_bad.to(tl.int64))
            if base + n_bad <= cap:
                i_row = tl.sum(i_bad, 1)
                i_rank = (tl.cumsum(i_row, 0) - i_row)[:, None] + tl.cumsum(i_bad, 1) - i_bad
                tl.store(lst + base + i_rank, i_loc, mask=i_bad != 0)
                i_start = base.to(tl.int32)
                i_count = n_bad
            else:
                i_count = n_bad * 0 - 1
    tl.store(hdr + 2 * i_p, i_start)
    tl.store(hdr + 2 * i_p + 1, i_count)


@triton.jit
def _diff_pairs(x, c, w, o_n, o_j, m, D, stride_wc, METRIC: tl.constexpr):
    """Difference-form r2 of the pairs (o_n, o_j) (broadcast together) where m, sequential over d:
    each pair's value is the same whatever the shape of the batch it is computed in."""
    b_acc = tl.where(m, 0., 0.)
    p_x = x + o_n * D
    p_c = c + o_j * D
    p_w = w + o_j * stride_wc
    for i_d in range(0, D):
        b_t = tl.load(p_x + i_d, mask=m, other=0).to(tl.float32) - tl.load(p_c + i_d, mask=m, other=0).to(tl.float32)
        if METRIC == 0:
            b_acc += b_t * b_t
        else:
            b_acc += (b_t * tl.load(p_w + i_d, mask=m, other=0).to(tl.float32)) * b_t
    return b_acc


@triton.jit
def _store_pairs(r2, act, sig, prm, o_nc, o_j, m, b_r2, kind, need_act):
    tl.store(r2 + o_nc, b_r2.to(r2.dtype.element_ty), mask=m)
    if need_act != 0:
        a = tl.load(prm).to(tl.float32)
        b_sg = tl.load(sig + o_j, mask=m, other=1).to(tl.float32)
        tl.store(act + o_nc, _act_fwd(b_r2, b_sg, a, kind).to(act.dtype.element_ty), mask=m)


@triton.jit
def _rbf_gemm_fix_kernel(x, c, w, sig, prm, r2, act, lst, hdr, N, C, D, stride_wc, kind, need_act, n_tiles,
                         METRIC: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
                         R: tl.constexpr, T: tl.constexpr):
    i_p = tl.program_id(0)
    n_p = tl.num_programs(0)
    nb_c = tl.cdiv(C, BC)
    for i_t0 in range(i_p * T, n_tiles, n_p * T):
        # T tiles' counts in one load: most groups have no flag at all
        o_t = i_t0 + tl.arange(0, T)
        i_any = tl.max(tl.abs(tl.load(hdr + 2 * o_t + 1, mask=o_t < n_tiles, other=0)), 0)
        if i_any != 0:
            for i_t in range(i_t0, i_t0 + T):
                _fix_tile(x, c, w, sig, prm, r2, act, lst, hdr, i_t, n_tiles, nb_c, N, C, D, stride_wc, kind,
                          need_act, METRIC, V, BN, BC, R)


@triton.jit
def _fix_tile(x, c, w, sig, prm, r2, act, lst, hdr, i_t, n_tiles, nb_c, N, C, D, stride_wc, kind, need_act,
              METRIC: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, R: tl.constexpr):
    i_start = tl.load(hdr + 2 * i_t, mask=i_t < n_tiles, other=0)
    i_count = tl.load(hdr + 2 * i_t + 1, mask=i_t < n_tiles, other=0)
    o_n0 = (i_t // nb_c).to(tl.int64) * BN
    o_c0 = (i_t % nb_c).to(tl.int64) * BC
    if i_count > 0:
        # the tile's listed pairs, V at a time
        for i_e in range(0, i_count, V):
            o_e = i_e + tl.arange(0, V)
            m_e = o_e < i_count
            i_loc = tl.load(lst + i_start + o_e, mask=m_e, other=0)
            o_n = o_n0 + i_loc // C
            o_j = o_c0 + i_loc % C
            b_r2 = _diff_pairs(x, c, w, o_n, o_j, m_e, D, stride_wc, METRIC)
            _store_pairs(r2, act, sig, prm, o_n * C + o_j, o_j, m_e, b_r2, kind, need_act)
    elif i_count < 0:
        # every flagged pair (r2 = -1) of the tile, R rows at a time
        o_c = o_c0 + tl.arange(0, BC)
        m_c = o_c < C
        for i_r in range(0, BN, R):
            o_n = o_n0 + i_r + tl.arange(0, R)
            m = (o_n < N)[:, None] & m_c[None, :]
            o_nc = o_n[:, None] * C + o_c[None, :]
            m = m & (tl.load(r2 + o_nc, mask=m, other=0).to(tl.float32) < 0)
            b_r2 = _diff_pairs(x, c, w, o_n[:, None], o_c[None, :], m, D, stride_wc, METRIC)
            _store_pairs(r2, act, sig, prm, o_nc, o_c[None, :], m, b_r2, kind, need_act)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------

def pick_blocks(N, C, D, per_centre):
    """Tiles of the GEMM kernel: up to 64 x 64 with 8 warps, K chunks of 16, 3 stages (2 for a
    per-centre metric's two accumulators), at least 16 in every dim (tl.dot). With the test, the
    flag list and the activation epilogue in the same kernel, larger tiles (128 x 64, 128 x 128) or
    K chunks of 32 spill on sm_90 or sm_80 (aot report); these do not. To be tuned on the device."""
    BN = min(max(_np2(N), 16), 64)
    BC = min(max(_np2(C), 16), 64)
    return dict(BN=BN, BC=BC, BK=16), dict(num_warps=8 if BN * BC >= 64 * 64 else 4,
                                           num_stages=2 if per_centre else 3)


# The fix kernel's register cap: without one, triton 3.6's ptxas put 8 B in the stack of its
# float32 none-metric variant on sm_90 at 72 registers; with 128 it needs none.
_FIX_OPTS = {"num_warps": 4, "maxnreg": 128}


def list_capacity(N, C):
    """Entries of the flag list: a few per row and centre (a row near a handful of centres), at
    least 64 Ki; the rest fall back to the per-tile path."""
    if LIST_CAP is not None:
        return max(1, min(int(LIST_CAP), N * C))
    return min(N * C, max(1 << 16, 4 * (N + C)))


def forward(x, centers, diag, sigma, kid, prm, r2, act, need):
    """Fill r2 (and act where need) [N, C] in the GEMM form; x, centres, diag contiguous."""
    N, D = x.shape
    C = centers.shape[0]
    dev = x.device
    metric = 0 if diag is None else (2 if diag.dim() == 2 else 1)
    w = diag if diag is not None else centers
    stride_wc = D if metric == 2 else 0
    blk, opts = pick_blocks(N, C, D, metric == 2)
    bnd = gemm_bound(D, blk["BK"], metric == 2)
    f32 = torch.float32
    mu = torch.mean(centers, 0, dtype=torch.float64)
    pnl = torch.empty((C, D), dtype=f32, device=dev)
    cn = torch.empty(C, dtype=f32, device=dev)
    gam = torch.empty(C, dtype=f32, device=dev)
    cnt = torch.empty(1, dtype=torch.int64, device=dev)
    BCp = min(_np2(C), 32)
    BDp = min(_np2(D), 32)
    launch(_rbf_gemm_panel_kernel)[(triton.cdiv(C, BCp),)](
        centers, w, mu, pnl, cn, gam, cnt, C, D, stride_wc, bnd.zeta, ABS_L1, bnd.abs_const,
        METRIC=metric, BC=BCp, BD=BDp, num_warps=4)
    nb_c = triton.cdiv(C, blk["BC"])
    n_tiles = triton.cdiv(N, blk["BN"]) * nb_c
    cap = list_capacity(N, C)
    lst = torch.empty(cap, dtype=torch.int32, device=dev)
    hdr = torch.empty((n_tiles, 2), dtype=torch.int32, device=dev)
    dense_min = DENSE_MIN if DENSE_MIN is not None else blk["BN"] * blk["BC"] // 8
    p_act = act if need else r2
    launch(_rbf_gemm_fwd_kernel)[(n_tiles,)](
        x, mu, pnl, w, cn, gam, sigma, prm, r2, p_act, lst, cnt, hdr, N, C, D, stride_wc, kid, need,
        cap, dense_min, int(FLAGS == "all"), int(FLAGS == "none"), bnd.alpha, bnd.xi, ABS_L1,
        METRIC=metric, **blk, **opts)
    T = 128
    launch(_rbf_gemm_fix_kernel)[(max(1, min(1024, triton.cdiv(n_tiles, T))),)](
        x, centers, w, sigma, prm, r2, p_act, lst, hdr, N, C, D, stride_wc, kid, need, n_tiles,
        METRIC=min(metric, 1), V=128, BN=blk["BN"], BC=blk["BC"], R=8, T=T, **_FIX_OPTS)


def aot_specs():
    """(name, kernel, signature, constexprs, options) of the three kernels for every metric, in
    float32 and bfloat16, with the tiles of the issue's large shapes."""
    ce, i32, f = "constexpr", "i32", "fp32"
    specs = []
    for dt in ("fp32", "bf16"):
        p = "*" + dt
        for metric in (0, 1, 2):
            blk, opts = pick_blocks(1 << 16, 4096, 128, metric == 2)
            s = dict(c=p, w=p, mu="*fp64", pnl="*fp32", cn="*fp32", gam="*fp32", cnt="*i64", C=i32, D=i32,
                     stride_wc=i32, zeta=f, abs_l1=f, abs_const=f, METRIC=ce, BC=ce, BD=ce)
            specs.append((f"rbf_gemm_panel_m{metric}_{dt}", _rbf_gemm_panel_kernel, s,
                          dict(METRIC=metric, BC=32, BD=32), {"num_warps": 4}))
            s = dict(x=p, mu="*fp64", pnl="*fp32", w=p, cn="*fp32", gam="*fp32", sig=p, prm="*fp32", r2=p, act=p,
                     lst="*i32", cnt="*i64", hdr="*i32", N=i32, C=i32, D=i32, stride_wc=i32, kind=i32,
                     need_act=i32, cap=i32, dense_min=i32, flag_all=i32, flag_none=i32, alpha=f, xi=f,
                     abs_l1=f, METRIC=ce, BN=ce, BC=ce, BK=ce)
            specs.append((f"rbf_gemm_fwd_m{metric}_{dt}", _rbf_gemm_fwd_kernel, s, dict(METRIC=metric, **blk), opts))
            if metric < 2:
                s = dict(x=p, c=p, w=p, sig=p, prm="*fp32", r2=p, act=p, lst="*i32", hdr="*i32",
                         N=i32, C=i32, D=i32, stride_wc=i32, kind=i32, need_act=i32, n_tiles=i32,
                         METRIC=ce, V=ce, BN=ce, BC=ce, R=ce, T=ce)
                specs.append((f"rbf_gemm_fix_m{metric}_{dt}", _rbf_gemm_fix_kernel, s,
                              dict(METRIC=metric, V=128, BN=blk["BN"], BC=blk["BC"], R=8, T=128), _FIX_OPTS))
    return specs
