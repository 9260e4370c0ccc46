"""RBF layers: k-means (rbfkern vs scikit-learn) and similarity retrieval (rbfkern.similar, default
GEMM-candidate path and the fused-op streaming path, vs faiss IndexFlatL2 (its default choice and
its BLAS path forced) vs torch cdist + topk).

Table (interleaved rounds):  python bench/bench_rbf_layers.py [--quick]
pytest-benchmark:            pytest bench/bench_rbf_layers.py --benchmark-only

Both k-means providers: k-means++ seeding, KMEANS_INIT restarts, at most KMEANS_ITER Lloyd
iterations. Each setup returns ``(run, check)``: ``run()`` is the timed step, ``check(result)`` a
dict of quality figures (inertia, recall against exact search) reported beside the timing.
FLOPs: retrieval only (:func:`retrieval_cost`); k-means has none, its work depends on the
iterations each provider runs.
"""
from __future__ import annotations

import os
import sys

import torch

import _harness as h
from rbfkern.kmeans import kmeans
from rbfkern.retrieval import similar

FULL = {"kmeans": (20000, 32, 32), "retrieval": (100_000, 64, 1000, 10)}  # (N, D, K); (M, D, Q, k)
QUICK = {"kmeans": (4000, 16, 16), "retrieval": (20_000, 64, 200, 10)}
KMEANS_INIT, KMEANS_ITER = 3, 50
PROVIDERS = {"kmeans": ("rbfkern", "sklearn"),
             "retrieval": ("rbfkern", "rbfkern-op", "faiss", "faiss-blas", "torch")}


def kmeans_data(n, d, k, seed=0):
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n, d, centers=k, cluster_std=2.0, random_state=seed)
    return torch.tensor(x, dtype=torch.float32)


def retrieval_data(m, d, q, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(m, d, generator=g)


def retrieval_cost(m, d, q, k) -> tuple[float, float]:
    """(FLOPs, bytes) of one exact search: the Q x M dot products (2 D each) plus norms added and
    compared (3 per pair); the bank and queries read once, k (distance, index) pairs written per query."""
    return 2.0 * q * m * d + 3.0 * q * m, 4.0 * (q * d + m * d) + 12.0 * q * k


# ---------------------------------------------------------------------------------------------
# Providers: (run, check)
# ---------------------------------------------------------------------------------------------


def kmeans_rbfkern(n, d, k):
    x = kmeans_data(n, d, k)
    return ((lambda: kmeans(x, k, seed=0, n_init=KMEANS_INIT, max_iter=KMEANS_ITER)),
            (lambda r: {"inertia": r.inertia, "iters": r.n_iter}))


def kmeans_sklearn(n, d, k):
    from sklearn.cluster import KMeans

    x = kmeans_data(n, d, k).numpy()

    def run():
        return KMeans(k, n_init=KMEANS_INIT, max_iter=KMEANS_ITER, random_state=0).fit(x)

    return run, (lambda r: {"inertia": float(r.inertia_), "iters": int(r.n_iter_)})


_EXACT: dict = {}


def _exact(m, d, q, k):
    """Ground-truth neighbours (float64 brute force, cached per size)."""
    key = (m, d, q, k)
    if key not in _EXACT:
        qs, bank = retrieval_data(m, d, q)
        d2 = torch.cdist(qs.double(), bank.double())
        _EXACT[key] = d2.topk(k, dim=1, largest=False).indices
    return _EXACT[key]


def _recall(m, d, q, k):
    def check(result):
        idx = torch.as_tensor(result[1])
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


def _openblas_core() -> str | None:
    """The OpenBLAS core name for this x86 CPU's vector width (None: leave OpenBLAS to detect it).

    faiss-cpu wheels bundle their own OpenBLAS (0.3.15 in faiss-cpu 1.15), which does not know
    CPUs newer than itself (e.g. Sapphire Rapids) and then runs its SSE3 "Prescott" kernels: the
    BLAS path 3-4x slower than it should be. Naming the core (OPENBLAS_CORETYPE, read when faiss
    loads it) times faiss as it runs where OpenBLAS knows the CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "avx512f" in flags and "avx512bw" in flags and "avx512vl" in flags:
        return "SkylakeX"
    return "Haswell" if "avx2" in flags and "fma" in flags else None


def retrieval_faiss(m, d, q, k, blas=False):
    """faiss IndexFlatL2; ``blas``: its BLAS path forced (distance_compute_blas_threshold = 1, a
    global of faiss set and restored around each search, so the default provider keeps faiss's own
    choice: a SIMD scan with heaps below that many queries per search)."""
    core = _openblas_core()
    if core and "faiss" not in sys.modules:
        os.environ.setdefault("OPENBLAS_CORETYPE", core)
    try:
        import faiss
    except ImportError as e:
        raise h.Unavailable("faiss: pip install faiss-cpu") from e

    faiss.omp_set_num_threads(torch.get_num_threads())
    qs, bank = retrieval_data(m, d, q)
    index = faiss.IndexFlatL2(d)
    index.add(bank.numpy())
    qn = qs.numpy()

    def run():
        old = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1 if blas else old
        try:
            return index.search(qn, k)
        finally:
            faiss.cvar.distance_compute_blas_threshold = old

    return run, _recall(m, d, q, k)


def retrieval_faiss_blas(m, d, q, k):
    return retrieval_faiss(m, d, q, k, blas=True)


def retrieval_torch(m, d, q, k):
    qs, bank = retrieval_data(m, d, q)

    def run():
        dist = torch.cdist(qs, bank)  # (Q, M) at once: the naive baseline
        v, i = dist.topk(k, dim=1, largest=False)
        return v * v, i

    return run, _recall(m, d, q, k)


SETUPS = {
    ("kmeans", "rbfkern"): kmeans_rbfkern, ("kmeans", "sklearn"): kmeans_sklearn,
    ("retrieval", "rbfkern"): retrieval_rbfkern, ("retrieval", "rbfkern-op"): retrieval_rbfkern_op,
    ("retrieval", "faiss"): retrieval_faiss, ("retrieval", "faiss-blas"): retrieval_faiss_blas,
    ("retrieval", "torch"): retrieval_torch,
}


def setup(case: h.Case, provider: str):
    return SETUPS[case.name, provider](*case.params["size"])


def cases(args) -> list[h.Case]:
    sizes = QUICK if args.quick else FULL
    out = [h.Case("kmeans", str(sizes["kmeans"]), PROVIDERS["kmeans"], params={"size": list(sizes["kmeans"])})]
    flops, nbytes = retrieval_cost(*sizes["retrieval"])
    out.append(h.Case("retrieval", str(sizes["retrieval"]), PROVIDERS["retrieval"],
                      params={"size": list(sizes["retrieval"])}, flops=flops, bytes=nbytes))
    return out


BENCH = h.Bench("rbf layers", cases, setup, ours="rbfkern", rounds=3,
                title=lambda a: "kmeans (N, D, K), retrieval (M, D, Q, k); float32")
test_rbf_layers = h.pytest_benchmark(BENCH, rounds=3)

if __name__ == "__main__":
    sys.exit(h.main(BENCH))
