"""B-cos convolution and linear layers as torch.library custom ops (paper: bcos-networks.md).

Semantics are those of ``bcos.modules.BcosConv2d`` / ``BcosLinear`` (bcos 0.1.3), see
:func:`rbfkern.reference.bcos_conv2d`. Ops (namespace ``rbfkern``):

  ``bcos_conv2d`` / ``bcos_linear``          -> (y, lmax, idx, root)
  ``bcos_conv2d_bwd`` / ``bcos_linear_bwd``  -> (grad_x, grad_weight)

On CPU a conv with a short reduction (C/groups * kh * kw <= 1536, column stride 1, max_out <= 3,
output rows that fill their pixel vectors) runs forward as one direct convolution of ours with
the epilogue in registers (the raw map is never written, csrc/cpu/bcos_direct.h). Otherwise
the linear map runs in PyTorch (oneDNN / MKL) with the raw weight, a batch chunk of a few MiB of
output at a time (it stays in cache and its buffer is reused), and the rest is one fused C++
epilogue pass per chunk (per-filter 1/||W|| scale + MaxOut + patch norm + power,
csrc/cpu/bcos.cpp). Backward always uses oneDNN per chunk, the weight gradient summed in chunk
order (a fixed-order C++ kernel under torch.use_deterministic_algorithms).

Forward saves only x, the raw weight, the MaxOut values ``lmax``, a 1-byte argmax ``idx`` and the
patch-norm root (one value per output pixel and group) for backward. The unfused backward (C++,
and Triton's fallback) is one fused pass (gradient of the raw linear output, scattered to the
argmax unit, + the patch-norm term q), torch's convolution / GEMM backward, and one fused pass
adding x * box-sum^T(q) to the input gradient.

Triton (rbfkern/gpu/bcos.py), float32/float16/bfloat16 with max_out <= 3: the forward is one
implicit-GEMM (conv) or GEMM (linear) kernel with the epilogue fused, l never materialised; the
backward a small pre-pass (gv = the gradient of lmax, [N, O, P], and q), one implicit-GEMM kernel
for grad x (the transposed convolution with the MaxOut scatter done on the fly from idx, the
patch-norm term in its epilogue) and one for grad W-hat (deterministic per-program partials),
then the unit-weight backward. float64 and max_out > 3 (the fused launchers return None) take the
unfused path with the Triton epilogue kernels. The reference backend differentiates
:mod:`rbfkern.reference` (it is the oracle).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend, reference
from . import _checks, _family

_HALF = (torch.float16, torch.bfloat16)
# (eps inside the sqrt, eps after it) of the input norm: conv patches / linear rows, as bcos does.
_EPS = {"conv": (1e-6, 0.0), "linear": (0.0, 1e-12)}


# ---------------------------------------------------------------------------------------------
# Geometry: kind "conv" with conv = (stride, padding, dilation, groups), or "linear" (x is 2-D)
# ---------------------------------------------------------------------------------------------


def _out_hw(H, W, kh, kw, stride, padding, dilation):
    ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def _geom(kind, x, weight, max_out, conv):
    """The 17 sizes the kernels take: N C H W G O M Ho Wo kh kw sh sw ph pw dh dw."""
    O = weight.shape[0] // max_out
    if kind == "linear":
        return [x.shape[0], x.shape[1], 1, 1, 1, O, max_out, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]
    stride, padding, dilation, groups = conv
    N, C, H, W = x.shape
    kh, kw = weight.shape[-2:]
    ho, wo = _out_hw(H, W, kh, kw, stride, padding, dilation)
    return [N, C, H, W, groups, O, max_out, ho, wo, kh, kw, *stride, *padding, *dilation]


def _shapes(g):
    """(shape of y/lmax/idx, shape of root) for the geometry g."""
    N, G, O, ho, wo = g[0], g[4], g[5], g[7], g[8]
    return (N, O, ho, wo), (N, G, ho, wo)


def _mm_fixed_k(a, b, kc=256, batch=64):
    """a @ b with the K reduction cut into chunks of kc, summed in order (CPU).

    MKL splits a long K across threads, so a plain mm changes with torch.set_num_threads; a
    K of at most 256 per GEMM is not split, and the batched GEMM parallelises over chunks
    (``batch`` chunks at a time bound the scratch to batch x the output size).
    """
    K = a.shape[1]
    if a.device.type != "cpu" or K <= kc:
        return a @ b
    n = K // kc
    out = None
    for c0 in range(0, n, batch):
        c1 = min(n, c0 + batch)
        parts = torch.bmm(a[:, c0 * kc:c1 * kc].reshape(a.shape[0], c1 - c0, kc).transpose(0, 1),
                          b[c0 * kc:c1 * kc].reshape(c1 - c0, kc, b.shape[1]))
        for i in range(c1 - c0):
            out = parts[i].clone() if out is None else out.add_(parts[i])
    if n * kc < K:
        out += a[:, n * kc:] @ b[n * kc:]
    return out


def _linear_map(kind, x, w_hat, conv):
    if kind == "linear":
        return _mm_fixed_k(x, w_hat.T)
    stride, padding, dilation, groups = conv
    return torch.nn.functional.conv2d(x, w_hat, None, stride, padding, dilation, groups)


def _linear_map_bwd(kind, gl, x, w_hat, conv, needs):
    """(gx, g_w_hat) of the raw linear map, None where not needed."""
    if kind == "linear":
        gx = _mm_fixed_k(gl, w_hat) if needs[0] else None
        gwh = _mm_fixed_k(gl.T, x) if needs[1] else None
        return gx, gwh
    stride, padding, dilation, groups = conv
    # Thread-count independent weight gradient only when asked for (torch.use_deterministic_algorithms):
    # our fixed-order kernel takes 1.8-4x oneDNN's time (bench shapes, 2 threads: 77 / 30 / 16 ms
    # vs 31 / 7.4 / 8.7 ms).
    det_wgrad = needs[1] and x.device.type == "cpu" and torch.are_deterministic_algorithms_enabled()
    gx, gwh, _ = torch.ops.aten.convolution_backward(
        gl, x, w_hat, None, stride, padding, dilation, False, [0, 0], groups,
        [needs[0], needs[1] and not det_wgrad, False])
    if det_wgrad:
        gwh = _weight_grad_deterministic(gl, x, w_hat, conv)
    return gx, gwh


def _weight_grad_deterministic(gl, x, w_hat, conv):
    """The weight gradient with a reduction order that does not depend on the thread count
    (C++, csrc/cpu/bcos_wgrad_det.h: register tiles of weight rows x (channel, tap) pairs with
    per-column partial sums, one task per block of weight rows; a plain loop for column stride > 1).

    oneDNN splits the batch / pixel reduction of its weight gradient across threads, and even a
    per-sample grouped convolution or an MKL GEMM with a short reduction changed in the last
    bits between 1 and 2 threads on some shapes, so the deterministic path is our own loop.
    """
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):
        x, gl = x.float(), gl.float()
    g = _geom("conv", x, w_hat, 1, conv)
    gw = x.new_empty(w_hat.shape)
    _backend.cext().bcos_weight_grad_deterministic(g, _np(gl.contiguous()), _np(x.contiguous()), _np(gw),
                                                   _backend.num_threads())
    return gw.to(dtype)


def _unit_weight_bwd(weight, w_hat, g_w_hat):
    """d/dW of W / ||W||_row given d/dW-hat: (g - W-hat <g, W-hat>) / ||W||."""
    dims = tuple(range(1, weight.dim()))
    r = torch.linalg.vector_norm(weight, dim=dims, keepdim=True)
    return (g_w_hat - w_hat * (g_w_hat * w_hat).sum(dims, keepdim=True)) / r


def _np(t):
    return None if t is None else t.detach().numpy()


# ---------------------------------------------------------------------------------------------
# C++ backend (csrc/cpu/bcos.cpp): oneDNN / MKL run the convolution / GEMM with the RAW weight;
# the kernels scale each output channel by ws = 1 / ||W_c|| (no W-hat tensor is made), and
# the backward epilogue hands torch the gradient of that raw-weight map, so torch's backward
# gives grad x directly and a weight gradient that one pass turns into grad W.
# Tensors are contiguous with the layouts of csrc/cpu/bcos.cpp (l [N, O*M, P], ...).
# ---------------------------------------------------------------------------------------------


class _Cpp:
    """The C++ kernels of csrc/cpu/bcos.cpp (float32/float64)."""

    @staticmethod
    def alloc_forward(g, b, x, save):
        ys, rs = _shapes(g)
        return (x.new_empty(ys), x.new_empty(ys) if save else None,
                torch.empty(ys, dtype=torch.uint8) if save else None,
                x.new_empty(rs) if save and b != 1 else None)

    @staticmethod
    def forward(g, b, eps, x, l, ws, save, out):
        """Epilogue of the raw map l into out = (y, lmax, idx, root) (preallocated, maybe a chunk's slices)."""
        y, lmax, idx, root = out
        _backend.cext().bcos_forward(g, float(b), eps[0], eps[1], _np(x), _np(l), _np(ws), _np(y), _np(lmax),
                                     _np(idx), _np(root), save, _backend.num_threads())

    @staticmethod
    def backward(g, b, eps, gy, lmax, idx, root, ws, explain, need_q, buf=None):
        """(gl [N, O*M, P], q [N, G, P] | None): gl the gradient of the raw-weight map; buf: a
        flat tensor of at least N*O*M*P elements for gl (a batch chunk reuses one buffer)."""
        N, G, O, M, P = g[0], g[4], g[5], g[6], g[7] * g[8]
        gl = gy.new_empty(N, O * M, P) if buf is None else buf[:N * O * M * P].view(N, O * M, P)
        q = gy.new_empty(N, G, P) if need_q else None
        _backend.cext().bcos_backward_epilogue(g, float(b), eps[1], _np(gy), _np(lmax), _np(idx), _np(root),
                                               _np(ws), _np(gl), _np(q), bool(explain), _backend.num_threads())
        return gl, q

    @staticmethod
    def backward_norm(g, x, q, gsrc, gx):
        """gx = gsrc + x * box-sum^T(q) (gsrc may be gx)."""
        _backend.cext().bcos_backward_norm(g, _np(x), _np(q), _np(gsrc), _np(gx), _backend.num_threads())
        return gx

    @staticmethod
    def weight_scale(weight):
        ws = weight.new_empty(weight.shape[0])
        _backend.cext().bcos_weight(_np(weight), None, _np(ws))
        return ws

    @staticmethod
    def weight_grad(weight, g_raw):
        out = torch.empty_like(weight)
        _backend.cext().bcos_weight(_np(weight), _np(g_raw.contiguous()), _np(out))
        return out


# Raw conv output l per batch chunk on CPU, in bytes. l has max_out x the channels of y and is
# the largest tensor of the op; made for a few images at a time it stays in cache for the
# epilogue and its buffer is reused, where a whole-batch l is a fresh allocation whose page
# faults cost as much as the epilogue (bench/bench_bcos.py: shape 3 forward 1.3x -> 0.8x the
# plain convolution). Below ~4 MiB oneDNN's per-call cost grows.
_CHUNK_BYTES = 4 << 20


def _batch_chunks(g, itemsize):
    """[(i0, i1)] image ranges whose l fits in _CHUNK_BYTES (at least one image each; one empty
    range for N = 0); depends on the sizes only, so results do not depend on timing or threads."""
    per_image = g[5] * g[6] * g[7] * g[8] * itemsize
    step = max(1, _CHUNK_BYTES // max(1, per_image))
    N = g[0]
    return [(i0, min(N, i0 + step)) for i0 in range(0, max(N, 1), step)]


# CPU conv forward path: "auto" (_direct_fits), or "direct" / "onednn" everywhere it applies (tests).
_CONV_PATH = "auto"
# The direct convolution (csrc/cpu/bcos_direct.h) up to this reduction length C/groups * kh * kw,
# where its pixel vectors are mostly full (a row of Wo columns fills ceil(Wo / lanes) vectors):
# forward time vs the oneDNN path, 2 threads, AVX-512 (medians of 25): K = 144 0.45-0.6x,
# 576 0.7x (Wo = 32) / 1.04x (Wo = 56), 1152 0.86x, 2304 1.05x; at Wo = 8 (half-empty vectors)
# 2.2x, so those take oneDNN.
_DIRECT_MAX_K = 1536
_DIRECT_MIN_LANE_USE = 0.75
# Its zero-padded input copy, made a batch chunk of (image, group) planes at a time.
_DIRECT_CHUNK_BYTES = 8 << 20


def _lane_use(wo, itemsize):
    lanes = 64 // itemsize  # AVX-512 vectors (AVX2's are half as wide: fuller)
    return wo / (-(-wo // lanes) * lanes)


def _direct_fits(g, itemsize):
    """Whether the conv forward tries the direct convolution (which itself declines column
    strides > 1 and max_out > 3): in auto mode, for a short reduction and mostly full pixel
    vectors. Sizes only, never the thread count: the two paths round differently, and results
    must not change with torch.set_num_threads."""
    if _CONV_PATH != "auto":
        return _CONV_PATH == "direct"
    return (g[1] // g[4]) * g[9] * g[10] <= _DIRECT_MAX_K and _lane_use(g[8], itemsize) >= _DIRECT_MIN_LANE_USE


def _cpp_forward(kind, g, b, x, weight, conv, save):
    """(y, lmax, idx, root) on the C++ backend: the direct convolution with the epilogue in
    registers where it fits, else the raw map from oneDNN / MKL (a batch chunk at a time for
    conv), then the fused epilogue into each chunk's slice of the outputs."""
    ws = _Cpp.weight_scale(weight)
    out = _Cpp.alloc_forward(g, b, x, save)
    if kind == "conv" and _direct_fits(g, x.element_size()):
        y, lmax, idx, root = out
        if _backend.cext().bcos_forward_direct(g, float(b), *_EPS[kind], _np(x), _np(weight), _np(ws), _np(y),
                                               _np(lmax), _np(idx), _np(root), save, _DIRECT_CHUNK_BYTES,
                                               _backend.num_threads()):
            return out
    if kind == "linear":
        _Cpp.forward(g, b, _EPS[kind], x, _linear_map(kind, x, weight, conv).contiguous(), ws, save, out)
        return out
    for i0, i1 in _batch_chunks(g, x.element_size()):
        xs = x[i0:i1]
        l = _linear_map(kind, xs, weight, conv).contiguous()
        _Cpp.forward([i1 - i0] + g[1:], b, _EPS[kind], xs, l, ws, save,
                     tuple(None if t is None else t[i0:i1] for t in out))
    return out


def _cpp_backward(kind, g, b, gy, x, weight, lmax, idx, root, conv, explain, needs):
    """(gx | None, gw | None) on the C++ backend. Conv runs in batch chunks as the forward does
    (the per-chunk weight gradients summed in chunk order), except under
    torch.use_deterministic_algorithms, where the weight gradient takes the deterministic C++ loop."""
    ws = _Cpp.weight_scale(weight)
    need_q = needs[0] and b != 1 and not explain
    det = torch.are_deterministic_algorithms_enabled() and needs[1]
    chunks = [(0, g[0])] if kind == "linear" or det else _batch_chunks(g, x.element_size())
    gx = torch.empty_like(x) if needs[0] and len(chunks) > 1 else None
    # one gl buffer for all chunks: a fresh multi-MiB tensor per chunk may come with fresh pages
    buf = x.new_empty(max(i1 - i0 for i0, i1 in chunks) * g[5] * g[6] * g[7] * g[8]) if len(chunks) > 1 else None
    g_raw = None
    for i0, i1 in chunks:
        gc = [i1 - i0] + g[1:]
        xs = x[i0:i1]
        # gy per chunk: autograd often hands an expanded (stride-0) gradient, made dense here a
        # chunk at a time rather than whole
        gl, q = _Cpp.backward(gc, b, _EPS[kind], gy[i0:i1].contiguous(), lmax[i0:i1], idx[i0:i1],
                              None if root is None else root[i0:i1], ws, explain, need_q, buf)
        gl = gl.reshape(i1 - i0, g[5] * g[6], g[7], g[8]) if kind == "conv" else gl.reshape(i1 - i0, g[5] * g[6])
        gxs, gws = _linear_map_bwd(kind, gl, xs, weight, conv, needs)
        if needs[0]:
            gxs = gxs.contiguous()
            dst = gxs if gx is None else gx[i0:i1]
            if q is not None:
                _Cpp.backward_norm(gc, xs, q, gxs, dst)
            elif gx is not None:
                dst.copy_(gxs)
            if gx is None:
                gx = gxs
        if needs[1]:
            g_raw = gws if g_raw is None else g_raw.add_(gws)
    gw = _Cpp.weight_grad(weight, g_raw) if needs[1] else None
    return gx, gw


def _epilogue_impl(device):
    name = _backend.choose(device)
    if name == "cpp":
        return _Cpp
    if name == "triton":
        return _backend.gpu_module("bcos")
    return None  # the reference


def _ref_y(kind, x, weight, b, max_out, conv, explain):
    if kind == "linear":
        return reference.bcos_linear(x, weight, b, max_out, explain)
    return reference.bcos_conv2d(x, weight, b, max_out, *conv, explain)


def _forward(kind, x, weight, b, max_out, conv, save):
    """(y, lmax, idx, root) in the layouts of the op; aux outputs empty unless save."""
    x, weight = x.contiguous(), weight.contiguous()
    g = _geom(kind, x, weight, max_out, conv)
    ys, rs = _shapes(g)
    impl = _epilogue_impl(x.device)
    dtype = x.dtype
    if impl is None:
        y = _ref_y(kind, x, weight, b, max_out, conv, False)
        if not save:
            return y, x.new_empty(0), x.new_empty(0, dtype=torch.uint8), x.new_empty(0)
        # explicit pixel count, not -1: N = 0 is legal and a -1 is ambiguous for an empty tensor
        l = _linear_map(kind, x, reference.bcos_unit_weight(weight), conv).reshape(g[0], g[5], max_out, g[7] * g[8])
        lmax, idx = l.max(dim=2)
        lmax, idx = lmax.reshape(ys), idx.to(torch.uint8).reshape(ys)
        root = x.new_empty(0)
        if b != 1:
            if kind == "linear":
                root = torch.linalg.vector_norm(x, dim=-1).reshape(rs)
            else:
                root = reference.bcos_patch_norm(x, weight.shape[-2:], *conv)
        return y.reshape(ys), lmax, idx, root
    if impl is _Cpp and dtype in _HALF:
        x, weight = x.float(), weight.float()
    fused = None
    if impl is not _Cpp:  # Triton: one GEMM kernel with the epilogue; None -> torch conv/GEMM + epilogue kernels
        fused = (impl.conv_forward if kind == "conv" else impl.linear_forward)(g, b, _EPS[kind], x, weight, save)
    if fused is not None:  # l never materialised
        y, lmax, idx, root = fused
        y = y.reshape(ys)
        if not save:
            return y, y.new_empty(0), torch.empty(0, dtype=torch.uint8, device=y.device), y.new_empty(0)
        root = y.new_empty(0) if root is None else root.reshape(rs)
        return y, lmax.reshape(ys), idx.reshape(ys), root
    if impl is _Cpp:
        y, lmax, idx, root = _cpp_forward(kind, g, b, x, weight, conv, save)
    else:
        l = _linear_map(kind, x, reference.bcos_unit_weight(weight), conv).contiguous()
        y, lmax, idx, root = impl.forward(g, b, _EPS[kind], x, l, save)
    y = y.reshape(ys).to(dtype)
    if not save:
        return y, y.new_empty(0), torch.empty(0, dtype=torch.uint8, device=y.device), y.new_empty(0)
    root = y.new_empty(0) if root is None else root.reshape(rs).to(dtype)
    return y, lmax.reshape(ys).to(dtype), idx.reshape(ys), root


def _backward_unfused(impl, kind, g, gy, x, weight, lmax, idx, root, b, conv, explain, needs):
    """(gx, gw) through the Triton epilogue kernels and torch's convolution / GEMM backward, where
    no fused kernel applies (float64, max_out > 3)."""
    need_q = needs[0] and b != 1 and not explain
    gl, q = impl.backward(g, b, _EPS[kind], gy, lmax, idx, root, explain, need_q)
    w_hat = reference.bcos_unit_weight(weight)
    if kind == "conv":
        gl = gl.reshape(g[0], g[5] * g[6], g[7], g[8])
    else:
        gl = gl.reshape(g[0], g[5] * g[6])
    gx, gwh = _linear_map_bwd(kind, gl, x, w_hat, conv, needs)
    if q is not None:
        gx = impl.backward_norm(g, x, q, gx.contiguous())
    gw = None
    if needs[1]:
        gw = _unit_weight_bwd(weight, w_hat, gwh)
    return gx, gw


def _backward(kind, gy, x, weight, lmax, idx, root, b, max_out, conv, explain, needs):
    """(gx, gw); an input not needed gets an empty tensor."""
    needs = (bool(needs[0]), bool(needs[1]))
    x, weight = x.contiguous(), weight.contiguous()
    impl = _epilogue_impl(x.device)
    dtype = x.dtype
    if impl is not _Cpp:  # the C++ path makes gy contiguous per batch chunk
        gy = gy.contiguous()
    if impl is None:
        # torch.func.vjp, not autograd: a custom op's body runs below the autograd key.
        out, vjp = torch.func.vjp(lambda a, w: _ref_y(kind, a, w, b, max_out, conv, explain), x, weight)
        gx, gw = vjp(gy.reshape(out.shape).to(dtype))
    else:
        if impl is _Cpp and dtype in _HALF:
            x, weight, gy, lmax = x.float(), weight.float(), gy.float(), lmax.float()
            root = root.float()
        g = _geom(kind, x, weight, max_out, conv)
        lmax, idx = lmax.contiguous(), idx.contiguous()
        root = root.contiguous() if b != 1 else None
        fused = None
        if impl is _Cpp:
            fused = _cpp_backward(kind, g, b, gy, x, weight, lmax, idx, root, conv, explain, needs)
        else:  # Triton: gv/q pre-pass + implicit-GEMM grad x and grad W kernels
            fused = (impl.conv_backward if kind == "conv" else impl.linear_backward)(
                g, b, _EPS[kind], gy, x, weight, lmax, idx, root, explain, needs)
        if fused is not None:
            gx, gw = fused
        else:
            gx, gw = _backward_unfused(impl, kind, g, gy, x, weight, lmax, idx, root, b, conv, explain, needs)
    out = []
    for t, need in zip((gx, gw), needs):
        out.append(t.to(dtype) if need and t is not None else x.new_empty(0, dtype=dtype))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


def _bcos_conv2d_fake(x, weight, b, max_out, stride, padding, dilation, groups, explain, save):
    N, _, H, W = x.shape
    ho, wo = _out_hw(H, W, weight.shape[2], weight.shape[3], stride, padding, dilation)
    ys = (N, weight.shape[0] // max_out, ho, wo)
    if not save:
        return x.new_empty(ys), x.new_empty(0), x.new_empty(0, dtype=torch.uint8), x.new_empty(0)
    root = x.new_empty(N, groups, ho, wo) if b != 1 else x.new_empty(0)
    return x.new_empty(ys), x.new_empty(ys), x.new_empty(ys, dtype=torch.uint8), root


@_family.device_op("bcos_conv2d", fake=_bcos_conv2d_fake)
def _bcos_conv2d_op(
    x: Tensor, weight: Tensor, b: float, max_out: int, stride: list[int], padding: list[int],
    dilation: list[int], groups: int, explain: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y [N, O, H', W'], lmax [N, O, H', W'], idx uint8 [N, O, H', W'], root [N, G, H', W']);
    the last three are empty unless ``save`` (root also for b == 1)."""
    return _forward("conv", x, weight, b, max_out, (stride, padding, dilation, groups), save)


def _bcos_linear_fake(x, weight, b, max_out, explain, save):
    ys = (x.shape[0], weight.shape[0] // max_out)
    if not save:
        return x.new_empty(ys), x.new_empty(0), x.new_empty(0, dtype=torch.uint8), x.new_empty(0)
    root = x.new_empty(x.shape[0], 1) if b != 1 else x.new_empty(0)
    return x.new_empty(ys), x.new_empty(ys), x.new_empty(ys, dtype=torch.uint8), root


@_family.device_op("bcos_linear", fake=_bcos_linear_fake)
def _bcos_linear_op(
    x: Tensor, weight: Tensor, b: float, max_out: int, explain: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [R, C] -> (y [R, O], lmax [R, O], idx uint8 [R, O], root [R, 1]); aux empty unless save."""
    y, lmax, idx, root = _forward("linear", x, weight, b, max_out, None, save)
    ys = (x.shape[0], weight.shape[0] // max_out)
    if not save:
        return y.reshape(ys), lmax, idx, root
    return y.reshape(ys), lmax.reshape(ys), idx.reshape(ys), root.reshape(x.shape[0], 1) if b != 1 else root


def _bcos_bwd_fake(grad_y, x, weight, *args):
    needs = args[-1]
    return (torch.empty_like(x) if needs[0] else x.new_empty(0),
            torch.empty_like(weight) if needs[1] else x.new_empty(0))


@_family.device_op("bcos_conv2d_bwd", fake=_bcos_bwd_fake)
def _bcos_conv2d_bwd_op(
    grad_y: Tensor, x: Tensor, weight: Tensor, lmax: Tensor, idx: Tensor, root: Tensor, b: float,
    max_out: int, stride: list[int], padding: list[int], dilation: list[int], groups: int, explain: bool,
    needs: list[bool],
) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_weight); one not needed is an empty tensor."""
    return _backward("conv", grad_y, x, weight, lmax, idx, root, b, max_out, (stride, padding, dilation, groups),
                     explain, needs)


@_family.device_op("bcos_linear_bwd", fake=_bcos_bwd_fake)
def _bcos_linear_bwd_op(
    grad_y: Tensor, x: Tensor, weight: Tensor, lmax: Tensor, idx: Tensor, root: Tensor, b: float,
    max_out: int, explain: bool, needs: list[bool],
) -> tuple[Tensor, Tensor]:
    """(grad_x [R, C], grad_weight); one not needed is an empty tensor."""
    return _backward("linear", grad_y, x, weight, lmax, idx, root, b, max_out, None, explain, needs)


def _no_aux_grads(ctx, output):
    # lmax/idx/root are saved for backward, not differentiable outputs: without this autograd
    # would hand backward full-size zero tensors for them (a fill per output and step).
    ctx.mark_non_differentiable(output[1], output[2], output[3])
    ctx.set_materialize_grads(False)


def _setup_conv(ctx, inputs, output):
    x, weight, b, max_out, stride, padding, dilation, groups, explain, save = inputs
    ctx.args = (b, max_out, stride, padding, dilation, groups, explain)
    ctx.saved = save
    ctx.save_for_backward(x, weight, output[1], output[2], output[3])
    _no_aux_grads(ctx, output)


def _grad_y(gy, ref):
    return torch.zeros_like(ref) if gy is None else gy


def _backward_conv(ctx, gy, _g_lmax, _g_idx, _g_root):
    if not ctx.saved:
        raise RuntimeError("rbfkern::bcos_conv2d was called with save=False; its backward needs save=True")
    x, weight, lmax, idx, root = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    gx, gw = torch.ops.rbfkern.bcos_conv2d_bwd(_grad_y(gy, lmax), x, weight, lmax, idx, root, *ctx.args, needs)
    return (gx if needs[0] else None, gw if needs[1] else None) + (None,) * 8


def _setup_linear(ctx, inputs, output):
    x, weight, b, max_out, explain, save = inputs
    ctx.args = (b, max_out, explain)
    ctx.saved = save
    ctx.save_for_backward(x, weight, output[1], output[2], output[3])
    _no_aux_grads(ctx, output)


def _backward_linear(ctx, gy, _g_lmax, _g_idx, _g_root):
    if not ctx.saved:
        raise RuntimeError("rbfkern::bcos_linear was called with save=False; its backward needs save=True")
    x, weight, lmax, idx, root = ctx.saved_tensors
    needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    gx, gw = torch.ops.rbfkern.bcos_linear_bwd(_grad_y(gy, lmax), x, weight, lmax, idx, root, *ctx.args, needs)
    return (gx if needs[0] else None, gw if needs[1] else None) + (None,) * 4


_bcos_conv2d_op.register_autograd(_backward_conv, setup_context=_setup_conv)
_bcos_linear_op.register_autograd(_backward_linear, setup_context=_setup_linear)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _pair(name, v, minimum):
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                                  for i in v)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(v) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(v)}")
    return [int(v[0]), int(v[1])]


def _check_nonempty_weight(x, weight):
    """The filters: at least one, none empty (an empty filter has no unit-norm direction, 0 / 0).
    N = 0 inputs are legal (empty output); zero input channels / features are not."""
    if weight.shape[0] == 0:
        raise ValueError(f"weight must have at least one filter (O * max_out >= 1 rows), "
                         f"got shape {tuple(weight.shape)}")
    if x.shape[1 if x.dim() == 4 else -1] == 0:
        raise ValueError(f"x has no input {'channels' if x.dim() == 4 else 'features'} (shape {tuple(x.shape)}): a "
                         f"B-cos filter over zero inputs has no unit-norm direction")
    if 0 in tuple(weight.shape[1:]):
        raise ValueError(f"weight filters must not be empty, got weight of shape {tuple(weight.shape)}")


def _check_b_maxout(b, max_out, weight):
    b = _checks.finite_float("b", b, positive=True)
    if isinstance(max_out, bool) or not isinstance(max_out, int) or not 1 <= max_out <= 255:
        raise ValueError(f"max_out must be an int in [1, 255], got {max_out!r}")
    if weight.shape[0] % max_out != 0:
        raise ValueError(f"weight.shape[0] must be a multiple of max_out={max_out} (O * max_out filters), "
                         f"got weight of shape {tuple(weight.shape)}")
    return b


def _check_explain(explain):
    if not isinstance(explain, bool):
        raise TypeError(f"explain must be a bool, got {type(explain).__name__}")


def _save(x, weight):
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def bcos_conv2d(
    x: Tensor, weight: Tensor, *, b: float = 2.0, max_out: int = 1, stride=1, padding=0, dilation=1,
    groups: int = 1, explain: bool = False,
) -> Tensor:
    """B-cos convolution (eq. 3, 9 and MaxOut eq. 17), exactly as ``bcos.modules.BcosConv2d``.

    Args:
        x: (N, C, H, W) input.
        weight: (O * max_out, C / groups, kh, kw) raw weight; each filter is divided by its L2 norm
            inside the op (no eps).
        b: the exponent B (> 0). B = 1 is a plain convolution with unit-norm filters (plus MaxOut).
        max_out: MaxOut units per output channel; output channel o is the max over the raw channels
            o * max_out + m (ties -> the first), taken before the scaling.
        stride, padding (zeros), dilation: an int or a pair.
        groups: as in ``torch.nn.functional.conv2d``; must divide C and O.
        explain: treat the dynamic factor |cos|^(B-1) as a constant in backward, so the input
            gradient of an output is its row of the dynamic linear map W(x) (eq. 11, 13).

    Returns:
        (N, O, H', W'): y = l * |l| / n for B = 2, l * (|l| / n + 1e-6)^(B-1) otherwise, with l the
        MaxOut of conv2d(x, W-hat) and n = sqrt(patch sum of x^2 over the window and the group's
        channels + 1e-6).
    """
    _checks.tensor("x", x, 4)
    _checks.tensor("weight", weight, 4)
    _checks.same_device_dtype("x", x, weight=weight)
    _check_nonempty_weight(x, weight)
    b = _check_b_maxout(b, max_out, weight)
    _check_explain(explain)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    N, C, H, W = x.shape
    O = weight.shape[0] // max_out
    if C % groups or O % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({C}) and the output channels ({O})")
    if weight.shape[1] * groups != C:
        raise ValueError(f"weight must have shape (O*max_out, {C // groups}, kh, kw) for x of shape {tuple(x.shape)} "
                         f"and groups={groups}, got {tuple(weight.shape)}")
    ho, wo = _out_hw(H, W, weight.shape[2], weight.shape[3], stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"the output would be empty: x of shape {tuple(x.shape)} with a {tuple(weight.shape[2:])} "
                         f"kernel, stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}")
    return torch.ops.rbfkern.bcos_conv2d(x, weight, b, max_out, stride, padding, dilation, groups, explain,
                                         _save(x, weight))[0]


def bcos_linear(x: Tensor, weight: Tensor, *, b: float = 2.0, max_out: int = 1, explain: bool = False) -> Tensor:
    """B-cos linear layer (eq. 9 with MaxOut, eq. 17), exactly as ``bcos.modules.BcosLinear``.

    Args:
        x: (..., C) input.
        weight: (O * max_out, C) raw weight (rows normalised inside, no eps).
        b, max_out, explain: as in :func:`bcos_conv2d`.

    Returns:
        (..., O), with the input norm n = ||x||_2 + 1e-12.
    """
    _checks.tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must be at least 1-D (..., C), got shape {tuple(x.shape)}")
    _checks.tensor("weight", weight, 2)
    _checks.same_device_dtype("x", x, weight=weight)
    _check_nonempty_weight(x, weight)
    b = _check_b_maxout(b, max_out, weight)
    _check_explain(explain)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (O*max_out, {x.shape[-1]}) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    lead = x.shape[:-1]
    y = torch.ops.rbfkern.bcos_linear(x.reshape(-1, x.shape[-1]), weight, b, max_out, explain, _save(x, weight))[0]
    return y.reshape(*lead, weight.shape[0] // max_out)
