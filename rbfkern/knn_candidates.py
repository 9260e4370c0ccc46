"""Candidate search of the exact Euclidean k-nearest-neighbour path (:mod:`rbfkern.retrieval`).

For each query the ``kk`` bank rows with the smallest GEMM-expanded value
``approx = |b|^2 - 2 q.b`` (``|q - b|^2`` less the per-query constant ``|q|^2``), ascending, ties
by the smaller bank index, and a bound on how far the rounded ``approx`` can be from the exact
one. CPU float32/float64 tensors run the fused C++ kernel (csrc/cpu/knn.h: GEMM tile, threshold
compare and bounded heap per query, the bank packed ``chunk`` rows at a time); other devices and
dtypes, and ``RBFKERN_BACKEND=reference`` / ``triton``, the torch reference
:func:`candidates_torch` (addmm per bank chunk + a stable sort).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend
from ._chunks import running_topk


def _gamma(n: float, u: float) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of n rounded operations (Higham)."""
    return n * u / (1.0 - n * u) if n * u < 0.5 else float("inf")


def candidates(query: Tensor, bank: Tensor, kk: int, chunk: int | None = None) -> tuple[Tensor, Tensor, float, float]:
    """``(value (Q, kk), index (Q, kk), bmax, g)``: the kk smallest ``approx`` per query, sorted
    ascending, their bank rows (-1 where fewer than kk are finite), ``max |b|^2`` and the factor
    ``g`` with ``|approx - exact| <= g * (2 sum_d |q_d b_d| + |b|^2)`` for this search's sums.
    ``chunk``: bank rows per step (None: the kernel's about 1 MiB of packed bank, or 4M distances
    for the torch path)."""
    if _backend.cpp_takes(query):
        return candidates_cpp(query, bank, kk, chunk)
    return candidates_torch(query, bank, kk, chunk)


def candidates_cpp(query: Tensor, bank: Tensor, kk: int, chunk: int | None = None):
    """The fused C++ kernel (CPU float32/float64); deterministic for any thread count."""
    query, bank = query.contiguous(), bank.contiguous()
    value = query.new_empty(query.shape[0], kk)
    index = torch.empty(query.shape[0], kk, dtype=torch.long)
    c = _backend.cext()
    bmax = c.knn_candidates(query.numpy(), bank.numpy(), kk, int(chunk or 0), value.numpy(), index.numpy(),
                            _backend.num_threads())
    return value, index, bmax, c.knn_error_factor(query.shape[1], query.dtype == torch.float64)


def candidates_torch(query: Tensor, bank: Tensor, kk: int, chunk: int | None = None):
    """Reference candidate search in torch: ``addmm`` per bank chunk, a running ``topk``.

    Rounding: addmm returns ``fl(|b|^2 + (-2) fl(q.b))`` in some summation order; any order of D
    products and one more addition is within gamma_{D+1} of the sum of the terms' magnitudes, so
    g = gamma_{D+2} (one spare for a BLAS that rounds the alpha scaling separately)."""
    q, m, d = query.shape[0], bank.shape[0], query.shape[1]
    step = chunk or max(256, (1 << 22) // max(1, q))
    bmax = 0.0

    def chunks():
        nonlocal bmax
        for s in range(0, m, step):
            b = bank[s:s + step]
            bn = (b * b).sum(1)
            bmax = max(bmax, float(bn.double().max()))
            yield s, torch.addmm(bn[None, :], query, b.T, alpha=-2.0)

    # stable: equal values keep index order, ties go to the smaller bank row
    best_v, best_i = running_topk(chunks(), query, kk, stable=True)
    best_i = torch.where(torch.isfinite(best_v), best_i, -1)
    return best_v, best_i, bmax, _gamma(d + 2, torch.finfo(query.dtype).eps / 2)


def expansion_bound(qn: Tensor, bmax: float, g: float, d: int, dtype: torch.dtype, ev: Tensor) -> Tensor:
    """Per query, the slack E of the certificate ``qn + approx_kk - E >= ev / (1 - gamma_{D+2})``
    (float64; ``qn = |q|^2`` and ``ev`` the k-th exact distance, both float64).

    Derivation (u the unit roundoff of ``dtype``; exact = of the stored operands; S = qn + 2 bmax):
      the sum:   |approx - (fl(|b|^2) - 2 q.b)| <= g (2 sum_d |q_d b_d| + fl(|b|^2))   (g: the search's)
      the norm:  |fl(|b|^2) - |b|^2| <= gamma_{D+1} |b|^2   (summed in T, or in double and rounded)
      Cauchy-Schwarz and AM-GM, 2 sum_d |q_d b_d| <= 2 |q| |b| <= |q|^2 + |b|^2, give
      |approx - exact| <= g qn + (2 g (1 + gamma_{D+1}) + gamma_{D+1}) |b|^2 <= (g + gamma_{D+1}) (1 + gamma_{D+1}) S.
    Every row outside the candidates has approx >= approx_kk, so its distance is >= qn + approx_kk
    minus that; the k-th candidate's distance is <= ev / (1 - gamma_{D+2}) (difference form: D
    non-negative squares of rounded differences). The factor 1.01 covers the float64 sums qn and
    bmax (relative error <= gamma_D of float64, or of dtype for a stored |b|^2); the last term the
    float64 evaluation of the certificate (|approx| <= S, ev <= 2 S: at most about 8 roundings of S)."""
    u, u64 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float64).eps / 2
    gn = _gamma(d + 1, u)
    s = qn + 2.0 * bmax
    return 1.01 * (g + gn) * (1.0 + gn) * s + 16.0 * u64 * (s + ev.abs())


def certified(query: Tensor, value: Tensor, index: Tensor, bmax: float, g: float, ev: Tensor) -> Tensor:
    """(Q,) bool: the queries whose k nearest rows are provably among their candidates (``value``,
    ``index`` from :func:`candidates`; ``ev`` the exact distances of the re-ranked top k)."""
    q, kk = value.shape
    d = query.shape[1]
    complete = (index >= 0).all(1)
    qn = (query.double() ** 2).sum(1)
    evk = ev[:, -1].double()
    bound = expansion_bound(qn, bmax, g, d, query.dtype, evk)
    ok = qn + value[:, -1].double() - bound >= evk / (1.0 - _gamma(d + 2, torch.finfo(query.dtype).eps / 2))
    return complete & ok
