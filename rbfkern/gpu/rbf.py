"""Triton kernels for the Mahalanobis RBF distance + activation (``rbf``, ``rbf_r2``).

x [N, D], centres c [C, D]; metric none, diag (w [C, D] or [D]) or tril (L [C, D, D] or
[D, D], lower triangle only); r2 = |diff|^2, sum_d w_d diff_d^2 or |diff^T L|^2 with
diff = x - c; act = f(r2; sigma, shape). The none / diag forward takes the GEMM form on tensor
cores with a certified bound per pair from D >= 16 in float32 / bfloat16 / float16
(rbf_gemm.py, RBFKERN_RBF_FWD=auto|gemm|diff), and so does their backward, the pairs near a
centre in the difference form (rbf_gemm_bwd.py, RBFKERN_RBF_BWD); everything else here is the
difference form.

Kernels (the (N, C, D) difference tensor is never materialised):
  _rbf_fwd_kernel          none/diag r2 + activation, [BN, BC, BD] tiles reduced over D chunks
  _rbf_fwd_tril_kernel     tril r2 + activation, u = diff @ L_j with tl.dot, one centre per program
  _rbf_bwd_x_kernel        gx for none/diag, row x D-chunk blocks, loop over centres
  _rbf_bwd_x_tril_kernel   gx for tril: 2 sum_j G M_j diff_j with M_j = L_j L_j^T
  _rbf_bwd_c_kernel        per-centre sums S = sum_n G diff, T = sum_n G diff^2 and gsigma,
                           centre x D-chunk x row-split blocks, loop over rows (no atomics)
  _rbf_bwd_cov_tril_kernel Sigma_j = sum_n G diff diff^T (for gL = 2 tril(Sigma_j L_j))

G = grad_act * df/dr2 + grad_r2 is computed in-tile from the saved r2. Per-centre outputs are
written as per-split partials and summed in a fixed order by torch, so results are
deterministic; the small O(C D) / O(C D^3) finishing products (gc = -2 w S, -2 M S, gL) run
in torch.
"""
import torch
import triton
import triton.language as tl

from . import _interpreter
from ._launch import launch

_interpreter.apply()

KINDS = ("linear", "gaussian", "thin_plate", "logistic", "inverse_multiquadric",
         "multiquadric", "inverse_quadratic", "quadratic")
# kernel-side activation codes: 0 = none (r2 only), 1.. = KINDS
_KIND_ID = {"none": 0, **{k: i + 1 for i, k in enumerate(KINDS)}}
# kinds whose value depends on sigma
_SIGMA_KINDS = {2, 4, 5, 6, 7, 8}
# target number of programs for the row-split reductions (fixed, so results do not depend on the device)
_TARGET_PROGRAMS = 256


@triton.jit
def _act_fwd(b_r2, b_s, a, kind):
    """f(r2); b_s broadcasts against b_r2, kind is a runtime int (0 = none)."""
    if kind == 1:
        b_f = tl.sqrt(b_r2)
    elif kind == 2:
        b_f = tl.exp(-b_r2 / (2 * b_s * b_s))
    elif kind == 3:
        b_f = tl.where(b_r2 > 0, 0.5 * b_r2 * tl.log(tl.where(b_r2 > 0, b_r2, 1.)), 0.)
    elif kind == 4:
        b_t = (b_r2 - a * a) / (b_s * b_s)
        b_e = tl.exp(-tl.abs(b_t))
        b_f = tl.where(b_t >= 0, b_e / (1 + b_e), 1 / (1 + b_e))
    elif kind == 5:
        b_f = tl.exp(-a * tl.log(b_r2 + b_s * b_s))
    elif kind == 6:
        b_f = tl.exp(a * tl.log(b_r2 + b_s * b_s))
    elif kind == 7:
        b_f = 1 / (1 + b_r2 / (b_s * b_s))
    elif kind == 8:
        b_f = 1 - b_r2 / (b_s * b_s)
    else:
        b_f = b_r2 + 0 * b_s
    return b_f


@triton.jit
def _act_bwd(b_r2, b_s, a, kind):
    """(df/dr2, df/dsigma); singular points (linear, thin_plate at r2 == 0) give 0."""
    b_z = 0 * b_r2 + 0 * b_s
    if kind == 1:
        b_df = tl.where(b_r2 > 0, 0.5 / tl.sqrt(tl.where(b_r2 > 0, b_r2, 1.)), 0.)
        b_ds = b_z
    elif kind == 2:
        b_f = tl.exp(-b_r2 / (2 * b_s * b_s))
        b_df = -b_f / (2 * b_s * b_s)
        b_ds = b_f * b_r2 / (b_s * b_s * b_s)
    elif kind == 3:
        b_df = tl.where(b_r2 > 0, 0.5 * (tl.log(tl.where(b_r2 > 0, b_r2, 1.)) + 1), 0.)
        b_ds = b_z
    elif kind == 4:
        b_t = (b_r2 - a * a) / (b_s * b_s)
        b_e = tl.exp(-tl.abs(b_t))
        b_f = tl.where(b_t >= 0, b_e / (1 + b_e), 1 / (1 + b_e))
        b_ff = b_f * (1 - b_f)
        b_df = -b_ff / (b_s * b_s)
        b_ds = b_ff * 2 * (b_r2 - a * a) / (b_s * b_s * b_s)
    elif kind == 5:
        b_q = b_r2 + b_s * b_s
        b_df = -a * tl.exp((-a - 1) * tl.log(b_q))
        b_ds = b_df * 2 * b_s
    elif kind == 6:
        b_q = b_r2 + b_s * b_s
        b_df = a * tl.exp((a - 1) * tl.log(b_q))
        b_ds = b_df * 2 * b_s
    elif kind == 7:
        b_f = 1 / (1 + b_r2 / (b_s * b_s))
        b_df = -b_f * b_f / (b_s * b_s)
        b_ds = b_f * b_f * 2 * b_r2 / (b_s * b_s * b_s)
    elif kind == 8:
        b_df = b_z - 1 / (b_s * b_s)
        b_ds = 2 * b_r2 / (b_s * b_s * b_s)
    else:
        b_df = b_z + 1
        b_ds = b_z
    return b_df, b_ds


@triton.jit
def _load_g(p_ga, p_gr, o_nc, m_nc, b_r2, b_s, a, kind,
            HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, ACC: tl.constexpr):
    """G = grad_act * df/dr2 + grad_r2 and grad_act * df/dsigma, both zero outside m_nc; a gradient
    that is absent (HAS_GA / HAS_GR false) is neither loaded nor multiplied."""
    b_df, b_ds = _act_bwd(b_r2, b_s, a, kind)
    b_g = tl.zeros_like(b_df)
    b_gs = tl.zeros_like(b_ds)
    if HAS_GA:
        b_ga = tl.load(p_ga + o_nc, mask=m_nc, other=0).to(ACC)
        b_g = b_ga * b_df
        b_gs = b_ga * b_ds
    if HAS_GR:
        b_g += tl.load(p_gr + o_nc, mask=m_nc, other=0).to(ACC)
    return tl.where(m_nc, b_g, 0.), tl.where(m_nc, b_gs, 0.)


@triton.jit
def _pair_block(N, C, BN: tl.constexpr, BC: tl.constexpr):
    """The (BN rows, BC centres) block of program 0's id (row blocks outer): block ids, offsets, masks."""
    i_p = tl.program_id(0)
    nb_c = tl.cdiv(C, BC)
    i_n, i_c = i_p // nb_c, i_p % nb_c
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN)
    o_c = i_c.to(tl.int64) * BC + tl.arange(0, BC)
    return i_n, i_c, o_n, o_c, o_n < N, o_c < C


@triton.jit
def _rbf_fwd_kernel(x, c, w, sig, prm, r2, act, N, C, D, stride_wc, kind, need_act,
                    METRIC: tl.constexpr, ACC: tl.constexpr,
                    BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    i_n, i_c, o_n, o_c, m_n, m_c = _pair_block(N, C, BN, BC)
    b_r2 = tl.zeros([BN, BC], dtype=ACC)
    for i_d in range(0, D, BD):
        o_d = i_d + tl.arange(0, BD)
        m_d = o_d < D
        b_x = tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0).to(ACC)
        b_c = tl.load(c + o_c[:, None] * D + o_d[None, :], mask=m_c[:, None] & m_d[None, :], other=0).to(ACC)
        b_diff = b_x[:, None, :] - b_c[None, :, :]
        b_sq = b_diff * b_diff
        if METRIC == 1:
            b_w = tl.load(w + o_c[:, None] * stride_wc + o_d[None, :],
                          mask=m_c[:, None] & m_d[None, :], other=0).to(ACC)
            b_sq = b_sq * b_w[None, :, :]
        b_r2 += tl.sum(b_sq, 2)
    o_nc = o_n[:, None] * C + o_c[None, :]
    m_nc = m_n[:, None] & m_c[None, :]
    tl.store(r2 + o_nc, b_r2.to(r2.dtype.element_ty), mask=m_nc)
    if need_act != 0:
        a = tl.load(prm).to(ACC)
        b_s = tl.load(sig + o_c, mask=m_c, other=1).to(ACC)
        b_f = _act_fwd(b_r2, b_s[None, :], a, kind)
        tl.store(act + o_nc, b_f.to(act.dtype.element_ty), mask=m_nc)


@triton.jit
def _diff_block(x, p_c, o_n, m_n, i_d, D, ACC: tl.constexpr, BD: tl.constexpr):
    """Features i_d .. i_d + BD of x[o_n] - c (c at p_c), zero outside x: (offsets, mask, diff)."""
    o_d = i_d + tl.arange(0, BD)
    m_d = o_d < D
    m_x = m_n[:, None] & m_d[None, :]
    b_x = tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m_x, other=0).to(ACC)
    b_c = tl.load(p_c + o_d, mask=m_d, other=0).to(ACC)
    return o_d, m_d, tl.where(m_x, b_x - b_c[None, :], 0.)


@triton.jit
def _rbf_fwd_tril_kernel(x, c, L, sig, prm, r2, act, N, C, D, stride_lc, kind, need_act,
                         ACC: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    i_p = tl.program_id(0)
    i_n, i_j = i_p // C, i_p % C
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN)
    m_n = o_n < N
    p_c = c + i_j.to(tl.int64) * D
    p_l = L + i_j.to(tl.int64) * stride_lc
    b_r2 = tl.zeros([BN], dtype=ACC)
    for i_k in range(0, D, BD):
        o_k = i_k + tl.arange(0, BD)
        m_k = o_k < D
        b_u = tl.zeros([BN, BD], dtype=ACC)
        # only d >= k contributes (and only the lower triangle is read)
        for i_d in range(i_k, D, BD):
            o_d, m_d, b_diff = _diff_block(x, p_c, o_n, m_n, i_d, D, ACC, BD)
            m_l = (o_d[:, None] >= o_k[None, :]) & m_d[:, None] & m_k[None, :]
            b_l = tl.load(p_l + o_d[:, None] * D + o_k[None, :], mask=m_l, other=0).to(ACC)
            b_u += tl.dot(b_diff, b_l, input_precision="ieee", out_dtype=ACC)
        b_r2 += tl.sum(b_u * b_u, 1)
    o_nc = o_n * C + i_j
    tl.store(r2 + o_nc, b_r2.to(r2.dtype.element_ty), mask=m_n)
    if need_act != 0:
        a = tl.load(prm).to(ACC)
        b_s = tl.load(sig + i_j).to(ACC)
        b_f = _act_fwd(b_r2, b_s, a, kind)
        tl.store(act + o_nc, b_f.to(act.dtype.element_ty), mask=m_n)


@triton.jit
def _row_col_block(N, D, BN: tl.constexpr, BD: tl.constexpr):
    """The (BN rows, BD features) block of program 0's id (row blocks outer): offsets and masks."""
    i_p = tl.program_id(0)
    nb_d = tl.cdiv(D, BD)
    i_n, i_d = i_p // nb_d, i_p % nb_d
    o_n = i_n.to(tl.int64) * BN + tl.arange(0, BN)
    o_d = i_d * BD + tl.arange(0, BD)
    return o_n, o_d, o_n < N, o_d < D


@triton.jit
def _rbf_bwd_x_kernel(x, c, w, sig, prm, r2, ga, gr, gx, N, C, D, stride_wc, kind,
                      HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, METRIC: tl.constexpr, ACC: tl.constexpr,
                      BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # gx[n, d] = 2 sum_j G[n, j] (w[j, d]) (x[n, d] - c[j, d])
    o_n, o_d, m_n, m_d = _row_col_block(N, D, BN, BD)
    a = tl.load(prm).to(ACC)
    b_x = tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0).to(ACC)
    b_gx = tl.zeros([BN, BD], dtype=ACC)
    for i_c in range(0, C, BC):
        o_c = i_c + tl.arange(0, BC).to(tl.int64)
        m_c = o_c < C
        o_nc = o_n[:, None] * C + o_c[None, :]
        m_nc = m_n[:, None] & m_c[None, :]
        b_r2 = tl.load(r2 + o_nc, mask=m_nc, other=1).to(ACC)
        b_s = tl.load(sig + o_c, mask=m_c, other=1).to(ACC)
        b_g, b_gs = _load_g(ga, gr, o_nc, m_nc, b_r2, b_s[None, :], a, kind, HAS_GA, HAS_GR, ACC)
        m_cd = m_c[:, None] & m_d[None, :]
        b_c = tl.load(c + o_c[:, None] * D + o_d[None, :], mask=m_cd, other=0).to(ACC)
        b_diff = b_x[:, None, :] - b_c[None, :, :]
        if METRIC == 1:
            b_w = tl.load(w + o_c[:, None] * stride_wc + o_d[None, :], mask=m_cd, other=0).to(ACC)
            b_diff = b_diff * b_w[None, :, :]
        b_gx += tl.sum(b_g[:, :, None] * b_diff, 1)
    tl.store(gx + o_n[:, None] * D + o_d[None, :], (2 * b_gx).to(gx.dtype.element_ty),
             mask=m_n[:, None] & m_d[None, :])


@triton.jit
def _rbf_bwd_x_tril_kernel(x, c, M, sig, prm, r2, ga, gr, gx, N, C, D, stride_mc, kind,
                           HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    # gx = 2 sum_j G[:, j] (diff_j @ M_j), M_j = L_j L_j^T symmetric (= 2 L_j u_j per row)
    o_n, o_d, m_n, m_d = _row_col_block(N, D, BN, BD)
    a = tl.load(prm).to(ACC)
    b_gx = tl.zeros([BN, BD], dtype=ACC)
    p_c = c
    p_m = M
    for i_j in range(0, C):
        o_nc = o_n * C + i_j
        b_r2 = tl.load(r2 + o_nc, mask=m_n, other=1).to(ACC)
        b_s = tl.load(sig + i_j).to(ACC)
        b_g, b_gs = _load_g(ga, gr, o_nc, m_n, b_r2, b_s, a, kind, HAS_GA, HAS_GR, ACC)
        b_v = tl.zeros([BN, BD], dtype=ACC)
        for i_e in range(0, D, BD):
            o_e, m_e, b_diff = _diff_block(x, p_c, o_n, m_n, i_e, D, ACC, BD)
            b_m = tl.load(p_m + o_e[:, None] * D + o_d[None, :], mask=m_e[:, None] & m_d[None, :], other=0).to(ACC)
            b_v += tl.dot(b_diff, b_m, input_precision="ieee", out_dtype=ACC)
        b_gx += b_g[:, None] * b_v
        p_c += D  # pointer arithmetic is 64-bit
        p_m += stride_mc
    tl.store(gx + o_n[:, None] * D + o_d[None, :], (2 * b_gx).to(gx.dtype.element_ty),
             mask=m_n[:, None] & m_d[None, :])


@triton.jit
def _split_block(C, D, n_split, nb_d, BC: tl.constexpr, BD: tl.constexpr):
    """Program 0's (row split, feature block, centre offsets, feature offsets, masks), row splits
    innermost, then nb_d feature blocks, then BC-centre blocks."""
    i_p = tl.program_id(0)
    i_s = i_p % n_split
    i_cd = i_p // n_split
    i_c, i_d = i_cd // nb_d, i_cd % nb_d
    o_c = i_c.to(tl.int64) * BC + tl.arange(0, BC)
    o_d = i_d * BD + tl.arange(0, BD)
    return i_s, i_d, o_c, o_d, o_c < C, o_d < D


@triton.jit
def _rbf_bwd_c_kernel(x, c, sig, prm, r2, ga, gr, s_out, t_out, gs_out, N, C, D, n_per, n_split, nb_d, kind,
                      HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, NEED_S: tl.constexpr,
                      NEED_T: tl.constexpr, NEED_SIG: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr):
    # partials over row split i_s: S[i_s, j, d] = sum_n G diff, T[i_s, j, d] = sum_n G diff^2,
    # gsig[i_s, j] = sum_n grad_act df/dsigma (written by the i_d == 0 programs); nb_d feature blocks
    # (1 when only gsig is asked for)
    i_s, i_d, o_c, o_d, m_c, m_d = _split_block(C, D, n_split, nb_d, BC, BD)
    m_cd = m_c[:, None] & m_d[None, :]
    a = tl.load(prm).to(ACC)
    b_c = tl.load(c + o_c[:, None] * D + o_d[None, :], mask=m_cd, other=0).to(ACC)
    b_s = tl.load(sig + o_c, mask=m_c, other=1).to(ACC)
    b_S = tl.zeros([BC, BD], dtype=ACC)
    b_T = tl.zeros([BC, BD], dtype=ACC)
    b_sig = tl.zeros([BC], dtype=ACC)
    n_lo = i_s * n_per
    n_hi = tl.minimum(n_lo + n_per, N)
    for i_n in range(n_lo, n_hi, BN):
        o_n = i_n + tl.arange(0, BN).to(tl.int64)
        m_n = o_n < n_hi
        o_nc = o_n[:, None] * C + o_c[None, :]
        m_nc = m_n[:, None] & m_c[None, :]
        b_r2 = tl.load(r2 + o_nc, mask=m_nc, other=1).to(ACC)
        b_g, b_gs = _load_g(ga, gr, o_nc, m_nc, b_r2, b_s[None, :], a, kind, HAS_GA, HAS_GR, ACC)
        b_sig += tl.sum(b_gs, 0)
        b_x = tl.load(x + o_n[:, None] * D + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0).to(ACC)
        b_diff = b_x[:, None, :] - b_c[None, :, :]
        b_gd = b_g[:, :, None] * b_diff
        b_S += tl.sum(b_gd, 0)
        if NEED_T:
            b_T += tl.sum(b_gd * b_diff, 0)
    o_cd = (i_s.to(tl.int64) * C + o_c[:, None]) * D + o_d[None, :]
    if NEED_S:
        tl.store(s_out + o_cd, b_S.to(s_out.dtype.element_ty), mask=m_cd)
    if NEED_T:
        tl.store(t_out + o_cd, b_T.to(t_out.dtype.element_ty), mask=m_cd)
    # a branch, not `mask=m_c & (i_d == 0)`: a scalar comparison broadcast into a mask is int32
    # data in the interpreter of triton 3.8-3.9, which 3.9's interpreted load/store reject
    if NEED_SIG:
        if i_d == 0:
            tl.store(gs_out + i_s.to(tl.int64) * C + o_c, b_sig.to(gs_out.dtype.element_ty), mask=m_c)


@triton.jit
def _rbf_bwd_cov_tril_kernel(x, c, sig, prm, r2, ga, gr, cov, N, C, D, c_per, n_per, n_split, kind,
                             HAS_GA: tl.constexpr, HAS_GR: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    # cov[i_g, i_s, a, b] = sum_{j in group i_g} sum_{n in split i_s} G[n, j] diff[n, j, a] diff[n, j, b]
    i_p = tl.program_id(0)
    nb_d = tl.cdiv(D, BD)
    i_b = i_p % nb_d
    i_a = (i_p // nb_d) % nb_d
    i_gs = i_p // (nb_d * nb_d)
    i_s, i_g = i_gs % n_split, i_gs // n_split
    o_a = i_a * BD + tl.arange(0, BD)
    o_b = i_b * BD + tl.arange(0, BD)
    m_a, m_b = o_a < D, o_b < D
    a = tl.load(prm).to(ACC)
    n_lo = i_s * n_per
    n_hi = tl.minimum(n_lo + n_per, N)
    j_lo = i_g * c_per
    j_hi = tl.minimum(j_lo + c_per, C)
    b_cov = tl.zeros([BD, BD], dtype=ACC)
    p_c = c + j_lo.to(tl.int64) * D
    for i_j in range(j_lo, j_hi):
        b_ca = tl.load(p_c + o_a, mask=m_a, other=0).to(ACC)
        b_cb = tl.load(p_c + o_b, mask=m_b, other=0).to(ACC)
        b_s = tl.load(sig + i_j).to(ACC)
        for i_n in range(n_lo, n_hi, BN):
            o_n = i_n + tl.arange(0, BN).to(tl.int64)
            m_n = o_n < n_hi
            o_nc = o_n * C + i_j
            b_r2 = tl.load(r2 + o_nc, mask=m_n, other=1).to(ACC)
            b_g, b_gs = _load_g(ga, gr, o_nc, m_n, b_r2, b_s, a, kind, HAS_GA, HAS_GR, ACC)
            m_xa = m_n[:, None] & m_a[None, :]
            m_xb = m_n[:, None] & m_b[None, :]
            b_xa = tl.load(x + o_n[:, None] * D + o_a[None, :], mask=m_xa, other=0).to(ACC)
            b_xb = tl.load(x + o_n[:, None] * D + o_b[None, :], mask=m_xb, other=0).to(ACC)
            b_da = tl.where(m_xa, b_xa - b_ca[None, :], 0.)
            b_db = tl.where(m_xb, b_xb - b_cb[None, :], 0.) * b_g[:, None]
            b_cov += tl.dot(tl.trans(b_da), b_db, input_precision="ieee", out_dtype=ACC)
        p_c += D
    o_ab = (i_gs.to(tl.int64) * D + o_a[:, None]) * D + o_b[None, :]
    tl.store(cov + o_ab, b_cov.to(cov.dtype.element_ty), mask=m_a[:, None] & m_b[None, :])


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _np2(n):
    return triton.next_power_of_2(max(int(n), 1))


def _pick_blocks(N, C, D, kernel):
    """Power-of-two tiles from the shapes: small for tiny shapes (fast in the interpreter), and
    for large shapes sized to stay at or under ~150 registers with 4 warps (see aot output).
    tl.dot tiles (tril kernels) are at least 16 in every dim."""
    n, c, d = _np2(N), _np2(C), _np2(D)
    if kernel == "fwd":
        return dict(BN=min(n, 32), BC=min(c, 16), BD=min(d, 8))
    if kernel == "bwd_x":
        return dict(BN=min(n, 32), BC=min(c, 8), BD=min(d, 16))
    if kernel == "bwd_c":
        return dict(BN=min(n, 16), BC=min(c, 16), BD=min(d, 16))
    if kernel in ("fwd_tril", "bwd_x_tril"):
        return dict(BN=max(16, min(n, 32)), BD=16)
    if kernel == "bwd_cov_tril":
        return dict(BN=16, BD=16)
    raise KeyError(kernel)


def _acc(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _check_kind(kind):
    if kind not in _KIND_ID:
        raise ValueError(f"kind: expected one of {('none',) + KINDS}, got {kind!r}")
    return _KIND_ID[kind]


def _prm(shape, device, tdt):
    # shape travels as a 1-element tensor so float64 keeps full precision
    return torch.full((1,), float(shape), dtype=tdt, device=device)


def _n_split(n_prog, N, BN):
    """Row splits for the per-centre reductions: enough programs to fill a GPU, fixed from the
    shapes only (deterministic), each split a multiple of BN rows."""
    nb_n = triton.cdiv(N, BN)
    n_split = max(1, min(nb_n, _TARGET_PROGRAMS // max(n_prog, 1)))
    n_per = triton.cdiv(nb_n, n_split) * BN
    return triton.cdiv(N, n_per), n_per


# Register caps stated for three tl.dot (tril) kernels: without one ptxas put 8-32 B in the stack
# (bfloat16 grad x on sm_90, float64 forward on sm_80, float64 covariance gradient) at 80-128
# registers; with these it needs none, at 96-138. The other kernels keep ptxas' own choice.
_TRIL_MAXNREG = {("fwd_tril", torch.float64): 96, ("bwd_x_tril", torch.bfloat16): 112,
                 ("bwd_cov_tril", torch.float64): 144}


def _tril_opts(kind, dtype):
    cap = _TRIL_MAXNREG.get((kind, dtype))
    return {"num_warps": 4, **({"maxnreg": cap} if cap else {})}


def rbf_gemm():
    """rbfkern.gpu.rbf_gemm, the GEMM-form forward (imported late: it uses this module's _act_fwd)."""
    from . import rbf_gemm as mod
    return mod


def rbf_gemm_bwd():
    """rbfkern.gpu.rbf_gemm_bwd, the GEMM-form backward (imported late, likewise)."""
    from . import rbf_gemm_bwd as mod
    return mod


def forward(x, centers, diag, tril, sigma, kind, shape, need_act, need_r2=True):
    """(act [N, C] or None, r2 [N, C]) in x.dtype; kind in KINDS or "none". r2 comes back whatever
    need_r2 says (the kernels keep it for the activation)."""
    kid = _check_kind(kind)
    N, D = x.shape
    C = centers.shape[0]
    r2 = torch.empty((N, C), dtype=x.dtype, device=x.device)
    act = torch.empty((N, C), dtype=x.dtype, device=x.device) if need_act else None
    if N == 0 or C == 0:
        return act, r2
    tdt, ACC = _acc(x.dtype)
    prm = _prm(shape, x.device, tdt)
    p_act = act if need_act else r2
    need = int(bool(need_act) and kid != 0)
    if tril is not None:
        stride_lc = D * D if tril.dim() == 3 else 0
        blk = _pick_blocks(N, C, D, "fwd_tril")
        grid = (triton.cdiv(N, blk["BN"]) * C,)
        launch(_rbf_fwd_tril_kernel)[grid](x, centers, tril, sigma, prm, r2, p_act, N, C, D, stride_lc, kid, need,
                                   ACC=ACC, **_tril_opts("fwd_tril", x.dtype), **blk)
    elif rbf_gemm().choose_path(x, centers, tril) == "gemm":
        rbf_gemm().forward(x, centers, diag, sigma, kid, prm, r2, act, need)
    else:
        metric = 0 if diag is None else 1
        stride_wc = D if (diag is not None and diag.dim() == 2) else 0
        w = diag if diag is not None else x
        blk = _pick_blocks(N, C, D, "fwd")
        grid = (triton.cdiv(N, blk["BN"]) * triton.cdiv(C, blk["BC"]),)
        launch(_rbf_fwd_kernel)[grid](x, centers, w, sigma, prm, r2, p_act, N, C, D, stride_wc, kid, need,
                              METRIC=metric, ACC=ACC, num_warps=4, **blk)
    if need_act and kid == 0:
        act.copy_(r2)
    return act, r2


def backward(grad_act, grad_r2, x, centers, diag, tril, sigma, r2, kind, shape, needs):
    """(gx, gc, gdiag, gtril, gsigma); None where needs[i] is False or the input is None."""
    kid = _check_kind(kind)
    need_x, need_c, need_w, need_l, need_sig = (bool(v) for v in needs)
    need_w = need_w and diag is not None
    need_l = need_l and tril is not None
    need_sig = need_sig and sigma is not None
    N, D = x.shape
    C = centers.shape[0]
    dt, dev = x.dtype, x.device
    tdt, ACC = _acc(dt)
    has_ga = grad_act is not None  # kind "none": act == r2, df/dr2 = 1
    has_gr = grad_r2 is not None
    run = N > 0 and C > 0 and (has_ga or has_gr)
    # gx is written in full by its kernel; a gradient no kernel computes is zero
    gx = (torch.empty_like(x) if run else torch.zeros_like(x)) if need_x else None
    gc = gw = gl = gs = None

    def result():
        zero = lambda g, need, like: torch.zeros_like(like) if need and g is None else g  # noqa: E731
        return gx, zero(gc, need_c, centers), zero(gw, need_w, diag), zero(gl, need_l, tril), zero(gs, need_sig, sigma)

    if not run:
        return result()
    prm = _prm(shape, dev, tdt)
    p_ga = grad_act if has_ga else r2
    p_gr = grad_r2 if has_gr else r2
    flags = dict(HAS_GA=has_ga, HAS_GR=has_gr)
    # The small O(C D^3) products around the kernels run in float64: on a GPU a float32 matmul may
    # run in TF32 (torch.backends.cuda.matmul.allow_tf32), which would cost the gradients 3 digits.
    ltri = torch.tril(tril.to(torch.float64)) if tril is not None else None
    M = None
    if tril is not None and (need_x or need_c):
        M = ltri @ ltri.transpose(-1, -2)

    sig_dep = has_ga and kid in _SIGMA_KINDS and need_sig
    need_s = need_c
    need_t = need_w
    gemm_bwd = (tril is None and D > 0 and (need_x or need_s or need_t)
                and rbf_gemm().choose_path(x, centers, None, "bwd") == "gemm")
    if gemm_bwd:
        gc, gw, gs = rbf_gemm_bwd().backward(p_ga, p_gr, flags, x, centers, diag, sigma, r2, kid, prm,
                                             gx if need_x else None, need_s, need_t, sig_dep)
        sig_dep = sig_dep and gs is None  # the sigma-only kernel below, when neither gc nor gw ran
        need_s = need_t = False

    if need_x and D > 0 and not gemm_bwd:
        if tril is not None:
            blk = _pick_blocks(N, C, D, "bwd_x_tril")
            grid = (triton.cdiv(N, blk["BN"]) * triton.cdiv(D, blk["BD"]),)
            launch(_rbf_bwd_x_tril_kernel)[grid](x, centers, M.to(tdt), sigma, prm, r2, p_ga, p_gr, gx, N, C, D,
                                         D * D if M.dim() == 3 else 0, kid, **flags, ACC=ACC,
                                         **_tril_opts("bwd_x_tril", dt), **blk)
        else:
            blk = _pick_blocks(N, C, D, "bwd_x")
            stride_wc = D if (diag is not None and diag.dim() == 2) else 0
            grid = (triton.cdiv(N, blk["BN"]) * triton.cdiv(D, blk["BD"]),)
            launch(_rbf_bwd_x_kernel)[grid](x, centers, diag if diag is not None else x, sigma, prm, r2, p_ga, p_gr, gx,
                                    N, C, D, stride_wc, kid, **flags, METRIC=0 if diag is None else 1,
                                    ACC=ACC, num_warps=4, **blk)

    if need_s or need_t or sig_dep:
        blk = _pick_blocks(N, C, D, "bwd_c")
        BN, BC, BD = blk["BN"], blk["BC"], blk["BD"]
        nb_c = triton.cdiv(C, BC)
        nb_d = max(triton.cdiv(D, BD), 1) if (need_s or need_t) else 1
        n_split, n_per = _n_split(nb_c * nb_d, N, BN)
        S = torch.empty((n_split, C, D), dtype=tdt, device=dev) if need_s else None
        T = torch.empty((n_split, C, D), dtype=tdt, device=dev) if need_t else None
        GS = torch.empty((n_split, C), dtype=tdt, device=dev) if sig_dep else None
        dummy = next(t for t in (S, T, GS) if t is not None)
        grid = (nb_c * nb_d * n_split,)
        launch(_rbf_bwd_c_kernel)[grid](x, centers, sigma, prm, r2, p_ga, p_gr,
                                S if S is not None else dummy, T if T is not None else dummy,
                                GS if GS is not None else dummy, N, C, D, n_per, n_split, nb_d, kid, **flags,
                                NEED_S=need_s, NEED_T=need_t, NEED_SIG=sig_dep, ACC=ACC, num_warps=4, BN=BN, BC=BC, BD=BD)
        if need_s:
            S = S.sum(0)
            if tril is not None:
                g = -2 * (M @ S.to(torch.float64).unsqueeze(-1)).squeeze(-1)
            elif diag is not None:
                g = -2 * diag.to(tdt) * S
            else:
                g = -2 * S
            gc = g.to(centers.dtype)
        if need_t:
            T = T.sum(0)
            gw = (T if diag.dim() == 2 else T.sum(0)).to(diag.dtype)
        if sig_dep:
            gs = GS.sum(0).to(sigma.dtype)

    if need_l and D > 0:
        blk = _pick_blocks(N, C, D, "bwd_cov_tril")
        nb_d = triton.cdiv(D, blk["BD"])
        if tril.dim() == 3:
            n_grp, c_per = C, 1
        else:
            n_grp = min(C, max(1, _TARGET_PROGRAMS // (nb_d * nb_d)))
            c_per = triton.cdiv(C, n_grp)
            n_grp = triton.cdiv(C, c_per)
        n_split, n_per = _n_split(n_grp * nb_d * nb_d, N, blk["BN"])
        cov = torch.empty((n_grp, n_split, D, D), dtype=tdt, device=dev)
        grid = (n_grp * n_split * nb_d * nb_d,)
        launch(_rbf_bwd_cov_tril_kernel)[grid](x, centers, sigma, prm, r2, p_ga, p_gr, cov, N, C, D, c_per, n_per,
                                       n_split, kid, **flags, ACC=ACC,
                                       **_tril_opts("bwd_cov_tril", dt), **blk)
        cov = cov.sum(1)
        if tril.dim() == 2:
            cov = cov.sum(0)
        gl = torch.tril(2 * (cov.to(torch.float64) @ ltri)).to(tril.dtype)

    return result()


def aot_specs():
    """(name, kernel, signature, constexprs, options) for every kernel and constexpr variant,
    with the tiles _pick_blocks chooses for large shapes: all in float32 and bfloat16, the
    tl.dot (tril) kernels and one 3D kernel also in float64 (DMMA / fp64 math lowering)."""
    blk = {k: _pick_blocks(1 << 16, 1024, 64, k)
           for k in ("fwd", "bwd_x", "bwd_c", "fwd_tril", "bwd_x_tril", "bwd_cov_tril")}
    opts = {"num_warps": 4}
    ce, i32 = "constexpr", "i32"
    grads = dict(HAS_GA=True, HAS_GR=True)  # both gradient terms: the longest variant
    specs = []
    for dt in ("fp32", "bf16", "fp64"):
        p = "*" + dt
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[dt]
        pa = "*fp64" if dt == "fp64" else "*fp32"
        acc = tl.float64 if dt == "fp64" else tl.float32
        full = dt != "fp64"
        for metric in (0, 1):
            s = dict(x=p, c=p, w=p, sig=p, prm=pa, r2=p, act=p, N=i32, C=i32, D=i32, stride_wc=i32,
                     kind=i32, need_act=i32, METRIC=ce, ACC=ce, BN=ce, BC=ce, BD=ce)
            if full or metric == 1:
                specs.append((f"rbf_fwd_m{metric}_{dt}", _rbf_fwd_kernel, s,
                              dict(METRIC=metric, ACC=acc, **blk["fwd"]), opts))
            s = dict(x=p, c=p, w=p, sig=p, prm=pa, r2=p, ga=p, gr=p, gx=p, N=i32, C=i32, D=i32, stride_wc=i32,
                     kind=i32, HAS_GA=ce, HAS_GR=ce, METRIC=ce, ACC=ce, BN=ce, BC=ce, BD=ce)
            if full:
                specs.append((f"rbf_bwd_x_m{metric}_{dt}", _rbf_bwd_x_kernel, s,
                              dict(METRIC=metric, ACC=acc, **grads, **blk["bwd_x"]), opts))
        s = dict(x=p, c=p, L=p, sig=p, prm=pa, r2=p, act=p, N=i32, C=i32, D=i32, stride_lc=i32, kind=i32,
                 need_act=i32, ACC=ce, BN=ce, BD=ce)
        specs.append((f"rbf_fwd_tril_{dt}", _rbf_fwd_tril_kernel, s, dict(ACC=acc, **blk["fwd_tril"]),
                      _tril_opts("fwd_tril", tdt)))
        s = dict(x=p, c=p, M=pa, sig=p, prm=pa, r2=p, ga=p, gr=p, gx=p, N=i32, C=i32, D=i32, stride_mc=i32,
                 kind=i32, HAS_GA=ce, HAS_GR=ce, ACC=ce, BN=ce, BD=ce)
        specs.append((f"rbf_bwd_x_tril_{dt}", _rbf_bwd_x_tril_kernel, s, dict(ACC=acc, **grads, **blk["bwd_x_tril"]),
                      _tril_opts("bwd_x_tril", tdt)))
        s = dict(x=p, c=p, sig=p, prm=pa, r2=p, ga=p, gr=p, s_out=pa, t_out=pa, gs_out=pa, N=i32, C=i32, D=i32,
                 n_per=i32, n_split=i32, nb_d=i32, kind=i32, HAS_GA=ce, HAS_GR=ce, NEED_S=ce, NEED_T=ce,
                 NEED_SIG=ce, ACC=ce, BN=ce, BC=ce, BD=ce)
        if full:
            specs.append((f"rbf_bwd_c_{dt}", _rbf_bwd_c_kernel, s,
                          dict(ACC=acc, **grads, NEED_S=True, NEED_T=True, NEED_SIG=True, **blk["bwd_c"]), opts))
        s = dict(x=p, c=p, sig=p, prm=pa, r2=p, ga=p, gr=p, cov=pa, N=i32, C=i32, D=i32, c_per=i32, n_per=i32,
                 n_split=i32, kind=i32, HAS_GA=ce, HAS_GR=ce, ACC=ce, BN=ce, BD=ce)
        specs.append((f"rbf_bwd_cov_tril_{dt}", _rbf_bwd_cov_tril_kernel, s,
                      dict(ACC=acc, **grads, **blk["bwd_cov_tril"]),
                      _tril_opts("bwd_cov_tril", tdt)))
    return specs + rbf_gemm().aot_specs() + rbf_gemm_bwd().aot_specs()
