"""RBF layers: k-means (rbfkern vs scikit-learn) and similarity retrieval (rbfkern.similar, default
GEMM-candidate path and the fused-op streaming path, vs faiss IndexFlatL2 vs torch cdist + topk).

pytest-benchmark (one run, grouped):  pytest bench/bench_rbf_layers.py --benchmark-only
Plain table (median of rounds):       python bench/bench_rbf_layers.py [--quick]
From code (the CLI):                  rows = table(quick=True); CASES lists every (group, provider, setup)

Both k-means providers: k-means++ seeding, 3 restarts, at most 50 Lloyd iterations.
Each setup returns ``(run, check)``: ``run()`` is the timed step, ``check(result)`` a dict of
quality figures (inertia, recall against exact search) reported beside the timing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import torch

from rbfkern.kmeans import kmeans
from rbfkern.retrieval import similar

FULL = {"kmeans": (20000, 32, 32), "retrieval": (100_000, 64, 1000, 10)}  # (N, D, K); (M, D, Q, k)
QUICK = {"kmeans": (4000, 16, 16), "retrieval": (20_000, 64, 200, 10)}


def _quick() -> bool:
    return bool(os.environ.get("RBFKERN_BENCH_QUICK"))


def kmeans_data(n, d, k, seed=0):
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n, d, centers=k, cluster_std=2.0, random_state=seed)
    return torch.tensor(x, dtype=torch.float32)


def retrieval_data(m, d, q, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(m, d, generator=g)


# ---------------------------------------------------------------------------------------------
# Providers: setup(sizes) -> (run, check)
# ---------------------------------------------------------------------------------------------


def kmeans_rbfkern(n, d, k):
    x = kmeans_data(n, d, k)
    return (lambda: kmeans(x, k, seed=0, n_init=3, max_iter=50)), (lambda r: {"inertia": r.inertia, "iters": r.n_iter})


def kmeans_sklearn(n, d, k):
    from sklearn.cluster import KMeans

    x = kmeans_data(n, d, k).numpy()

    def run():
        return KMeans(k, n_init=3, max_iter=50, random_state=0).fit(x)

    return run, (lambda r: {"inertia": float(r.inertia_), "iters": int(r.n_iter_)})


def _exact(m, d, q, k):
    """Ground-truth neighbours (float64 brute force, cached per size)."""
    key = (m, d, q, k)
    if key not in _EXACT:
        qs, bank = retrieval_data(m, d, q)
        d2 = torch.cdist(qs.double(), bank.double())
        _EXACT[key] = d2.topk(k, dim=1, largest=False).indices
    return _EXACT[key]


_EXACT: dict = {}


def _recall(m, d, q, k):
    def check(result):
        idx = result[1]
        idx = torch.as_tensor(idx)
        want = _exact(m, d, q, k)
        hits = sum(len(set(a) & set(b)) for a, b in zip(idx.tolist(), want.tolist()))
        return {"recall": hits / want.numel()}
    return check


def retrieval_rbfkern(m, d, q, k):
    qs, bank = retrieval_data(m, d, q)
    return (lambda: similar(qs, bank, k)), _recall(m, d, q, k)


def retrieval_rbfkern_op(m, d, q, k):
    """The fused rbf_r2 op streamed over the bank (the path per-centre metrics take)."""
    qs, bank = retrieval_data(m, d, q)
    return (lambda: similar(qs, bank, k, fast=False)), _recall(m, d, q, k)


def retrieval_faiss(m, d, q, k):
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    qs, bank = retrieval_data(m, d, q)
    index = faiss.IndexFlatL2(d)
    index.add(bank.numpy())
    qn = qs.numpy()
    return (lambda: index.search(qn, k)), _recall(m, d, q, k)


def retrieval_torch(m, d, q, k):
    qs, bank = retrieval_data(m, d, q)

    def run():
        dist = torch.cdist(qs, bank)  # (Q, M) at once: the naive baseline
        v, i = dist.topk(k, dim=1, largest=False)
        return v * v, i

    return run, _recall(m, d, q, k)


class Case(NamedTuple):
    group: str
    provider: str
    setup: Callable


CASES = [
    Case("kmeans", "rbfkern", kmeans_rbfkern),
    Case("kmeans", "sklearn", kmeans_sklearn),
    Case("retrieval", "rbfkern", retrieval_rbfkern),
    Case("retrieval", "rbfkern-op", retrieval_rbfkern_op),
    Case("retrieval", "faiss", retrieval_faiss),
    Case("retrieval", "torch", retrieval_torch),
]


def sizes(group: str, quick: bool | None = None):
    return (QUICK if (_quick() if quick is None else quick) else FULL)[group]


def time_case(case: Case, rounds: int = 3, quick: bool | None = None) -> dict:
    """Median / min seconds of ``rounds`` runs after one warm-up, plus the quality figures."""
    size = sizes(case.group, quick)
    run, check = case.setup(*size)
    result = run()  # warm-up
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = run()
        ts.append(time.perf_counter() - t0)
    return {"group": case.group, "provider": case.provider, "size": size, "median_s": statistics.median(ts),
            "min_s": min(ts), **check(result)}


def table(quick: bool = False, rounds: int = 3, threads: int = 2) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for case in CASES:
        row = time_case(case, rounds, quick)
        rows.append(row)
        extra = "  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                          if k not in ("group", "provider", "size", "median_s", "min_s"))
        print(f"{row['group']:<10} {str(row['size']):<22} {row['provider']:<8} {row['median_s'] * 1e3:10.1f} ms  {extra}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# pytest-benchmark entry point
# ---------------------------------------------------------------------------------------------
try:
    import pytest

    @pytest.mark.parametrize("case", CASES, ids=[f"{c.group}-{c.provider}" for c in CASES])
    def test_rbf_layers(benchmark, case):
        torch.set_num_threads(2)
        size = sizes(case.group)
        benchmark.group = f"{case.group} {size}"
        run, check = case.setup(*size)
        result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
        benchmark.extra_info.update(check(result))
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    table(a.quick, a.rounds, a.threads)
    sys.exit(0)
