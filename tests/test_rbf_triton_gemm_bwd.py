"""The Triton GEMM-form backward of the none / diag RBF metrics (rbfkern/gpu/rbf_gemm_bwd.py): every
gradient against autograd through the float64 reference on shapes that are no multiple of a tile,
for each subset of the gradients and of the incoming ones; on data built to cancel, the near pairs
keep the difference form's accuracy (and without them the GEMM form loses it); the listed and the
overflow ways of the near pairs against each other; determinism; non-finite inputs."""
import math

import pytest
import torch
from _util import assert_close_to_ref
from conftest import TRITON_BACKENDS, device_of, fast_subset
from test_rbf_triton_gemm import _cancelling, _inputs

from rbfkern import reference
from rbfkern.gpu import rbf_gemm_bwd
from rbfkern.ops import rbf, rbf_r2

METRICS = ["none", "shared_diag", "diag"]
NAMES = ("x", "centers", "diag", "sigma")


@pytest.fixture
def gemm_bwd(monkeypatch):
    """Force the GEMM-form backward (RBFKERN_RBF_BWD=gemm); its hooks come back to their defaults."""
    monkeypatch.setenv("RBFKERN_RBF_BWD", "gemm")
    for name, value in (("NEAR", "auto"), ("COUNTS", None), ("SLOTS", rbf_gemm_bwd.SLOTS),
                        ("KAPPA", rbf_gemm_bwd.KAPPA)):
        monkeypatch.setattr(rbf_gemm_bwd, name, value)
    return monkeypatch


def _sigma(c, d, dev, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(c, generator=g, dtype=torch.float64) + 0.5) * math.sqrt(max(d, 1)) / 4).to(dev, dtype)


def _grads(ts, kind, needs, seed=2, with_r2=False, r2_only=False):
    """Gradients of sum(act * A [+ r2 * B]) (or of sum(r2 * B)) with respect to the inputs in needs,
    and the same of the float64 reference."""
    x, cen = ts[0], ts[1]
    n, c = x.shape[0], cen.shape[0]
    g = torch.Generator().manual_seed(seed)
    A, B = (torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(2))
    out = []
    for cast in (lambda t: t, lambda t: None if t is None else t.detach().double()):
        leaves = [None if t is None else cast(t).detach().requires_grad_(need) for t, need in zip(ts, needs)]
        xl, cl, wl, sl = leaves
        f = rbf if cast(x).dtype != torch.float64 else None
        if r2_only:
            r2 = rbf_r2(xl, cl, diag=wl) if f else reference.rbf_r2(xl, cl, wl)
            loss = (r2 * B.to(r2.dtype)).sum()
        elif f:
            act, r2 = rbf(xl, cl, diag=wl, sigma=sl, kind=kind, shape=0.6, return_r2=True)
            loss = (act * A.to(act.dtype)).sum() + ((r2 * B.to(r2.dtype)).sum() if with_r2 else 0)
        else:
            r2 = reference.rbf_r2(xl, cl, wl)
            act = reference.rbf_activation(r2, kind, sl, 0.6)
            loss = (act * A).sum() + ((r2 * B).sum() if with_r2 else 0)
        want = [t for t, need in zip(leaves, needs) if need and t is not None]
        out.append(dict(zip([nm for nm, t, need in zip(NAMES, leaves, needs) if need and t is not None],
                            torch.autograd.grad(loss, want, allow_unused=True, materialize_grads=True))))
    return out


_GRID = [(37, 45, 16), (37, 45, 17), (70, 19, 64), (9, 130, 130), (1, 1, 16)]


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,c,d", fast_subset(_GRID, keep=[(37, 45, 17), (9, 130, 130)]))
def test_gemm_backward_matches_reference(backend, gemm_bwd, n, c, d, metric, dtype):
    dev = device_of(backend)
    x, cen, w = _inputs(n, c, d, metric, dtype, dev)
    ts = (x, cen, w, _sigma(c, d, dev, dtype))
    kinds = ("gaussian", "logistic", "linear") if (n, c, d) == (37, 45, 17) else ("gaussian",)
    for kind in kinds:
        got, want = _grads(ts, kind, [True] * 4)
        assert got.keys() == want.keys()
        for name in got:
            assert got[name].dtype == dtype
            assert_close_to_ref(got[name], want[name], dtype, what=f"{kind} {metric} grad {name}", kind="reduction")


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("case", ["x", "centers", "diag", "sigma", "x+sigma", "r2", "act+r2"])
@pytest.mark.parametrize("path", ["gemm", "diff"])
def test_each_subset_of_gradients(backend, gemm_bwd, path, metric, case):
    """One gradient at a time (the others not asked for), the sigma-only case (its own kernel), the
    r2 op (grad_r2 only) and both incoming gradients; in both forms of the backward."""
    gemm_bwd.setenv("RBFKERN_RBF_BWD", path)
    dev = device_of(backend)
    x, cen, w = _inputs(29, 23, 18, metric, torch.float32, dev, seed=6)
    ts = (x, cen, w, _sigma(23, 18, dev, torch.float32))
    wanted = {"r2": "x+centers+diag", "act+r2": "x+centers+diag+sigma"}.get(case, case).split("+")
    needs = [name in wanted and t is not None for name, t in zip(NAMES, ts)]
    if not any(needs):
        pytest.skip("no shared or per-centre metric to differentiate in this metric")
    got, want = _grads(ts, "gaussian", needs, r2_only=case == "r2", with_r2=case == "act+r2")
    assert got.keys() == want.keys() and got
    for name in got:
        assert_close_to_ref(got[name], want[name], torch.float32, what=f"{case} {metric} grad {name}",
                            kind="reduction")


def _worst(got, want):
    return {k: float((got[k].double().cpu() - want[k].cpu()).abs().max() / want[k].abs().max().clamp_min(1e-300))
            for k in got}


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["gaussian", "linear"])
def test_near_pairs_keep_the_difference_form_accuracy(backend, gemm_bwd, metric, kind):
    """Centres far from their mean, rows on and within 1e-1 .. 1e-6 of a centre: each gradient's
    worst error (relative to its largest entry) within 4x the difference-form backward's on the same
    data; the negative control, every pair in the GEMM form, is off by far more on the same data."""
    dev = device_of(backend)
    x, cen, w = _cancelling(41, 23, 17, metric, torch.float32, dev)
    ts = (x, cen, w, torch.full((23,), 1e-3 if kind == "gaussian" else 1.0, device=dev))
    needs = [True, True, w is not None, kind == "gaussian"]
    errs = {}
    for path, near in (("diff", "auto"), ("gemm", "auto"), ("gemm", "none")):
        gemm_bwd.setenv("RBFKERN_RBF_BWD", path)
        gemm_bwd.setattr(rbf_gemm_bwd, "NEAR", near)
        errs[path, near] = _worst(*_grads(ts, kind, needs))
    floor = 2.0 ** -23
    for name, err in errs["gemm", "auto"].items():
        assert err <= 4 * max(errs["diff", "auto"][name], floor), (name, errs)
    lost = [errs["gemm", "none"][name] for name in ("x", "centers")]
    assert min(lost) > 1e3 * floor, errs


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
def test_listed_and_overflow_near_pairs_agree(backend, gemm_bwd, metric):
    """With KAPPA = 1 about half the centres are near a row (more with a per-centre metric). Room in
    the list for every row's near centres, for the median row's (the rest overflow), for one (most
    rows overflow), and every pair near: the gradients agree with each other to float32 rounding
    and with the reference."""
    dev = device_of(backend)
    n, c, d = 53, 40, 17
    x, cen, w = _inputs(n, c, d, metric, torch.float32, dev, seed=8)
    ts = (x, cen, w, _sigma(c, d, dev, torch.float32))
    needs = [True, True, w is not None, True]
    gemm_bwd.setattr(rbf_gemm_bwd, "KAPPA", 1.0)
    counts = []
    gemm_bwd.setattr(rbf_gemm_bwd, "COUNTS", counts)
    gemm_bwd.setattr(rbf_gemm_bwd, "SLOTS", c)
    base, want = _grads(ts, "gaussian", needs)
    cnt = counts[0].cpu()
    mid = int(cnt.median())
    assert bool((cnt > mid).any()) and bool(((cnt > 1) & (cnt <= mid)).any()), cnt  # both ways run at mid
    runs = {(c, "auto"): base}
    for slots, near in ((mid, "auto"), (1, "auto"), (c, "all")):
        gemm_bwd.setattr(rbf_gemm_bwd, "SLOTS", slots)
        gemm_bwd.setattr(rbf_gemm_bwd, "NEAR", near)
        runs[slots, near] = _grads(ts, "gaussian", needs)[0]
    for key, got in runs.items():
        for name in got:
            assert_close_to_ref(got[name], want[name], torch.float32, what=f"{key} grad {name}", kind="reduction")
            torch.testing.assert_close(got[name], base[name], rtol=2e-6, atol=2e-6 * float(base[name].abs().max()))


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
def test_gemm_backward_is_deterministic(backend, gemm_bwd):
    dev = device_of(backend)
    x, cen, w = _cancelling(61, 37, 20, "diag", torch.float32, dev, seed=2)
    ts = (x, cen, w, _sigma(37, 20, dev, torch.float32))
    gemm_bwd.setattr(rbf_gemm_bwd, "SLOTS", 1)
    first, _ = _grads(ts, "logistic", [True] * 4)
    again, _ = _grads(ts, "logistic", [True] * 4)
    for name in first:
        assert torch.equal(first[name], again[name]), name


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["gaussian", "thin_plate"])
def test_non_finite_inputs_give_what_the_difference_form_gives(backend, gemm_bwd, metric, kind):
    """A NaN and an inf in x, a row whose squares overflow float32, a centre at -inf: every pair they
    touch is near, so each gradient has the NaN / inf pattern of the difference-form backward
    (thin_plate keeps G > 0 at r2 = inf, where gaussian's is 0), and close finite values."""
    dev = device_of(backend)
    x, cen, w = _inputs(20, 9, 17, metric, torch.float32, dev, seed=5)
    x[3, 2], x[5, 1], x[7] = float("nan"), float("inf"), 3e19
    cen[4, 0] = -float("inf")
    ts = (x, cen, w, _sigma(9, 17, dev, torch.float32))
    outs = {}
    for path in ("diff", "gemm"):
        gemm_bwd.setenv("RBFKERN_RBF_BWD", path)
        outs[path] = _grads(ts, kind, [True] * 4)[0]
    assert not bool(outs["diff"]["x"].isfinite().all())
    for name, a in outs["diff"].items():
        b = outs["gemm"][name]
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), name
        fin = a.isfinite()
        if bool(fin.any()):
            torch.testing.assert_close(b[fin], a[fin], rtol=1e-5, atol=1e-6 * float(a[fin].abs().max()))
