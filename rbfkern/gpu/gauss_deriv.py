"""Triton kernels for the Gaussian-derivative basis convolution (``gauss_deriv_conv2d``).

x [N, Ci, H, W], alpha [Co, Ci*S*M], flipped 1D taps f [S, O1, K] (f[a] = g(R - a)), output
[N, Co, Ho, Wo]. One program owns a BH x BW tile of output pixels (16 x 16) of one image.

Separable passes as banded matrix products, so both run on tl.dot:
  row pass   R_p [BHK, BW] = X [BHK, BWK] @ U_p [BWK, BW],   U_p[c, xo] = f[s, p, c - xo*st]
  col pass   Z_pq [BH, BW] = T_q [BH, BHK] @ R_p [BHK, BW],  T_q[t, r] = f[s, q, r - t*st]
with X the zero-padded input window of the tile (BHK >= (BH-1)*st + K rows, BWK likewise).
The basis responses Z live in registers only: the forward adds alpha[:, i, s*M+b] * Z_pq into
the [BCO, BH, BW] output accumulator for every (i, s, p, q).

Kernels:
  _gd_fwd_kernel   grid (N * tiles, Co blocks): loops over input channels and scales.
  _gd_bwd_kernel   grid (N * tiles, Ci): recomputes R and Z per (s, p, q), then
                   galpha[o, col] = <G, Z> (per Co block), dZ = sum_o alpha G,
                   gf[q] += band-sums of dZ R_p^T, dR_p += T_q^T dZ, gf[p] += band-sums of X^T dR_p.
  _gd3_fwd_kernel  3D, grid (N * Do * tiles, Co blocks): one output slice zo per program; per depth
                   tap a the 2D passes of input slice zo*st - pad + a give Z2_pq, added with the
                   coefficients sum_t alpha[o, (p,q,t)] f_t[a] (the z pass folded into the
                   recombination; each slice's x/y passes are redone for each of the K slices
                   that read it).
  _gd3_bwd_kernel  3D galpha and tap gradients, grid (N * Do * tiles, Ci), the same loop.

Deterministic backward (no atomics): every program writes its own partials (galpha columns of its
input channel per tile, tap gradients per program), which torch sums in a fixed order; gx is the
forward kernel applied to the (stride-dilated) output gradient with the taps mirrored and alpha
transposed (the transposed separable convolution is itself a separable convolution).
"""
import torch
import triton
import triton.language as tl

from .. import basis
from . import _interpreter
from ._launch import launch

_interpreter.apply()

BH, BW = 16, 16
# Forward (and grad x, which is the forward): output channels per program and launch options.
# With the (p, q[, t]) loops unrolled (tl.static_range) ptxas gave up on registers (32 registers,
# 4.8-13 KB of stack); as loops, BCO = 32 at 4 warps still spilled, and below 255 registers ptxas
# kept spilling outer-loop values to the stack unless the cap is stated (maxnreg); pipelining the
# x tile over the channel loop (num_stages > 1) left 8 B at K = 33 on sm_80. Wide input windows
# (BWK > 32, e.g. K = 33) hold more of the x tile per thread: 8 channels per program there.
_FWD_OPTS = {"num_warps": 8, "num_stages": 1, "maxnreg": 255}


def _fwd_bco(bwk):
    return 16 if bwk <= 32 else 8


# Backward (galpha / tap gradients): the (p, q[, t]) loops are loops for the same reason (unrolled:
# 16 B - 1.9 KB of stack); 8 warps with the register cap stated; 8 output channels per step of the
# Co loop for 3D float64 (32 left 600-700 B of stack there).
_BWD_OPTS = {"num_warps": 8, "maxnreg": 255}


def _bwd_bco(nd, dtype):
    return 8 if nd == 3 and dtype == torch.float64 else 32


@triton.jit
def _band(f_ptr, o_rows, o_cols, st, K, ROWS_ARE_OUT: tl.constexpr):
    """Banded tap matrix: [t, r] -> f[r - t*st] (ROWS_ARE_OUT) or [c, xo] -> f[c - xo*st]."""
    if ROWS_ARE_OUT:
        b_idx = o_cols[None, :] - o_rows[:, None] * st
    else:
        b_idx = o_rows[:, None] - o_cols[None, :] * st
    m_idx = (b_idx >= 0) & (b_idx < K)
    return tl.load(f_ptr + b_idx, mask=m_idx, other=0.0), b_idx, m_idx


@triton.jit
def _tile(i_nt, Ho, n_tw, st, pad, H, W, BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr,
          BWK: tl.constexpr):
    """Program i_nt's tile: (its output plane: the image in 2D, image * Do + output slice in 3D;
    its first output row t0 and column x0; the offsets in an H x W input slice of its zero-padded
    input window X and their in-bounds mask)."""
    n_tiles = tl.cdiv(Ho, BH) * n_tw
    i_t = i_nt % n_tiles
    t0 = (i_t // n_tw) * BH
    x0 = (i_t % n_tw) * BW
    y_in = t0 * st - pad + tl.arange(0, BHK)
    x_in = x0 * st - pad + tl.arange(0, BWK)
    m_x = ((y_in >= 0) & (y_in < H))[:, None] & ((x_in >= 0) & (x_in < W))[None, :]
    return i_nt // n_tiles, t0, x0, y_in[:, None] * W + x_in[None, :], m_x


@triton.jit
def _output_block(t0, x0, Ho, Wo, plane, m_co, BH: tl.constexpr, BW: tl.constexpr):
    """Offsets and mask of the [BCO, BH, BW] output block of the tile at (t0, x0), output planes
    ``plane`` [BCO] (int64) of Ho x Wo each."""
    o_yo = t0 + tl.arange(0, BH)
    o_xo = x0 + tl.arange(0, BW)
    m_pix = (o_yo < Ho)[:, None] & (o_xo < Wo)[None, :]
    off = plane[:, None, None] * Ho * Wo + o_yo[None, :, None] * Wo + o_xo[None, None, :]
    return off, m_co[:, None, None] & m_pix[None, :, :]


@triton.jit
def _row_pass(b_x, f, s, p, K, st, ORDER: tl.constexpr, ACC: tl.constexpr, BW: tl.constexpr, BWK: tl.constexpr):
    """R_p = X U_p at scale s: (R_p, the band index of U_p and its mask)."""
    b_u, b_iu, m_iu = _band(f + (s * (ORDER + 1) + p) * K, tl.arange(0, BWK), tl.arange(0, BW), st, K, False)
    return tl.dot(b_x, b_u.to(ACC), input_precision="ieee", out_dtype=ACC), b_iu, m_iu


@triton.jit
def _col_pass(b_r, f, s, q, K, st, ORDER: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BHK: tl.constexpr):
    """Z_pq = T_q R_p at scale s: (Z_pq, T_q, the band index of T_q and its mask)."""
    b_tq, b_it, m_it = _band(f + (s * (ORDER + 1) + q) * K, tl.arange(0, BH), tl.arange(0, BHK), st, K, True)
    b_tq = b_tq.to(ACC)
    return tl.dot(b_tq, b_r, input_precision="ieee", out_dtype=ACC), b_tq, b_it, m_it


@triton.jit
def _gd_fwd_kernel(x, a, f, out, Ci, H, W, Co, Ho, Wo, S, K, J, st, pad, n_tw,
                   ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                   BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr):
    i_nt, i_co = tl.program_id(0), tl.program_id(1)
    i_n, t0, x0, o_win, m_x = _tile(i_nt, Ho, n_tw, st, pad, H, W, BH, BW, BHK, BWK)
    o_co = i_co * BCO + tl.arange(0, BCO)
    m_co = o_co < Co
    b_acc = tl.zeros([BCO, BH, BW], dtype=ACC)
    for i in range(Ci):
        b_x = tl.load(x + (i_n * Ci + i).to(tl.int64) * H * W + o_win, mask=m_x, other=0.0).to(ACC)
        for s in range(S):
            for p in range(ORDER + 1):
                b_r, _iu, _mu = _row_pass(b_x, f, s, p, K, st, ORDER, ACC, BW, BWK)
                for q in range(ORDER + 1 - p):
                    b_z, _tq, _it, _mt = _col_pass(b_r, f, s, q, K, st, ORDER, ACC, BH, BHK)
                    bi = (p + q) * (p + q + 1) // 2 + q
                    b_a = tl.load(a + o_co * J + (i * S + s) * M + bi, mask=m_co, other=0.0).to(ACC)
                    b_acc += b_a[:, None, None] * b_z[None, :, :]
    off, m_o = _output_block(t0, x0, Ho, Wo, (i_n * Co + o_co).to(tl.int64), m_co, BH, BW)
    tl.store(out + off, b_acc.to(out.dtype.element_ty), mask=m_o)


@triton.jit
def _band_sum_into(acc, b, idx, m, row, K, O1P: tl.constexpr, KP: tl.constexpr):
    """acc[row, v] += sum of b over the entries whose band index idx equals v (v < K): the
    gradient of a banded tap matrix, in a fixed order (no atomics)."""
    o_m = tl.arange(0, O1P)
    o_k = tl.arange(0, KP)
    for v in range(K):
        val = tl.sum(tl.sum(tl.where(m & (idx == v), b, 0.0), axis=1), axis=0)
        acc += tl.where((o_m[:, None] == row) & (o_k[None, :] == v), val, 0.0)
    return acc


@triton.jit
def _col_pass_grads(need_f, b_f, b_dr, b_dz, b_r, b_tq, b_it, m_it, q, K, O1P: tl.constexpr, KP: tl.constexpr,
                    ACC: tl.constexpr):
    """Back through Z_pq = T_q R_p given dZ, when the taps need a gradient (need_f): the y-role
    taps' gradient (d/df[v] of Z sums (dZ R_p^T)[t, r] over r - t*st = v) into row q of b_f, and
    T_q^T dZ into dR_p."""
    if need_f:
        b_d = tl.dot(b_dz, tl.trans(b_r), input_precision="ieee", out_dtype=ACC)
        b_f = _band_sum_into(b_f, b_d, b_it, m_it, q, K, O1P, KP)
        b_dr += tl.dot(tl.trans(b_tq), b_dz, input_precision="ieee", out_dtype=ACC)
    return b_f, b_dr


@triton.jit
def _row_pass_grads(need_f, b_f, b_x, b_dr, b_iu, m_iu, p, K, O1P: tl.constexpr, KP: tl.constexpr,
                    ACC: tl.constexpr):
    """Back through R_p = X U_p given dR_p, when the taps need a gradient (need_f): the x-role
    taps' gradient (d/df[u] of R sums (X^T dR)[c, xo] over c - xo*st = u) into row p of b_f."""
    if need_f:
        b_e = tl.dot(tl.trans(b_x), b_dr, input_precision="ieee", out_dtype=ACC)
        b_f = _band_sum_into(b_f, b_e, b_iu, m_iu, p, K, O1P, KP)
    return b_f


@triton.jit
def _store_tap_grads(need_f, p_gf, s, b_f, O1P: tl.constexpr, KP: tl.constexpr):
    if need_f:
        o_fm = tl.arange(0, O1P)
        o_fk = tl.arange(0, KP)
        tl.store(p_gf + s * O1P * KP + o_fm[:, None] * KP + o_fk[None, :], b_f)


@triton.jit
def _gd_bwd_kernel(g, x, a, f, ga, gf, Ci, H, W, Co, Ho, Wo, S, K, J, st, pad, n_tw,
                   need_a, need_f,
                   ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                   BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr,
                   O1P: tl.constexpr, KP: tl.constexpr):
    """ga: partials (N * tiles, Co, J), program (tile, i) owns the columns of channel i;
    gf: partials (N * tiles * Ci, S, O1P, KP)."""
    i_nt, i = tl.program_id(0), tl.program_id(1)
    i_n, t0, x0, o_win, m_x = _tile(i_nt, Ho, n_tw, st, pad, H, W, BH, BW, BHK, BWK)
    b_x = tl.load(x + (i_n * Ci + i).to(tl.int64) * H * W + o_win, mask=m_x, other=0.0).to(ACC)
    p_gf = gf + (i_nt.to(tl.int64) * Ci + i) * S * O1P * KP
    for s in range(S):
        b_f = tl.zeros([O1P, KP], dtype=ACC)
        for p in range(ORDER + 1):
            b_r, b_iu, m_iu = _row_pass(b_x, f, s, p, K, st, ORDER, ACC, BW, BWK)
            b_dr = tl.zeros([BHK, BW], dtype=ACC)
            for q in range(ORDER + 1 - p):
                b_z, b_tq, b_it, m_it = _col_pass(b_r, f, s, q, K, st, ORDER, ACC, BH, BHK)
                bi = (p + q) * (p + q + 1) // 2 + q
                col = (i * S + s) * M + bi
                b_dz = tl.zeros([BH, BW], dtype=ACC)
                for c0 in range(0, Co, BCO):
                    o_co = c0 + tl.arange(0, BCO)
                    m_co = o_co < Co
                    off, m_g = _output_block(t0, x0, Ho, Wo, (i_n * Co + o_co).to(tl.int64), m_co, BH, BW)
                    b_g = tl.load(g + off, mask=m_g, other=0.0).to(ACC)
                    if need_a:
                        b_ga = tl.sum(tl.sum(b_g * b_z[None, :, :], axis=2), axis=1)
                        tl.store(ga + (i_nt.to(tl.int64) * Co + o_co) * J + col, b_ga, mask=m_co)
                    b_a = tl.load(a + o_co * J + col, mask=m_co, other=0.0).to(ACC)
                    b_dz += tl.sum(b_a[:, None, None] * b_g, axis=0)
                b_f, b_dr = _col_pass_grads(need_f, b_f, b_dr, b_dz, b_r, b_tq, b_it, m_it, q, K, O1P, KP, ACC)
            b_f = _row_pass_grads(need_f, b_f, b_x, b_dr, b_iu, m_iu, p, K, O1P, KP, ACC)
        _store_tap_grads(need_f, p_gf, s, b_f, O1P, KP)


@triton.jit
def _basis_index_3d(p, q, t):
    """The index of (p, q, t) in rbfkern.basis.derivative_orders_3d: the members of lower total
    degree n come first, then within degree n p descending, then q descending."""
    n = p + q + t
    return n * (n + 1) * (n + 2) // 6 + (n - p) * (n - p + 1) // 2 + (n - p - q)


@triton.jit
def _gd3_fwd_kernel(x, a, f, out, Ci, D, H, W, Co, Do, Ho, Wo, S, K, J, st, pad, n_tw,
                    ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                    BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr):
    i_nt, i_co = tl.program_id(0), tl.program_id(1)
    i_nz, t0, x0, o_win, m_x = _tile(i_nt, Ho, n_tw, st, pad, H, W, BH, BW, BHK, BWK)
    i_n = i_nz // Do
    zo = i_nz % Do
    o_co = i_co * BCO + tl.arange(0, BCO)
    m_co = o_co < Co
    b_acc = tl.zeros([BCO, BH, BW], dtype=ACC)
    for i in range(Ci):
        for az in range(K):
            z_in = zo * st - pad + az
            if (z_in >= 0) & (z_in < D):
                p_x = x + ((i_n * Ci + i).to(tl.int64) * D + z_in) * H * W + o_win
                b_x = tl.load(p_x, mask=m_x, other=0.0).to(ACC)
                for s in range(S):
                    for p in range(ORDER + 1):
                        b_r, _iu, _mu = _row_pass(b_x, f, s, p, K, st, ORDER, ACC, BW, BWK)
                        for q in range(ORDER + 1 - p):
                            b_z, _tq, _it, _mt = _col_pass(b_r, f, s, q, K, st, ORDER, ACC, BH, BHK)
                            b_c = tl.zeros([BCO], dtype=ACC)
                            for t in range(ORDER + 1 - p - q):
                                bi = _basis_index_3d(p, q, t)
                                f_t = tl.load(f + (s * (ORDER + 1) + t) * K + az).to(ACC)
                                b_a = tl.load(a + o_co * J + (i * S + s) * M + bi, mask=m_co, other=0.0).to(ACC)
                                b_c += f_t * b_a
                            b_acc += b_c[:, None, None] * b_z[None, :, :]
    off, m_o = _output_block(t0, x0, Ho, Wo, (i_n * Co + o_co).to(tl.int64) * Do + zo, m_co, BH, BW)
    tl.store(out + off, b_acc.to(out.dtype.element_ty), mask=m_o)


@triton.jit
def _gd3_bwd_kernel(g, x, a, f, ga, gf, Ci, D, H, W, Co, Do, Ho, Wo, S, K, J, st, pad, n_tw,
                    need_a, need_f,
                    ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                    BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr,
                    O1P: tl.constexpr, KP: tl.constexpr):
    """ga: partials (N * Do * tiles, Co, J) (zero-initialised; program (tile, i) owns channel i's
    columns and adds over its depth taps); gf: partials (N * Do * tiles * Ci, S, O1P, KP)."""
    i_nt, i = tl.program_id(0), tl.program_id(1)
    i_nz, t0, x0, o_win, m_x = _tile(i_nt, Ho, n_tw, st, pad, H, W, BH, BW, BHK, BWK)
    i_n = i_nz // Do
    zo = i_nz % Do
    o_fm = tl.arange(0, O1P)
    o_fk = tl.arange(0, KP)
    p_gf = gf + (i_nt.to(tl.int64) * Ci + i) * S * O1P * KP
    for s in range(S):
        b_f = tl.zeros([O1P, KP], dtype=ACC)
        for az in range(K):
            z_in = zo * st - pad + az
            if (z_in >= 0) & (z_in < D):
                p_x = x + ((i_n * Ci + i).to(tl.int64) * D + z_in) * H * W + o_win
                b_x = tl.load(p_x, mask=m_x, other=0.0).to(ACC)
                for p in range(ORDER + 1):
                    b_r, b_iu, m_iu = _row_pass(b_x, f, s, p, K, st, ORDER, ACC, BW, BWK)
                    b_dr = tl.zeros([BHK, BW], dtype=ACC)
                    for q in range(ORDER + 1 - p):
                        b_z, b_tq, b_it, m_it = _col_pass(b_r, f, s, q, K, st, ORDER, ACC, BH, BHK)
                        b_dz = tl.zeros([BH, BW], dtype=ACC)
                        for c0 in range(0, Co, BCO):
                            o_co = c0 + tl.arange(0, BCO)
                            m_co = o_co < Co
                            plane = (i_n * Co + o_co).to(tl.int64) * Do + zo
                            off, m_g = _output_block(t0, x0, Ho, Wo, plane, m_co, BH, BW)
                            b_g = tl.load(g + off, mask=m_g, other=0.0).to(ACC)
                            b_v = tl.sum(tl.sum(b_g * b_z[None, :, :], axis=2), axis=1)  # <G_o, Z2_pq(a)>
                            b_w = tl.zeros([BCO], dtype=ACC)
                            for t in range(ORDER + 1 - p - q):
                                col = (i * S + s) * M + _basis_index_3d(p, q, t)
                                f_t = tl.load(f + (s * (ORDER + 1) + t) * K + az).to(ACC)
                                b_a = tl.load(a + o_co * J + col, mask=m_co, other=0.0).to(ACC)
                                if need_a:
                                    p_ga = ga + (i_nt.to(tl.int64) * Co + o_co) * J + col
                                    tl.store(p_ga, tl.load(p_ga, mask=m_co, other=0.0) + f_t * b_v, mask=m_co)
                                if need_f:
                                    # z-role tap a of order t: sum_o alpha_o <G_o, Z2>
                                    b_f += tl.where((o_fm[:, None] == t) & (o_fk[None, :] == az),
                                                    tl.sum(b_a * b_v, axis=0), 0.0)
                                b_w += f_t * b_a
                            b_dz += tl.sum(b_w[:, None, None] * b_g, axis=0)
                        b_f, b_dr = _col_pass_grads(need_f, b_f, b_dr, b_dz, b_r, b_tq, b_it, m_it, q, K, O1P, KP, ACC)
                    b_f = _row_pass_grads(need_f, b_f, b_x, b_dr, b_iu, m_iu, p, K, O1P, KP, ACC)
        _store_tap_grads(need_f, p_gf, s, b_f, O1P, KP)


# ---------------------------------------------------------------------------------------------
# Launchers (interface of rbfkern.ops.gauss_deriv._Cpp: g is the unflipped taps (S, O1, K); x of
# rank 5 is the 3D op)
# ---------------------------------------------------------------------------------------------


def _np2(n):
    return max(16, triton.next_power_of_2(int(n)))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_common(x, alpha, g, order, stride):
    nd = x.dim() - 2
    k = g.shape[-1]
    co = alpha.shape[0]
    f = g.flip(-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    a = alpha.reshape(co, -1).contiguous()
    cex = dict(ORDER=order, M=basis.num_basis(order, nd), ACC=_acc(x.dtype), BCO=min(32, triton.next_power_of_2(co)),
               BH=BH, BW=BW, BHK=_np2((BH - 1) * stride + k), BWK=_np2((BW - 1) * stride + k))
    return nd, k, co, f, a, cex


def forward(x, alpha, g, order, stride, pad):
    nd, k, co, f, a, cex = _launch_common(x, alpha, g, order, stride)
    outs = [(d + 2 * pad - k) // stride + 1 for d in x.shape[2:]]
    out = x.new_empty(x.shape[0], co, *outs)
    if out.numel() == 0:
        return out
    ho, wo = outs[-2:]
    n_tw = triton.cdiv(wo, BW)
    cex["BCO"] = min(_fwd_bco(cex["BWK"]), triton.next_power_of_2(co))
    if nd == 2:
        grid = (x.shape[0] * triton.cdiv(ho, BH) * n_tw, triton.cdiv(co, cex["BCO"]))
        launch(_gd_fwd_kernel)[grid](x, a, f, out, x.shape[1], *x.shape[2:], co, ho, wo, g.shape[0], k, a.shape[1],
                             stride, pad, n_tw, **cex, **_FWD_OPTS)
    else:
        grid = (x.shape[0] * outs[0] * triton.cdiv(ho, BH) * n_tw, triton.cdiv(co, cex["BCO"]))
        launch(_gd3_fwd_kernel)[grid](x, a, f, out, x.shape[1], *x.shape[2:], co, *outs,
                              g.shape[0], k, a.shape[1], stride, pad, n_tw, **cex, **_FWD_OPTS)
    return out


def _grad_input(grad, x, alpha, g, order, stride, pad):
    """gx = the transposed op = the forward on grad dilated by the stride, padded by K-1-pad (a
    negative amount crops) so that the output has x's size, with mirrored taps and alpha^T."""
    k = g.shape[-1]
    nd = x.dim() - 2
    if stride > 1:
        gd = grad.new_zeros(*grad.shape[:2], *((s - 1) * stride + 1 for s in grad.shape[2:]))
        gd[(slice(None), slice(None)) + (slice(None, None, stride),) * nd] = grad
    else:
        gd = grad
    pads = []
    for size, ld in zip(reversed(x.shape[2:]), reversed(gd.shape[2:])):
        lo = k - 1 - pad
        pads += [lo, size + k - 1 - lo - ld]
    gp = torch.nn.functional.pad(gd, pads).contiguous()
    return forward(gp, alpha.transpose(0, 1).contiguous(), g.flip(-1), order, 1, 0)


def backward(grad, x, alpha, g, order, stride, pad, needs):
    nd, k, co, f, a, cex = _launch_common(x, alpha, g, order, stride)
    ci = x.shape[1]
    acc = f.dtype
    outs = list(grad.shape[2:])
    ho, wo = outs[-2:]
    gx = ga = gf = None
    if needs[0]:
        gx = _grad_input(grad, x, alpha, g, order, stride, pad) if grad.numel() else torch.zeros_like(x)
    if needs[1] or needs[2]:
        n_tw = triton.cdiv(wo, BW)
        nprog = x.shape[0] * (outs[0] if nd == 3 else 1) * triton.cdiv(ho, BH) * n_tw
        o1p, kp = triton.next_power_of_2(order + 1), triton.next_power_of_2(k)
        ga_part = torch.zeros(nprog if needs[1] else 1, co, a.shape[1], dtype=acc, device=x.device)
        gf_part = torch.zeros(nprog * ci if needs[2] else 1, g.shape[0], o1p, kp, dtype=acc, device=x.device)
        if grad.numel() and ci:
            args = (grad, x, a, f, ga_part, gf_part, ci)
            args += tuple(x.shape[2:]) + (co, *outs, g.shape[0], k, a.shape[1], stride, pad, n_tw,
                                            int(needs[1]), int(needs[2]))
            kern = _gd_bwd_kernel if nd == 2 else _gd3_bwd_kernel
            cex["BCO"] = min(_bwd_bco(nd, x.dtype), triton.next_power_of_2(co))
            launch(kern)[(nprog, ci)](*args, O1P=o1p, KP=kp, **cex, **_BWD_OPTS)
        # fixed-order reductions of the per-program partials
        if needs[1]:
            ga = ga_part.sum(0).reshape(alpha.shape).to(x.dtype)
        if needs[2]:
            gf = gf_part.sum(0)[:, : order + 1, :k].flip(-1)
    return gx, ga, gf


def aot_specs():
    """(name, kernel, signature, constexprs, options): 2D forward and backward for order 3 at
    stride 1: float32 at sigma 2 (K = 17) and sigma 4 (K = 33), bfloat16 and float64 at K = 17;
    3D forward and backward for order 2 (the 3D default) at K = 9 (sigma 1) in float32 and
    float64. (The basis loops are not unrolled, so these compile in seconds; the grid stays small
    all the same.)"""
    i32, ce = "i32", "constexpr"
    specs = []

    def cex_of(order, nd, k, acc):
        return dict(ORDER=order, M=basis.num_basis(order, nd), ACC=acc, BCO=32, BH=BH, BW=BW,
                    BHK=_np2(BH - 1 + k), BWK=_np2(BW - 1 + k))

    for dt in ("fp32", "bf16", "fp64"):
        p = "*" + dt
        pa = "*fp64" if dt == "fp64" else "*fp32"
        acc = tl.float64 if dt == "fp64" else tl.float32
        for k in ((17, 33) if dt == "fp32" else (17,)):
            cex = cex_of(3, 2, k, acc)
            sig = dict(x=p, a=p, f=pa, out=p, Ci=i32, H=i32, W=i32, Co=i32, Ho=i32, Wo=i32, S=i32, K=i32, J=i32,
                       st=i32, pad=i32, n_tw=i32, **{c: ce for c in cex})
            specs.append((f"gd_fwd_k{k}_{dt}", _gd_fwd_kernel, sig, dict(cex, BCO=_fwd_bco(cex["BWK"])), dict(_FWD_OPTS)))
            cexb = dict(cex, O1P=4, KP=triton.next_power_of_2(k))
            sig = dict(g=p, x=p, a=p, f=pa, ga=pa, gf=pa, Ci=i32, H=i32, W=i32, Co=i32, Ho=i32, Wo=i32,
                       S=i32, K=i32, J=i32, st=i32, pad=i32, n_tw=i32, need_a=i32, need_f=i32,
                       **{c: ce for c in cexb})
            specs.append((f"gd_bwd_k{k}_{dt}", _gd_bwd_kernel, sig, cexb, dict(_BWD_OPTS)))
    for dt in ("fp32", "fp64"):
        p = "*" + dt
        acc = tl.float64 if dt == "fp64" else tl.float32
        k = 9
        cex = cex_of(2, 3, k, acc)
        sig = dict(x=p, a=p, f=p, out=p, Ci=i32, D=i32, H=i32, W=i32, Co=i32, Do=i32, Ho=i32, Wo=i32,
                   S=i32, K=i32, J=i32, st=i32, pad=i32, n_tw=i32, **{c: ce for c in cex})
        specs.append((f"gd3_fwd_k{k}_{dt}", _gd3_fwd_kernel, sig, dict(cex, BCO=_fwd_bco(cex["BWK"])), dict(_FWD_OPTS)))
        cexb = dict(cex, O1P=4, KP=16, BCO=_bwd_bco(3, torch.float64 if dt == "fp64" else torch.float32))
        sig = dict(g=p, x=p, a=p, f=p, ga=p, gf=p, Ci=i32, D=i32, H=i32, W=i32, Co=i32, Do=i32,
                   Ho=i32, Wo=i32, S=i32, K=i32, J=i32, st=i32, pad=i32, n_tw=i32, need_a=i32, need_f=i32,
                   **{c: ce for c in cexb})
        specs.append((f"gd3_bwd_k{k}_{dt}", _gd3_bwd_kernel, sig, cexb, dict(_BWD_OPTS)))
    return specs
