"""Argument checks shared by the public ops: each error names the argument and what was expected."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._switch import Switch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, t, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _autocast_merges(ref: Tensor, t: Tensor) -> bool:
    """Autocast casts half/float32 arguments of the ops to float32 (ops/_autocast.py): a mix is fine then."""
    return (ref.dtype in _AUTOCAST_DTYPES and t.dtype in _AUTOCAST_DTYPES
            and torch.amp.is_autocast_available(ref.device.type) and torch.is_autocast_enabled(ref.device.type))


def same_device_dtype(ref_name: str, ref: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")
        if t.dtype != ref.dtype and not _autocast_merges(ref, t):
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; use one dtype")


def _shape_is(t: Tensor, shape) -> bool:
    if t.dim() != len(shape):
        return False
    for got, want in zip(t.shape, shape):  # plain loop: dynamo traces it with symbolic sizes
        if got != want:
            return False
    return True


def shape_in(name: str, t: Tensor, allowed: list[tuple[int, ...]]) -> None:
    for shape in allowed:
        if _shape_is(t, shape):
            return
    want = " or ".join(str(tuple(a)) for a in allowed)
    raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def finite_float(name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if torch.compiler.is_compiling():  # checked once in eager; dynamo may see a symbolic float
        return value
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite {'positive ' if positive else ''}number, got {value!r}")
    return v


class set_value_checks(Switch):
    """Turn the checks that read tensor values (finite, positive, within a bound) on or off.

    On by default. Each reads the tensor's data, which on a GPU is a host sync per check; a
    training loop that wants none turns them off. Use as a call (``rbfkern.set_value_checks(False)``)
    or, restoring the previous setting on exit, as a context manager, like
    ``torch.set_grad_enabled``. Shape, dtype and device checks always run. While a CUDA graph
    captures or torch.compile traces, value checks are skipped whatever the setting (the data is
    not there to read).
    """

    enabled = True


def value_checks_enabled() -> bool:
    return set_value_checks.enabled


def reads_values(t: Tensor) -> bool:
    """Whether a value check of ``t`` runs here: it is switched on, ``t`` has data to read (CPU or
    CUDA; meta tensors have none), and no trace or CUDA graph capture is under way (reading a CUDA
    tensor's values inside a capture is an error, not only a sync)."""
    if not set_value_checks.enabled or t.numel() == 0 or torch.compiler.is_compiling():
        return False
    if t.is_cpu:  # before t.device: a device object costs more than the flag
        return True
    return t.is_cuda and not torch.cuda.is_current_stream_capturing()


def _layers(t: Tensor):
    """``t`` and, under torch.func transforms, each tensor it wraps, outermost first."""
    yield t
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
        yield t


def _data(t: Tensor) -> Tensor:
    """``t``'s values as a plain tensor: under torch.func transforms the whole stored tensor (every
    vmapped slice at once; a batched tensor cannot be read from inside vmap)."""
    t = t.detach()
    if not torch._C._functorch.is_functorch_wrapped_tensor(t):  # the common case, without the generator
        return t
    *_, base = _layers(t)
    return base


def vmapped(t: Tensor) -> bool:
    """Whether ``t`` is batched by a torch.func.vmap (at any level)."""
    return any(torch._C._functorch.is_batchedtensor(layer) for layer in _layers(t))


def values(name: str, t: Tensor, positive: bool = False, nonnegative: bool = False) -> None:
    """Finite (and > 0 / >= 0) values, where ``reads_values`` allows the read."""
    if not reads_values(t):
        return
    # one reduction (aminmax propagates NaN to both ends)
    lo, hi = torch.aminmax(_data(t))
    lo, hi = lo.item(), hi.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got non-finite values")
    if positive and not lo > 0:
        raise ValueError(f"{name} must be > 0, got min {lo:g}")
    if nonnegative and not lo >= 0:
        raise ValueError(f"{name} must be >= 0, got min {lo:g}")


def at_most(name: str, t: Tensor, bound: float, bound_name: str) -> None:
    """Every value of ``t`` <= ``bound``, where ``reads_values`` allows the read."""
    if not reads_values(t):
        return
    data = _data(t)
    if bool((data > bound).any()):
        raise ValueError(f"{name} must be <= {bound_name}={bound:g}, got max {float(data.max()):g}")
