"""Autocast policy of the rbfkern ops: run in float32, return float32.

The ops are precision-sensitive reductions in the class of ``torch.cdist`` / ``torch.norm``
(squared distances near a centre, patch norms, powers of a cosine, Gaussian-derivative taps), which
PyTorch's own autocast lists run in float32. Inside ``torch.autocast(device, dtype=float16 or
bfloat16)`` every floating input that is float16/bfloat16/float32 is cast to float32 (float64 is left
alone, as PyTorch does), the op runs with autocast switched off for its device (so the linear maps
inside the B-cos op do not drop back to half precision), and its outputs are float32. The casts are
ordinary differentiable ``Tensor.to`` calls, so gradients reach half-precision leaves in their dtype.

Registered for CPU and CUDA autocast. The public functions accept mixed float16/bfloat16/float32
arguments only while autocast is on for their device (``_checks.same_device_dtype``).
"""
from __future__ import annotations

import torch

# Every rbfkern op, the backward ops included (torch.autograd.grad may run inside autocast), and
# the CPU op behind each (rbfkern/ops/_family.py), which a caller may also call directly.
PUBLIC_OPS = (
    "rbf_r2", "rbf", "rbf_bwd",
    "bcos_conv2d", "bcos_linear", "bcos_conv2d_bwd", "bcos_linear_bwd",
    "gauss_deriv_conv2d", "gauss_deriv_conv2d_bwd", "gauss_deriv_conv3d", "gauss_deriv_conv3d_bwd",
)
OPS = PUBLIC_OPS + tuple(f"{name}_cpu" for name in PUBLIC_OPS)
DEVICES = ("cpu", "cuda")
CAST_TO = torch.float32


def register() -> None:
    for name in OPS:
        for device in DEVICES:
            if torch.amp.is_autocast_available(device):
                torch.library.register_autocast(f"rbfkern::{name}", device, CAST_TO)


register()
