"""The functional calls inside a model's ``forward`` that ``convert_to_bcos`` must remove or
change (F.relu, x.relu(), F.max_pool2d, ...): found and rewritten on a torch.fx graph, since
Python code cannot be rewritten otherwise. Used by rbfkern.nn.bcos.convert_to_bcos."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

# Removed (the identity), as their module forms are: non-linearities, dropout, batch norm.
_REMOVED_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.gelu, F.silu, F.elu, F.elu_, F.selu, F.celu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.hardtanh_, F.softplus, F.tanh, F.sigmoid, F.rrelu, F.prelu,
    torch.relu, torch.relu_, torch.tanh, torch.sigmoid, torch.selu, torch.celu, torch.rrelu, torch.prelu,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout,
    F.batch_norm,
}
_REMOVED_METHODS = {"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_"}
_MAX_POOL = {F.max_pool2d, torch.max_pool2d}
_ADAPTIVE_MAX_POOL = {F.adaptive_max_pool2d}
# Linear maps with their weights passed in: not turned into B-cos layers.
_LINEAR = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d}


def _leaf_types():
    from .bcos import AddInverse, LogitLayer, _Explainable
    return (_Explainable, AddInverse, LogitLayer)


class _Tracer(fx.Tracer):
    """torch.nn modules and rbfkern's B-cos modules are leaves (their forwards check shapes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _leaf_types()) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    return _Tracer().trace(model)


def _kind(node: fx.Node):
    if node.op == "call_method" and node.target in _REMOVED_METHODS:
        return "removed"
    if node.op != "call_function":
        return None
    t = node.target
    for kind, targets in (("removed", _REMOVED_FUNCTIONS), ("max_pool", _MAX_POOL),
                          ("adaptive_max_pool", _ADAPTIVE_MAX_POOL), ("linear", _LINEAR)):
        if any(t is f for f in targets):
            return kind
    return None


def functional_calls(graph: fx.Graph) -> list:
    """[(node, kind)] of the calls convert_to_bcos cares about, in graph order."""
    return [(n, k) for n in graph.nodes if (k := _kind(n)) is not None]


def describe(node: fx.Node) -> str:
    """'<module path>: <call>' for error messages."""
    stack = node.meta.get("nn_module_stack")
    where = f"{next(reversed(stack))}.forward" if stack else "the model's forward"
    if node.op == "call_method":
        what = f"Tensor.{node.target}"
    else:  # the public name: F.gelu is torch._C._nn.gelu, F.conv2d is torch.conv2d
        what = next((f"{prefix}.{node.target.__name__}" for prefix, mod in (("F", F), ("torch", torch))
                     if getattr(mod, node.target.__name__, None) is node.target), repr(node.target))
    return f"{what}() in {where}"


def _max_pool_args(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return input, kernel_size, stride, padding, dilation, ceil_mode, return_indices


def _adaptive_args(input, output_size, return_indices=False):
    return input, output_size, return_indices


def rewrite(graph: fx.Graph, calls) -> None:
    """Removes the 'removed' calls (their first argument takes their place) and turns max pooling
    into the average pooling of the same window; in place. 'linear' calls must be gone already."""
    for node, kind in calls:
        if kind == "removed":
            node.replace_all_uses_with(node.args[0] if node.args else node.kwargs["input"])
        elif kind == "adaptive_max_pool":
            x, size, idx = _adaptive_args(*node.args, **node.kwargs)
            if idx:
                raise ValueError(f"convert_to_bcos: {describe(node)} returns indices; it has no average equivalent")
            with graph.inserting_after(node):
                new = graph.call_function(F.adaptive_avg_pool2d, (x, size))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
        else:  # max_pool
            x, k, s, p, d, ceil, idx = _max_pool_args(*node.args, **node.kwargs)
            if d not in (1, (1, 1), [1, 1]) or idx:
                raise ValueError(f"convert_to_bcos: {describe(node)} is dilated or returns indices; it has no "
                                 f"average equivalent")
            with graph.inserting_after(node):
                new = graph.call_function(F.avg_pool2d, (x, k, s, p, ceil))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
