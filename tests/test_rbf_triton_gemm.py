"""The Triton GEMM-form forward of the none / diag RBF metrics (rbfkern/gpu/rbf_gemm.py): against the
reference on shapes that are no multiple of a tile, its certified bound on data built to cancel
(and that the same data break the bound without the recompute), the recompute paths (flag list,
per-tile marks, list overflow) against each other and the difference form, and the path switch."""
import math
import warnings

import pytest
import torch

from rbfkern import reference
from rbfkern.gpu import rbf_gemm
from rbfkern.gpu.rbf_gemm_bound import diff_form_tau, gemm_bound, mma_chain_factor
from rbfkern.ops import rbf, rbf_r2

from _util import assert_close_to_ref
from conftest import TRITON_BACKENDS, device_of, fast_subset

METRICS = ["none", "shared_diag", "diag"]
KINDS = reference.RBF_KINDS
BF16_OUT = 2.0 ** -7  # the float32 r2 stored as bfloat16, relative (the interpreter truncates)


@pytest.fixture
def gemm(monkeypatch):
    """Force the GEMM form (RBFKERN_RBF_FWD=gemm); the test hooks come back to their defaults."""
    monkeypatch.setenv("RBFKERN_RBF_FWD", "gemm")
    for name, value in (("FLAGS", "bound"), ("LIST_CAP", None), ("DENSE_MIN", None)):
        monkeypatch.setattr(rbf_gemm, name, value)
    return monkeypatch


def _inputs(n, c, d, metric, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cen = torch.randn(c, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    w = {"none": None, "shared_diag": torch.rand(d, generator=g, dtype=torch.float64) + 0.1,
         "diag": torch.rand(c, d, generator=g, dtype=torch.float64) * 1.5 + 0.1}[metric]
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(cen), cast(w)


def _cancelling(n, c, d, metric, dtype, device, seed=0):
    """Centres far from the origin and from their mean; rows on a centre (r2 = 0), within 1e-1 ..
    1e-6 of one (relative to |c - mu|) and far from all: the GEMM form cancels on the near rows."""
    g = torch.Generator().manual_seed(seed)
    cen = 300.0 + 50.0 * torch.randn(c, d, generator=g, dtype=torch.float64)
    pick = torch.randint(0, c, (n,), generator=g)
    scale = 10.0 ** -torch.randint(1, 7, (n, 1), generator=g).double()
    x = cen[pick] + scale * 50.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 4] = 300.0 + 50.0 * torch.randn(n // 4, d, generator=g, dtype=torch.float64)
    x[-3:] = cen[pick[-3:]]
    w = {"none": None, "shared_diag": 0.5 + torch.rand(d, generator=g, dtype=torch.float64),
         "diag": 0.5 + torch.rand(c, d, generator=g, dtype=torch.float64)}[metric]
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(cen), cast(w)


def _exact(x, cen, w):
    return reference.rbf_r2(x.double(), cen.double(), None if w is None else w.double())


def _tau(d, metric, dtype):
    """The promised relative bound of a GEMM-form r2 (the output rounding added for bfloat16)."""
    bk = rbf_gemm.pick_blocks(1, 1, d, metric == "diag")[0]["BK"]
    tau = gemm_bound(d, bk, metric == "diag").tau
    return tau + (BF16_OUT if dtype == torch.bfloat16 else 0.0)


def _worst(r2, exact):
    err = (r2.double().cpu() - exact.cpu()).abs()
    return err, float((err / exact.cpu().clamp_min(1e-300)).max())


_GRID = [(37, 45, 16), (37, 45, 17), (70, 19, 64), (9, 130, 130)]


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,c,d", fast_subset(_GRID, keep=[(37, 45, 17), (9, 130, 130)]))
def test_gemm_forward_matches_reference(backend, gemm, n, c, d, metric, dtype):
    dev = device_of(backend)
    x, cen, w = _inputs(n, c, d, metric, dtype, dev)
    diag = w
    exact = _exact(x, cen, w)
    r2 = rbf_r2(x, cen, diag=diag)
    assert r2.dtype == dtype and r2.shape == (n, c)
    assert_close_to_ref(r2, exact, dtype, what=f"r2 {metric}")
    kinds = KINDS if (n, c, d) == (37, 45, 17) or dev.type == "cuda" else ("gaussian", "thin_plate")
    for i, kind in enumerate(kinds):
        sig = (torch.rand(c, generator=torch.Generator().manual_seed(i), dtype=torch.float64) + 0.5).to(dev, dtype)
        act, r2b = rbf(x, cen, diag=diag, sigma=sig, kind=kind, shape=0.6, return_r2=True)
        assert torch.equal(r2b, r2)
        want = reference.rbf_activation(exact, kind, sig.double(), 0.6)
        assert_close_to_ref(act, want, dtype, what=f"{kind} {metric}")


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d,dense", fast_subset([(16, None), (17, 1), (64, None), (130, None)],
                                                keep=[(17, 1), (64, None)]))
def test_gemm_forward_keeps_its_bound_near_centres(backend, gemm, d, dense, metric, dtype):
    """On data where x^2 - 2xc + c^2 loses every digit in float32, every r2 stays within the
    certificate's tau of the exact r2 of the stored inputs, relative (dense=1: every flagged tile
    goes the per-tile way instead of the list); rows on a centre give exactly 0."""
    gemm.setattr(rbf_gemm, "DENSE_MIN", dense)
    dev = device_of(backend)
    x, cen, w = _cancelling(41, 23, d, metric, dtype, dev)
    exact = _exact(x, cen, w)
    r2 = rbf_r2(x, cen, diag=w)
    err, worst = _worst(r2, exact)
    tau = _tau(d, metric, dtype)
    assert bool((err <= 1.001 * tau * exact.cpu()).all()), f"worst relative error {worst:.3g}, tau {tau:.3g}"
    assert int((exact == 0).sum()) >= 3 and bool((r2.cpu()[exact.cpu() == 0] == 0).all())


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
def test_without_the_recompute_the_bound_breaks(backend, gemm, metric):
    """The data of the test above can fail it: with no pair flagged the GEMM form misses tau."""
    gemm.setattr(rbf_gemm, "FLAGS", "none")
    dev = device_of(backend)
    x, cen, w = _cancelling(41, 23, 17, metric, torch.float32, dev)
    exact = _exact(x, cen, w)
    err, worst = _worst(rbf_r2(x, cen, diag=w), exact)
    assert bool((err > _tau(17, metric, torch.float32) * exact.cpu()).any()), f"worst {worst:.3g}"


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_every_pair_flagged_gives_the_difference_form(backend, gemm, metric, dtype):
    """Every pair recomputed: through the per-tile marks, through the list, and through a list with
    room for one tile's flags only (the other tile marked): the same bits each way, and each within
    the difference form's own bound of the exact r2; act from those r2."""
    gemm.setattr(rbf_gemm, "FLAGS", "all")
    dev = device_of(backend)
    n, c, d = 150, 45, 17  # two row tiles: 128 x 45 and 22 x 45 flags
    x, cen, w = _cancelling(n, c, d, metric, dtype, dev, seed=3)
    sig = (torch.rand(c, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5).to(dev, dtype)
    outs = []
    for dense, cap in ((None, None), (10 ** 9, None), (10 ** 9, 6000)):  # the last: one tile fits
        gemm.setattr(rbf_gemm, "DENSE_MIN", dense)
        gemm.setattr(rbf_gemm, "LIST_CAP", cap)
        outs.append(rbf(x, cen, diag=w, sigma=sig, kind="logistic", shape=0.6, return_r2=True))
    for act, r2 in outs[1:]:
        assert torch.equal(r2, outs[0][1]) and torch.equal(act, outs[0][0])
    exact = _exact(x, cen, w)
    err, worst = _worst(outs[0][1], exact)
    tol = diff_form_tau(d) + (BF16_OUT if dtype == torch.bfloat16 else 0.0)
    assert bool((err <= tol * exact.cpu()).all()), f"worst {worst:.3g}, bound {tol:.3g}"
    want = reference.rbf_activation(outs[0][1].double(), "logistic", sig.double(), 0.6)
    assert_close_to_ref(outs[0][0], want, dtype, what="act of the recomputed r2")


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
def test_gradients_after_the_gemm_forward(backend, gemm):
    """The backward reads the r2 the GEMM forward saved: float32 gradients of every input against
    autograd through the reference in float64."""
    dev = device_of(backend)
    x, cen, w = _inputs(19, 21, 18, "diag", torch.float32, dev, seed=4)
    sig = torch.full((21,), 0.9, device=dev)
    ins = [t.clone().requires_grad_(True) for t in (x, cen, w, sig)]
    ref = [t.detach().double().requires_grad_(True) for t in ins]
    rbf(ins[0], ins[1], diag=ins[2], sigma=ins[3], kind="gaussian").sum().backward()
    reference.rbf(ref[0], ref[1], ref[2], None, ref[3], "gaussian").sum().backward()
    for name, a, b in zip(("x", "centers", "diag", "sigma"), ins, ref):
        assert_close_to_ref(a.grad, b.grad, torch.float32, what=f"grad {name}", kind="reduction")


def test_path_switch(monkeypatch):
    x16, x8, c = torch.zeros(3, 16), torch.zeros(3, 8), torch.zeros(2, 16)
    monkeypatch.setenv("RBFKERN_RBF_FWD", "auto")
    assert rbf_gemm.choose_path(x16, c, None) == "gemm"
    assert rbf_gemm.choose_path(x8, c[:, :8], None) == "diff"  # below MIN_D
    assert rbf_gemm.choose_path(x16.double(), c.double(), None) == "diff"  # float64 keeps the difference form
    assert rbf_gemm.choose_path(x16, c, torch.eye(16)) == "diff"  # tril has its own kernel
    monkeypatch.setenv("RBFKERN_RBF_FWD", "gemm")
    assert rbf_gemm.choose_path(x8, c[:, :8], None) == "gemm"
    monkeypatch.setenv("RBFKERN_RBF_FWD", "diff")
    assert rbf_gemm.choose_path(x16, c, None) == "diff"
    monkeypatch.setenv("RBFKERN_RBF_FWD", "tensorcore")
    with pytest.raises(ValueError, match="RBFKERN_RBF_FWD"):
        rbf_gemm.choose_path(x16, c, None)
    # the backward's own switch, read the same way
    monkeypatch.setenv("RBFKERN_RBF_BWD", "diff")
    assert rbf_gemm.choose_path(x16, c, None, "bwd") == "diff"
    monkeypatch.setenv("RBFKERN_RBF_BWD", "auto")
    assert rbf_gemm.choose_path(x16, c, None, "bwd") == "gemm"
    assert rbf_gemm.choose_path(x16.double(), c.double(), None, "bwd") == "diff"
    monkeypatch.setenv("RBFKERN_RBF_BWD", "fast")
    with pytest.raises(ValueError, match="RBFKERN_RBF_BWD"):
        rbf_gemm.choose_path(x16, c, None, "bwd")


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
def test_forced_gemm_below_min_d(backend, gemm):
    """RBFKERN_RBF_FWD=gemm below MIN_D (one K chunk, mostly padding) still matches the reference."""
    dev = device_of(backend)
    x, cen, w = _inputs(11, 6, 5, "diag", torch.float32, dev, seed=2)
    assert_close_to_ref(rbf_r2(x, cen, diag=w), _exact(x, cen, w), torch.float32, what="r2 D=5")


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
def test_gemm_error_within_the_tensor_core_model(backend, gemm, metric):
    """The probe of the error model itself (rbf_gemm_bound.py): with no pair recomputed, every raw
    GEMM-form r2^ on data far from the origin must be within the model's allowance
    xi X' + zeta C' + 4 u r2 of the exact r2 (X', C' of the shifted operands), whatever its
    cancellation. The worst ratio of the observed error to the model's cross-term part
    g (X' + C') goes to pytest's warnings summary, to calibrate MMA_UNIT on a device."""
    gemm.setattr(rbf_gemm, "FLAGS", "none")
    dev = device_of(backend)
    n, c, d = (1024, 256, 128) if dev.type == "cuda" else (40, 24, 64)
    x, cen, w = _cancelling(n, c, d, metric, torch.float32, dev, seed=7)
    r2 = rbf_r2(x, cen, diag=w).double().cpu()
    x, cen = x.cpu(), cen.cpu()
    wd = torch.ones(d, dtype=torch.float64) if w is None else w.double().cpu()
    mu = torch.mean(cen, 0, dtype=torch.float64).float()
    xs, cs = (x - mu).double(), (cen - mu).double()  # the kernels' float32 shifts, exactly
    X = (xs * xs) @ wd.T if wd.dim() == 2 else ((xs * xs) @ wd)[:, None]
    C = (wd * cs * cs).sum(1) if wd.dim() == 2 else (cs * cs) @ wd
    exact = _exact(x, cen, None if w is None else w.cpu())
    b = gemm_bound(d, rbf_gemm.pick_blocks(n, c, d, metric == "diag")[0]["BK"], metric == "diag")
    allowance = b.xi * X + b.zeta * C[None, :] + 4 * 2.0 ** -24 * exact
    err = (r2 - exact).abs()
    g = mma_chain_factor(d, rbf_gemm.pick_blocks(n, c, d, metric == "diag")[0]["BK"])
    ratio = float((err / (g * (X + C[None, :]))).max())
    warnings.warn(f"rbf GEMM form [{dev.type}, {metric}, D={d}]: worst |r2^ - r2| / (g (X' + C')) = {ratio:.3g} "
                  "(the tensor-core model allows <= 1)")
    assert bool((err <= allowance).all()), f"worst error / model allowance {float((err / allowance).max()):.3g}"


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
def test_non_finite_inputs_give_what_the_difference_form_gives(backend, monkeypatch):
    """NaN / inf inputs and a row whose x'^2 overflows float32 fail the test (r2^ not finite) and are
    recomputed: the same NaN / inf pattern as the difference-form kernel, and close finite values."""
    dev = device_of(backend)
    x, cen, w = _inputs(20, 9, 17, "diag", torch.float32, dev, seed=5)
    x[3, 2], x[5, 1], cen[4, 0], x[7] = float("nan"), float("inf"), float("-inf"), 3e19
    outs = {}
    for path in ("diff", "gemm"):
        monkeypatch.setenv("RBFKERN_RBF_FWD", path)
        outs[path] = rbf(x, cen, diag=w, sigma=0.9, kind="gaussian", return_r2=True)
    for a, b in zip(outs["diff"], outs["gemm"]):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
        fin = a.isfinite()
        assert int((~fin).sum()) > 0 and bool(b[fin].isfinite().all())
        torch.testing.assert_close(b[fin], a[fin], rtol=1e-5, atol=1e-6)
