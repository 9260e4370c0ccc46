"""torch.fx symbolic tracing (``torch.fx.symbolic_trace``, torchvision's feature extraction, FX
quantisation and pruning tools): a public function called with a ``Proxy`` among its arguments
is recorded as one ``call_function`` node of itself, as FX records ``torch.nn.functional.conv2d``.

Without this, FX runs the function's body on proxies and stops at its first check
(``x must be a torch.Tensor, got Proxy``). The recorded node calls the same public function when
the GraphModule runs, so its checks and kernels are those of an eager call.
"""
from __future__ import annotations

import functools

import torch.fx
from torch.fx import _symbolic_trace

_Proxy = torch.fx.Proxy


def _find_proxy(args, kwargs):
    for a in (*args, *kwargs.values()):
        if isinstance(a, _Proxy):
            return a
        if isinstance(a, (tuple, list)):
            for e in a:
                if isinstance(e, _Proxy):
                    return e
    return None


# FX's private flag for "a symbolic trace is running"; a torch without it gets the argument scan
# on every call (a few hundred nanoseconds) instead of a failure
_HAS_FLAG = hasattr(_symbolic_trace, "_is_fx_tracing_flag")


def traceable(fn):
    """``fn`` recorded as one node under FX symbolic tracing; otherwise called as it is (the flag
    FX sets while tracing is read first, so an eager call pays one attribute read)."""

    @functools.wraps(fn)
    def public(*args, **kwargs):
        if not _HAS_FLAG or _symbolic_trace._is_fx_tracing_flag:
            proxy = _find_proxy(args, kwargs)
            if proxy is not None:
                return proxy.tracer.create_proxy("call_function", public, args, kwargs)
        return fn(*args, **kwargs)

    return public
