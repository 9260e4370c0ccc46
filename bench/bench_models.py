"""Whole official B-cos models: the official ``bcos`` 0.1.3 model vs the same model after
``rbfkern.nn.from_bcos`` (issue 16), forward (eval, no grad) and forward+backward (train mode,
backward of the summed logits), float32 on CPU with 2 threads; on a CUDA device also resnet50
at batch 64, 224x224, bfloat16.

    python bench/bench_models.py [--quick] [--rounds 5] [--json out.json]   (bench/_harness.py)
    python -m rbfkern bench --family models

The models are the zoo's defaults (``bcos.models.resnet18()``, ``densenet121()``: B = 2, no
MaxOut, the centred position norm without bias), with random weights (speed does not depend
on them). Both models hold the same weights; the harness interleaves the providers' rounds.

A third provider bounds what any B-cos layer can gain: "floor", the official model with every
B-cos layer replaced by a plain bias-free ``nn.Conv2d`` of the same geometry (no unit-norm
weights, no patch norm, no scaling; the norms, pooling, concatenations and adds kept). A
converted model cannot be faster than it unless the non-B-cos layers get faster too.

Importing ``bcos.models`` needs ``torchvision.ops.StochasticDepth``; without torchvision a
stand-in class is put there while the zoo is imported (the identity: the default models have
no stochastic depth).
"""
from __future__ import annotations

import copy
import functools
import sys

import torch
from torch import nn

import _harness as h
from rbfkern import _official_bcos
from rbfkern.nn import from_bcos

# (arch, batch, side, dtype, device)
CASES = [("resnet18", 8, 128, "float32", "cpu"), ("densenet121", 8, 128, "float32", "cpu")]
CUDA_CASES = [("resnet50", 64, 224, "bfloat16", "cuda")]
QUICK_CASES = [("resnet18", 2, 64, "float32", "cpu")]
PROVIDERS = ("converted", "official", "floor")
MODES = ("fwd", "fwd+bwd")


def plain_conv_floor(official):
    """A copy of ``official`` with each B-cos layer a plain conv of the same geometry."""
    floor = copy.deepcopy(official)
    for m in list(floor.modules()):
        for name, child in m.named_children():
            if type(child).__name__ == "BcosConv2d":
                c = child.linear
                setattr(m, name, nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                           c.dilation, c.groups, bias=False, device=c.weight.device,
                                           dtype=c.weight.dtype))
    return floor


@functools.lru_cache(maxsize=1)  # the providers and both modes of a case share one set of models
def build(arch, n, side, dtype, device):
    """{provider: model} and the input x, on the case's device and dtype."""
    zoo = _official_bcos.find("models")
    if zoo is None:
        raise h.Unavailable("the official models need bcos (pip install --no-deps bcos==0.1.3)")
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    official = getattr(zoo, arch)().to(device=device, dtype=dt)
    x = torch.rand(n, 6, side, side, device=device, dtype=dt)
    return {"official": official, "converted": from_bcos(official), "floor": plain_conv_floor(official)}, x


def setup(case: h.Case, provider: str):
    """Inference for "fwd" (eval, no grad); a train-mode forward + backward of the summed logits."""
    p = case.params
    models, x = build(p["arch"], p["n"], p["side"], p["dtype"], case.device)
    model = models[provider]
    if case.mode == "fwd":
        def run():
            model.eval()
            with torch.no_grad():
                return model(x)
    else:
        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            model(x).float().sum().backward()
    return run


def cases(args) -> list[h.Case]:
    chosen = QUICK_CASES if args.quick else CASES + (CUDA_CASES if torch.cuda.is_available() else [])
    return [h.Case(arch, f"N={n} 6x{side}x{side} {dtype}", PROVIDERS, mode,
                   {"arch": arch, "n": n, "side": side, "dtype": dtype}, device=device)
            for arch, n, side, dtype, device in chosen for mode in MODES]


BENCH = h.Bench("models", cases, setup, ours="converted", rounds=5, memory=False,
                ratios=(("official", "converted"), ("official", "floor")),
                title=lambda args: "official bcos models vs rbfkern.nn.from_bcos; floor: B-cos layers as plain convs")
test_models = h.pytest_benchmark(BENCH, rounds=3)

if __name__ == "__main__":
    sys.exit(h.main(BENCH))
