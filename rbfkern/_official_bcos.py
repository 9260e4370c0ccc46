"""The official ``bcos`` package (0.1.3), where it is installed: the oracle of the B-cos family in
the tests and its peer in the benchmarks and the GPU check. Not a dependency of rbfkern.

``bcos/__init__.py`` imports torchvision (not a dependency here either), so a bare package module
with the right ``__path__`` stands in for it; ``bcos.modules`` and ``bcos.common`` need only torch.
``bcos.models`` also imports ``torchvision.ops.StochasticDepth``: while it is imported, a one-class
``torchvision.ops`` stands in where torchvision is missing (the stand-in leaves sys.modules again;
the models keep the class). Its StochasticDepth is the identity where the real one is (drop
probability 0, or eval mode), which is how the model zoo's defaults use it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from torch import nn


def _bare_package() -> bool:
    """Make ``import bcos.<x>`` work without running bcos/__init__; False where bcos is not installed."""
    if "bcos" in sys.modules:
        return True
    spec = importlib.util.find_spec("bcos")
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg = types.ModuleType("bcos")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["bcos"] = pkg
    return True


def load(submodule: str = "modules"):
    """``bcos.<submodule>``; ImportError (saying why) where it cannot be imported."""
    if not _bare_package():
        raise ImportError("bcos is not installed (pip install --no-deps bcos==0.1.3 einops)")
    if submodule == "models":
        return _load_models()
    return importlib.import_module(f"bcos.{submodule}")


def find(submodule: str = "modules"):
    """``bcos.<submodule>``, or None where it cannot be imported."""
    try:
        return load(submodule)
    except ImportError:
        return None


class _StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth where it drops nothing."""

    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if self.p and self.training:
            raise NotImplementedError("the stand-in of torchvision.ops.StochasticDepth drops nothing; install torchvision")
        return x


def _load_models():
    stand_in = "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None
    if stand_in:
        tv, tv_ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        tv_ops.StochasticDepth, tv.ops = _StochasticDepth, tv_ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": tv_ops})
    try:
        return importlib.import_module("bcos.models")
    finally:
        if stand_in:
            sys.modules.pop("torchvision.ops", None)
            sys.modules.pop("torchvision", None)
