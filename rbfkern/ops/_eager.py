"""How the public functions call the ops: eager CPU calls without torch.library's Python dispatch
layers, and calls under torch.func transforms.

A call of ``torch.ops.rbfkern.<name>`` on CPU tensors passes through the triton_op, its autograd
wrapper, the CPU custom op and their argument handling before the body runs, and the backward op
again: on a small RBF head that is most of a training step. None of those layers changes the
result: they exist for traces (torch.compile, export, make_fx), fake tensors, autocast, functorch
and the profiler. :func:`call` runs the op's body directly where none of them is in play — every
tensor argument a plain strided CPU tensor (or Parameter; no tensor subclass, no legacy batched
tensor), no trace, no dispatch or function mode, no autocast, no functorch transform, no
forward-mode AD level, the profiler off — inside an autograd.Function made from the op's own
setup_context and backward (directly when no gradient is wanted). It
is the same body, the same saved tensors and the same backward; anything else takes the op.

What the shortcut cannot see: kernels or autograd formulas registered later on rbfkern's ops
through torch.library, and observers of op records other than the profiler (an
ExecutionTraceObserver on its own). ``rbfkern.set_eager_fast_path(False)`` sends every call
through the ops.

Under a torch.func transform (grad, vjp, jacrev, vmap) the op's generated autograd wrapper fails
(pytorch#170834); there the op is applied through a second Function with the same formula
(``_functorch_function``), whatever the switch says.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from .. import _backend
from .._switch import Switch

_BODY: dict = {}
_FUNCTION: dict = {}
_FUNCTORCH: dict = {}
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


class set_eager_fast_path(Switch):
    """Turn the eager CPU shortcut (this module's docstring) on or off; on by default. Use as a call
    or, restoring the previous setting on exit, as a context manager, like ``torch.set_grad_enabled``."""

    enabled = True


def register_body(op, body) -> None:
    """``body`` is what ``op`` runs on CPU tensors (``_family.device_op`` registers it)."""
    _BODY[op] = body


def register_autograd(op, backward, setup_context) -> None:
    """``op.register_autograd(backward, setup_context=...)``, and the same formula for eager calls."""
    op.register_autograd(backward, setup_context=setup_context)
    body = _BODY[op]

    def forward(ctx, *args):
        out = body(*args)
        setup_context(ctx, args, out)
        return out

    # forward(ctx, ...) calls setup_context itself: a Function with a separate setup_context
    # binds its arguments through inspect.signature on every call.
    name = f"{op._name}_eager"
    _FUNCTION[op] = type(name, (torch.autograd.Function,),
                         {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    _FUNCTORCH[op] = _functorch_function(op, backward, setup_context)


def reference_body(op):
    """``op``'s body on the reference backend (plain PyTorch): the fused kernels' function, in a
    form torch.func and autograd can differentiate in either mode."""
    body = _BODY[op]

    def run(*args):
        with _backend.forced("reference"):
            return body(*args)

    return run


def partial_in(fn, args, slots):
    """``fn`` as a function of the arguments ``args[i]``, ``i`` in ``slots``, the others fixed."""

    def part(*ts):
        full = list(args)
        for i, t in zip(slots, ts):
            full[i] = t
        return fn(*full)

    return part


def _functorch_function(op, backward, setup_context):
    """torch.func (grad, vjp, jacrev, vmap over them) takes only a Function with a separate
    setup_context, which torch.library's generated one lacks (pytorch#170834). Under a functorch
    transform the op is applied through this one: the op itself in forward, the same formula in
    backward, and vmap rules generated from the ops' own batching rules (rbfkern/ops/_vmap.py)."""

    def forward(*args):
        return op(*args)

    def jvp(ctx, *tangents):
        raise NotImplementedError(
            f"torch.ops.{op._qualname.replace('::', '.')}: forward-mode AD (torch.func.jvp, jacfwd, hessian) is not supported; "
            "use reverse mode (torch.func.grad, vjp, jacrev), or rbfkern.reference for forward mode")

    return type(f"{op._name}_functorch", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "generate_vmap_rule": True})


def _plain_call(args) -> tuple[bool, bool]:
    """(whether the body may run directly, whether an input requires grad)."""
    if (not set_eager_fast_path.enabled or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None
            or torch.is_autocast_enabled("cpu") or _forward_ad._current_level >= 0
            or torch._C._autograd._profiler_enabled()):
        return False, False
    grad = False
    for a in args:
        if isinstance(a, Tensor):
            # legacy batched tensors (is_grads_batched, vectorized jacobian, batched gradcheck) look
            # like plain CPU tensors but cannot hand out numpy buffers
            if (type(a) not in _PLAIN_TYPES or not a.is_cpu or a.layout is not torch.strided
                    or torch._C._functorch.is_legacy_batchedtensor(a)):
                return False, False
            grad = grad or a.requires_grad
    return True, grad


def call(op, *args):
    """``op(*args)``, with the body run directly where the module docstring says it may, and through
    a torch.func-compatible Function under a functorch transform."""
    plain, grad = _plain_call(args)
    if not plain:
        if torch._C._functorch.peek_interpreter_stack() is not None and not torch.compiler.is_compiling():
            fn = _FUNCTORCH.get(op)
            if fn is not None:
                return fn.apply(*args)
        return op(*args)
    if grad and torch.is_grad_enabled():
        fn = _FUNCTION.get(op)
        return op(*args) if fn is None else fn.apply(*args)
    return _BODY[op](*args)
