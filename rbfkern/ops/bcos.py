"""B-cos convolution and linear layers as torch.library ops (paper: bcos-networks.md).

Semantics are those of ``bcos.modules.BcosConv2d`` / ``BcosLinear`` (bcos 0.1.3), see
:func:`rbfkern.reference.bcos_conv2d`. Ops (namespace ``rbfkern``, registered by
rbfkern/ops/_family.py):

  ``bcos_conv2d`` / ``bcos_linear``          -> (y, lmax, idx, root)
  ``bcos_conv2d_bwd`` / ``bcos_linear_bwd``  -> (grad_x, grad_weight)

Forward saves only x, the raw weight, the MaxOut values ``lmax``, a 1-byte argmax ``idx`` and the
patch-norm root (one value per output pixel and group) for backward. Every call is described by
one BcosGeometry (rbfkern/_bcos_common.py) and runs on one backend with the same contract:
the C++ kernels (rbfkern/ops/bcos_cpp.py: direct convolution or oneDNN per batch chunk with fused
epilogues), Triton (rbfkern/gpu/bcos.py: fused implicit-GEMM kernels, or torch's conv / GEMM with
the epilogue kernels for float64 and MaxOut > 3), or the reference below, differentiated by
torch.func (it is the oracle).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .. import _bcos_common as common
from . import _checks, _eager, _family, _fx, _vmap, bcos_cpp
from .._bcos_common import BcosGeometry, out_hw

# ---------------------------------------------------------------------------------------------
# Backends: forward(geo, b, x, weight, save) -> (y, lmax | None, idx | None, root | None)
#           backward(geo, b, gy, x, weight, lmax, idx, root | None, explain, needs) -> (gx | None, gw | None)
# geo: the BcosGeometry of the call; x, weight and the saved tensors contiguous, or for a backend
# with CHANNELS_LAST = True a channels-last conv input and saved maps as they are (its outputs then
# channels-last too); gy as autograd hands it (each backend makes it dense where it needs to). The
# C++ backend is bcos_cpp, Triton's rbfkern.gpu.bcos, the reference the class below. Whatever the
# backend, the op's outputs follow x's layout and each gradient its input's (the fakes' rule).
# ---------------------------------------------------------------------------------------------


class _Reference:
    """rbfkern.reference, differentiated by torch.func (the oracle backend)."""

    @staticmethod
    def _y(geo, b, x, weight, explain):
        if geo.linear:
            return reference.bcos_linear(x, weight, b, geo.M, explain)
        return reference.bcos_conv2d(x, weight, b, geo.M, geo.stride, geo.padding, geo.dilation, geo.G, explain)

    @staticmethod
    def forward(geo, b, x, weight, save):
        y = _Reference._y(geo, b, x, weight, False)
        if not save:
            return y, None, None, None
        # explicit pixel count, not -1: N = 0 is legal and a -1 is ambiguous for an empty tensor
        l = common.linear_map(geo, x, common.unit_weight(weight)).reshape(geo.N, geo.O, geo.M, geo.P)
        lmax, idx = l.max(dim=2)
        root = None
        if b != 1:
            if geo.linear:
                root = torch.linalg.vector_norm(x, dim=-1)
            else:
                root = reference.bcos_patch_norm(x, (geo.kh, geo.kw), geo.stride, geo.padding, geo.dilation, geo.G)
        return y, lmax, idx.to(torch.uint8), root

    @staticmethod
    def backward(geo, b, gy, x, weight, lmax, idx, root, explain, needs):
        return tuple(_family.vjp_of(lambda a, w: _Reference._y(geo, b, a, w, explain), (x, weight), needs,
                                    gy.reshape(geo.y_shape).to(x.dtype)))


def _impl(device):
    return _family.backend("bcos", device, bcos_cpp, _Reference)


# The layout of the op's maps for input x: channels-last when x is (conv2d's rule)
_memory_format = _family.conv_memory_format


def _prepare(impl, x, weight, *maps):
    """x, the weight and the saved maps as ``impl`` takes them: contiguous; a backend with
    ``CHANNELS_LAST`` takes a channels-last conv input and its maps as they are, and then the
    weight channels-last too where it is stored so (``model.to(memory_format=torch.channels_last)``:
    oneDNN would otherwise reorder it on every call)."""
    if not (common.is_channels_last(x) and getattr(impl, "CHANNELS_LAST", False)):
        return _family.prepare(impl, x, weight, *maps)
    cl = torch.channels_last
    xc, wc, *mc = _family.prepare(impl, x, weight, *maps, contiguous=False)
    wc = wc.contiguous(memory_format=cl if common.is_channels_last(weight) else torch.contiguous_format)
    return (xc.contiguous(memory_format=cl), wc, *(None if t is None else t.contiguous(memory_format=cl) for t in mc))


def _run_backend(geo, x, weight, b, save):
    """The backend's (y, lmax, idx, root) as it returns them, and the op's memory format."""
    impl = _impl(x.device)
    xc, wc = _prepare(impl, x, weight)
    return impl.forward(geo, b, xc, wc, save), _memory_format(x)


def _forward(geo, x, weight, b, save):
    """(y, lmax, idx, root) in the layouts of the op; aux outputs empty unless saved."""
    (y, lmax, idx, root), mf = _run_backend(geo, x, weight, b, save)
    y = _in_layout(y, geo.y_shape, x.dtype, mf)
    if not save:
        return y, y.new_empty(0), torch.empty(0, dtype=torch.uint8, device=y.device), y.new_empty(0)
    root = y.new_empty(0) if root is None else _in_layout(root, geo.root_shape, x.dtype, mf)
    return y, _in_layout(lmax, geo.y_shape, x.dtype, mf), _in_layout(idx, geo.y_shape, idx.dtype, mf), root


def _forward_y(geo, x, weight, b):
    """y alone, what a call with no gradient to record returns (``_eager.register_part``)."""
    (y, *_), mf = _run_backend(geo, x, weight, b, False)
    return _in_layout(y, geo.y_shape, x.dtype, mf)


def _in_layout(t, shape, dtype, mf):
    """t reshaped to ``shape``, in ``dtype`` and memory format ``mf``; t itself where it is already
    (each of those calls costs about a microsecond, and a small layer's step makes a dozen)."""
    if t.shape != shape:
        t = t.reshape(shape)
    t = _family.as_dtype(t, dtype)
    return t if t.is_contiguous(memory_format=mf) else t.contiguous(memory_format=mf)


def _backward(geo, gy, x, weight, lmax, idx, root, b, explain, needs):
    """(gx, gw); an input not needed gets an empty tensor."""
    needs = (bool(needs[0]), bool(needs[1]))
    impl = _impl(x.device)
    xc, wc, lc, ic, rc = _prepare(impl, x, weight, lmax, idx, root if b != 1 else None)
    (gyc,) = _family.prepare(impl, gy, contiguous=False)
    grads = impl.backward(geo, b, gyc, xc, wc, lc, ic, rc, explain, needs)
    gx, gw = _family.grads_or_empty(grads, (x, weight), needs)
    return _family.strided_like(gx, x), _family.strided_like(gw, weight)


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


def _bcos_conv2d_fake(x, weight, b, max_out, stride, padding, dilation, groups, explain, save):
    return _fake_outputs(BcosGeometry.of_conv(x, weight, max_out, stride, padding, dilation, groups), x, b, save)


def _fake_outputs(geo, x, b, save):
    ys, mf = geo.y_shape, _memory_format(x)

    def new(shape, dtype=x.dtype):
        return torch.empty(shape, dtype=dtype, device=x.device, memory_format=mf)

    if not save:
        return new(ys), x.new_empty(0), x.new_empty(0, dtype=torch.uint8), x.new_empty(0)
    return new(ys), new(ys), new(ys, torch.uint8), new(geo.root_shape) if b != 1 else x.new_empty(0)


@_family.device_op("bcos_conv2d", fake=_bcos_conv2d_fake)
def _bcos_conv2d_op(
    x: Tensor, weight: Tensor, b: float, max_out: int, stride: list[int], padding: list[int],
    dilation: list[int], groups: int, explain: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y [N, O, H', W'], lmax [N, O, H', W'], idx uint8 [N, O, H', W'], root [N, G, H', W']);
    the last three are empty unless ``save`` (root also for b == 1)."""
    return _forward(BcosGeometry.of_conv(x, weight, max_out, stride, padding, dilation, groups), x, weight, b, save)


def _bcos_linear_fake(x, weight, b, max_out, explain, save):
    return _fake_outputs(BcosGeometry.of_linear(x, weight, max_out), x, b, save)


@_family.device_op("bcos_linear", fake=_bcos_linear_fake)
def _bcos_linear_op(
    x: Tensor, weight: Tensor, b: float, max_out: int, explain: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [R, C] -> (y [R, O], lmax [R, O], idx uint8 [R, O], root [R, 1]); aux empty unless save."""
    return _forward(BcosGeometry.of_linear(x, weight, max_out), x, weight, b, save)


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
    geo = BcosGeometry.of_conv(x, weight, max_out, stride, padding, dilation, groups)
    return _backward(geo, grad_y, x, weight, lmax, idx, root, b, explain, needs)


@_family.device_op("bcos_linear_bwd", fake=_bcos_bwd_fake)
def _bcos_linear_bwd_op(
    grad_y: Tensor, x: Tensor, weight: Tensor, lmax: Tensor, idx: Tensor, root: Tensor, b: float,
    max_out: int, explain: bool, needs: list[bool],
) -> tuple[Tensor, Tensor]:
    """(grad_x [R, C], grad_weight); one not needed is an empty tensor."""
    return _backward(BcosGeometry.of_linear(x, weight, max_out), grad_y, x, weight, lmax, idx, root, b, explain, needs)


def _no_aux_grads(ctx, output):
    # lmax/idx/root are saved for backward, not differentiable outputs: without this autograd
    # would hand backward full-size zero tensors for them (a fill per output and step).
    ctx.mark_non_differentiable(output[1], output[2], output[3])
    ctx.set_materialize_grads(False)


def _autograd(op_name: str, bwd_op, n_args: int):
    """(setup_context, backward) of the B-cos op ``op_name`` (backward op ``bwd_op``) with ``n_args``
    inputs: x, weight, the arguments its backward op takes after the saved tensors, then save."""

    def setup(ctx, inputs, output):
        x, weight, *args, save = inputs
        ctx.args = tuple(args)
        ctx.saved = save
        ctx.save_for_backward(x, weight, output[1], output[2], output[3])
        _no_aux_grads(ctx, output)

    def backward(ctx, gy, _g_lmax, _g_idx, _g_root):
        if not ctx.saved:
            raise RuntimeError(f"rbfkern::{op_name} was called with save=False; its backward needs save=True")
        x, weight, lmax, idx, root = ctx.saved_tensors
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        gy = torch.zeros_like(lmax) if gy is None else gy
        gx, gw = _eager.call(bwd_op, gy, x, weight, lmax, idx, root, *ctx.args, needs)
        return (gx if needs[0] else None, gw if needs[1] else None) + (None,) * (n_args - 2)

    return setup, backward


def _conv_y(x, weight, b, max_out, stride, padding, dilation, groups, explain, save):
    return _forward_y(BcosGeometry.of_conv(x, weight, max_out, stride, padding, dilation, groups), x, weight, b)


def _linear_y(x, weight, b, max_out, explain, save):
    return _forward_y(BcosGeometry.of_linear(x, weight, max_out), x, weight, b)


_eager.register_part(_bcos_conv2d_op, _conv_y)
_eager.register_part(_bcos_linear_op, _linear_y)
_setup_conv, _backward_conv = _autograd("bcos_conv2d", _bcos_conv2d_bwd_op, 10)
_setup_linear, _backward_linear = _autograd("bcos_linear", _bcos_linear_bwd_op, 6)
_eager.register_autograd(_bcos_conv2d_op, _backward_conv, _setup_conv, aux_non_differentiable=True)
_eager.register_autograd(_bcos_linear_op, _backward_linear, _setup_linear, aux_non_differentiable=True)
_family.reference_double_backward(_bcos_conv2d_bwd_op)
_family.reference_double_backward(_bcos_linear_bwd_op)
# rows: x and the per-row maps (grad_y, lmax, idx, root); a fold only when grad_weight is not asked for
for _op, _bwd in ((_bcos_conv2d_op, _bcos_conv2d_bwd_op), (_bcos_linear_op, _bcos_linear_bwd_op)):
    _vmap.register_rows(_op, rows=(0,), row_outputs=(0, 1, 2, 3))
    _vmap.register_rows(_bwd, rows=(0, 1, 3, 4, 5), row_outputs=(0,), may_fold=lambda args: not args[-1][1])


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _pair(name, v, minimum):
    if type(v) is int and v >= minimum:  # the common case first, in a fraction of the checks' time
        return [v, v]
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
    """Whether the call keeps lmax / idx / root for a backward; always in a TorchScript trace, whose
    graph is replayed in any grad mode (torch.jit.trace also checks it under no_grad)."""
    return (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) or _jit_tracing() is not None


_jit_tracing = torch._C._get_tracing_state


@_fx.traceable
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
        channels + 1e-6). Channels-last when x is (as conv2d's output); the gradients of x and
        weight come back in their layouts.
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
    ho, wo = out_hw(H, W, weight.shape[2], weight.shape[3], stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"the output would be empty: x of shape {tuple(x.shape)} with a {tuple(weight.shape[2:])} "
                         f"kernel, stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}")
    return _eager.call_first(_bcos_conv2d_op, x, weight, b, max_out, stride, padding, dilation, groups, explain,
                             _save(x, weight))


@_fx.traceable
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
    if x.dim() == 2:  # no reshapes: on an input that requires grad each is an autograd view node
        return _eager.call_first(_bcos_linear_op, x, weight, b, max_out, explain, _save(x, weight))
    lead = x.shape[:-1]
    y = _eager.call_first(_bcos_linear_op, x.reshape(-1, x.shape[-1]), weight, b, max_out, explain, _save(x, weight))
    return y.reshape(*lead, weight.shape[0] // max_out)
