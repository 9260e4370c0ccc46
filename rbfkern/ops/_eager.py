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
is the same body, the same saved tensors and the same backward; anything else takes the op. A
caller that wants only the first output, with no gradient, may get it from a part of the body
registered for that (``register_part``: the RBF activation without r2), on the same terms.

What the shortcut cannot see: kernels or autograd formulas registered later on rbfkern's ops
through torch.library, and observers of op records other than the profiler (an
ExecutionTraceObserver on its own). ``rbfkern.set_eager_fast_path(False)`` sends every call
through the ops.

Under a torch.func transform (grad, vjp, jacrev, vmap) the op's generated autograd wrapper fails
(pytorch#170834), and under forward-mode AD (torch.func.jvp, dual tensors) it drops the tangent;
there the op is applied through a second Function with the same formula and a jvp
(``_functorch_function``), whatever the switch says.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from .. import _backend
from .._switch import Switch

_BODY: dict = {}
_PART: dict = {}
_FUNCTION: dict = {}  # op -> the apply of its eager Function
_FIRST: dict = {}  # op -> the apply of its first-output Function (register_autograd)
_FUNCTORCH: dict = {}
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


class set_eager_fast_path(Switch):
    """Turn the eager CPU shortcut (this module's docstring) on or off; on by default. Use as a call
    or, restoring the previous setting on exit, as a context manager, like ``torch.set_grad_enabled``."""

    enabled = True


def register_body(op, body) -> None:
    """``body`` is what ``op`` runs on CPU tensors (``_family.device_op`` registers it)."""
    _BODY[op] = body


def _c_apply(fn):
    """``fn.apply`` without torch's Python layer over it, which only unwraps dead functorch
    wrappers (none outside a transform, and :func:`_plain_call` rules transforms out)."""
    return super(torch.autograd.Function, fn).apply


def register_autograd(op, backward, setup_context, aux_non_differentiable: bool = False) -> None:
    """``op.register_autograd(backward, setup_context=...)``, and the same formula for eager calls.

    aux_non_differentiable: setup_context marks every output but the first non-differentiable.
    :func:`call_first` with a gradient to record then applies a Function whose only output is
    the first one, the others kept as saved intermediates: the same gradients (none flows through
    those outputs), and one output for autograd to set up instead of several."""
    op.register_autograd(backward, setup_context=setup_context)
    body = _BODY[op]

    def forward(ctx, *args):
        out = body(*args)
        setup_context(ctx, args, out)
        return out

    # forward(ctx, ...) calls setup_context itself: a Function with a separate setup_context
    # binds its arguments through inspect.signature on every call.
    name = f"{op._name}_eager"
    _FUNCTION[op] = _c_apply(type(name, (torch.autograd.Function,),
                                  {"forward": staticmethod(forward), "backward": staticmethod(backward)}))
    _FUNCTORCH[op] = _functorch_function(op, backward, setup_context)
    if aux_non_differentiable:
        _FIRST[op] = _c_apply(_first_output_function(name, body, backward, setup_context))


class _CtxProxy:
    """A stand-in for an autograd ctx handed to an op's setup_context: attributes go to the real
    ctx; subclasses intercept some of its methods."""

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def __setattr__(self, name, value):
        setattr(self._ctx, name, value)


class _FirstOutputCtx(_CtxProxy):
    """The ctx an op's setup_context sees inside ``_first_output_function``: the outputs it marks
    non-differentiable are not outputs there, so the marks are dropped."""

    def mark_non_differentiable(self, *tensors):
        pass


def _first_output_function(name, body, backward, setup_context):
    def forward(ctx, *args):
        out = body(*args)
        setup_context(_FirstOutputCtx(ctx), args, out)
        ctx.no_grads = (None,) * (len(out) - 1)
        return out[0]

    def backward_first(ctx, grad):
        return backward(ctx, grad, *ctx.no_grads)

    return type(f"{name}_first", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward_first)})


class _Opaque:
    """A list or tuple argument (a backward op's ``needs``) passed to ``_functorch_function`` as
    one leaf: torch's vmap rule for a Function's jvp counts tangents per argument but batch dims
    per pytree leaf, and fails where an argument is itself a list."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    @staticmethod
    def wrap(args):
        return tuple(_Opaque(a) if isinstance(a, (list, tuple)) else a for a in args)

    @staticmethod
    def unwrap(args):
        return tuple(a.value if isinstance(a, _Opaque) else a for a in args)


class _SetupCapture(_CtxProxy):
    """The ctx an op's setup_context sees inside ``_functorch_function``: it keeps what the op saves
    for backward, so the op's inputs can be saved after it; everything else goes to the real ctx."""

    def __init__(self, ctx):
        super().__init__(ctx)
        object.__setattr__(self, "to_save", ())
        object.__setattr__(self, "non_differentiable", ())

    def save_for_backward(self, *tensors):
        object.__setattr__(self, "to_save", tensors)

    def mark_non_differentiable(self, *tensors):
        object.__setattr__(self, "non_differentiable", tensors)
        self._ctx.mark_non_differentiable(*tensors)


class _BackwardView:
    """The ctx an op's backward sees inside ``_functorch_function``: the saved tensors its own
    setup_context saved, without the inputs saved after them for jvp."""

    def __init__(self, ctx):
        self._ctx = ctx

    @property
    def saved_tensors(self):
        return self._ctx.saved_tensors[:self._ctx.op_saved]

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def reference_body(op):
    """``op``'s body on the reference backend (plain PyTorch): the fused kernels' function, in a
    form torch.func and autograd can differentiate in either mode."""
    body = _BODY[op]

    def run(*args):
        with _backend.forced("reference"):
            return body(*args)

    return run


def split_tensors(inputs):
    """(slots, others): the indices of the tensor arguments, and the arguments with None there (what
    a ctx keeps beside the saved tensors)."""
    slots = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
    return slots, [None if isinstance(a, Tensor) else a for a in inputs]


def filled(args, slots, tensors):
    """``args`` with ``tensors`` put in the positions ``slots``."""
    full = list(args)
    for i, t in zip(slots, tensors):
        full[i] = t
    return full


def partial_in(fn, args, slots):
    """``fn`` as a function of the arguments ``args[i]``, ``i`` in ``slots``, the others fixed."""
    return lambda *ts: fn(*filled(args, slots, ts))


def _functorch_function(op, backward, setup_context):
    """torch.func (grad, vjp, jacrev, vmap over them) takes only a Function with a separate
    setup_context, which torch.library's generated one lacks (pytorch#170834). Under a functorch
    transform or a forward-mode AD level the op is applied through this one: the op itself in
    forward, the same formula in backward, vmap rules generated from the ops' own batching rules
    (rbfkern/ops/_vmap.py), and forward mode (torch.func.jvp, jacfwd, hessian, dual tensors) as the
    jvp of the op's body on the reference backend — the same function as the fused kernels, exact,
    at the reference's speed and memory.

    jvp needs the op's tensor inputs. They are saved after what the op's setup_context saves, both
    for backward and for forward: torch reads the saved-for-forward tensors in a plain jvp and the
    saved-for-backward ones in a jvp under vmap (jacfwd), with one record of their batch dims."""

    def forward(*args):
        return op(*_Opaque.unwrap(args))

    def setup(ctx, inputs, output):
        inputs = _Opaque.unwrap(inputs)
        capture = _SetupCapture(ctx)
        setup_context(capture, inputs, output)
        ctx.op_saved = len(capture.to_save)
        outs = output if isinstance(output, tuple) else (output,)
        ctx.no_tangent = [any(o is t for t in capture.non_differentiable) for o in outs]
        ctx.input_slots, ctx.other_args = split_tensors(inputs)
        saved = (*capture.to_save, *(inputs[i] for i in ctx.input_slots))
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)

    def backward_(ctx, *grads):
        return backward(_BackwardView(ctx), *grads)

    def jvp(ctx, *tangents):
        args = filled(ctx.other_args, ctx.input_slots, ctx.saved_tensors[ctx.op_saved:])
        want = [i for i in ctx.input_slots if tangents[i] is not None]
        run = partial_in(reference_body(op), args, want)
        # contiguous copies: an expanded primal (a sigma broadcast over centres) cannot take a tangent
        primals = tuple(args[i].contiguous() for i in want)
        tangents = tuple(tangents[i].contiguous() for i in want)
        if torch._C._functorch.peek_interpreter_stack() is not None:
            got = torch.func.jvp(run, primals, tangents)[1]
        else:
            got = _dual_tangents(run, primals, tangents)
        if not isinstance(got, tuple):
            return got
        return tuple(None if skip else t for t, skip in zip(got, ctx.no_tangent))

    return type(f"{op._name}_functorch", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup),
        "backward": staticmethod(backward_), "jvp": staticmethod(jvp), "generate_vmap_rule": True})


def _dual_tangents(run, primals, tangents):
    """The output tangents of ``run`` at ``primals`` under torch.autograd.forward_ad's dual tensors,
    from inside a Function's jvp: torch.func.jvp would open a second forward-AD level, which torch
    does not nest, so ``run`` takes duals of the level in use."""
    with _forward_ad._set_fwd_grad_enabled(True):
        duals = (_forward_ad.make_dual(_forward_ad.unpack_dual(p).primal, t) for p, t in zip(primals, tangents))
        outs = run(*duals)
        single = not isinstance(outs, tuple)
        got = tuple(_forward_ad.unpack_dual(o) for o in ((outs,) if single else outs))
    got = tuple(torch.zeros_like(d.primal) if d.tangent is None else d.tangent for d in got)
    return got[0] if single else got


# The state _plain_call reads at every call, bound once (each dotted lookup costs as much as a test).
_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch_level = torch._C._functorch.peek_interpreter_stack
_autocast_on = torch.is_autocast_enabled
_profiling = torch._C._autograd._profiler_enabled
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_STRIDED = torch.strided


def _plain_call(args) -> tuple[bool, bool]:
    """(whether the body may run directly, whether an input requires grad)."""
    if (not set_eager_fast_path.enabled or _is_compiling() or _tracing_state() is not None
            or _dispatch_modes() or _function_modes() or _functorch_level() is not None
            or _autocast_on("cpu") or _forward_ad._current_level >= 0 or _profiling()):
        return False, False
    grad = False
    for a in args:
        if isinstance(a, Tensor):
            # legacy batched tensors (is_grads_batched, vectorized jacobian, batched gradcheck) look
            # like plain CPU tensors but cannot hand out numpy buffers
            if (type(a) not in _PLAIN_TYPES or not a.is_cpu or a.layout is not _STRIDED
                    or _legacy_batched(a)):
                return False, False
            grad = grad or a.requires_grad
    return True, grad


def register_part(op, part) -> None:
    """``part(*args)`` computes the first output of ``op``'s body alone, with less work (the RBF
    activation without r2); :func:`call_first` runs it where the body would run outside autograd."""
    _PART[op] = part


def call_first(op, *args):
    """``call(op, *args)[0]``: through the op's registered part where :func:`call` would run the
    body directly with nothing recorded for autograd (no input requires grad, or grad mode is off)."""
    plain, grad = _plain_call(args)
    if plain:
        if grad and torch.is_grad_enabled():
            first = _FIRST.get(op)
            if first is not None:
                return first(*args)
        else:
            part = _PART.get(op)
            if part is not None:
                return part(*args)
    return _call(op, args, plain, grad)[0]


@torch.compiler.disable
def _outside_the_graph(fn, args):
    return fn.apply(*_Opaque.wrap(args))


def call(op, *args):
    """``op(*args)``, with the body run directly where the module docstring says it may, and through
    a torch.func-compatible Function under a functorch transform."""
    return _call(op, args, *_plain_call(args))


def _call(op, args, plain, grad):
    if not plain:
        fn = _FUNCTORCH.get(op)
        if fn is None:
            return op(*args)
        if torch.compiler.is_compiling():
            # a trace drops or zeroes forward-mode tangents through a custom op, and through a
            # Function's jvp (pytorch#187284, #192985): forward mode runs outside the graph
            return _outside_the_graph(fn, args) if _forward_ad._current_level >= 0 else op(*args)
        if torch._C._functorch.peek_interpreter_stack() is not None or _forward_ad._current_level >= 0:
            return fn.apply(*_Opaque.wrap(args))
        return op(*args)
    if grad and torch.is_grad_enabled():
        apply = _FUNCTION.get(op)
        return op(*args) if apply is None else apply(*args)
    return _BODY[op](*args)
