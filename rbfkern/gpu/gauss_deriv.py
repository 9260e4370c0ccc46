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
  _gd_fwd_kernel  grid (N * tiles, Co blocks): loops over input channels and scales.
  _gd_bwd_kernel  grid (N * tiles, Ci): recomputes R and Z per (s, p, q), then
                  galpha += <G, Z> (per Co block), dZ = sum_o alpha G,
                  gf[q] += band-sums of dZ R_p^T, dR_p += T_q^T dZ,
                  gf[p] += band-sums of X^T dR_p, dX += dR_p U_p^T.
                  gx (overlapping tile windows), galpha and gf are accumulated with atomics
                  in the accumulation dtype.
"""
import torch
import triton
import triton.language as tl

from .. import basis

BH, BW = 16, 16


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
def _gd_fwd_kernel(x, a, f, out, Ci, H, W, Co, Ho, Wo, S, K, J, st, pad, n_tw,
                   ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                   BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr):
    i_nt, i_co = tl.program_id(0), tl.program_id(1)
    n_tiles = tl.cdiv(Ho, BH) * n_tw
    i_n = i_nt // n_tiles
    i_t = i_nt % n_tiles
    t0 = (i_t // n_tw) * BH
    x0 = (i_t % n_tw) * BW
    o_t = tl.arange(0, BH)
    o_x = tl.arange(0, BW)
    o_r = tl.arange(0, BHK)
    o_c = tl.arange(0, BWK)
    o_co = i_co * BCO + tl.arange(0, BCO)
    m_co = o_co < Co
    y_in = t0 * st - pad + o_r
    x_in = x0 * st - pad + o_c
    m_x = ((y_in >= 0) & (y_in < H))[:, None] & ((x_in >= 0) & (x_in < W))[None, :]
    b_acc = tl.zeros([BCO, BH, BW], dtype=ACC)
    for i in range(Ci):
        p_x = x + (i_n * Ci + i).to(tl.int64) * H * W + y_in[:, None] * W + x_in[None, :]
        b_x = tl.load(p_x, mask=m_x, other=0.0).to(ACC)
        for s in range(S):
            for p in tl.static_range(ORDER + 1):
                b_u, _, _ = _band(f + (s * (ORDER + 1) + p) * K, o_c, o_x, st, K, False)
                b_r = tl.dot(b_x, b_u.to(ACC), input_precision="ieee", out_dtype=ACC)
                for q in tl.static_range(ORDER + 1 - p):
                    b_tq, _, _ = _band(f + (s * (ORDER + 1) + q) * K, o_t, o_r, st, K, True)
                    b_z = tl.dot(b_tq.to(ACC), b_r, input_precision="ieee", out_dtype=ACC)
                    bi = (p + q) * (p + q + 1) // 2 + q
                    b_a = tl.load(a + o_co * J + (i * S + s) * M + bi, mask=m_co, other=0.0).to(ACC)
                    b_acc += b_a[:, None, None] * b_z[None, :, :]
    o_yo = t0 + o_t
    o_xo = x0 + o_x
    m_o = m_co[:, None, None] & (o_yo < Ho)[None, :, None] & (o_xo < Wo)[None, None, :]
    p_o = out + (i_n * Co + o_co[:, None, None]).to(tl.int64) * Ho * Wo + o_yo[None, :, None] * Wo + o_xo[None, None, :]
    tl.store(p_o, b_acc.to(out.dtype.element_ty), mask=m_o)


@triton.jit
def _gd_bwd_kernel(g, x, a, f, gx, ga, gf, Ci, H, W, Co, Ho, Wo, S, K, J, st, pad, n_tw,
                   need_x, need_a, need_f,
                   ORDER: tl.constexpr, M: tl.constexpr, ACC: tl.constexpr, BCO: tl.constexpr,
                   BH: tl.constexpr, BW: tl.constexpr, BHK: tl.constexpr, BWK: tl.constexpr):
    i_nt, i = tl.program_id(0), tl.program_id(1)
    n_tiles = tl.cdiv(Ho, BH) * n_tw
    i_n = i_nt // n_tiles
    i_t = i_nt % n_tiles
    t0 = (i_t // n_tw) * BH
    x0 = (i_t % n_tw) * BW
    o_t = tl.arange(0, BH)
    o_x = tl.arange(0, BW)
    o_r = tl.arange(0, BHK)
    o_c = tl.arange(0, BWK)
    y_in = t0 * st - pad + o_r
    x_in = x0 * st - pad + o_c
    m_x = ((y_in >= 0) & (y_in < H))[:, None] & ((x_in >= 0) & (x_in < W))[None, :]
    o_xy = (i_n * Ci + i).to(tl.int64) * H * W + y_in[:, None] * W + x_in[None, :]
    b_x = tl.load(x + o_xy, mask=m_x, other=0.0).to(ACC)
    o_yo = t0 + o_t
    o_xo = x0 + o_x
    m_pix = (o_yo < Ho)[:, None] & (o_xo < Wo)[None, :]
    b_dx = tl.zeros([BHK, BWK], dtype=ACC)
    for s in range(S):
        for p in tl.static_range(ORDER + 1):
            p_fp = f + (s * (ORDER + 1) + p) * K
            b_u, b_iu, m_iu = _band(p_fp, o_c, o_x, st, K, False)
            b_u = b_u.to(ACC)
            b_r = tl.dot(b_x, b_u, input_precision="ieee", out_dtype=ACC)
            b_dr = tl.zeros([BHK, BW], dtype=ACC)
            for q in tl.static_range(ORDER + 1 - p):
                p_fq = f + (s * (ORDER + 1) + q) * K
                b_tq, b_it, m_it = _band(p_fq, o_t, o_r, st, K, True)
                b_tq = b_tq.to(ACC)
                b_z = tl.dot(b_tq, b_r, input_precision="ieee", out_dtype=ACC)
                bi = (p + q) * (p + q + 1) // 2 + q
                col = (i * S + s) * M + bi
                b_dz = tl.zeros([BH, BW], dtype=ACC)
                for c0 in range(0, Co, BCO):
                    o_co = c0 + tl.arange(0, BCO)
                    m_co = o_co < Co
                    m_g = m_co[:, None, None] & m_pix[None, :, :]
                    p_g = g + (i_n * Co + o_co[:, None, None]).to(tl.int64) * Ho * Wo \
                        + o_yo[None, :, None] * Wo + o_xo[None, None, :]
                    b_g = tl.load(p_g, mask=m_g, other=0.0).to(ACC)
                    if need_a:
                        b_ga = tl.sum(tl.sum(b_g * b_z[None, :, :], axis=2), axis=1)
                        tl.atomic_add(ga + o_co * J + col, b_ga, mask=m_co)
                    b_a = tl.load(a + o_co * J + col, mask=m_co, other=0.0).to(ACC)
                    b_dz += tl.sum(b_a[:, None, None] * b_g, axis=0)
                if need_f:
                    # y-role taps: d/df[v] of Z = T_q R_p sums (dZ R_p^T)[t, r] over r - t*st = v
                    b_d = tl.dot(b_dz, tl.trans(b_r), input_precision="ieee", out_dtype=ACC)
                    tl.atomic_add(gf + (s * (ORDER + 1) + q) * K + b_it, b_d, mask=m_it)
                b_dr += tl.dot(tl.trans(b_tq), b_dz, input_precision="ieee", out_dtype=ACC)
            if need_f:
                # x-role taps: d/df[u] of R = X U_p sums (X^T dR)[c, xo] over c - xo*st = u
                b_e = tl.dot(tl.trans(b_x), b_dr, input_precision="ieee", out_dtype=ACC)
                tl.atomic_add(gf + (s * (ORDER + 1) + p) * K + b_iu, b_e, mask=m_iu)
            if need_x:
                b_dx += tl.dot(b_dr, tl.trans(b_u), input_precision="ieee", out_dtype=ACC)
    if need_x:
        tl.atomic_add(gx + o_xy, b_dx, mask=m_x)


# ---------------------------------------------------------------------------------------------
# Launchers (interface of rbfkern.ops.gauss_deriv._Cpp: g is the unflipped taps (S, O1, K))
# ---------------------------------------------------------------------------------------------


def _np2(n):
    return max(16, triton.next_power_of_2(int(n)))


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _geometry(x, g, stride, pad):
    n, ci, h, w = x.shape
    k = g.shape[-1]
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return n, ci, h, w, k, ho, wo


def forward(x, alpha, g, order, stride, pad):
    n, ci, h, w, k, ho, wo = _geometry(x, g, stride, pad)
    co = alpha.shape[0]
    m = basis.num_basis(order)
    f = g.flip(-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    a = alpha.reshape(co, -1).contiguous()
    out = x.new_empty(n, co, ho, wo)
    if out.numel() == 0:
        return out
    n_tw = triton.cdiv(wo, BW)
    bco = min(32, triton.next_power_of_2(co))
    grid = (n * triton.cdiv(ho, BH) * n_tw, triton.cdiv(co, bco))
    _gd_fwd_kernel[grid](
        x, a, f, out, ci, h, w, co, ho, wo, g.shape[0], k, a.shape[1], stride, pad, n_tw,
        ORDER=order, M=m, ACC=_acc(x.dtype), BCO=bco, BH=BH, BW=BW,
        BHK=_np2((BH - 1) * stride + k), BWK=_np2((BW - 1) * stride + k),
    )
    return out


def backward(grad, x, alpha, g, order, stride, pad, needs):
    n, ci, h, w, k, ho, wo = _geometry(x, g, stride, pad)
    co = alpha.shape[0]
    m = basis.num_basis(order)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    f = g.flip(-1).to(acc).contiguous()
    a = alpha.reshape(co, -1).contiguous()
    gx = torch.zeros(x.shape, dtype=acc, device=x.device)
    ga = torch.zeros(a.shape, dtype=acc, device=x.device)
    gf = torch.zeros(f.shape, dtype=acc, device=x.device)
    if grad.numel() and ci:
        n_tw = triton.cdiv(wo, BW)
        grid = (n * triton.cdiv(ho, BH) * n_tw, ci)
        _gd_bwd_kernel[grid](
            grad, x, a, f, gx, ga, gf, ci, h, w, co, ho, wo, g.shape[0], k, a.shape[1], stride, pad, n_tw,
            int(needs[0]), int(needs[1]), int(needs[2]),
            ORDER=order, M=m, ACC=_acc(x.dtype), BCO=min(32, triton.next_power_of_2(co)), BH=BH, BW=BW,
            BHK=_np2((BH - 1) * stride + k), BWK=_np2((BW - 1) * stride + k),
        )
    return (gx.to(x.dtype) if needs[0] else None, ga.reshape(alpha.shape).to(x.dtype) if needs[1] else None,
            gf.flip(-1) if needs[2] else None)


def aot_specs():
    """(name, kernel, signature, constexprs, options): forward and backward for order 3 at stride 1:
    float32 at sigma 2 (K = 17) and sigma 4 (K = 33), bfloat16 and float64 at K = 17. (The
    order-3 backward unrolls 10 basis members of 5 tl.dot each: ptxas takes minutes on 2 busy
    cores, so the grid stays small.)"""
    i32, ce = "i32", "constexpr"
    specs = []
    for dt in ("fp32", "bf16", "fp64"):
        p = "*" + dt
        pa = "*fp64" if dt == "fp64" else "*fp32"
        acc = tl.float64 if dt == "fp64" else tl.float32
        for k in ((17, 33) if dt == "fp32" else (17,)):
            cex = dict(ORDER=3, M=10, ACC=acc, BCO=32, BH=BH, BW=BW, BHK=_np2(BH - 1 + k), BWK=_np2(BW - 1 + k))
            sig = dict(x=p, a=p, f=pa, out=p, Ci=i32, H=i32, W=i32, Co=i32, Ho=i32, Wo=i32, S=i32, K=i32, J=i32,
                       st=i32, pad=i32, n_tw=i32, **{c: ce for c in cex})
            specs.append((f"gd_fwd_k{k}_{dt}", _gd_fwd_kernel, sig, cex, {"num_warps": 4}))
            sig = dict(g=p, x=p, a=p, f=pa, gx=pa, ga=pa, gf=pa, Ci=i32, H=i32, W=i32, Co=i32, Ho=i32, Wo=i32,
                       S=i32, K=i32, J=i32, st=i32, pad=i32, n_tw=i32, need_x=i32, need_a=i32, need_f=i32,
                       **{c: ce for c in cex})
            specs.append((f"gd_bwd_k{k}_{dt}", _gd_bwd_kernel, sig, cex, {"num_warps": 4}))
    return specs
