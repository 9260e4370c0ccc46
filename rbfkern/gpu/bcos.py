"""Triton kernels for B-cos (``bcos_conv2d``, ``bcos_linear``).

Layouts are those of the C++ kernels (csrc/cpu/bcos.h): x [N, C, H, W], l [N, O*M, P] (P = Ho*Wo), y / lmax /
idx (uint8) / gv [N, O, P], root / q [N, G, P]. A linear layer is H = W = Ho = Wo = 1 with a 1x1
window (x [R, C], y / lmax / idx / gv [R, O], root / q [R]).

float32/float16/bfloat16 with max_out <= 3 (the fused path; float32 accumulation):
  forward   _bcos_conv_fwd_kernel    implicit-GEMM convolution with the whole epilogue (weight norm
                                     as a per-filter scale, MaxOut with the first maximum, patch
                                     norm, power); l is never written
            _bcos_linear_fwd_kernel  the same as one GEMM for the linear layer (eps after the sqrt)
  backward  _bcos_bwd_gv_kernel      pre-pass: gv = gy dy/dlmax [N, O, P] and q = sum_o gy dy/dn /
                                     root [N, G, P] (float32; not with explain or B = 1). gv is not
                                     scattered to the M units: the GEMMs read it as
                                     where(idx == m, gv, 0), so no [N, O*M, P] tensor exists
            _bcos_bwd_gx_kernel      grad x as one implicit GEMM of the transposed convolution
                                     (stride / padding / dilation / groups), B = W-hat; the epilogue
                                     adds x * box-sum^T(q), the patch-norm gradient; gx written once
            _bcos_bwd_gw_kernel      grad W-hat as one implicit GEMM over the N*P output pixels
                                     (A^T = scattered gv, B = im2col(x)), per-program partials over
                                     fixed pixel ranges summed in a fixed order (no atomics); the
                                     launcher then applies the unit-weight backward
                                     (g - W-hat <g, W-hat>) / ||W|| in torch (float32)
  The linear layer runs the same backward kernels (gv pre-pass with the row layout through its
  strides, gx / gw with the 1x1 geometry and N = R).

float64 and max_out > 3 (the unfused route of forward / backward): the linear map l = conv2d(x, W-hat)
(or x W-hat^T) runs in PyTorch and these kernels do everything around it:
  _bcos_root_kernel      root = sqrt(window sum of x^2 over the group's channels + eps_in)
  _bcos_fwd_kernel       MaxOut (first maximum) + power: y, and lmax/idx when SAVE
  _bcos_bwd_kernel       gl (gradient of l, scattered to the argmax) and q = sum_o dy/dn gy / root
  _bcos_bwd_norm_kernel  gx += x * box-sum^T(q) (the gradient through the patch norm)
with torch's convolution / GEMM backward between the last two.
"""
import torch
import triton
import triton.language as tl

from . import _interpreter
from ._launch import launch
from .. import _bcos_common as common

_interpreter.apply()

_BP = 128  # output pixels per program


@triton.jit
def _plane_block(n_pix, BP: tl.constexpr):
    """The program's (plane, offsets of its BP pixels, mask) on a 1D grid of planes x pixel blocks
    (planes of n_pix pixels, their blocks consecutive). One grid axis: CUDA's y axis holds only
    65535 blocks, fewer than a large image or a long linear batch has."""
    pid = tl.program_id(0).to(tl.int64)
    n_pb = tl.cdiv(n_pix, BP)
    o_p = (pid % n_pb).to(tl.int32) * BP + tl.arange(0, BP)
    return pid // n_pb, o_p, o_p < n_pix


@triton.jit
def _pixel_block(n_pix, width, BP: tl.constexpr):
    """_plane_block of an image with rows ``width`` long: (plane, offsets, mask, row, column)."""
    plane, o_p, m_p = _plane_block(n_pix, BP)
    return plane, o_p, m_p, o_p // width, o_p % width


@triton.jit
def _source_tap(pos, pad, i, dil, stride, n_out, m):
    """The output index whose window tap i reads input index ``pos`` along one axis (the
    transposed convolution), and ``m`` narrowed to the positions where one does."""
    a = pos + pad - i * dil
    o = a // stride
    return o, m & (a >= 0) & (a % stride == 0) & (o < n_out)


@triton.jit
def _group_filters(i_go, O, G, C, kh, kw, BO: tl.constexpr):
    """Program axis value i_go = (group g, block ob of BO of the group's O/G filters): (g, ob, the
    filter indices, their mask, Cg = C/G, kh*kw, K = Cg*kh*kw)."""
    Og = O // G
    n_ob = tl.cdiv(Og, BO)
    g = i_go // n_ob
    ob = i_go % n_ob
    o_o = ob * BO + tl.arange(0, BO)
    Cg = C // G
    khw = kh * kw
    return g, ob, g * Og + o_o, o_o < Og, Cg, khw, Cg * khw


@triton.jit
def _im2col(x, n, c, g, Cg, C, H, W, ho, wo, r, m, kw, sh, sw, ph, pw, dh, dw):
    """The x tile [pixels (ho, wo), taps (c, r = kernel row * kw + kernel column)] of image(s) n,
    group g, zero outside the image and where m is false."""
    hi = ho[:, None] * sh - ph + (r // kw)[None, :] * dh
    wi = wo[:, None] * sw - pw + (r % kw)[None, :] * dw
    m_x = m & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    return tl.load(x + ((n * C + g * Cg + c[None, :]) * H + hi) * W + wi, mask=m_x, other=0.)


@triton.jit
def _bcos_root_kernel(x, root, prm, C, H, W, G, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw,
                      ACC: tl.constexpr, BP: tl.constexpr):
    P = Ho * Wo
    i_ng, o_p, m_p, ho, wo = _pixel_block(P, Wo, BP)
    Cg = C // G
    eps_in = tl.load(prm + 1)
    b_acc = tl.zeros([BP], dtype=ACC)
    for c in range(0, Cg):
        p_x = x + (i_ng * Cg + c) * H * W
        for i in range(0, kh):
            hi = ho * sh - ph + i * dh
            m_h = m_p & (hi >= 0) & (hi < H)
            for j in range(0, kw):
                wi = wo * sw - pw + j * dw
                m = m_h & (wi >= 0) & (wi < W)
                b_x = tl.load(p_x + hi * W + wi, mask=m, other=0.).to(ACC)
                b_acc += b_x * b_x
    tl.store(root + i_ng * P + o_p, tl.sqrt(b_acc + eps_in).to(root.dtype.element_ty), mask=m_p)


@triton.jit
def _bcos_fwd_kernel(l, root, prm, y, lmax, idx, O, M, G, P,
                     MODE: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr):
    # MODE: 1 -> B = 1, 2 -> B = 2, 0 -> any other B
    i_no, o_p, m_p = _plane_block(P, BP)
    b = tl.load(prm)
    eps_out = tl.load(prm + 2)
    p_l = l + i_no * M * P + o_p
    b_best = tl.load(p_l, mask=m_p, other=0.).to(ACC)
    b_idx = tl.zeros([BP], dtype=tl.int32)
    for m in range(1, M):
        b_v = tl.load(p_l + m * P, mask=m_p, other=0.).to(ACC)
        b_gt = b_v > b_best
        b_best = tl.where(b_gt, b_v, b_best)
        b_idx = tl.where(b_gt, m, b_idx)
    if MODE == 1:
        b_y = b_best
    else:
        n = i_no // O
        o = i_no % O
        g = o // (O // G)
        b_n = tl.load(root + (n * G + g) * P + o_p, mask=m_p, other=1.).to(ACC) + eps_out
        b_s = tl.abs(b_best) / b_n
        if MODE == 2:
            b_y = b_s * b_best
        else:
            b_y = tl.exp((b - 1) * tl.log(b_s + 1e-6)) * b_best
    tl.store(y + i_no * P + o_p, b_y.to(y.dtype.element_ty), mask=m_p)
    if SAVE:
        tl.store(lmax + i_no * P + o_p, b_best.to(lmax.dtype.element_ty), mask=m_p)
        tl.store(idx + i_no * P + o_p, b_idx.to(tl.uint8), mask=m_p)


@triton.jit
def _bcos_dy(b_gy, b_l, b_n, b, MODE: tl.constexpr, EXPLAIN: tl.constexpr):
    """(gy dy/dl, gy dy/dn) at the MaxOut value l and the input norm n. The second is 0 for B = 1
    and with EXPLAIN (the dynamic factor, the only place n enters, is a constant there)."""
    b_dn = tl.zeros_like(b_gy)
    if MODE == 1:
        b_gv = b_gy
    elif MODE == 2:
        b_s = tl.abs(b_l) / b_n
        if EXPLAIN:
            b_gv = b_s * b_gy
        else:
            b_gv = 2 * b_s * b_gy
            b_dn = -(b_s * b_l / b_n * b_gy)
    else:
        b_s = tl.abs(b_l) / b_n
        b_t = b_s + 1e-6
        b_tq = tl.exp((b - 2) * tl.log(b_t))  # t^(B-2)
        if EXPLAIN:
            b_gv = b_t * b_tq * b_gy
        else:
            b_gv = (b_t * b_tq + (b - 1) * b_s * b_tq) * b_gy
            b_dn = -((b - 1) * b_l * b_s * b_tq / b_n * b_gy)
    return b_gv, b_dn


@triton.jit
def _group_norm_block(root, prm, P, MODE: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr):
    """Backward's view of program (image and group i_ng, pixel block): (i_ng, pixel offsets, mask,
    B, the patch norm root, n = root + eps_out); root is 1 for B = 1 (not saved there)."""
    i_ng, o_p, m_p = _plane_block(P, BP)
    if MODE != 1:
        b_r = tl.load(root + i_ng * P + o_p, mask=m_p, other=1.).to(ACC)
    else:
        b_r = tl.full([BP], 1., ACC)
    return i_ng, o_p, m_p, tl.load(prm), b_r, b_r + tl.load(prm + 2)


@triton.jit
def _store_q(q, i_ng, P, o_p, m_p, b_q, b_r):
    """q = (sum over the group's outputs of gy dy/dn) / root, 0 where root is 0."""
    b_q = tl.where(b_r > 0, b_q / tl.where(b_r > 0, b_r, 1.), 0.)
    tl.store(q + i_ng * P + o_p, b_q.to(q.dtype.element_ty), mask=m_p)


@triton.jit
def _bcos_bwd_kernel(gy, lmax, idx, root, prm, gl, q, O, M, G, P,
                     MODE: tl.constexpr, EXPLAIN: tl.constexpr, NEED_Q: tl.constexpr, ACC: tl.constexpr,
                     BP: tl.constexpr):
    i_ng, o_p, m_p, b, b_r, b_n = _group_norm_block(root, prm, P, MODE, ACC, BP)
    n = i_ng // G
    g = i_ng % G
    Og = O // G
    b_q = tl.zeros([BP], dtype=ACC)
    for oo in range(0, Og):
        i_no = n * O + g * Og + oo
        b_gy = tl.load(gy + i_no * P + o_p, mask=m_p, other=0.).to(ACC)
        b_l = tl.load(lmax + i_no * P + o_p, mask=m_p, other=0.).to(ACC)
        b_i = tl.load(idx + i_no * P + o_p, mask=m_p, other=0).to(tl.int32)
        b_gv, b_dn = _bcos_dy(b_gy, b_l, b_n, b, MODE, EXPLAIN)
        b_q += b_dn
        p_gl = gl + i_no * M * P + o_p
        for m in range(0, M):
            tl.store(p_gl + m * P, tl.where(b_i == m, b_gv, 0.).to(gl.dtype.element_ty), mask=m_p)
    if NEED_Q:
        _store_q(q, i_ng, P, o_p, m_p, b_q, b_r)


@triton.jit
def _bcos_bwd_norm_kernel(x, q, gx, C, H, W, G, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw,
                          ACC: tl.constexpr, BP: tl.constexpr):
    HW = H * W
    i_nc, o_p, m_p, h, w = _pixel_block(HW, W, BP)
    n = i_nc // C
    g = (i_nc % C) // (C // G)
    p_q = q + (n * G + g) * Ho * Wo
    b_r = tl.zeros([BP], dtype=ACC)
    for i in range(0, kh):
        ho, m_h = _source_tap(h, ph, i, dh, sh, Ho, m_p)
        for j in range(0, kw):
            wo, m = _source_tap(w, pw, j, dw, sw, Wo, m_h)
            b_r += tl.load(p_q + ho * Wo + wo, mask=m, other=0.).to(ACC)
    off = i_nc * HW + o_p
    b_x = tl.load(x + off, mask=m_p, other=0.).to(ACC)
    b_g = tl.load(gx + off, mask=m_p, other=0.).to(ACC)
    tl.store(gx + off, (b_g + b_x * b_r).to(gx.dtype.element_ty), mask=m_p)


@triton.jit
def _bcos_epilogue(b_a0, b_a1, b_a2, rinv, oc, m_o, b_n, b, M: tl.constexpr, MODE: tl.constexpr):
    """(lmax, idx, y) from the raw accumulators [rows, BO] of the M units of filters oc: the weight
    norm as a per-filter scale, MaxOut (first maximum), then the power with the input norm b_n [rows]."""
    b_best = b_a0 * tl.load(rinv + oc * M, mask=m_o, other=0.)[None, :]
    b_idx = tl.zeros(b_best.shape, dtype=tl.int32)
    if M > 1:
        b_v = b_a1 * tl.load(rinv + oc * M + 1, mask=m_o, other=0.)[None, :]
        b_gt = b_v > b_best  # strict: ties keep the first unit, as torch.max
        b_best = tl.where(b_gt, b_v, b_best)
        b_idx = tl.where(b_gt, 1, b_idx)
    if M > 2:
        b_v = b_a2 * tl.load(rinv + oc * M + 2, mask=m_o, other=0.)[None, :]
        b_gt = b_v > b_best
        b_best = tl.where(b_gt, b_v, b_best)
        b_idx = tl.where(b_gt, 2, b_idx)
    if MODE == 1:
        b_y = b_best
    else:
        b_s = tl.abs(b_best) / b_n[:, None]
        if MODE == 2:
            b_y = b_s * b_best
        else:
            b_y = tl.exp((b - 1) * tl.log(b_s + 1e-6)) * b_best
    return b_best, b_idx, b_y


@triton.jit
def _maxout_gemm_step(b_x, w, oc, o_k, m_k, m_o, K, b_sq, b_a0, b_a1, b_a2, M: tl.constexpr, PREC: tl.constexpr):
    """One BK chunk of the forward GEMM: the chunk's sum of squares into b_sq, and x @ the chunk of
    each MaxOut unit's weights (filter oc*M + m, K long) into accumulator m."""
    b_xf = b_x.to(tl.float32)
    b_sq += tl.sum(b_xf * b_xf, axis=1)
    m_w = m_k[:, None] & m_o[None, :]
    p_w = w + (oc[None, :] * M).to(tl.int64) * K + o_k[:, None]
    b_a0 += tl.dot(b_x, tl.load(p_w, mask=m_w, other=0.), input_precision=PREC)
    if M > 1:
        b_a1 += tl.dot(b_x, tl.load(p_w + K, mask=m_w, other=0.), input_precision=PREC)
    if M > 2:
        b_a2 += tl.dot(b_x, tl.load(p_w + 2 * K, mask=m_w, other=0.), input_precision=PREC)
    return b_sq, b_a0, b_a1, b_a2


@triton.jit
def _store_maxout(y, lmax, idx, o_out, m_out, b_y, b_best, b_idx, SAVE: tl.constexpr):
    """y, and with SAVE the MaxOut value and unit that backward reads."""
    tl.store(y + o_out, b_y.to(y.dtype.element_ty), mask=m_out)
    if SAVE:
        tl.store(lmax + o_out, b_best.to(lmax.dtype.element_ty), mask=m_out)
        tl.store(idx + o_out, b_idx.to(tl.uint8), mask=m_out)


@triton.jit
def _bcos_conv_fwd_kernel(x, w, rinv, prm, y, lmax, idx, root, C, H, W, G, O, Ho, Wo, kh, kw, sh, sw, ph, pw,
                          dh, dw, M: tl.constexpr, MODE: tl.constexpr, SAVE: tl.constexpr,
                          BP: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Implicit-GEMM convolution with the whole B-cos epilogue: a [BP pixels, BO channels] tile of
    one image and group; K = Cg*kh*kw in BK chunks. The x tile of each chunk feeds both the GEMM
    (one accumulator per MaxOut unit, M <= 3) and the patch norm; the weight norm is a per-filter
    scale (rinv) applied to the accumulators."""
    i_np = tl.program_id(0)
    i_go = tl.program_id(1)
    P = Ho * Wo
    n_pb = tl.cdiv(P, BP)
    n = (i_np // n_pb).to(tl.int64)
    pb = i_np % n_pb
    g, ob, oc, m_o, Cg, khw, K = _group_filters(i_go, O, G, C, kh, kw, BO)
    o_p = pb * BP + tl.arange(0, BP)
    m_p = o_p < P
    ho = o_p // Wo
    wo = o_p % Wo
    b_sq = tl.zeros([BP], dtype=tl.float32)
    b_a0 = tl.zeros([BP, BO], dtype=tl.float32)
    b_a1 = tl.zeros([BP, BO], dtype=tl.float32)
    b_a2 = tl.zeros([BP, BO], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_x = _im2col(x, n, o_k // khw, g, Cg, C, H, W, ho, wo, o_k % khw, m_p[:, None] & m_k[None, :],
                      kw, sh, sw, ph, pw, dh, dw)
        b_sq, b_a0, b_a1, b_a2 = _maxout_gemm_step(b_x, w, oc, o_k, m_k, m_o, K, b_sq, b_a0, b_a1, b_a2, M, PREC)
    # Epilogue: weight norm, MaxOut (first maximum), patch norm, power (eps_out is 0 for conv).
    b_root = tl.sqrt(b_sq + tl.load(prm + 1))
    b_best, b_idx, b_y = _bcos_epilogue(b_a0, b_a1, b_a2, rinv, oc, m_o, b_root, tl.load(prm), M, MODE)
    m_out = m_p[:, None] & m_o[None, :]
    o_out = (n * O + oc[None, :]) * P + o_p[:, None]
    _store_maxout(y, lmax, idx, o_out, m_out, b_y, b_best, b_idx, SAVE)
    if SAVE:
        # one program per pixel block stores root; a branch, not `mask=m_p & (ob == 0)`: a scalar
        # comparison broadcast into a mask is int32 data in the interpreter of triton 3.8-3.9, which
        # triton 3.9's interpreted load/store reject ("mask has unsupported dtype")
        if MODE != 1:
            if ob == 0:
                tl.store(root + (n * G + g) * P + o_p, b_root.to(root.dtype.element_ty), mask=m_p)


@triton.jit
def _bcos_linear_fwd_kernel(x, w, rinv, prm, y, lmax, idx, root, R, C, O, M: tl.constexpr, MODE: tl.constexpr,
                            SAVE: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr,
                            PREC: tl.constexpr):
    """The linear layer as one GEMM with the B-cos epilogue: a [BR rows, BO outputs] tile, K = C in
    BK chunks; each x chunk feeds the M dots and the row sum of squares (as the conv kernel)."""
    i_r = tl.program_id(0)
    i_o = tl.program_id(1)
    o_r = i_r * BR + tl.arange(0, BR)
    m_r = o_r < R
    r64 = o_r.to(tl.int64)
    oc = i_o * BO + tl.arange(0, BO)
    m_o = oc < O
    b_sq = tl.zeros([BR], dtype=tl.float32)
    b_a0 = tl.zeros([BR, BO], dtype=tl.float32)
    b_a1 = tl.zeros([BR, BO], dtype=tl.float32)
    b_a2 = tl.zeros([BR, BO], dtype=tl.float32)
    for k0 in range(0, C, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < C
        b_x = tl.load(x + r64[:, None] * C + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.)
        b_sq, b_a0, b_a1, b_a2 = _maxout_gemm_step(b_x, w, oc, o_k, m_k, m_o, C, b_sq, b_a0, b_a1, b_a2, M, PREC)
    # root = ||x|| (eps_in = 0 for the linear layer), n = root + eps_out
    b_root = tl.sqrt(b_sq + tl.load(prm + 1))
    b_best, b_idx, b_y = _bcos_epilogue(b_a0, b_a1, b_a2, rinv, oc, m_o, b_root + tl.load(prm + 2), tl.load(prm),
                                        M, MODE)
    m_out = m_r[:, None] & m_o[None, :]
    o_out = r64[:, None] * O + oc[None, :]
    _store_maxout(y, lmax, idx, o_out, m_out, b_y, b_best, b_idx, SAVE)
    if SAVE:
        if MODE != 1:
            if i_o == 0:  # a branch, not a mask: see _bcos_conv_fwd_kernel
                tl.store(root + r64, b_root.to(root.dtype.element_ty), mask=m_r)


@triton.jit
def _bcos_bwd_gv_kernel(gy, lmax, root, prm, gv, q, O, G, P, so, sp,
                        MODE: tl.constexpr, EXPLAIN: tl.constexpr, NEED_Q: tl.constexpr, BP: tl.constexpr):
    """Pre-pass of the fused backward: gv = dy/dlmax gy [N, O, P] (not scattered to the M units:
    the GEMM kernels do that on the fly from idx) and q [N, G, P] (float32), as _bcos_bwd_kernel.
    Element (n, o, p) of gy/lmax/gv is at n*O*P + o*so + p*sp: the conv layout is (so, sp) = (P, 1);
    the linear layer runs as N = 1, P = R rows with (so, sp) = (1, O)."""
    i_ng, o_p, m_p, b, b_r, b_n = _group_norm_block(root, prm, P, MODE, tl.float32, BP)
    n = i_ng // G
    g = i_ng % G
    Og = O // G
    b_q = tl.zeros([BP], dtype=tl.float32)
    o_sp = o_p.to(tl.int64) * sp
    for oo in range(0, Og):
        off = n * O * P + (g * Og + oo) * so + o_sp
        b_gy = tl.load(gy + off, mask=m_p, other=0.).to(tl.float32)
        b_l = tl.load(lmax + off, mask=m_p, other=0.).to(tl.float32)
        b_gv, b_dn = _bcos_dy(b_gy, b_l, b_n, b, MODE, EXPLAIN)
        b_q += b_dn
        tl.store(gv + off, b_gv.to(gv.dtype.element_ty), mask=m_p)
    if NEED_Q:
        _store_q(q, i_ng, P, o_p, m_p, b_q, b_r)


@triton.jit
def _bcos_bwd_gx_kernel(gv, idx, wh, x, q, gx, NHW, C, H, W, G, O, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw,
                        M: tl.constexpr, HAS_Q: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
                        BO: tl.constexpr, PREC: tl.constexpr):
    """Input gradient as one implicit GEMM of the transposed convolution: a [BP input pixels, BC
    channels of one group] tile, pixels flattened over (n, h, w) so small images and the linear
    layer (H = W = 1) fill it; reduction over the kernel taps and the group's O*M filters with
    A = gv scattered to the argmax unit on the fly and B = W-hat. The epilogue adds the patch-norm
    gradient x * box-sum^T(q), summed over the same taps; gx is written once."""
    i_t = tl.program_id(0)
    i_gc = tl.program_id(1)
    HW = H * W
    P = Ho * Wo
    Cg = C // G
    Og = O // G
    khw = kh * kw
    n_cb = tl.cdiv(Cg, BC)
    g = i_gc // n_cb
    cb = i_gc % n_cb
    t0 = i_t.to(tl.int64) * BP
    t = t0 + tl.arange(0, BP)
    m_t = t < NHW  # N*H*W from the launcher: an int64 there when it is past 2^31
    # (n, hw) of t with one scalar int64 division: per element, int64 division is a call to a
    # slow-path subroutine (and its register pressure put the kernel in the stack).
    n0 = t0 // HW
    u = (t0 - n0 * HW).to(tl.int32) + tl.arange(0, BP)  # < HW + BP
    dn = u // HW
    hw = u - dn * HW
    n = n0 + dn
    h = hw // W
    w = hw % W
    o_c = cb * BC + tl.arange(0, BC)
    m_c = o_c < Cg
    b_acc = tl.zeros([BP, BC], dtype=tl.float32)
    b_r = tl.zeros([BP], dtype=tl.float32)
    for i in range(0, kh):
        ho, m_h = _source_tap(h, ph, i, dh, sh, Ho, m_t)
        for j in range(0, kw):
            wo, m_tap = _source_tap(w, pw, j, dw, sw, Wo, m_h)
            po = ho * Wo + wo
            if HAS_Q:
                b_r += tl.load(q + (n * G + g) * P + po, mask=m_tap, other=0.)
            for o0 in range(0, Og, BO):
                o_o = o0 + tl.arange(0, BO)
                m_o = o_o < Og
                oc = g * Og + o_o
                m_a = m_tap[:, None] & m_o[None, :]
                off = (n[:, None] * O + oc[None, :]) * P + po[:, None]
                b_g = tl.load(gv + off, mask=m_a, other=0.)
                b_i = tl.load(idx + off, mask=m_a, other=0).to(tl.int32)
                m_w = m_o[:, None] & m_c[None, :]
                p_w = wh + ((oc * M)[:, None].to(tl.int64) * Cg + o_c[None, :]) * khw + i * kw + j
                for m in tl.static_range(M):
                    b_a = tl.where(b_i == m, b_g, 0.).to(wh.dtype.element_ty)
                    b_acc += tl.dot(b_a, tl.load(p_w + m * Cg * khw, mask=m_w, other=0.), input_precision=PREC)
    m_x = m_t[:, None] & m_c[None, :]
    off_x = (n[:, None] * C + g * Cg + o_c[None, :]) * HW + hw[:, None]
    if HAS_Q:
        b_acc += tl.load(x + off_x, mask=m_x, other=0.).to(tl.float32) * b_r[:, None]
    tl.store(gx + off_x, b_acc.to(gx.dtype.element_ty), mask=m_x)


@triton.jit
def _bcos_bwd_gw_kernel(gv, idx, x, part, NP, C, H, W, G, O, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, TS,
                        M: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    """Gradient of W-hat as one implicit GEMM reducing over the N*P output pixels: a [BO filters x
    BK of K = Cg*kh*kw] tile, one accumulator per MaxOut unit, A^T = gv scattered to the unit,
    B = im2col(x). Program axis 2 takes the fixed pixel range [s*TS, (s+1)*TS) and writes its own
    partial part[s] (no atomics); the launcher sums the partials in a fixed order, so the result
    does not depend on scheduling. The linear layer is N = R, H = W = 1, a 1x1 window."""
    i_go = tl.program_id(0)
    i_k = tl.program_id(1)
    s = tl.program_id(2)
    P = Ho * Wo
    g, _ob, oc, m_o, Cg, khw, K = _group_filters(i_go, O, G, C, kh, kw, BO)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    c = o_k // khw
    r = o_k % khw
    b_a0 = tl.zeros([BO, BK], dtype=tl.float32)
    b_a1 = tl.zeros([BO, BK], dtype=tl.float32)
    b_a2 = tl.zeros([BO, BK], dtype=tl.float32)
    t_lo = s.to(tl.int64) * TS
    t_hi = tl.minimum(t_lo + TS, NP)
    for t0 in range(t_lo, t_hi, BT):
        t = t0 + tl.arange(0, BT)
        m_t = t < t_hi
        n = t // P
        p = (t % P).to(tl.int32)
        ho = p // Wo
        wo = p % Wo
        off = (n[None, :] * O + oc[:, None]) * P + p[None, :]
        m_a = m_o[:, None] & m_t[None, :]
        b_g = tl.load(gv + off, mask=m_a, other=0.)
        b_i = tl.load(idx + off, mask=m_a, other=0).to(tl.int32)
        b_x = _im2col(x, n[:, None], c, g, Cg, C, H, W, ho, wo, r, m_t[:, None] & m_k[None, :],
                      kw, sh, sw, ph, pw, dh, dw)
        b_a0 += tl.dot(tl.where(b_i == 0, b_g, 0.).to(b_x.dtype), b_x, input_precision=PREC)
        if M > 1:
            b_a1 += tl.dot(tl.where(b_i == 1, b_g, 0.).to(b_x.dtype), b_x, input_precision=PREC)
        if M > 2:
            b_a2 += tl.dot(tl.where(b_i == 2, b_g, 0.).to(b_x.dtype), b_x, input_precision=PREC)
    m_out = m_o[:, None] & m_k[None, :]
    p_out = part + ((s * O + oc[:, None]).to(tl.int64) * M) * K + o_k[None, :]
    tl.store(p_out, b_a0, mask=m_out)
    if M > 1:
        tl.store(p_out + K, b_a1, mask=m_out)
    if M > 2:
        tl.store(p_out + 2 * K, b_a2, mask=m_out)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _prm(b, eps, dtype, device):
    """(B, eps_in, eps_out) as a tensor, so float64 runs keep full precision."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    # fills, not torch.tensor([...], device=...): a host-to-device copy blocks the host and is not
    # allowed while a CUDA graph captures
    prm = torch.full((3,), float(b), dtype=pdt, device=device)
    prm[1] = float(eps[0])
    prm[2] = float(eps[1])
    return prm


def _mode(b):
    return 1 if b == 1 else (2 if b == 2 else 0)


def _window(geo):
    """The kernels' (kh, kw, sh, sw, ph, pw, dh, dw) arguments."""
    return geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw, geo.dh, geo.dw


def _fused(geo, dtype):
    """The fused GEMM kernels cover float32 / float16 / bfloat16 with MaxOut <= 3."""
    return dtype != torch.float64 and geo.M <= 3


# ---------------------------------------------------------------------------------------------
# The backend contract (rbfkern/ops/bcos.py): forward(geo, b, x, weight, save) -> (y, lmax, idx,
# root), backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs) -> (gx, gw); the fused
# kernels where they apply, else the unfused route (torch's conv / GEMM + the epilogue kernels).
# ---------------------------------------------------------------------------------------------


def forward(geo, b, x, weight, save):
    """(y, lmax, idx, root) in x.dtype (lmax / idx / root None unless saved; root also for b == 1)."""
    if _fused(geo, x.dtype):
        return (_linear_fused_forward if geo.linear else _conv_fused_forward)(geo, b, x, weight, save)
    return _forward_unfused(geo, b, x, weight, save)


def backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs):
    """(gx | None, gw | None) by ``needs``."""
    # the kernels index gy as a dense (N, O, P) map; autograd may hand an expanded (stride-0, after
    # a sum) or a channels-last gradient
    gy = gy.contiguous()
    if _fused(geo, x.dtype):
        return _fused_backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs)
    return _backward_unfused(geo, b, gy, x, weight, lmax, idx, root, explain, needs)


# ---------------------------------------------------------------------------------------------
# The unfused route (float64, MaxOut > 3): torch's linear map with W-hat, the epilogue kernels
# ---------------------------------------------------------------------------------------------


def _forward_outputs(x, y_shape, root_shape, save, need_root):
    """Empty (y, lmax, idx, root) of a forward on x: lmax and idx only with ``save``, root only
    with ``need_root``."""
    y = torch.empty(y_shape, dtype=x.dtype, device=x.device)
    lmax = torch.empty(y_shape, dtype=x.dtype, device=x.device) if save else None
    idx = torch.empty(y_shape, dtype=torch.uint8, device=x.device) if save else None
    root = torch.empty(root_shape, dtype=x.dtype, device=x.device) if need_root else None
    return y, lmax, idx, root


def _forward_unfused(geo, b, x, weight, save):
    l = common.linear_map(geo, x, common.unit_weight(weight)).contiguous()
    return _epilogue_forward(geo, b, x, l, save)


def _epilogue_forward(geo, b, x, l, save):
    """MaxOut + power of the raw map l (and the patch-norm root): (y, lmax, idx, root)."""
    N, G, O, M, P = geo.N, geo.G, geo.O, geo.M, geo.P
    dev, dt = x.device, x.dtype
    mode = _mode(b)
    y, lmax, idx, root = _forward_outputs(x, geo.y_shape, geo.root_shape, save, mode != 1)
    if N == 0 or O == 0 or P == 0:
        return y, lmax, idx, (root if save else None)
    ACC = _acc(dt)
    prm = _prm(b, geo.eps, dt, dev)
    if root is not None:
        launch(_bcos_root_kernel)[(N * G * triton.cdiv(P, _BP),)](
            x, root, prm, geo.C, geo.H, geo.W, G, geo.Ho, geo.Wo, *_window(geo), ACC=ACC, BP=_BP)
    launch(_bcos_fwd_kernel)[(N * O * triton.cdiv(P, _BP),)](
        l, root if root is not None else y, prm, y, lmax if save else y, idx if save else y, O, M, G, P,
        MODE=mode, SAVE=bool(save), ACC=ACC, BP=_BP)
    return y, lmax, idx, (root if save else None)


def _epilogue_backward(geo, b, gy, lmax, idx, root, explain, need_q):
    """(gl [N, O*M, P], q [N, G, P] | None)."""
    N, G, O, M, P = geo.N, geo.G, geo.O, geo.M, geo.P
    dev, dt = gy.device, gy.dtype
    gl = torch.empty(N, O * M, P, dtype=dt, device=dev)
    q = torch.empty(N, G, P, dtype=dt, device=dev) if need_q else None
    if N == 0 or O == 0 or P == 0:
        return gl, q
    launch(_bcos_bwd_kernel)[(N * G * triton.cdiv(P, _BP),)](
        gy, lmax, idx, root if root is not None else gy, _prm(b, geo.eps, dt, dev), gl, q if q is not None else gl,
        O, M, G, P, MODE=_mode(b), EXPLAIN=bool(explain), NEED_Q=q is not None, ACC=_acc(dt), BP=_BP)
    return gl, q


def _norm_backward(geo, x, q, gx):
    """gx += x * box-sum^T(q), in place; returns gx."""
    if geo.N == 0 or geo.C == 0:
        return gx
    launch(_bcos_bwd_norm_kernel)[(geo.N * geo.C * triton.cdiv(geo.H * geo.W, _BP),)](
        x, q, gx, geo.C, geo.H, geo.W, geo.G, geo.Ho, geo.Wo, *_window(geo), ACC=_acc(x.dtype), BP=_BP)
    return gx


def _backward_unfused(geo, b, gy, x, weight, lmax, idx, root, explain, needs):
    """The epilogue kernels around torch's convolution / GEMM backward."""
    need_q = needs[0] and b != 1 and not explain
    gl, q = _epilogue_backward(geo, b, gy, lmax, idx, root, explain, need_q)
    w_hat = common.unit_weight(weight)
    gx, gwh = common.linear_map_backward(geo, gl.reshape(geo.raw_shape), x, w_hat, needs)
    if q is not None:
        gx = _norm_backward(geo, x, q, gx.contiguous())
    gw = common.unit_weight_backward(weight, w_hat, gwh) if needs[1] else None
    return gx, gw


# ---------------------------------------------------------------------------------------------
# The fused route: implicit-GEMM / GEMM kernels with the epilogue, l never materialised
# ---------------------------------------------------------------------------------------------


# Tile sizes of the fused GEMM kernels (largest; the launchers shrink BO/BC to the layer, min 16).
# Picked from the sm_90 AOT resource usage: float32 tl.dot runs on FMAs with the accumulators in
# registers, and 64x64 tiles (times M units) spill there; these need <= 255 registers and no or a
# few bytes of stack.
_LIN_FWD_TILES = {torch.float32: (64, 32, 16), torch.float16: (64, 32, 32), torch.bfloat16: (64, 32, 32)}  # BR BO BK
# The conv forward: 64x64 (x BK 32) left the accumulators of M units of float32 in the stack (sm_80
# M = 3: ptxas gave up at 32 registers with 5.8 KB of stack; M = 1, 2: 160-850 B) and 8 B in the
# half types; these tiles need no stack on sm_80/sm_90 (145-215 registers).
_CONV_FWD_TILES = {torch.float32: (64, 32, 16), torch.float16: (64, 32, 32), torch.bfloat16: (64, 32, 32)}  # BP BO BK
_GX_TILES = (64, 32, 16)  # BP (input pixels), BC (channels), BO (filters per reduction step)
_GW_TILES = (32, 32, 32)  # BO (filters), BK (of Cg*kh*kw), BT (output pixels per reduction step)
# Software-pipelining depth for float32 (the half types keep Triton's default): with the FMA dot,
# deeper cp.async pipelines push the backward GEMMs into stack spills (sm_80 grad W at M = 2, 3:
# 1.7-2.7 KB of stack at the default; none at 1).
# grad x float32 at 4 warps kept 8-24 B of stack at 255 registers; 8 warps with a register cap
# stated leave none (without one ptxas settled at 128 registers and 24-40 B of stack for some M;
# at 255, 8 B at M = 2 without q on sm_80; 248 is the one tried that is clean everywhere).
_GX_OPTS = {torch.float32: {"num_stages": 2, "num_warps": 8, "maxnreg": 248}}
_GW_OPTS = {torch.float32: {"num_stages": 1}}
_GW_PROGRAMS = 512  # aim of the weight-gradient grid: split the pixel reduction until about this many
_GW_MAX_SPLITS = 256


def _precision(dtype, linear: bool) -> str:
    """The float32 dots' input precision: "tf32" where PyTorch lets the op the layer stands in for
    use TF32 (cuDNN convolutions: ``torch.backends.cudnn.conv.fp32_precision``, on by default;
    cuBLAS matmuls for the linear layer: ``torch.backends.cuda.matmul.fp32_precision``, off by
    default; "none" defers to ``torch.backends.fp32_precision``), else "ieee". Read through the
    newer API, which PyTorch lets one read whichever API set it; torch without it reads
    ``allow_tf32``. Half types run on tensor cores either way."""
    if dtype != torch.float32:
        return "ieee"
    be = torch.backends
    owner = be.cuda.matmul if linear else getattr(be.cudnn, "conv", None)
    prec = getattr(owner, "fp32_precision", None)
    if prec is None:
        return "tf32" if (be.cuda.matmul if linear else be.cudnn).allow_tf32 else "ieee"
    if prec == "none":
        prec = getattr(be, "fp32_precision", "none")
    return "tf32" if prec == "tf32" else "ieee"


def _clamp_p2(v, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def _row_inv_norm(w):
    """1 / ||filter|| in float32 (no eps, as bcos), one per row of the raw weight."""
    return 1.0 / torch.linalg.vector_norm(w.reshape(w.shape[0], -1).float(), dim=1)


def _conv_fused_forward(geo, b, x, weight, save):
    N, G, O, M, P = geo.N, geo.G, geo.O, geo.M, geo.P
    dev, dt = x.device, x.dtype
    mode = _mode(b)
    y, lmax, idx, root = _forward_outputs(x, geo.y_shape, geo.root_shape, save, save and mode != 1)
    if N == 0 or O == 0 or P == 0:
        return y, lmax, idx, root
    w = weight.contiguous()
    BP, BO, BK = _CONV_FWD_TILES[dt]
    BO = _clamp_p2(geo.Og, 16, BO)
    grid = (N * triton.cdiv(P, BP), G * triton.cdiv(geo.Og, BO))
    launch(_bcos_conv_fwd_kernel)[grid](
        x, w, _row_inv_norm(w), _prm(b, geo.eps, torch.float32, dev), y, lmax if save else y, idx if save else y,
        root if root is not None else y, geo.C, geo.H, geo.W, G, O, geo.Ho, geo.Wo, *_window(geo),
        M=M, MODE=mode, SAVE=bool(save), BP=BP, BO=BO, BK=BK, PREC=_precision(dt, linear=False))
    return y, lmax, idx, root


def _linear_fused_forward(geo, b, x, weight, save):
    """x [R, C]: y / lmax / idx [R, O], root [R, 1]."""
    R, C, O, M = geo.N, geo.C, geo.O, geo.M
    dev, dt = x.device, x.dtype
    mode = _mode(b)
    y, lmax, idx, root = _forward_outputs(x, (R, O), geo.root_shape, save, save and mode != 1)
    if R == 0:
        return y, lmax, idx, root
    w = weight.contiguous()
    BR, BO, BK = _LIN_FWD_TILES[dt]
    BO = _clamp_p2(O, 16, BO)
    launch(_bcos_linear_fwd_kernel)[(triton.cdiv(R, BR), triton.cdiv(O, BO))](
        x, w, _row_inv_norm(w), _prm(b, geo.eps, torch.float32, dev), y, lmax if save else y, idx if save else y,
        root if root is not None else y, R, C, O, M=M, MODE=mode, SAVE=bool(save), BR=BR, BO=BO, BK=BK,
        PREC=_precision(dt, linear=True))
    return y, lmax, idx, root


def _fused_backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs):
    """The gv/q pre-pass, one implicit-GEMM kernel for grad x (patch-norm term in its epilogue) and
    one for grad W-hat (deterministic partials), then the unit-weight backward in float32."""
    N, G, O, M, P = geo.N, geo.G, geo.O, geo.M, geo.P
    dev, dt = x.device, x.dtype
    w = weight.contiguous()
    norm = common.weight_norm(w.float())
    w_hat = w.float() / norm  # float32: the weight-gradient projection below
    if N == 0:  # empty batch: zero gradients
        return (torch.zeros_like(x) if needs[0] else None, torch.zeros_like(w) if needs[1] else None)
    mode = _mode(b)
    need_q = bool(needs[0]) and mode != 1 and not explain
    gv = torch.empty(N, O, P, dtype=dt, device=dev)
    q = torch.empty(N, G, P, dtype=torch.float32, device=dev) if need_q else None
    if geo.linear:  # rows are the pixels of one "image": gv/gy [R, O], root/q [R]
        grid, sizes = (triton.cdiv(N, _BP),), (O, 1, N, 1, O)
    else:
        grid, sizes = (N * G * triton.cdiv(P, _BP),), (O, G, P, P, 1)
    launch(_bcos_bwd_gv_kernel)[grid](
        gy, lmax, root if root is not None else gy, _prm(b, geo.eps, torch.float32, dev), gv,
        q if q is not None else gv, *sizes, MODE=mode, EXPLAIN=bool(explain), NEED_Q=need_q, BP=_BP)
    sizes = (geo.C, geo.H, geo.W, G, O, geo.Ho, geo.Wo, *_window(geo))
    gx = gw = None
    if needs[0]:
        gx = torch.empty_like(x)
        BP, BC, BO = _GX_TILES
        BC = _clamp_p2(geo.Cg, 16, BC)
        launch(_bcos_bwd_gx_kernel)[(triton.cdiv(N * geo.H * geo.W, BP), G * triton.cdiv(geo.Cg, BC))](
            gv, idx, w_hat.to(dt), x, q if q is not None else gv, gx, N * geo.H * geo.W, *sizes,
            M=M, HAS_Q=need_q, BP=BP, BC=BC, BO=BO, PREC=_precision(dt, geo.linear), **_GX_OPTS.get(dt, {}))
    if needs[1]:
        K = geo.K
        BO, BK, BT = _GW_TILES
        BO = _clamp_p2(geo.Og, 16, BO)
        tiles = G * triton.cdiv(geo.Og, BO) * triton.cdiv(K, BK)
        n_tb = triton.cdiv(N * P, BT)
        # The split depends on the shapes only (not on the device or timing): with the fixed-order
        # sum below, a run repeats bit for bit.
        splits = max(1, min(n_tb, _GW_MAX_SPLITS, triton.cdiv(_GW_PROGRAMS, tiles)))
        TS = triton.cdiv(n_tb, splits) * BT
        splits = triton.cdiv(N * P, TS)
        part = torch.empty(splits, O * M, K, dtype=torch.float32, device=dev)
        launch(_bcos_bwd_gw_kernel)[(G * triton.cdiv(geo.Og, BO), triton.cdiv(K, BK), splits)](
            gv, idx, x, part, N * P, *sizes, TS, M=M, BO=BO, BK=BK, BT=BT, PREC=_precision(dt, geo.linear),
            **_GW_OPTS.get(dt, {}))
        gwh = part.sum(0).reshape(w.shape)  # fixed-order reduction of the partials
        gw = common.unit_weight_backward(w.float(), w_hat, gwh)
    return gx, gw


def aot_specs():
    """(name, kernel, signature, constexprs, options) for every kernel and constexpr variant,
    float32/float16/bfloat16 (float32 accumulation) and float64."""
    specs = []
    opts = {"num_warps": 4}
    ce, i32 = "constexpr", "i32"
    geo = dict(C=i32, H=i32, W=i32, G=i32, Ho=i32, Wo=i32, kh=i32, kw=i32, sh=i32, sw=i32, ph=i32, pw=i32,
               dh=i32, dw=i32)
    conv_sig = dict(C=i32, H=i32, W=i32, G=i32, O=i32, Ho=i32, Wo=i32, kh=i32, kw=i32, sh=i32, sw=i32, ph=i32,
                    pw=i32, dh=i32, dw=i32)
    # The implicit-GEMM kernel is the slow one to compile (~10-25 s each). float32: each MaxOut
    # width at B = 2 and each B mode at M = 2; the half types: the common one (M = 2, B = 2).
    # "fp32tf": float32 with TF32 dots (PyTorch's TF32 switch on), the common variant.
    conv_variants = {"fp32": [(1, 2), (2, 2), (3, 2), (2, 0), (2, 1)], "fp32tf": [(2, 2)], "fp16": [(2, 2)],
                     "bf16": [(2, 2)]}
    tdts = {"fp32": torch.float32, "fp32tf": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for dt, variants in conv_variants.items():
        p, prec = "*" + dt[:4], "tf32" if dt == "fp32tf" else "ieee"
        for mo, mode in variants:
            s = dict(x=p, w=p, rinv="*fp32", prm="*fp32", y=p, lmax=p, idx="*u8", root=p, **conv_sig,
                     M=ce, MODE=ce, SAVE=ce, BP=ce, BO=ce, BK=ce, PREC=ce)
            specs.append((f"bcos_conv_fwd_M{mo}_m{mode}_{dt}", _bcos_conv_fwd_kernel, s,
                          dict(M=mo, MODE=mode, SAVE=True, PREC=prec,
                               **dict(zip(("BP", "BO", "BK"), _CONV_FWD_TILES[tdts[dt]]))), opts))
    # The fused linear forward and the fused backward (float32/16/bf16 only): the same variant grid
    # (MaxOut width x B mode) for the GEMM kernels; the backward GEMMs do not depend on B.
    for dt, variants in conv_variants.items():
        p, tdt, prec = "*" + dt[:4], tdts[dt], "tf32" if dt == "fp32tf" else "ieee"
        for mo, mode in variants:
            s = dict(x=p, w=p, rinv="*fp32", prm="*fp32", y=p, lmax=p, idx="*u8", root=p, R=i32, C=i32, O=i32,
                     M=ce, MODE=ce, SAVE=ce, BR=ce, BO=ce, BK=ce, PREC=ce)
            specs.append((f"bcos_linear_fwd_M{mo}_m{mode}_{dt}", _bcos_linear_fwd_kernel, s,
                          dict(M=mo, MODE=mode, SAVE=True, PREC=prec,
                               **dict(zip(("BR", "BO", "BK"), _LIN_FWD_TILES[tdt]))), opts))
        for mo in sorted({mo for mo, _ in variants}):
            # HAS_Q: B != 1 without explain (the common case); float32 also the q-free variant.
            for has_q in (True, False) if dt == "fp32" and mo == 2 else (True,):
                s = dict(gv=p, idx="*u8", wh=p, x=p, q="*fp32", gx=p, NHW=i32, **conv_sig, M=ce, HAS_Q=ce, BP=ce,
                         BC=ce, BO=ce, PREC=ce)
                specs.append((f"bcos_bwd_gx_M{mo}_q{int(has_q)}_{dt}", _bcos_bwd_gx_kernel, s,
                              dict(M=mo, HAS_Q=has_q, PREC=prec, **dict(zip(("BP", "BC", "BO"), _GX_TILES))),
                              dict(opts, **_GX_OPTS.get(tdt, {}))))
            s = dict(gv=p, idx="*u8", x=p, part="*fp32", NP=i32, **conv_sig, TS=i32, M=ce, BO=ce, BK=ce, BT=ce,
                     PREC=ce)
            specs.append((f"bcos_bwd_gw_M{mo}_{dt}", _bcos_bwd_gw_kernel, s,
                          dict(M=mo, PREC=prec, **dict(zip(("BO", "BK", "BT"), _GW_TILES))),
                          dict(opts, **_GW_OPTS.get(tdt, {}))))
        if dt == "fp32tf":  # the epilogue kernels have no dots
            continue
        for mode in (0, 1, 2) if dt == "fp32" else (2,):
            for explain in (False, True) if dt == "fp32" else (False,):
                s = dict(gy=p, lmax=p, root=p, prm="*fp32", gv=p, q="*fp32", O=i32, G=i32, P=i32, so=i32, sp=i32,
                         MODE=ce, EXPLAIN=ce, NEED_Q=ce, BP=ce)
                specs.append((f"bcos_bwd_gv_m{mode}_e{int(explain)}_{dt}", _bcos_bwd_gv_kernel, s,
                              dict(MODE=mode, EXPLAIN=explain, NEED_Q=not explain and mode != 1, BP=_BP), opts))
    for dt in ("fp32", "fp16", "bf16", "fp64"):
        p = "*" + dt
        acc = tl.float64 if dt == "fp64" else tl.float32
        pp = "*fp64" if dt == "fp64" else "*fp32"
        s = dict(x=p, root=p, prm=pp, **geo, ACC=ce, BP=ce)
        specs.append((f"bcos_root_{dt}", _bcos_root_kernel, s, dict(ACC=acc, BP=_BP), opts))
        s = dict(x=p, q=p, gx=p, **geo, ACC=ce, BP=ce)
        specs.append((f"bcos_bwd_norm_{dt}", _bcos_bwd_norm_kernel, s, dict(ACC=acc, BP=_BP), opts))
        # Every (MODE, SAVE, EXPLAIN) variant in float32; the common one (B = 2) in the others.
        for mode in (0, 1, 2) if dt == "fp32" else (2,):
            for save in (False, True) if dt == "fp32" else (True,):
                s = dict(l=p, root=p, prm=pp, y=p, lmax=p, idx="*u8", O=i32, M=i32, G=i32, P=i32,
                         MODE=ce, SAVE=ce, ACC=ce, BP=ce)
                specs.append((f"bcos_fwd_m{mode}_s{int(save)}_{dt}", _bcos_fwd_kernel, s,
                              dict(MODE=mode, SAVE=save, ACC=acc, BP=_BP), opts))
            for explain in (False, True) if dt == "fp32" else (False,):
                s = dict(gy=p, lmax=p, idx="*u8", root=p, prm=pp, gl=p, q=p, O=i32, M=i32, G=i32, P=i32,
                         MODE=ce, EXPLAIN=ce, NEED_Q=ce, ACC=ce, BP=ce)
                specs.append((f"bcos_bwd_m{mode}_e{int(explain)}_{dt}", _bcos_bwd_kernel, s,
                              dict(MODE=mode, EXPLAIN=explain, NEED_Q=not explain and mode != 1, ACC=acc, BP=_BP),
                              opts))
    return specs
