"""PyTorch's TF32 switches for one step. Only the legacy flags (``allow_tf32``) are touched, as
tests/conftest.py does: PyTorch refuses to read them once the newer ``fp32_precision`` API has
set a value, so mixing the two in one process would break whichever reads last."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def state() -> dict:
    return {"cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


@contextmanager
def switches(on: bool):
    """cuBLAS matmuls and cuDNN convolutions in TF32 (``on``) or full float32, restored after."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(on)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
