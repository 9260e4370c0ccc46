"""B-cos cases (B = 2, MaxOut 2): ``rbfkern.ops.bcos_conv2d`` (3x3, stride 1, padding 1) vs a
plain cuDNN ``conv2d`` with 2*C_out outputs (the same GEMM without the B-cos work) vs the
official ``bcos`` layer; ``bcos_linear`` vs a cuBLAS ``linear`` with 2*out features vs the
official ``BcosLinear``. Saved-for-backward bytes are measured for every provider by the worker."""
from __future__ import annotations

import importlib.metadata
from functools import partial

import torch
import torch.nn.functional as F

from ... import _official_bcos, ops
from . import DTYPES, Case, Provider, generator, ours_label, torch_peers

B, MAX_OUT = 2.0, 2


SUMMARY = ("fused rbfkern.ops.bcos_conv2d / bcos_linear (float32 also with TF32 on: its dots follow the switch); plain conv2d / linear with 2*C_out outputs (TF32 off/on); "
           "official bcos.modules layer (TF32 off/on; skipped when bcos is not installed); saved-for-backward MiB of each")


def _conv(name, n, cin, h, w, cout, tiny, quick=False):
    return Case("bcos", f"conv3x3-{name}", f"B-cos conv 3x3, B=2, MaxOut 2, (N, C_in, H, W, C_out) = "
                f"({n}, {cin}, {h}, {w}, {cout})", dict(kind="conv", n=n, cin=cin, h=h, w=w, cout=cout, k=3),
                dict(zip(("n", "cin", "h", "w", "cout"), tiny)), quick=quick)


CASES = [
    _conv("32x64x32x32x64", 32, 64, 32, 32, 64, (2, 4, 8, 8, 4), quick=True),
    _conv("8x128x16x16x128", 8, 128, 16, 16, 128, (1, 8, 6, 6, 8)),
    _conv("64x16x32x32x32", 64, 16, 32, 32, 32, (2, 2, 8, 8, 4)),
    _conv("64x256x56x56x64", 64, 256, 56, 56, 64, (2, 8, 10, 10, 4)),
    _conv("64x512x28x28x128", 64, 512, 28, 28, 128, (2, 8, 7, 7, 8), quick=True),
    Case("bcos", "linear-16384x1024x1024", "B-cos linear, B=2, MaxOut 2, (rows, in, out) = (16384, 1024, 1024)",
         dict(kind="linear", r=16384, cin=1024, cout=1024), dict(r=32, cin=16, cout=8)),
]


_OFFICIAL = None


def official():
    """(bcos.modules, version) or (None, why not). Loads bcos.modules without running
    bcos/__init__.py (it imports torchvision, which this layer does not need); once per process."""
    global _OFFICIAL
    if _OFFICIAL is None:
        _OFFICIAL = _load_official()
    return _OFFICIAL


def _load_official():
    try:
        version = importlib.metadata.version("bcos")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    try:
        return _official_bcos.load("modules"), version
    except Exception as e:  # noqa: BLE001 - recorded as the reason the peer is skipped
        return None, f"bcos.modules does not import: {type(e).__name__}: {e}"


def _ours(what, fn, leaves, dtype, device) -> list[Provider]:
    """The fused op (PyTorch's TF32 switches off: IEEE float32 dots), and in float32 also with them
    on, where its dots follow PyTorch's switch into TF32 (a row of role "ours", beside the peers'
    TF32-on rows)."""
    out = [Provider("fused", ours_label(device, what), fn, leaves, role="fused", jit=True)]
    if dtype == "float32":
        out.append(Provider("fused_tf32_on", ours_label(device, what) + ", TF32 on", fn, leaves, role="ours",
                            tf32=True, jit=True))
    return out


def providers(case: Case, dtype: str, device, params: dict) -> list[Provider]:
    dt, g = DTYPES[dtype], generator(device)
    mod_lib, version = official()
    skip_official = None if mod_lib is not None else f"official bcos: {version}"
    if params["kind"] == "conv":
        n, cin, h, w, cout, k = (params[s] for s in ("n", "cin", "h", "w", "cout", "k"))
        x = torch.randn(n, cin, h, w, generator=g, device=device).to(dt).requires_grad_()
        weight = (torch.randn(cout * MAX_OUT, cin, k, k, generator=g, device=device) * 0.1).to(dt).requires_grad_()
        pad = k // 2
        official_leaves, official_fn = [x], None
        if mod_lib is not None:
            layer = mod_lib.BcosConv2d(cin, cout, k, padding=pad, b=B, max_out=MAX_OUT).to(device=device, dtype=dt)
            with torch.no_grad():
                layer.linear.weight.copy_(weight)
            official_leaves, official_fn = [x, layer.linear.weight], partial(layer, x)
        out = _ours("rbfkern.ops.bcos_conv2d", lambda: ops.bcos_conv2d(x, weight, b=B, max_out=MAX_OUT, padding=pad),
                    [x, weight], dtype, device)
        out += torch_peers("plain_conv", f"plain conv2d, {cout * MAX_OUT} = 2*C_out outputs",
                           lambda: F.conv2d(x, weight, None, 1, pad), [x, weight], dtype)
        out += torch_peers("official", f"official bcos.modules.BcosConv2d ({version})", official_fn,
                           official_leaves, dtype, skip=skip_official)
        return out
    r, cin, cout = params["r"], params["cin"], params["cout"]
    x = torch.randn(r, cin, generator=g, device=device).to(dt).requires_grad_()
    weight = (torch.randn(cout * MAX_OUT, cin, generator=g, device=device) / cin**0.5).to(dt).requires_grad_()
    official_leaves, official_lin = [x], None
    if mod_lib is not None:
        lin = mod_lib.BcosLinear(cin, cout, b=B, max_out=MAX_OUT).to(device=device, dtype=dt)
        with torch.no_grad():
            lin.linear.weight.copy_(weight)
        official_leaves, official_lin = [x, lin.linear.weight], partial(lin, x)
    out = _ours("rbfkern.ops.bcos_linear", lambda: ops.bcos_linear(x, weight, b=B, max_out=MAX_OUT), [x, weight],
                dtype, device)
    out += torch_peers("linear", f"plain linear, {cout * MAX_OUT} = 2*out features", lambda: F.linear(x, weight),
                       [x, weight], dtype)
    out += torch_peers("official", f"official bcos.modules.BcosLinear ({version})", official_lin, official_leaves,
                       dtype, skip=skip_official)
    return out
