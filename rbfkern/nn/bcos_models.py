"""Models of the official ``bcos`` 0.1.3 package on rbfkern's fused B-cos layers.

``from_bcos(model)`` swaps every official B-cos layer of a model (the ``bcos.models`` zoo: ResNets
incl. the CIFAR ones, DenseNets, VGGs, ConvNeXts, the SimpleViTs; or any model built from
``bcos.modules``) for the rbfkern layer that computes the same function, and keeps everything
else, so the model's logits, gradients and explanations stay those of the official model.
"""
from __future__ import annotations

import copy
import sys

from torch import nn

from .bcos import BcosConv2d, BcosLinear

__all__ = ["from_bcos", "OfficialBcosConv2d", "OfficialBcosLinear"]

# The official classes live in these modules; they are imported by whoever built the model
# (rbfkern does not depend on bcos).
_CONV_MODULE, _LINEAR_MODULE = "bcos.modules.bcosconv2d", "bcos.modules.bcoslinear"


class _OfficialKeys:
    """Saves the raw weight under the official key ``linear.weight`` (the official layers keep it in
    an inner NormedConv2d / NormedLinear), so a converted model's state dict loads into the
    official model as it is; loading takes both keys (``_Explainable._load_from_state_dict``)."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "linear.weight"] = destination.pop(prefix + "weight")


class OfficialBcosConv2d(_OfficialKeys, BcosConv2d):
    """:class:`BcosConv2d` with the official layer's state-dict key and its optional output
    scale (``bcos.modules.BcosConv2dWithScale`` divides the output by ``scale``)."""

    scale = None

    def forward(self, x):
        y = super().forward(x)
        return y if self.scale is None else y / self.scale

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.scale is None else f"{s}, scale={self.scale:.3f}"


class OfficialBcosLinear(_OfficialKeys, BcosLinear):
    """:class:`BcosLinear` with the official layer's state-dict key."""


def _same_methods(m, official_cls, names) -> bool:
    """Whether type(m) computes what official_cls does: it overrides none of ``names``."""
    return all(getattr(type(m), n) is getattr(official_cls, n) for n in names)


def _check_conv_geometry(path: str, conv: nn.Conv2d) -> None:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"from_bcos: {path} uses padding {conv.padding!r} with padding_mode {conv.padding_mode!r}; "
                         f"the fused layers take explicit zero padding only")


def _unsupported(path: str, m: nn.Module, base: type, why: str):
    return TypeError(f"from_bcos: {path or 'the model'} is a {type(m).__qualname__} (subclass of "
                     f"{base.__module__}.{base.__qualname__}) that {why}; rbfkern cannot tell what it computes, "
                     f"so it is not converted (convert that layer yourself, or build it from the official class)")


def _conv(path, m, mod):
    """The replacement of an official BcosConv2d / BcosConv2dWithScale."""
    scale = None
    if type(m) is mod.BcosConv2dWithScale:
        scale = m.scale
    elif not _same_methods(m, mod.BcosConv2d, ("forward",)):
        raise _unsupported(path, m, mod.BcosConv2d, "overrides forward")
    if not _same_methods(m, mod.BcosConv2d, ("forward_impl", "calc_patch_norms", "_calc_patch_norms_slow")):
        raise _unsupported(path, m, mod.BcosConv2d, "overrides its forward_impl or patch norm")
    lin = m.linear
    if type(lin).forward is not mod.NormedConv2d.forward or lin.bias is not None:
        raise _unsupported(path + ".linear", lin, mod.NormedConv2d, "is not a bias-free NormedConv2d")
    _check_conv_geometry(path, lin)
    new = OfficialBcosConv2d(lin.in_channels, m.out_channels, lin.kernel_size, lin.stride, lin.padding, lin.dilation,
                             lin.groups, b=m.b, max_out=m.max_out, device="meta", dtype=lin.weight.dtype)
    new.weight = lin.weight  # the same Parameter: an optimiser built on the official model keeps working
    new.scale = scale
    new.explain = bool(m.detach)
    return new


def _linear(path, m, mod):
    """The replacement of an official BcosLinear."""
    if not _same_methods(m, mod.BcosLinear, ("forward",)):
        raise _unsupported(path, m, mod.BcosLinear, "overrides forward")
    lin = m.linear
    if type(lin).forward is not mod.NormedLinear.forward or lin.bias is not None:
        raise _unsupported(path + ".linear", lin, mod.NormedLinear, "is not a bias-free NormedLinear")
    new = OfficialBcosLinear(lin.in_features, m.out_features, b=m.b, max_out=m.max_out, device="meta",
                             dtype=lin.weight.dtype)
    new.weight = lin.weight
    new.explain = bool(m.detach)
    return new


def _normed(path, m, conv_mod, linear_mod):
    """A bare NormedConv2d / NormedLinear (unit-norm filters, no B-cos scaling) is the B = 1
    layer, state-dict key ``weight`` in both; one with a bias stays official (None)."""
    if m.bias is not None:
        return None
    if conv_mod is not None and type(m) is conv_mod.NormedConv2d:
        _check_conv_geometry(path, m)
        new = BcosConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         b=1.0, device="meta", dtype=m.weight.dtype)
    else:
        new = BcosLinear(m.in_features, m.out_features, b=1.0, device="meta", dtype=m.weight.dtype)
    new.weight = m.weight
    return new


def _replacement(path, m, conv_mod, linear_mod):
    """The rbfkern module for m, or None to keep m (and look inside it)."""
    if conv_mod is not None and isinstance(m, conv_mod.BcosConv2d):
        return _conv(path, m, conv_mod)
    if linear_mod is not None and isinstance(m, linear_mod.BcosLinear):
        return _linear(path, m, linear_mod)
    if (conv_mod is not None and type(m) is conv_mod.NormedConv2d) or (
            linear_mod is not None and type(m) is linear_mod.NormedLinear):
        return _normed(path, m, conv_mod, linear_mod)
    return None


def _plan(m, path, mods, memo, edits):
    """The module that takes m's place (m itself if kept); the swaps inside a kept m are appended
    to ``edits`` as (parent, name, new), applied once every layer has passed its checks."""
    if id(m) in memo:  # a module used twice stays shared
        return memo[id(m)]
    new = _replacement(path, m, *mods)
    if new is None:
        new = m
        for name, child in list(m._modules.items()):  # every name, also a second one of a shared child
            if child is None:
                continue
            rep = _plan(child, f"{path}.{name}" if path else name, mods, memo, edits)
            if rep is not child:
                edits.append((m, name, rep))
    else:
        new.train(m.training)
    memo[id(m)] = new
    return new


def _forget_cached_modules(model: nn.Module) -> None:
    """The official ``model.explanation_mode()`` context lists the explainable modules on first
    use and keeps that list; after the swap it must look again."""
    for m in model.modules():
        for v in vars(m).values():
            if hasattr(v, "expl_modules") and hasattr(v, "find_expl_modules"):
                v.expl_modules = None


def from_bcos(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The official B-cos ``model`` with every B-cos layer on rbfkern's fused ops.

    Replaced (the same Parameter objects carried over, explanation mode and train/eval mode kept):

    - ``bcos.modules.BcosConv2d`` (and its inner ``NormedConv2d``) -> :class:`OfficialBcosConv2d`,
      ``BcosConv2dWithScale`` -> the same with its output scale;
    - ``bcos.modules.BcosLinear`` (and its inner ``NormedLinear``) -> :class:`OfficialBcosLinear`;
    - a bias-free ``NormedConv2d`` / ``NormedLinear`` on its own -> :class:`BcosConv2d` /
      :class:`BcosLinear` with B = 1 (the same function: unit-norm filters, no scaling).

    Kept as they are: the normalisation layers (``DetachablePositionNorm2d``, the uncentred
    batch / group / position / all norms, the centred ones), ``LogitLayer``, pooling, the
    residual / dense wiring, the ViT's attention (its ``to_qkv`` is a plain ``nn.Linear``) and
    anything else that is not a B-cos layer; a ``NormedConv2d`` / ``NormedLinear`` with a bias.

    The converted model computes the official model's outputs, gradients and, in explanation
    mode (``rbfkern.nn.explanation_mode``, ``rbfkern.explain`` or the official
    ``model.explanation_mode()``), its dynamic linear maps. Its state dict has the official keys
    (``...conv1.linear.weight``), so state dicts load both ways. Forward hooks registered on the
    replaced layers are not carried over.

    Args:
        model: a model built from the official ``bcos`` package (or an official layer itself).
        inplace: convert ``model`` itself; otherwise a deep copy is converted and ``model`` is
            left untouched.

    Raises:
        ValueError: ``model`` has no official B-cos layer; or a layer uses padding other than
            explicit zeros (``padding_mode`` reflect / replicate / circular, or ``padding="same"``).
        TypeError: a subclass of an official B-cos layer overrides how it computes (its
            ``forward``, ``forward_impl`` or patch norm), or its inner layer is not a bias-free
            ``NormedConv2d`` / ``NormedLinear``; the error names the module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mods = (sys.modules.get(_CONV_MODULE), sys.modules.get(_LINEAR_MODULE))
    if not inplace:
        model = copy.deepcopy(model)
    memo, edits = {}, []
    new = _plan(model, "", mods, memo, edits)
    if new is model and not edits:
        raise ValueError("from_bcos: the model has no layer of the official bcos package "
                         "(bcos.modules.BcosConv2d / BcosLinear / NormedConv2d / NormedLinear) to convert")
    for parent, name, rep in edits:
        setattr(parent, name, rep)
    _forget_cached_modules(new)
    return new
