"""The exact-kNN candidate search (csrc/cpu/knn.h via rbfkern.knn_candidates) and the certified
Euclidean path of rbfkern.retrieval.similar built on it.

Integer-valued data keep every |b|^2 - 2 q.b exact in float32 and float64, so the kernel's
candidates must equal a float64 brute force exactly, ties (duplicate rows) by the smaller index."""

import numpy as np
import pytest
import torch

from rbfkern import _backend, knn_candidates, retrieval
from rbfkern.nn import RBF
from rbfkern.retrieval import similar

from _util import run_tests_under_isa

pytestmark = pytest.mark.skipif(not _backend.has_cext(), reason="needs the C++ extension")


def _ints(shape, gen, dtype, lo=-3, hi=4):
    return torch.randint(lo, hi, shape, generator=gen).to(dtype)


def _brute_kk(q, b, kk):
    """The kk smallest |b|^2 - 2 q.b per query in float64, ties by the smaller bank row."""
    a = (b.double() ** 2).sum(1)[None] - 2.0 * q.double() @ b.double().T
    v, i = torch.sort(a, dim=1, stable=True)
    return v[:, :kk], i[:, :kk]


def _run(q, b, kk, chunk, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return knn_candidates.candidates_cpp(q, b, kk, chunk)
    finally:
        torch.set_num_threads(old)


# (Q, M, D, kk, chunk): Q off every tile height (12, 5, 2 rows), M off the panel widths (32, 16)
# and the chunk, D = 1 .. 130 (two summation blocks), kk = 1 and kk = M, chunks below one panel.
GRID = [(13, 100, 3, 5, 40), (1, 1, 1, 1, 0), (30, 257, 17, 40, 64), (25, 300, 130, 300, 0),
        (7, 50, 64, 1, 20), (40, 97, 64, 97, 1), (5, 33, 1, 33, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q_n,m,d,kk,chunk", GRID)
def test_candidates_equal_brute_force(dtype, q_n, m, d, kk, chunk):
    g = torch.Generator().manual_seed(q_n * 1000 + d)
    q, b = _ints((q_n, d), g, dtype), _ints((m, d), g, dtype)
    b[m // 2] = b[0]  # duplicate rows: equal values, the smaller index first
    v1, i1, bmax, gfac = _run(q, b, kk, chunk, 1)
    want_v, want_i = _brute_kk(q, b, kk)
    assert torch.equal(i1, want_i)
    assert torch.equal(v1.double(), want_v)
    assert bmax == float((b.double() ** 2).sum(1).max())
    assert 0 < gfac < 1e-3
    v2, i2, _, _ = _run(q, b, kk, chunk, 2)  # each query searched by one thread: bitwise equal
    assert torch.equal(i1, i2) and torch.equal(v1, v2)
    tv, ti, _, _ = knn_candidates.candidates_torch(q, b, kk, chunk or None)  # the torch reference
    assert torch.equal(ti, want_i) and torch.equal(tv.double(), want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_candidate_values_within_the_rounding_bound(dtype):
    # Random data: the kernel's approx of every candidate lies within the bound of the exact value,
    # and no row outside the candidates is provably nearer than the kk-th (what certification uses).
    g = torch.Generator().manual_seed(3)
    q, b = torch.randn(19, 70, generator=g, dtype=dtype) * 3, torch.randn(500, 70, generator=g, dtype=dtype) + 1
    kk = 26
    v, i, bmax, gfac = knn_candidates.candidates_cpp(q, b, kk)
    exact = (b.double() ** 2).sum(1)[None] - 2.0 * q.double() @ b.double().T
    qn = (q.double() ** 2).sum(1)
    bound = knn_candidates.expansion_bound(qn, bmax, gfac, 70, dtype, torch.zeros(19, dtype=torch.float64))
    assert ((v.double() - exact.gather(1, i)).abs() <= bound[:, None]).all()
    outside = exact.clone().scatter_(1, i, float("inf"))
    assert (outside.min(1).values >= v[:, -1].double() - 2 * bound).all()
    assert (v[:, 1:] >= v[:, :-1]).all()


def test_non_finite_rows_never_become_candidates():
    b = torch.arange(12.0).reshape(6, 2)
    b[2, 1] = float("nan")
    q = torch.zeros(3, 2)
    v, i, bmax, _ = knn_candidates.candidates_cpp(q, b, 6)
    assert (i[:, -1] == -1).all() and torch.isinf(v[:, -1]).all()  # five finite rows for six slots
    assert torch.equal(i[:, :5], torch.tensor([0, 1, 3, 4, 5]).expand(3, 5))
    assert np.isnan(bmax)


def _brute_similar(q, b, k):
    full = ((q.double()[:, None] - b.double()[None]) ** 2).sum(-1)
    order = full.argsort(dim=1, stable=True)[:, :k]
    return full.gather(1, order), order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["euclid", "shared_diag", "shared_full"])
def test_similar_equals_float64_brute_force(dtype, metric):
    g = torch.Generator().manual_seed(5)
    q, b = torch.randn(37, 9, generator=g, dtype=dtype), torch.randn(1500, 9, generator=g, dtype=dtype)
    module = None
    if metric != "euclid":
        torch.manual_seed(2)
        module = RBF(9, 3, metric=metric, dtype=dtype)
        with torch.no_grad():
            for p in module.parameters():
                p.uniform_(0.3, 1.2)
    r2, idx = similar(q, b, 10, metric_module=module, chunk_size=300)
    qe, be = retrieval._euclidean_coords(retrieval._layer(module, 9, q.device), q.double(), b.double()) \
        if module is not None else (q.double(), b.double())
    want_v, want_i = _brute_similar(qe, be, 10)
    assert torch.equal(idx, want_i)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(r2.double(), want_v, rtol=tol, atol=tol)


def test_uncertified_queries_fall_back_to_the_exact_op():
    # A huge common offset: |q|^2 and |b|^2 dwarf the gaps between distances, so the expansion's
    # rounding bound certifies nothing and every query takes the streaming op.
    g = torch.Generator().manual_seed(6)
    off = torch.full((8,), 3e3)
    q, b = torch.randn(11, 8, generator=g) + off, torch.randn(400, 8, generator=g) + off
    _, _, ok = retrieval._gemm_topk(q, b, 4, None)
    assert not ok.any()
    r2, idx = similar(q, b, 4)
    want_r2, want_i = similar(q, b, 4, fast=False)
    assert torch.equal(idx, want_i) and torch.equal(r2, want_r2)
    bv, bi = _brute_similar(q, b, 4)
    assert torch.equal(idx, bi)


def test_bad_buffers_are_value_errors_naming_them():
    c = _backend.cext()
    z = np.zeros
    cases = [
        ("'bank'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 3), np.float32), 2, 0,
                                            z((3, 2), np.float32), z((3, 2), np.int64), 1)),
        ("'bank'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 2)), 2, 0,
                                            z((3, 2), np.float32), z((3, 2), np.int64), 1)),
        ("'kk'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 2), np.float32), 6, 0,
                                          z((3, 6), np.float32), z((3, 6), np.int64), 1)),
        ("'chunk'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 2), np.float32), 2, -1,
                                             z((3, 2), np.float32), z((3, 2), np.int64), 1)),
        ("'index'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 2), np.float32), 2, 0,
                                             z((3, 2), np.float32), z((3, 2), np.int32), 1)),
        ("'value'", lambda: c.knn_candidates(z((3, 2), np.float32), z((5, 2), np.float32), 2, 0,
                                             z((3, 3), np.float32), z((3, 2), np.int64), 1)),
        ("'query'", lambda: c.knn_candidates(z((3,), np.float32), z((5, 2), np.float32), 2, 0,
                                             z((3, 2), np.float32), z((3, 2), np.int64), 1)),
    ]
    for arg, call in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith("knn_candidates:") and arg in str(e.value), str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_candidates_other_instruction_sets(isa):
    # Tile shapes and vector widths differ per instruction set.
    run_tests_under_isa(isa, __file__, "test_candidates_equal_brute_force", timeout=600)


def test_reference_backend_takes_the_torch_search(monkeypatch):
    # RBFKERN_BACKEND=reference keeps the C++ kernel out, as for the ops; results are the same.
    g = torch.Generator().manual_seed(7)
    q, b = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(300, 4, generator=g, dtype=torch.float64)
    want = similar(q, b, 5)
    monkeypatch.setenv("RBFKERN_BACKEND", "reference")

    def no_cpp(*args):
        raise AssertionError("the C++ search ran under RBFKERN_BACKEND=reference")

    monkeypatch.setattr(knn_candidates, "candidates_cpp", no_cpp)
    got = similar(q, b, 5)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert torch.equal(got[1], _brute_similar(q, b, 5)[1])
