"""Orthogonal least squares centre selection (tinyml-rbf-networks.md, Section 2.1).

Greedy forward selection of candidate basis functions by error reduction ratio, with every
remaining candidate kept orthogonalised (modified Gram-Schmidt) against the ones chosen so far.
The constant (bias) column is orthogonalised out first, since stage 2 fits the bias freely.
"""
from __future__ import annotations

import torch
from torch import Tensor


def ols_select(phi: Tensor, Y: Tensor, n: int, tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Pick up to ``n`` columns of ``phi`` (N, M) (candidate basis functions) for targets Y (N, K).

    Returns ``(index, err)``: the chosen columns in selection order and their error reduction
    ratios ERR_k = sum_k (q^T y_k)^2 / sum_k y_k^T y_k (centred y). Stops early when no candidate
    is linearly independent of the chosen ones (relative norm below ``tol``).
    """
    w = phi.double() - phi.double().mean(0)
    yc = Y.double() - Y.double().mean(0)
    yy = float((yc ** 2).sum()) or 1.0
    norm0 = (w ** 2).sum(0)
    norms = norm0.clone()
    taken = torch.zeros(w.shape[1], dtype=torch.bool)
    chosen, errs = [], []
    for _ in range(min(n, w.shape[1])):
        err = ((w.T @ yc) ** 2).sum(1) / (norms.clamp_min(1e-300) * yy)
        err[taken | (norms <= tol * norm0.clamp_min(1e-300))] = -1.0
        j = int(err.argmax())
        if err[j] < 0:
            break
        q = w[:, j] / norms[j].sqrt()
        w -= q[:, None] * (q @ w)[None, :]
        norms = (w ** 2).sum(0)
        taken[j] = True
        chosen.append(j)
        errs.append(float(err[j]))
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(errs, dtype=torch.float64)
