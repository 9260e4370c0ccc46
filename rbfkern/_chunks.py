"""Row-chunk sizes for streaming (N, C) distance computations without an (N, C, D) tensor."""
from __future__ import annotations

import torch

from . import _backend


def rows_per_chunk(c: int, d: int, device: torch.device, budget: int = 1 << 22) -> int:
    """Rows of x per ``rbf_r2`` call: about ``budget`` output elements (the fused kernels), or
    ``budget`` elements of the (rows, C, D) intermediate the reference backend materialises."""
    per_row = max(1, c)
    if _backend.choose(device) == "reference":
        per_row *= max(1, d)
    return max(16, budget // per_row)
