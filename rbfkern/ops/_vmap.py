"""Batching rules (torch.func.vmap) for the ops whose leading dimension is a batch of independent rows.

Every op here maps rows of its row arguments (x and what is per-row: grad outputs, saved maps) to
rows of its row outputs, with the other tensors (centres, metric, weights, alpha, sigma) shared.
Under vmap, when only row arguments carry the vmapped dimension, the B slices of N rows are one
call on B*N rows (a row argument not batched is repeated). That covers ``vmap(layer)(x)`` and
jacrev's vmap over cotangents. When a shared tensor is batched too (an ensemble over parameters)
or a backward op must give per-slice parameter gradients (per-sample gradients), the rule calls
the op once per slice, as torch's fallback would, without its warning.

The public functions reach these rules from the forward of ``_eager``'s torch.func Function, where
no transform is left below the vmap level being processed: the rules call the ops directly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _rows(args, in_dims, rows):
    """The logical row count N of the row arguments (the first one that is a tensor)."""
    for i in rows:
        a = args[i]
        if isinstance(a, Tensor):
            return a.shape[1] if in_dims[i] is not None else a.shape[0]
    raise TypeError("a row-batched op needs a row argument")


def _fold(a: Tensor, dim: int | None, batch: int) -> Tensor:
    a = a.movedim(dim, 0) if dim is not None else a.expand(batch, *a.shape)
    return a.reshape(batch * a.shape[1], *a.shape[2:])


def register_rows(op, rows: Sequence[int], row_outputs: Sequence[int],
                  may_fold: Callable[[tuple], bool] = lambda args: True) -> None:
    """Give ``op`` the batching rule of the module docstring. ``rows``: the indices of its row
    arguments; ``row_outputs``: the indices of its row outputs (the others, empty tensors, are
    shared); ``may_fold(args)``: False where one call on B*N rows would not give what B calls give
    (a backward op asked for parameter gradients)."""
    rows, row_outputs = tuple(rows), tuple(row_outputs)

    def rule(info, in_dims, *args):
        batch = info.batch_size
        shared_batched = any(isinstance(a, Tensor) and d is not None
                             for i, (a, d) in enumerate(zip(args, in_dims)) if i not in rows)
        if shared_batched or not may_fold(args):
            return _per_slice(op, batch, in_dims, args)
        n = _rows(args, in_dims, rows)
        folded = [_fold(a, d, batch) if i in rows and isinstance(a, Tensor) else a
                  for i, (a, d) in enumerate(zip(args, in_dims))]
        out = op(*folded)
        outs = out if isinstance(out, tuple) else (out,)
        res, dims = [], []
        for k, o in enumerate(outs):
            if k in row_outputs and o.dim() >= 1 and o.shape[0] == batch * n:
                res.append(o.reshape(batch, n, *o.shape[1:]))
                dims.append(0)
            else:
                res.append(o)
                dims.append(None)
        return (tuple(res), tuple(dims)) if isinstance(out, tuple) else (res[0], dims[0])

    op.register_vmap(rule)


def _per_slice(op, batch, in_dims, args):
    outs = []
    for b in range(batch):
        sliced = [a.select(d, b) if isinstance(a, Tensor) and d is not None else a for a, d in zip(args, in_dims)]
        outs.append(op(*sliced))
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*outs)), (0,) * len(outs[0])
    return torch.stack(outs), 0
