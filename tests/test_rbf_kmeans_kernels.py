"""The fused C++ passes of k-means (csrc/cpu/rbf_kernels.h): the nearest-centre search equals
``rbf_r2(...).min(1)`` bit for bit (ties and NaN as torch.min), the seeding pass equals
``torch.minimum(floor, rbf_r2(...))``, the cluster sums equal a float64 index_add_, all for any
thread count; k-means gives the same answer with and without them."""
import math

import pytest
import torch
from _util import run_tests_under_isa

from rbfkern import _backend
from rbfkern import kmeans as km
from rbfkern.ops import rbf_r2

METRICS = ["none", "diag", "shared_diag", "tril", "shared_tril"]
# (N, C, D): D below and above the GEMM form's 16, C not a multiple of any tile, C = 1, long D
SHAPES = [(37, 45, 21), (200, 5, 8), (130, 33, 16), (64, 1, 130), (301, 70, 40)]

pytestmark = pytest.mark.skipif(not _backend.has_cext(), reason="the C++ extension is not built")


@pytest.fixture(autouse=True)
def _cpp(monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")


def _problem(n, c, d, metric, dtype, seed=0):
    """Clustered rows (the GEMM form fails its bound near a centre), a duplicated centre (ties),
    rows on a centre, and a NaN row."""
    g = torch.Generator().manual_seed(seed)
    cen = torch.randn(c, d, generator=g, dtype=torch.float64) * 3
    if c > 2:
        cen[c // 2] = cen[0]
    x = cen[torch.randint(c, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:3] = cen[0]
    if n > 6:
        x[5, 1] = float("nan")
    kw = {}
    lead = () if metric.startswith("shared") else (c,)
    if metric.endswith("diag"):
        kw["diag"] = torch.rand(*lead, d, generator=g, dtype=torch.float64) + 0.1
    elif metric.endswith("tril"):
        kw["tril"] = torch.randn(*lead, d, d, generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)
        if lead and c > 2:
            kw["tril"][c // 2] = kw["tril"][0]
    return x.to(dtype), cen.to(dtype), {k: v.to(dtype) for k, v in kw.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,c,d", SHAPES)
def test_fused_assign_is_r2_min(n, c, d, metric, dtype):
    x, cen, kw = _problem(n, c, d, metric, dtype)
    fused = km._fused_nearest(x, cen, kw.get("diag"), kw.get("tril"))
    assert fused is not None  # the C++ pass ran
    labels, best = fused
    want = rbf_r2(x, cen, **kw).min(1)
    assert torch.equal(labels, want.indices)
    assert torch.equal(best.isnan(), want.values.isnan())
    assert torch.equal(best.nan_to_num(-1.0), want.values.nan_to_num(-1.0))
    if n > 6:
        assert bool(best[5].isnan())
    if c > 2:  # rows on centre 0 and its duplicate c // 2: the smaller index, distance 0
        assert labels[:3].tolist() == [0, 0, 0] and float(best[:3].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,c,d", SHAPES)
def test_seeding_pass_is_minimum_of_floor_and_r2(n, c, d, metric, dtype):
    """out = torch.minimum(floor, r2) in float64, bit for bit; a NaN floor or r2 gives NaN."""
    x, cen, kw = _problem(n, c, d, metric, dtype, seed=1)
    floor = rbf_r2(x, cen[:1], **{k: v[:1] if v.dim() > (1 if k == "diag" else 2) else v for k, v in kw.items()})[:, 0]
    floor = floor.double() * torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    floor[-1] = float("nan")
    assert km._cpp_metric(x, cen, kw.get("diag"), kw.get("tril")) is not None  # the C++ pass runs
    m = km._candidate_floor(x, cen, kw, floor, None, torch.full((n, c), 7.0, dtype=torch.float64))
    want = torch.minimum(floor[:, None], rbf_r2(x, cen, **kw))
    assert m.dtype == torch.float64 and torch.equal(m.isnan(), want.isnan())
    assert torch.equal(m.nan_to_num(-1.0), want.nan_to_num(-1.0))
    assert bool(m[-1].isnan().all())


@pytest.mark.parametrize("metric", ["none", "diag", "tril"])
@pytest.mark.parametrize("n,c,d", [(37, 45, 21), (200, 40, 8)])
def test_a_nan_centre_wins_as_in_torch_min(n, c, d, metric):
    """A NaN centre in the last panel, finite minima in the first: every row takes the NaN centre,
    as torch.min does (the sink's NaN path, on the GEMM form and the short-D kernel)."""
    x, cen, kw = _problem(n, c, d, metric, torch.float32, seed=4)
    cen[c - 2, d - 1] = float("nan")
    labels, best = km.assign(x, cen, **kw)
    want = rbf_r2(x, cen, **kw).min(1)
    assert torch.equal(labels, want.indices) and bool(best.isnan().all())
    assert bool((labels[torch.arange(n) != 5] == c - 2).all())


@pytest.mark.parametrize("metric", ["none", "diag", "tril"])
def test_fused_assign_does_not_depend_on_threads(metric):
    x, cen, kw = _problem(5000, 37, 24, metric, torch.float32, seed=2)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(km.assign(x, cen, **kw))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1].nan_to_num(-1), outs[1][1].nan_to_num(-1))


def test_assign_keeps_the_gradient_path():
    """With a gradient wanted, assign takes the differentiable op; under no_grad the fused pass."""
    x, cen, _ = _problem(40, 6, 20, "none", torch.float64)
    x = x[6:].clone()
    cen.requires_grad_(True)
    assert km._fused_nearest(x, cen, None, None) is None
    _, best = km.assign(x, cen)
    assert best.requires_grad
    best.sum().backward()
    assert cen.grad is not None and bool(cen.grad.abs().sum() > 0)
    with torch.no_grad():
        assert km._fused_nearest(x, cen, None, None) is not None


def test_fused_passes_check_their_inputs_as_the_op_does():
    """The C++ passes bypass rbf_r2, so they run its checks: a negative or NaN metric, both
    metrics at once, or a wrong metric shape raise the op's ValueError, from k-means too."""
    x, cen = torch.randn(20, 3), torch.randn(4, 3)
    for kw, match in (({"diag": -torch.ones(3)}, "diag"), ({"diag": torch.full((3,), float("nan"))}, "diag"),
                      ({"diag": torch.ones(3), "tril": torch.eye(3)}, "at most one"),
                      ({"tril": torch.eye(4)}, "tril")):
        with pytest.raises(ValueError, match=match):
            km.assign(x, cen, **kw)
        with pytest.raises(ValueError, match=match):
            km.kmeans(x, 2, **kw)


def test_fused_assign_outputs_on_the_inputs_device():
    """Under another default device the outputs still live with x (CPU arrays for the kernel)."""
    x, cen, _ = _problem(30, 4, 17, "none", torch.float32)
    want = km.assign(x, cen)
    with torch.device("meta"):
        labels, best = km.assign(x, cen)
    assert labels.device.type == "cpu" and torch.equal(labels, want[0])
    assert best.device.type == "cpu" and torch.equal(best.nan_to_num(-1.0), want[1].nan_to_num(-1.0))


def test_fused_assign_rejects_mismatched_inputs():
    """Inputs the kernel does not take go to the op, which raises its own clear errors."""
    x = torch.randn(10, 4)
    assert km._fused_nearest(x, torch.randn(3, 4, dtype=torch.float64), None, None) is None
    assert km._fused_nearest(x.half(), torch.randn(3, 4).half(), None, None) is None
    with pytest.raises(ValueError, match="centers"):
        km.assign(x, torch.randn(3, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,d,k", [(0, 3, 4), (1, 1, 1), (500, 7, 9), (70_000, 32, 5)])
def test_cluster_sums_equal_index_add(n, d, k, dtype):
    """Sums and counts against a float64 index_add_ / bincount; empty clusters give 0; 1 and 2
    threads bitwise equal (the last shape is large enough for the kernel to use 2 threads)."""
    g = torch.Generator().manual_seed(n + d)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 10 + 3).to(dtype)
    labels = torch.randint(max(1, k - 2), (n,), generator=g)  # the last clusters stay empty
    want_s = torch.zeros(k, d, dtype=torch.float64).index_add_(0, labels, x.double())
    want_c = torch.bincount(labels, minlength=k).double()
    old = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            buf = torch.full((k * d + k,), float("nan"), dtype=torch.float64)
            km._sums_into(buf, x, labels, k)
            outs.append(buf)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])
    sums, counts = outs[0][: k * d].view(k, d), outs[0][k * d:]
    assert torch.equal(counts, want_c)
    torch.testing.assert_close(sums, want_s, rtol=1e-13, atol=1e-12 * max(1.0, float(want_s.abs().max()) if want_s.numel() else 0.0))
    if k > 2:
        assert float(sums[-1].abs().max()) == 0.0


def test_cluster_sums_reject_a_label_out_of_range():
    x, labels = torch.randn(6, 2), torch.tensor([0, 1, 2, 3, 1, 0])
    with pytest.raises(ValueError, match=r"rbf_cluster_sums: label must be in \[0, 3\), got 3 at row 3"):
        km._sums_into(torch.empty(3 * 2 + 3, dtype=torch.float64), x, labels, 3)


@pytest.mark.parametrize("metric", ["none", "diag", "tril"])
def test_kmeans_same_with_and_without_the_fused_passes(metric, monkeypatch):
    """Lloyd from the same initial centres, and k-means++ from the same generator, on the C++ passes
    and on rbf_r2 + min + index_add_ (the reference backend): the same labels, centres, inertia
    and seeds."""
    x, _, kw = _problem(600, 8, 18, metric, torch.float64, seed=5)
    x = x[6:]
    init = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))[:8]].clone()
    kw = {k: v[0] if v.dim() == (3 if k == "tril" else 2) else v for k, v in kw.items()}  # shared metric
    fused = km.kmeans(x, 8, init=init, max_iter=20, **kw)
    seeds = km.kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(4), **kw)
    monkeypatch.setenv("RBFKERN_BACKEND", "reference")
    assert km._cpp_metric(x, init, kw.get("diag"), kw.get("tril")) is None
    plain = km.kmeans(x, 8, init=init, max_iter=20, **kw)
    assert torch.equal(seeds, km.kmeans_plusplus(x, 8, generator=torch.Generator().manual_seed(4), **kw))
    assert torch.equal(fused.labels, plain.labels) and fused.n_iter == plain.n_iter
    torch.testing.assert_close(fused.centers, plain.centers, rtol=1e-12, atol=1e-12)
    assert math.isclose(fused.inertia, plain.inertia, rel_tol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_fused_passes_other_instruction_sets(isa):
    # The passes share the forward's GEMM tile and vector helpers, compiled once per instruction
    # set with its own vector width and tile shape: the bitwise tests with the ISA capped.
    run_tests_under_isa(isa, __file__, "test_fused_assign_is_r2_min or test_seeding_pass_is_minimum or "
                        "test_a_nan_centre_wins or test_cluster_sums_equal_index_add")
