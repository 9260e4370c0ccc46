"""The B-cos C++ backend (csrc/cpu/bcos.h; kernels in bcos_kernels.h, bcos_direct.h, bcos_wgrad_det.h),
float32/float64.

forward(geo, b, x, weight, save) -> (y, lmax, idx, root) and backward(geo, b, gy, x, weight, lmax,
idx, root, explain, needs) -> (gx, gw): the contract of every B-cos backend (rbfkern/ops/bcos.py).

Forward: a linear layer with few outputs (O * max_out <= _LINEAR_TILE_MAX_OUT, any number of
features) is one C++ call, a register-blocked GEMM tile and the epilogue
(csrc/cpu/bcos_linear.h). A conv with a short reduction (C/groups * kh * kw <= _DIRECT_MAX_K,
column stride 1, max_out <= 3, output rows that fill their pixel vectors) is one direct
convolution with the epilogue in registers (the raw map is never written). Otherwise oneDNN /
MKL run the convolution / GEMM with the RAW weight, a batch chunk of a few MiB of output at a
time (it stays in cache and its buffer is reused), and one fused C++ epilogue pass per chunk
applies the per-filter 1/||W|| scale, MaxOut, the patch norm and the power. Backward: one fused
pass hands torch the gradient of that raw-weight map per chunk, torch's convolution / GEMM
backward gives grad x and a raw weight gradient (summed in chunk order; a fixed-order C++ kernel
under torch.use_deterministic_algorithms), one pass adds the patch-norm term to grad x and one
turns the raw weight gradient into grad W.

Channels last: a conv input stored channels-last (as after the official models' position norm,
which normalises a permuted view) stays so. oneDNN takes it as it is and gives a channels-last
raw map, and the NHWC epilogues (csrc/cpu/bcos_nhwc.h) write channels-last outputs and gradients,
so no layout copy is made on the way in or out.
"""
from __future__ import annotations

import torch

from .. import _backend
from .. import _bcos_common as common
from ._family import numpy_view

HALF_AS_FLOAT32 = True  # float16 / bfloat16 inputs are computed in float32 (rbfkern/ops/_family.py)
CHANNELS_LAST = True  # conv inputs stored channels-last are taken as they are (rbfkern/ops/bcos.py)
_CL = torch.channels_last


def _np(t, nhwc=False):
    """The numpy view of t; nhwc: of a channels-last 4-D tensor, as its (N, H, W, C) buffer."""
    return numpy_view(t.permute(0, 2, 3, 1) if nhwc and t is not None else t)


def _mm_fixed_k(a, b, kc=256, batch=64, loop_min_out=1 << 14):
    """a @ b with the K reduction cut into chunks of kc, summed in order.

    MKL splits a long K across threads, so a plain mm changes with torch.set_num_threads; a
    K of at most 256 per GEMM is not split. An output of at least ``loop_min_out`` elements takes
    one GEMM per chunk accumulating into it (``addmm_``): parallel inside each GEMM, no partial
    products in memory; so do two chunks (a batched GEMM of two was no faster, and cost a reshape,
    a transpose and a sum). A smaller one takes a batched GEMM over the chunks (``batch`` at a time,
    bounding the scratch to batch x the output size), then sums them in order: one call instead
    of K / kc small ones.
    """
    K = a.shape[1]
    if K <= kc:
        return a @ b
    n = K // kc
    if n <= 2 or a.shape[0] * b.shape[1] >= loop_min_out:
        out = a[:, :kc] @ b[:kc]
        for c in range(1, n):
            out.addmm_(a[:, c * kc:(c + 1) * kc], b[c * kc:(c + 1) * kc])
    else:
        out = None
        for c0 in range(0, n, batch):
            c1 = min(n, c0 + batch)
            parts = torch.bmm(a[:, c0 * kc:c1 * kc].reshape(a.shape[0], c1 - c0, kc).transpose(0, 1),
                              b[c0 * kc:c1 * kc].reshape(c1 - c0, kc, b.shape[1]))
            for i in range(c1 - c0):
                out = parts[i] if out is None else out.add_(parts[i])  # parts is scratch: sum in place
    if n * kc < K:
        out.addmm_(a[:, n * kc:], b[n * kc:])
    return out


def _linear_map(geo, x, w):
    return common.linear_map(geo, x, w, mm=_mm_fixed_k)


def _linear_map_bwd(geo, gl, x, w, needs):
    """(gx, g_w) of the raw map. The weight gradient is thread-count independent only when asked
    for (torch.use_deterministic_algorithms): our fixed-order kernel takes 1.8-4x oneDNN's time."""
    det_wgrad = needs[1] and not geo.linear and torch.are_deterministic_algorithms_enabled()
    gx, gw = common.linear_map_backward(geo, gl, x, w, (needs[0], needs[1] and not det_wgrad), mm=_mm_fixed_k)
    if det_wgrad:
        gw = _weight_grad_deterministic(geo, gl, x, w)
    return gx, gw


def _weight_grad_deterministic(geo, gl, x, w):
    """The conv weight gradient with a reduction order that does not depend on the thread count
    (csrc/cpu/bcos_wgrad_det.h: register tiles of weight rows x (channel, tap) pairs with
    per-column partial sums, one task per block of weight rows; a plain loop for column stride > 1).

    oneDNN splits the batch / pixel reduction of its weight gradient across threads, and even a
    per-sample grouped convolution or an MKL GEMM with a short reduction changed in the last
    bits between 1 and 2 threads on some shapes, so the deterministic path is our own loop.
    """
    gw = x.new_empty(w.shape)
    g1 = common.BcosGeometry.of_conv(x, w, 1, geo.stride, geo.padding, geo.dilation, geo.G)
    _backend.cext().bcos_weight_grad_deterministic(g1.as_list(), _np(gl.contiguous()), _np(x.contiguous()),
                                                   _np(gw), _backend.num_threads())
    return gw


def _rows(w):
    """The (R, K) numpy view of a weight's rows, contiguous or channels-last (a row is then
    contiguous in (kh, kw, c) order; its norm and its gradient's projection do not depend on it).
    numpy's transpose and reshape: a third of the time of torch's."""
    a = w.detach().numpy()
    if common.is_channels_last(w):
        a = a.transpose(0, 2, 3, 1)
    return a.reshape(a.shape[0], -1)


def _weight_scale(weight):
    """ws = 1 / ||W_row|| (the kernels scale each output channel by it; no W-hat tensor is made)."""
    ws = weight.new_empty(weight.shape[0])
    _backend.cext().bcos_weight_scale(_rows(weight), _np(ws), _backend.num_threads())
    return ws


def _weight_grad(weight, g_raw):
    """grad W from g_raw, the gradient of the raw-weight map's weight (a tensor of this backward's
    own, overwritten), by the unit-weight backward in C++; in the weight's layout. oneDNN hands a
    channels-last input's weight gradient back channels-last whatever the weight's layout: the
    kernel reads such rows transposed, where a layout copy of the gradient took longer than the
    kernel (up to 2 ms for a 512 x 512 x 3 x 3 weight)."""
    w_cl = common.is_channels_last(weight)
    mf, other = (_CL, torch.contiguous_format) if w_cl else (torch.contiguous_format, _CL)
    if g_raw.is_contiguous(memory_format=mf):
        g, transposed = g_raw, 0
    elif weight.dim() == 4 and g_raw.is_contiguous(memory_format=other):
        # a row is (C/G, kh, kw) in a contiguous weight and (kh, kw, C/G) in a channels-last one
        g, transposed = g_raw, weight.shape[2] * weight.shape[3] if w_cl else weight.shape[1]
    else:
        g, transposed = g_raw.contiguous(memory_format=mf), 0
    _backend.cext().bcos_weight_grad(_rows(weight), _rows(g), transposed, _backend.num_threads())
    # the weight's strides exactly, also along dims of size 1 (what the backward op's fake gives)
    return g if g.stride() == weight.stride() else g.as_strided(weight.shape, weight.stride())


# Raw conv output l per batch chunk, in bytes. l has max_out x the channels of y and is the largest
# tensor of the op; made for a few images at a time it stays in cache for the epilogue and its
# buffer is reused, where a whole-batch l is a fresh allocation whose page faults cost as much as
# the epilogue (bench/bench_bcos.py --reuse-pages shows the effect). Much smaller chunks pay
# oneDNN's per-call cost.
_CHUNK_BYTES = 4 << 20


def _batch_chunks(geo, itemsize):
    """[(i0, i1)] image ranges whose l fits in _CHUNK_BYTES (at least one image each; one empty
    range for N = 0); depends on the sizes only, so results do not depend on timing or threads."""
    per_image = geo.O * geo.M * geo.P * itemsize
    step = max(1, _CHUNK_BYTES // max(1, per_image))
    return [(i0, min(geo.N, i0 + step)) for i0 in range(0, max(geo.N, 1), step)]


# Conv forward path: "auto" (_direct_fits), or "direct" / "onednn" everywhere it applies (tests).
_CONV_PATH = "auto"
# The direct convolution (csrc/cpu/bcos_direct.h) up to this reduction length C/groups * kh * kw,
# where its pixel vectors are mostly full (a row of Wo columns fills ceil(Wo / lanes) vectors).
# README (B-cos) gives the measured split.
_DIRECT_MAX_K = 1536
_DIRECT_MIN_LANE_USE = 0.75
# Its zero-padded input copy, made a batch chunk of (image, group) planes at a time.
_DIRECT_CHUNK_BYTES = 8 << 20


# Linear forward path: "auto" (_small_linear), or "tile" / "gemm" everywhere (tests).
_LINEAR_PATH = "auto"
# The C++ GEMM tile + epilogue in one call (csrc/cpu/bcos_linear.h) up to this many raw outputs
# (O * max_out), for any number of input features; elsewhere torch's GEMM. README (B-cos) gives
# the measured split.
_LINEAR_TILE_MAX_OUT = 32


def _small_linear(geo):
    """Whether the linear forward takes the C++ GEMM tile (sizes only, never the thread count)."""
    if _LINEAR_PATH != "auto":
        return _LINEAR_PATH == "tile"
    return geo.O * geo.M <= _LINEAR_TILE_MAX_OUT


def _lane_use(wo, itemsize):
    lanes = 64 // itemsize  # AVX-512 vectors (AVX2's are half as wide: fuller)
    return wo / (-(-wo // lanes) * lanes)


def _direct_fits(geo, itemsize):
    """Whether the conv forward tries the direct convolution (which itself declines column
    strides > 1 and max_out > 3): in auto mode, for a short reduction and mostly full pixel
    vectors. Sizes only, never the thread count: the two paths round differently, and results
    must not change with torch.set_num_threads."""
    if _CONV_PATH != "auto":
        return _CONV_PATH == "direct"
    return geo.K <= _DIRECT_MAX_K and _lane_use(geo.Wo, itemsize) >= _DIRECT_MIN_LANE_USE


def _alloc_forward(geo, b, x, save, nhwc):
    def new(shape, dtype=x.dtype):
        if nhwc:
            return torch.empty(shape, dtype=dtype, memory_format=_CL)
        return x.new_empty(shape, dtype=dtype)  # half the cost of torch.empty with its keyword arguments

    return (new(geo.y_shape), new(geo.y_shape) if save else None, new(geo.y_shape, torch.uint8) if save else None,
            new(geo.root_shape) if save and b != 1 else None)


def _epilogue(geo, b, x, l, ws, save, out, nhwc=False):
    """The fused epilogue of the raw map l into out = (y, lmax, idx, root) (preallocated, maybe a
    chunk's slices); nhwc: every map channels-last."""
    y, lmax, idx, root = (_np(t, nhwc) for t in out)
    _backend.cext().bcos_forward(geo.as_list(), float(b), *geo.eps, _np(x, nhwc), _np(l, nhwc), _np(ws), y, lmax,
                                 idx, root, save, nhwc, _backend.num_threads())


def forward(geo, b, x, weight, save):
    """(y, lmax, idx, root): the direct convolution with the epilogue in registers where it fits,
    else the raw map from oneDNN / MKL (a batch chunk at a time for conv), then the fused epilogue
    into each chunk's slice of the outputs. lmax / idx / root None unless saved (root for b != 1)."""
    ws = _weight_scale(weight)
    nhwc = common.is_channels_last(x)  # oneDNN and the NHWC epilogue (the direct convolution is NCHW)
    out = _alloc_forward(geo, b, x, save, nhwc)
    if not geo.linear and not nhwc and _direct_fits(geo, x.element_size()):
        y, lmax, idx, root = out
        if _backend.cext().bcos_forward_direct(geo.as_list(), float(b), *geo.eps, _np(x), _np(weight), _np(ws),
                                               _np(y), _np(lmax), _np(idx), _np(root), save, _DIRECT_CHUNK_BYTES,
                                               _backend.num_threads()):
            return out
    if geo.linear:
        y, lmax, idx, root = out
        if not (_small_linear(geo) and _backend.cext().bcos_linear_forward(
                geo.as_list(), float(b), *geo.eps, _np(x), _np(weight), _np(ws), _np(y), _np(lmax), _np(idx),
                _np(root), save, _backend.num_threads())):
            _epilogue(geo, b, x, _linear_map(geo, x, weight).contiguous(), ws, save, out)
        return out
    for i0, i1 in _batch_chunks(geo, x.element_size()):
        xs = _batch_slice(x, i0, i1)
        l = _linear_map(geo, xs, weight).contiguous(memory_format=_CL if nhwc else torch.contiguous_format)
        _epilogue(geo.with_batch(i1 - i0), b, xs, l, ws, save,
                  tuple(None if t is None else _batch_slice(t, i0, i1) for t in out), nhwc)
    return out


def _epilogue_backward(geo, b, gy, lmax, idx, root, ws, explain, need_q, buf=None, nhwc=False):
    """(gl, q | None) in the raw map's and the root's shapes: gl the gradient of the raw-weight map;
    buf: a flat tensor of at least N*O*M*P elements for gl (a batch chunk reuses one buffer);
    nhwc: every map channels-last."""
    n_raw = geo.N * geo.O * geo.M * geo.P
    flat = gy.new_empty(n_raw) if buf is None else buf[:n_raw]
    if nhwc:
        gl = flat.view(geo.N, geo.Ho, geo.Wo, geo.O * geo.M).permute(0, 3, 1, 2)
        q = torch.empty(geo.root_shape, dtype=gy.dtype, memory_format=_CL) if need_q else None
    else:
        gl = flat.view(geo.raw_shape)
        q = gy.new_empty(geo.root_shape) if need_q else None
    maps = (_np(t, nhwc) for t in (gy, lmax, idx, root))
    _backend.cext().bcos_backward_epilogue(geo.as_list(), float(b), geo.eps[1], *maps, _np(ws), _np(gl, nhwc),
                                           _np(q, nhwc), bool(explain), nhwc, _backend.num_threads())
    return gl, q


def _norm_backward(geo, x, q, gsrc, gx, nhwc=False):
    """gx = gsrc + x * box-sum^T(q) (gsrc may be gx)."""
    _backend.cext().bcos_backward_norm(geo.as_list(), *(_np(t, nhwc) for t in (x, q, gsrc, gx)), nhwc,
                                       _backend.num_threads())
    return gx


def _batch_slice(t, i0, i1):
    """t[i0:i1], or t itself for the whole batch (the one chunk of a small call: a slice costs a
    microsecond)."""
    return t if i0 == 0 and i1 == t.shape[0] else t[i0:i1]


def backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs):
    """(gx | None, gw | None). Conv runs in batch chunks as the forward does (the per-chunk weight
    gradients summed in chunk order), except under torch.use_deterministic_algorithms, where the
    weight gradient takes the deterministic C++ loop."""
    ws = _weight_scale(weight)
    nhwc = common.is_channels_last(x)
    mf = _CL if nhwc else torch.contiguous_format
    need_q = needs[0] and b != 1 and not explain
    det = torch.are_deterministic_algorithms_enabled() and needs[1]
    chunks = [(0, geo.N)] if geo.linear or det else _batch_chunks(geo, x.element_size())
    gx = torch.empty_like(x) if needs[0] and len(chunks) > 1 else None
    # one gl buffer for all chunks: a fresh multi-MiB tensor per chunk may come with fresh pages
    n_raw = geo.O * geo.M * geo.P
    buf = x.new_empty(max(i1 - i0 for i0, i1 in chunks) * n_raw) if len(chunks) > 1 else None
    g_raw = None
    for i0, i1 in chunks:
        gc = geo.with_batch(i1 - i0)
        xs = _batch_slice(x, i0, i1)
        # gy per chunk: autograd often hands an expanded (stride-0) gradient, made dense here a
        # chunk at a time rather than whole
        gl, q = _epilogue_backward(gc, b, _batch_slice(gy, i0, i1).contiguous(memory_format=mf),
                                   _batch_slice(lmax, i0, i1), _batch_slice(idx, i0, i1),
                                   None if root is None else _batch_slice(root, i0, i1), ws, explain, need_q, buf,
                                   nhwc)
        gxs, gws = _linear_map_bwd(gc, gl, xs, weight, needs)
        if needs[0]:
            gxs = gxs.contiguous(memory_format=mf)
            dst = gxs if gx is None else gx[i0:i1]
            if q is not None:
                _norm_backward(gc, xs, q, gxs, dst, nhwc)
            elif gx is not None:
                dst.copy_(gxs)
            if gx is None:
                gx = gxs
        if needs[1]:
            g_raw = gws if g_raw is None else g_raw.add_(gws)
    gw = _weight_grad(weight, g_raw) if needs[1] else None
    return gx, gw
