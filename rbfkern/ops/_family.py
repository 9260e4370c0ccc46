"""What every op family shares: how one op is registered for every device.

Each computation is one public op ``rbfkern::<name>``, a ``torch.library.triton_op`` whose body
branches on the device of its tensors:

* CUDA: the family's Python body itself, which launches the Triton kernels through
  ``torch.library.wrap_triton`` (``rbfkern.gpu._launch``). ``torch.compile`` traces into it and
  sees the kernels (inductor can schedule them, CUDA graphs capture them, AOTInductor can ship
  them); eager calls launch the kernels directly. Runs under a device guard, so tensors on a
  device other than the current one launch there.
* CPU: ``rbfkern::<name>_cpu``, an opaque custom op with the same schema and body and a
  shapes-only fake: the C++ kernels take numpy buffers, which a trace cannot follow. Its body
  picks the C++ extension, the interpreted Triton kernels or the reference (``RBFKERN_BACKEND``).

The fake (meta) implementation of the public op is its own body (triton_op's rule), so that body
must run on fake tensors: no data reads, no host syncs, sizes only.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import typing

import torch

from .. import _backend
from . import _eager

NAMESPACE = "rbfkern"


def _first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise TypeError("an rbfkern op needs at least one tensor argument")


def cuda_guard(device: torch.device):
    """Make ``device`` current while kernels launch (Triton launches on the current device)."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _copy_resolved_signature(src, dst):
    """dst gets src's signature with the annotations resolved in src's module (schema inference
    reads them; as strings, under ``from __future__ import annotations``, they would be looked up
    in this module)."""
    hints = typing.get_type_hints(src)
    sig = inspect.signature(src)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    dst.__signature__ = sig.replace(parameters=params, return_annotation=hints.get("return", sig.return_annotation))
    dst.__annotations__ = hints


def device_op(name: str, fake):
    """Decorator: register ``body`` as ``rbfkern::<name>`` (see the module docstring), with
    ``fake`` as the shapes-only implementation of its CPU op. Returns the public op
    (a CustomOpDef: register_autograd etc. work on it; ``_eager.call(op, ...)`` calls it without
    the dispatch layers where nothing needs them)."""

    def register(body):
        cpu_op = torch.library.custom_op(f"{NAMESPACE}::{name}_cpu", body, mutates_args=(), device_types="cpu")
        cpu_op.register_fake(fake)

        @functools.wraps(body)
        def dispatch(*args, **kwargs):
            device = _first_tensor(args).device
            if device.type in _backend.GPU_DEVICE_TYPES:
                with cuda_guard(device):
                    return body(*args, **kwargs)
            return cpu_op(*args, **kwargs)

        _copy_resolved_signature(body, dispatch)
        op = torch.library.triton_op(f"{NAMESPACE}::{name}", dispatch, mutates_args=())
        _eager.register_body(op, body)
        return op

    return register


# ---------------------------------------------------------------------------------------------
# The backend contract: each family has a C++ backend, the Triton module rbfkern.gpu.<family>
# and a reference backend, with the same forward / backward signatures; these helpers are the
# dispatch and the input / output conventions around them.
# ---------------------------------------------------------------------------------------------

HALF = (torch.float16, torch.bfloat16)


def backend(family: str, device: torch.device, cpp, reference):
    """The backend object for tensors on ``device`` (rbfkern._backend.choose): ``cpp``, the family's
    Triton module, or ``reference``."""
    name = _backend.choose(device)
    if name == "cpp":
        return cpp
    if name == "triton":
        return _backend.gpu_module(family)
    return reference


def prepare(impl, *tensors, contiguous: bool = True):
    """The inputs as a backend takes them: contiguous (unless told otherwise), and in float32 where
    the backend computes half types in float32 (``impl.HALF_AS_FLOAT32``, the C++ kernels). None
    stays None."""
    up = getattr(impl, "HALF_AS_FLOAT32", False)
    out = []
    for t in tensors:
        if t is not None:
            if up and t.dtype in HALF:
                t = t.float()
            if contiguous:
                t = t.contiguous()
        out.append(t)
    return tuple(out)


def numpy_view(t):
    """The numpy view of a CPU tensor that the C++ kernels take (None stays None); detached only
    where it requires grad (a detach costs as much as the view, and most buffers of a call do
    not need one)."""
    if t is None:
        return None
    return (t.detach() if t.requires_grad else t).numpy()


def as_dtype(t, dtype):
    """``t.to(dtype)`` without its call where ``t`` has that dtype already (a per-call cost that a
    small RBF head pays several times in each step)."""
    return t if t.dtype == dtype else t.to(dtype)


def grads_or_empty(grads, inputs, needs):
    """A backward op's outputs: each gradient in its input's dtype, an empty tensor where it is not
    needed (or its input is None)."""
    ref = next(t for t in inputs if t is not None)
    return tuple(as_dtype(g, t.dtype) if need and g is not None and t is not None else ref.new_empty(0)
                 for g, t, need in zip(grads, inputs, needs))


def conv_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of a convolution's output for input x, conv2d's / conv3d's rule: channels-last
    (NHWC / NDHWC) when x is stored so and not also contiguous (as with C == 1)."""
    mf = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return mf if x.dim() in (4, 5) and not x.is_contiguous() and x.is_contiguous(memory_format=mf) \
        else torch.contiguous_format


def strided_like(g, t):
    """g with the strides of ``torch.empty_like(t)``, what a backward op's fake returns for the
    gradient of input t: the layout of t when t is dense, else its suggested memory format. The
    kernels write dense contiguous gradients, so a transposed or channels-last input needs this,
    or torch.compile's check of the real strides against the fake's fails. A copy only when they
    differ."""
    if g.numel() == 0 or g.shape != t.shape or g.stride() == t.stride():
        return g
    want = torch.empty_like(t, dtype=g.dtype)
    return g if want.stride() == g.stride() else want.copy_(g)


def vjp_of(fn, args, needs, cotangents):
    """The gradients of ``fn(*args)`` with respect to the arguments ``args[i]`` where ``needs[i]``,
    None elsewhere, by torch.func.vjp (a reference backward runs below the autograd key, where
    autograd does not see the op). Only those arguments are differentiated: torch.func.vjp's zeros
    for an input that does not reach the output fail under jacrev of grad, and a gradient not asked
    for is work thrown away. A None cotangent counts as zeros."""
    wanted = [i for i, a in enumerate(args) if needs[i] and isinstance(a, torch.Tensor)]
    result = [None] * len(args)
    if not wanted:
        return result
    outs, pull = torch.func.vjp(_eager.partial_in(fn, args, wanted), *(args[i] for i in wanted))
    if isinstance(outs, tuple):
        cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, cotangents))
    elif cotangents is None:
        cotangents = torch.zeros_like(outs)
    got = pull(cotangents)
    for i, g in zip(wanted, got):
        result[i] = g
    return result


def reference_double_backward(bwd_op) -> None:
    """Give the backward op ``bwd_op`` second-order gradients. The fused backward kernels have no
    backward of their own; the op's body run on the reference backend (plain PyTorch, whose backward
    is torch.func.vjp of the reference forward) computes the same function, so its vjp is the
    backward's backward: exact, at the reference's speed and memory (create_graph=True,
    gradgradcheck, torch.func.grad of grad, gradient penalties)."""

    def setup_context(ctx, inputs, output):
        ctx.slots, ctx.args = _eager.split_tensors(inputs)
        ctx.save_for_backward(*(inputs[i] for i in ctx.slots))

    def backward(ctx, *grads):
        args = _eager.filled(ctx.args, ctx.slots, ctx.saved_tensors)
        return tuple(vjp_of(_eager.reference_body(bwd_op), args, ctx.needs_input_grad, grads))

    _eager.register_autograd(bwd_op, backward, setup_context)
