"""Row-chunk sizes for streaming (N, C) distance computations without an (N, C, D) tensor, and the
running top-k over such chunks."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from . import _backend


def rows_per_chunk(c: int, d: int, device: torch.device, budget: int = 1 << 22) -> int:
    """Rows of x per ``rbf_r2`` call: about ``budget`` output elements (the fused kernels), or
    ``budget`` elements of the (rows, C, D) intermediate the reference backend materialises."""
    per_row = max(1, c)
    if _backend.choose(device) == "reference":
        per_row *= max(1, d)
    return max(16, budget // per_row)


def running_topk(chunks: Iterable[tuple[int, Tensor]], like: Tensor, k: int, largest: bool = False,
                 stable: bool = False) -> tuple[Tensor, Tensor]:
    """The k best scores per row over column chunks ``(start, scores (Q, B))`` and their column
    indices, sorted (ascending; descending with ``largest``). ``like``: a (Q, ...) tensor giving
    rows, dtype and device. ``stable``: equal scores keep column order (ties to the smaller index;
    a stable sort per chunk instead of topk)."""
    q = like.shape[0]
    best_v = like.new_empty(q, 0)
    best_i = torch.empty(q, 0, dtype=torch.long, device=like.device)
    for start, scores in chunks:
        v = torch.cat([best_v, scores], 1)
        i = torch.cat([best_i, torch.arange(start, start + scores.shape[1], device=like.device).expand(q, -1)], 1)
        if stable:
            v, pos = v.sort(dim=1, descending=largest, stable=True)
            best_v, pos = v[:, :k], pos[:, :k]
        else:
            best_v, pos = v.topk(min(k, v.shape[1]), dim=1, largest=largest, sorted=True)
        best_i = i.gather(1, pos)
    return best_v, best_i
