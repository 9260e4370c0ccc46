"""The Mahalanobis RBF ops: reference vs the paper, every backend vs the reference, gradients, errors."""
import math
import os

import pytest
import torch

import rbfkern
from rbfkern import reference
from rbfkern.ops import rbf, rbf_r2

from _util import HALF, assert_close_to_ref, assert_within_naive_error, run_tests_under_isa
from conftest import BACKENDS, CPU_BACKENDS, CUDA, CUDA_SLOW, DEVICES, TRITON_BACKENDS, device_of, fast_subset

KINDS = reference.RBF_KINDS
METRICS = ["none", "diag", "shared_diag", "tril", "shared_tril"]


def make_inputs(n, c, d, metric, dtype=torch.float64, seed=0, noncontig=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cen = torch.randn(c, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    diag = tril = None
    if metric == "diag":
        diag = torch.rand(c, d, generator=g, dtype=torch.float64) * 1.5 + 0.1
    elif metric == "shared_diag":
        diag = torch.rand(d, generator=g, dtype=torch.float64) * 1.5 + 0.1
    elif metric in ("tril", "shared_tril"):
        lead = (c,) if metric == "tril" else ()
        # Upper-triangle garbage must be ignored by every implementation.
        tril = torch.randn(*lead, d, d, generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)
    if noncontig:
        x = x.T.contiguous().T  # column-major view
        cen = torch.cat([cen, cen], 1)[:, :d]  # row stride 2d
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(cen), cast(diag), cast(tril)


def sigma_for(c, per_centre, dtype, seed=1, device="cpu"):
    if not per_centre:
        return 0.8
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)


def f64(t):
    return t if t is None or not isinstance(t, torch.Tensor) else t.to(torch.float64)


# ---------------------------------------------------------------------------------------------
# The reference against the paper's equations, on cases worked out by hand
# ---------------------------------------------------------------------------------------------


def test_reference_r2_hand_cases():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # Euclidean: 1 + 4 = 5 and 0 + 1 = 1.
    assert reference.rbf_r2(x, c).tolist() == [[5.0, 1.0]]
    # Per-centre diagonal R_j (eq. 1): 1*1 + 2*4 = 9 and 3*0 + 0.5*1 = 0.5.
    w = torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64)
    assert reference.rbf_r2(x, c, diag=w).tolist() == [[9.0, 0.5]]
    # Shared factor L = [[2, 0], [1, 1]] (the 7 above the diagonal is ignored): (x - c) L.
    # centre 0: [1, 2] L = [2 + 2, 2] -> 16 + 4 = 20; centre 1: [0, 1] L = [1, 1] -> 2.
    L = torch.tensor([[2.0, 7.0], [1.0, 1.0]], dtype=torch.float64)
    assert reference.rbf_r2(x, c, tril=L).tolist() == [[20.0, 2.0]]
    # R = L L^T: (x-c)^T R (x-c) for centre 0 = [1,2] [[4,2],[2,2]] [1,2]^T = 4 + 8 + 8 = 20.
    Lp = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]], dtype=torch.float64)
    assert reference.rbf_r2(x, c, tril=Lp).tolist() == [[20.0, 9.0]]


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("linear", lambda r2, s, a: math.sqrt(r2)),
        ("gaussian", lambda r2, s, a: math.exp(-r2 / (2 * s * s))),
        ("thin_plate", lambda r2, s, a: r2 * math.log(math.sqrt(r2))),
        ("logistic", lambda r2, s, a: 1 / (1 + math.exp((r2 - a * a) / (s * s)))),
        ("inverse_multiquadric", lambda r2, s, a: 1 / (r2 + s * s) ** a),
        ("multiquadric", lambda r2, s, a: (r2 + s * s) ** a),
        ("inverse_quadratic", lambda r2, s, a: 1 / (1 + r2 / (s * s))),
        ("quadratic", lambda r2, s, a: 1 - r2 / (s * s)),
    ],
)
def test_reference_activation_equations(kind, expected):
    r2 = torch.tensor([0.25, 1.0, 2.5, 9.0], dtype=torch.float64)
    s, a = 1.3, 0.7
    got = reference.rbf_activation(r2, kind, s, a)
    want = torch.tensor([expected(float(v), s, a) for v in r2], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


def test_reference_singular_points_are_zero():
    r2 = torch.zeros(3, dtype=torch.float64)
    assert reference.rbf_activation(r2, "linear").tolist() == [0.0, 0.0, 0.0]
    assert reference.rbf_activation(r2, "thin_plate").tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Every backend against the reference
# ---------------------------------------------------------------------------------------------


def _check_forward(n, c, d, metric, dtype, noncontig, kinds=KINDS, sigma_forms=(False, True), device="cpu"):
    x, cen, diag, tril = make_inputs(n, c, d, metric, dtype, noncontig=noncontig, device=device)
    r2_ref = reference.rbf_r2(f64(x), f64(cen), f64(diag), f64(tril))
    r2 = rbf_r2(x, cen, diag=diag, tril=tril)
    assert r2.shape == (n, c) and r2.dtype == dtype
    assert_close_to_ref(r2, r2_ref, dtype, what=f"r2 {metric}")
    for i, kind in enumerate(kinds):
        for per_centre in sigma_forms if len(sigma_forms) < 2 or len(kinds) > 2 else (i % 2 == 1,):
            s = sigma_for(c, per_centre, dtype, device=device)
            act, r2b = rbf(x, cen, diag=diag, tril=tril, sigma=s, kind=kind, shape=0.6, return_r2=True)
            want = reference.rbf_activation(r2_ref, kind, f64(s), 0.6)
            assert_close_to_ref(act, want, dtype, what=f"{kind} {metric} per_centre={per_centre}")
            assert torch.equal(r2b, r2)


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [1, 3, 33, 130])
@pytest.mark.parametrize("n,c", fast_subset([(1, 1), (7, 5), (300, 64), (1, 64), (300, 1)],
                                             keep=[(1, 1), (7, 5), (1, 64), (300, 1)]))
def test_cpp_matches_reference(backend, n, c, d, metric, dtype):
    _check_forward(n, c, d, metric, dtype, noncontig=(n * c) % 2 == 1)


# (300, 64, 33) per metric too, but not for the tril kernels: one program per (row block, centre)
# takes minutes in the interpreter at that size.
_TRITON_GRID = [(n, c, d, m) for n, c, d in [(1, 1, 1), (7, 5, 3), (33, 17, 33), (5, 3, 130), (300, 64, 33)]
                for m in METRICS if n < 300 or "tril" not in m]


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,c,d,metric", fast_subset(_TRITON_GRID, keep=[g for g in _TRITON_GRID if g[0] * g[1] < 50]))
def test_triton_matches_reference(backend, n, c, d, metric, dtype):
    # The interpreter is slow: every kind on the small shapes, two kinds (and both sigma forms)
    # on the large ones; the kinds' epilogues are shape-independent. A GPU runs every kind.
    dev = device_of(backend)
    kinds = KINDS if n * c * d < 200 or dev.type == "cuda" else ("gaussian", "logistic")
    _check_forward(n, c, d, metric, dtype, noncontig=n == 7, kinds=kinds, device=dev)


# On a GPU, also the shapes the interpreter cannot afford: tril at (300, 64, 33), several tiles in
# every direction, and N or C not a multiple of any tile.
_CUDA_GRID = [(n, c, d, m) for n, c, d in [(300, 64, 33), (1000, 129, 70), (4099, 37, 16)] for m in METRICS]


@pytest.mark.parametrize("device", [CUDA_SLOW], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,c,d,metric", _CUDA_GRID)
def test_cuda_large_shapes_match_reference(device, n, c, d, metric, dtype):
    if device.type != "cuda":
        pytest.skip("GPU-sized shapes: too slow for the interpreter's rehearsal")
    _check_forward(n, c, d, metric, dtype, noncontig=False, kinds=("gaussian", "thin_plate"), device=device)


@pytest.mark.parametrize("backend", CPU_BACKENDS, indirect=True)
def test_half_inputs_return_input_dtype(backend):
    x, cen, diag, _ = make_inputs(9, 4, 6, "diag", torch.float32)
    for dtype in (torch.bfloat16,) if backend == "cpp" else ():
        act = rbf(x.to(dtype), cen.to(dtype), diag=diag.to(dtype), kind="gaussian")
        assert act.dtype == dtype
        want = reference.rbf(f64(x.to(dtype)), f64(cen.to(dtype)), f64(diag.to(dtype)), kind="gaussian")
        assert_close_to_ref(act, want, dtype, what="bf16")


def _rbf_call(x, cen, metric_t, metric, sig, kind):
    diag = metric_t if "diag" in metric else None
    tril = metric_t if "tril" in metric else None
    return rbf(x, cen, diag=diag, tril=tril, sigma=sig, kind=kind, shape=0.6, return_r2=True)


def _ref_call(x, cen, metric_t, metric, sig, kind):
    diag = metric_t if "diag" in metric else None
    tril = metric_t if "tril" in metric else None
    r2 = reference.rbf_r2(x, cen, diag, tril)
    return reference.rbf_activation(r2, kind, sig, 0.6), r2


@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["gaussian", pytest.param("inverse_multiquadric", marks=pytest.mark.slow),
                                  pytest.param("thin_plate", marks=pytest.mark.slow)])
def test_half_types_within_naive_error(backend, metric, kind, dtype):
    """float16 / bfloat16 on the GPU: outputs and gradients within 2x the error of the reference
    computed in the half dtype, against the reference in float32 (the flash-attention rule)."""
    dev = device_of(backend)
    n, c, d = (70, 19, 24) if dev.type == "cuda" else (9, 5, 6)
    x, cen, diag, tril = make_inputs(n, c, d, metric, dtype, seed=5, device=dev)
    metric_t = diag if diag is not None else tril
    sig = sigma_for(c, True, dtype, device=dev)
    w = torch.randn(n, c, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dev)
    ins = [t for t in (x, cen, metric_t, sig) if t is not None]

    def run(fn, cast):
        leaves = [t.detach().to(cast).requires_grad_(True) for t in ins]
        xs, cs = leaves[:2]
        mt = leaves[2] if metric_t is not None else None
        act, r2 = fn(xs, cs, mt, metric, leaves[-1], kind)
        (act * w.to(cast)).sum().backward()
        return [act.detach(), r2.detach()] + [t.grad for t in leaves]

    got, want, naive = run(_rbf_call, dtype), run(_ref_call, torch.float32), run(_ref_call, dtype)
    assert got[0].dtype == dtype
    names = ["act", "r2", "x", "centers"] + (["metric"] if metric_t is not None else []) + ["sigma"]
    for name, g, r, nv in zip(names, got, want, naive):
        if r is None:  # sigma of a kind that does not use it
            assert g is None or not bool(g.any()), f"{kind}: non-zero gradient of an unused {name}"
            continue
        assert_within_naive_error(g, r, nv, what=f"{kind} {metric} {dtype} {name}")


def _near_centre(device):
    # |c| ~ 1e3 and x - c ~ 1e-2: the expanded x^2 - 2xc + c^2 form loses every digit in float32.
    d = 16
    c = torch.full((1, d), 1000.0) + torch.arange(d, dtype=torch.float32)
    x = c + 1e-2
    exact = float(((x.double() - c.double()) ** 2).sum())
    return x.to(device), c.to(device), exact


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_no_cancellation_near_a_centre(backend):
    x, c, exact = _near_centre(device_of(backend))
    r2 = rbf_r2(x, c)
    assert abs(float(r2) - exact) <= 1e-5 * exact
    expanded = reference.rbf_r2_expanded(x, c)
    assert abs(float(expanded) - exact) > 1e-2 * exact  # the test can tell the two forms apart


def _cancelling_inputs(n, c, d, metric, dtype, seed=0):
    """Centres far from the origin and from each other; rows on, near (1e-1 .. 1e-6 of |c|) and
    far from them: where x^2 - 2xc + c^2 cancels, and where it does not."""
    g = torch.Generator().manual_seed(seed)
    cen = 300.0 + 50.0 * torch.randn(c, d, generator=g, dtype=torch.float64)
    pick = torch.randint(0, c, (n,), generator=g)
    scale = 10.0 ** -torch.randint(1, 7, (n, 1), generator=g).double()
    x = cen[pick] + scale * cen.norm(dim=1).mean() / math.sqrt(d) * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 4] = 300.0 + 50.0 * torch.randn(n // 4, d, generator=g, dtype=torch.float64)
    x[-3:] = cen[pick[-3:]]  # on a centre: r2 = 0 exactly
    diag = None
    if metric == "diag":
        diag = 0.5 + torch.rand(c, d, generator=g, dtype=torch.float64)
    elif metric == "shared_diag":
        diag = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    return x.to(dtype), cen.to(dtype), None if diag is None else diag.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", ["none", "shared_diag", "diag"])
@pytest.mark.parametrize("d", [15, 16, 64, 130])
def test_cpp_r2_keeps_the_difference_form_bound(metric, d, dtype, monkeypatch):
    """From D = 16 the C++ forward of the none / diag metrics takes the GEMM form with a certified
    bound and recomputes the pairs that fail it in the difference form (csrc/cpu/rbf_fwd_gemm.h):
    every r2 must stay within max(128, 2 (D + 3)) u of the exact r2 of the stored inputs, relative,
    on data where the plain GEMM form loses every digit; rows and centres not multiples of any tile."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    x, cen, diag = _cancelling_inputs(37, 45, d, metric, dtype)
    exact = reference.rbf_r2(f64(x), f64(cen), f64(diag), None)
    r2 = rbf_r2(x, cen, diag=diag)
    tol = 1.05 * max(128, 2 * (d + 3)) * torch.finfo(dtype).eps / 2
    err = (r2.double() - exact).abs()
    assert bool((err <= tol * exact).all()), f"worst relative error {float((err / exact.clamp_min(1e-300)).max()):.3g}, bound {tol:.3g}"
    assert int((exact == 0).sum()) >= 3  # the rows on a centre were checked to be exactly 0
    if dtype == torch.float32:  # the data can tell the forms apart
        expanded = reference.rbf_r2_expanded(x, cen, diag)
        assert bool(((expanded.double() - exact).abs() > tol * exact).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", ["none", "shared_diag", "diag"])
def test_cpp_gemm_forward_every_panel_split(metric, dtype, monkeypatch):
    """The GEMM form splits the centres into panels of two vectors and, where the last panel would
    hold at most one vector of centres, a last panel of one vector with a taller tile: every C from
    1 to 65 (past two panels of 32 lanes, the widest) against the exact r2 within the bound, and
    the nearest centre (k-means' pass over the same tiles) against r2's argmin; 29 rows, more
    than one tile of either height."""
    from rbfkern import kmeans

    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    d = 20
    tol = 1.05 * max(128, 2 * (d + 3)) * torch.finfo(dtype).eps / 2
    for c in range(1, 66):
        x, cen, diag = _cancelling_inputs(29, c, d, metric, dtype, seed=c)
        exact = reference.rbf_r2(f64(x), f64(cen), f64(diag), None)
        r2 = rbf_r2(x, cen, diag=diag)
        err = (r2.double() - exact).abs()
        assert bool((err <= tol * exact).all()), f"C={c}: worst relative error {float((err / exact.clamp_min(1e-300)).max()):.3g}"
        label, dist = kmeans.assign(x, cen, diag=diag)
        assert torch.equal(dist, r2.min(1).values) and torch.equal(label, r2.min(1).indices), f"C={c}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("metric", ["none", "shared_diag", "diag"])
def test_cpp_gemm_forward_of_non_finite_inputs(metric, dtype, monkeypatch):
    """NaN / inf rows and centres, and a row whose x'^2 overflows, fail the GEMM form's test and are
    recomputed in the difference form: the reference's NaN / inf pattern and its finite values, in
    a panel with padding centres (C = 45) and a D with a partial vector (D = 21)."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    x, cen, diag = _cancelling_inputs(29, 45, 21, metric, dtype, seed=3)
    big = 1e200 if dtype == torch.float64 else 3e19
    x[3, 2], x[5, 1], x[7], cen[4, 0], cen[44, 20] = float("nan"), float("inf"), big, float("-inf"), float("nan")
    r2 = rbf_r2(x, cen, diag=diag)
    want = reference.rbf_r2(x, cen, diag, None)
    assert torch.equal(r2.isnan(), want.isnan()) and torch.equal(r2.isinf(), want.isinf())
    fin = want.isfinite()
    assert int((~fin).sum()) >= 29 + 45 and int(fin.sum()) > 0
    tol = 1.05 * max(128, 2 * (21 + 3)) * torch.finfo(dtype).eps / 2
    exact = reference.rbf_r2(f64(x), f64(cen), f64(diag), None)[fin]
    assert bool(((r2[fin].double() - exact).abs() <= tol * exact).all())


@pytest.mark.tf32
@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("metric", ["none", "diag", "tril"])
def test_near_centre_exact_with_tf32_enabled(backend, metric):
    """The RBF kernels' tl.dot (tril) run in IEEE float32 whatever PyTorch's TF32 switches say, and
    the torch products in the backward run in float64: float32 distances stay exact near a centre
    and gradients stay at float32 accuracy with TF32 switched on everywhere."""
    dev = device_of(backend)
    x, c, exact = _near_centre(dev)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        d = x.shape[1]
        diag = torch.full((d,), 0.5, device=dev) if metric == "diag" else None
        tril = torch.eye(d, device=dev) * 0.7 if metric == "tril" else None
        r2 = rbf_r2(x, c, diag=diag, tril=tril)
        factor = 1.0 if metric == "none" else (0.5 if metric == "diag" else 0.49)
        assert abs(float(r2) - factor * exact) <= 1e-5 * factor * exact
        _check_forward(40, 23, 33, "tril", torch.float32, noncontig=False, kinds=("gaussian",), device=dev)
        ins = [t.detach().requires_grad_(True) for t in make_inputs(40, 23, 33, "tril", torch.float32, seed=4, device=dev)[:2]]
        L = make_inputs(40, 23, 33, "tril", torch.float32, seed=4, device=dev)[3].requires_grad_(True)
        rbf(*ins, tril=L).sum().backward()
        refs = [t.detach().double().requires_grad_(True) for t in (*ins, L)]
        reference.rbf(*refs[:2], tril=refs[2]).sum().backward()
        for name, a, b in zip(("x", "centers", "tril"), (*ins, L), refs):
            assert_close_to_ref(a.grad, b.grad, torch.float32, what=f"TF32 on: grad {name}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def _grad_inputs(n, c, d, metric, seed=3, device="cpu"):
    x, cen, diag, tril = make_inputs(n, c, d, metric, torch.float64, seed=seed, device=device)
    sig = sigma_for(c, True, torch.float64, device=device)
    return [t.clone().requires_grad_(True) if t is not None else None for t in (x, cen, diag, tril, sig)]


def _gradcheck(n, c, d, metric, kind, device="cpu"):
    x, cen, diag, tril, sig = _grad_inputs(n, c, d, metric, device=device)
    leaves = [t for t in (x, cen, diag, tril, sig) if t is not None]

    def fn(*args):
        it = iter(args)
        xs, cs = next(it), next(it)
        dg = next(it) if diag is not None else None
        tl = next(it) if tril is not None else None
        ss = next(it)
        act, r2 = rbf(xs, cs, diag=dg, tril=tl, sigma=ss, kind=kind, shape=0.6, return_r2=True)
        return act, r2 * 0.5

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("metric,kind", fast_subset([(m, k) for m in METRICS for k in KINDS],
                                                   keep=[("diag", k) for k in KINDS] + [(m, "gaussian") for m in METRICS]))
def test_gradcheck_cpp(backend, metric, kind):
    _gradcheck(4, 3, 5, metric, kind)


# Interpreter time: every kind on the none/diag kernels, three kinds (the singular, the common and
# the sigma-heavy epilogue) on the others; the epilogue code is shared by all metric kernels.
_TRITON_GRAD = [(m, k) for m in ("none", "diag") for k in KINDS] + [
    (m, k) for m in ("shared_diag", "tril", "shared_tril") for k in ("linear", "gaussian", "logistic")
]


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("metric,kind", fast_subset(_TRITON_GRAD, keep=[("none", "thin_plate"), ("diag", "gaussian"),
                                                                    ("shared_diag", "logistic"), ("shared_tril", "linear")]))
def test_gradcheck_triton(backend, metric, kind):
    dev = device_of(backend)
    # on a GPU also several tiles in every direction (N, C, D not multiples of a tile)
    for n, c, d in [(2, 3, 3)] + ([(37, 19, 21)] if dev.type == "cuda" else []):
        _gradcheck(n, c, d, metric, kind, device=dev)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", ["none", "diag", "tril"])
def test_gradcheck_r2(backend, metric):
    x, cen, diag, tril, _ = _grad_inputs(3, 2, 4, metric, device=device_of(backend))
    leaves = [t for t in (x, cen, diag, tril) if t is not None]

    def fn(*args):
        it = iter(args)
        xs, cs = next(it), next(it)
        return rbf_r2(xs, cs, diag=next(it) if diag is not None else None, tril=next(it) if tril is not None else None)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
def test_gradients_match_reference_float32(backend, metric):
    """Larger float32 case, gradients against autograd through the reference in float64."""
    dev = device_of(backend)
    n, c, d = (65, 33, 20) if backend == "cpp" else (1031, 257, 40) if dev.type == "cuda" else (9, 6, 5)
    x, cen, diag, tril = make_inputs(n, c, d, metric, torch.float32, seed=7, device=dev)
    sig = sigma_for(c, True, torch.float32, device=dev)
    for kind in ("gaussian", "logistic", "multiquadric"):
        ins = [t.clone().requires_grad_(True) if t is not None else None for t in (x, cen, diag, tril, sig)]
        ref = [f64(t).detach().requires_grad_(True) if t is not None else None for t in ins]
        g = torch.Generator().manual_seed(11)
        w = torch.randn(n, c, generator=g).to(dev)
        act, r2 = rbf(*ins[:2], diag=ins[2], tril=ins[3], sigma=ins[4], kind=kind, shape=0.6, return_r2=True)
        ((act * w).sum() + (r2 * w).sum() * 0.1).backward()
        act_r, r2_r = reference.rbf_activation(reference.rbf_r2(*ref[:4]), kind, ref[4], 0.6), reference.rbf_r2(*ref[:4])
        ((act_r * w.double()).sum() + (r2_r * w.double()).sum() * 0.1).backward()
        for name, a, b in zip(("x", "centers", "diag", "tril", "sigma"), ins, ref):
            if a is not None:
                assert_close_to_ref(a.grad, b.grad, torch.float32, what=f"{kind} {metric} d{name}", kind="reduction")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("metric", METRICS)
def test_sigma_gradient_alone(backend, metric):
    """Only sigma asks for a gradient, at C and D past one block of any kernel: the per-centre
    reduction then runs one feature block, and must still cover every centre (it once read its
    block ids with the full feature-block count and left most centre blocks unwritten)."""
    dev = device_of(backend)
    x, cen, diag, tril = make_inputs(9, 37, 40, metric, torch.float32, seed=2, device=dev)
    sig = sigma_for(37, True, torch.float32, device=dev).requires_grad_(True)
    ref = f64(sig).detach().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(9, 37, generator=g)
    (rbf(x, cen, diag=diag, tril=tril, sigma=sig, kind="gaussian") * w.to(dev)).sum().backward()
    (reference.rbf(*(f64(t) if t is not None else None for t in (x, cen, diag, tril)), ref, "gaussian")
     * w.double()).sum().backward()
    assert_close_to_ref(sig.grad, ref.grad, torch.float32, what=f"{metric} dsigma alone", kind="reduction")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", KINDS)
def test_x_on_a_centre_gives_finite_gradients(backend, kind):
    dev = device_of(backend)
    x, cen, diag, _ = make_inputs(3, 4, 5, "diag", torch.float64, device=dev)
    x = torch.cat([x, cen[:2]]).requires_grad_(True)  # rows 3 and 4 sit exactly on centres 0 and 1
    cen = cen.clone().requires_grad_(True)
    diag = diag.clone().requires_grad_(True)
    sig = torch.tensor(0.9, dtype=torch.float64, device=dev, requires_grad=True)
    act = rbf(x, cen, diag=diag, sigma=sig, kind=kind, shape=0.6)
    assert torch.isfinite(act).all()
    act.sum().backward()
    for t in (x, cen, diag, sig):
        assert torch.isfinite(t.grad).all(), kind
    # On the centre, the derivative of that centre's activation in x is 0 for every kind
    # (r2 is quadratic there; linear and thin_plate take the zero subgradient).
    (gx,) = torch.autograd.grad(rbf(x, cen, diag=diag, sigma=sig, kind=kind, shape=0.6)[3, 0], [x])
    assert torch.equal(gx[3], torch.zeros_like(gx[3]))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_empty_batch(backend):
    x, cen, diag, _ = make_inputs(0, 5, 3, "diag", torch.float32, device=device_of(backend))
    x.requires_grad_(True)
    cen.requires_grad_(True)
    act = rbf(x, cen, diag=diag)
    assert act.shape == (0, 5)
    act.sum().backward()
    assert x.grad.shape == (0, 3) and torch.equal(cen.grad, torch.zeros_like(cen))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_inputs_not_modified(backend):
    x, cen, diag, tril = make_inputs(6, 4, 5, "tril", torch.float32, device=device_of(backend))
    copies = [t.clone() for t in (x, cen, tril)]
    rbf(x, cen, tril=tril, kind="logistic")
    for a, b in zip((x, cen, tril), copies):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("metric", ["none", "diag", "shared_diag", "tril", "shared_tril"])
def test_opcheck(metric, device, monkeypatch):
    if device.type == "cpu" and "RBFKERN_BACKEND" not in os.environ:
        monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    x, cen, diag, tril = make_inputs(5, 3, 4, metric, torch.float64, device=device)
    sig = sigma_for(3, True, torch.float64, device=device)
    for rg in (False, True):
        args = [t.clone().requires_grad_(rg) if t is not None else None for t in (x, cen, diag, tril, sig)]
        torch.library.opcheck(torch.ops.rbfkern.rbf_r2.default, tuple(args[:4]))
        torch.library.opcheck(torch.ops.rbfkern.rbf.default, (*args, "gaussian", 0.5))
    r2 = reference.rbf_r2(x, cen, diag, tril)
    torch.library.opcheck(
        torch.ops.rbfkern.rbf_bwd.default,
        (torch.ones_like(r2), None, x, cen, diag, tril, sig, r2, "gaussian", 0.5, [True, True, diag is not None, tril is not None, True]),
    )


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("metric", ["diag", "shared_diag", "tril", "shared_tril"])
def test_opcheck_noncontiguous_inputs(metric, device, monkeypatch):
    """Each gradient in the layout of its input's empty_like, what the backward's fake returns: a
    column-major x, sliced centres, a transposed metric, an expanded sigma (torch.compile checks
    the real strides against the fake's)."""
    if device.type == "cpu" and "RBFKERN_BACKEND" not in os.environ:
        monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    x, cen, diag, tril = make_inputs(5, 3, 4, metric, torch.float64, noncontig=True, device=device)
    t_major = lambda t: None if t is None else t.transpose(-1, -2).contiguous().transpose(-1, -2)
    diag, tril = (t_major(diag) if diag is not None and diag.dim() == 2 else diag), t_major(tril)
    sig = torch.full((1,), 0.9, dtype=torch.float64, device=device).expand(3)
    torch.library.opcheck(torch.ops.rbfkern.rbf.default, (x, cen, diag, tril, sig, "gaussian", 0.5))
    r2 = reference.rbf_r2(x, cen, diag, tril)
    needs = [True, True, diag is not None, tril is not None, True]
    torch.library.opcheck(torch.ops.rbfkern.rbf_bwd.default,
                          (torch.ones_like(r2), r2, x, cen, diag, tril, sig, r2, "gaussian", 0.5, needs))


# ---------------------------------------------------------------------------------------------
# Configuration (bad arguments: tests/test_bad_input.py, the one table)
# ---------------------------------------------------------------------------------------------


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="RBFKERN_BACKEND"):
        rbf(torch.randn(4, 3), torch.randn(5, 3))


def test_package_exports():
    assert rbfkern.ops.rbf is rbf
    assert set(KINDS) == {
        "linear", "gaussian", "thin_plate", "logistic", "inverse_multiquadric", "multiquadric",
        "inverse_quadratic", "quadratic",
    }


@pytest.mark.parametrize("metric", ["none", "shared_diag", "diag", "tril", "shared_tril"])
def test_cpp_bitwise_same_for_1_and_2_threads(metric, monkeypatch):
    """The C++ kernels use fixed blocking and fixed-order partial sums: the thread count must not change any bit."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    n, c, d = 300, 9, 20  # several row chunks in the tril backward
    x, cen, diag, tril = make_inputs(n, c, d, metric, torch.float32, seed=3)
    sig = sigma_for(c, True, torch.float32)
    w = torch.randn(n, c, generator=torch.Generator().manual_seed(5))
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            ins = [t.clone().requires_grad_(True) if t is not None else None for t in (x, cen, diag, tril, sig)]
            act = rbf(*ins[:2], diag=ins[2], tril=ins[3], sigma=ins[4], kind="gaussian")
            (act * w).sum().backward()
            outs.append([act.detach()] + [t.grad for t in ins if t is not None])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b), metric


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_cpp_other_instruction_sets(isa):
    # Each instruction set compiles the kernels with its own vector width (one register: 16, 8 or
    # 4 floats), tile shapes and partial loads and stores (AVX-512's masked instructions, elsewhere
    # a copy through the stack): run the C++ reference tests with the ISA capped.
    run_tests_under_isa(isa, __file__, "(test_cpp_matches_reference or test_gradcheck_cpp or test_cpp_r2_keeps or "
                        "test_cpp_gemm_forward or test_x_on_a_centre) and cpp and not cuda")


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("used", ["act", "r2", "both"])
def test_an_unused_output_reaches_backward_as_none(fast_path, used, monkeypatch):
    # autograd would otherwise hand the backward an (N, C) zeros tensor for the output the loss
    # does not use, and the kernel would read it; the gradients are the same either way
    import importlib

    rbf_module = importlib.import_module("rbfkern.ops.rbf")
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    seen = []
    real = rbf_module._Cpp.backward

    def spy(grad_act, grad_r2, *rest):
        seen.append((grad_act is None, grad_r2 is None))
        return real(grad_act, grad_r2, *rest)

    monkeypatch.setattr(rbf_module._Cpp, "backward", staticmethod(spy))
    x, cen, diag, _ = make_inputs(7, 5, 3, "diag")
    sig = sigma_for(5, True, torch.float64)
    for t in (x, cen, diag, sig):
        t.requires_grad_()
    with rbfkern.set_eager_fast_path(fast_path):
        act, r2 = rbf(x, cen, diag=diag, sigma=sig, return_r2=True)
        loss = {"act": act.sum(), "r2": r2.sum(), "both": act.sum() + r2.sum()}[used]
        got = torch.autograd.grad(loss, (x, cen, diag, sig), allow_unused=True)
    assert seen == [(used == "r2", used == "act")]
    ra = reference.rbf_activation(reference.rbf_r2(x, cen, diag, None), "gaussian", sig, 0.5)
    rr = reference.rbf_r2(x, cen, diag, None)
    want_loss = {"act": ra.sum(), "r2": rr.sum(), "both": ra.sum() + rr.sum()}[used]
    want = torch.autograd.grad(want_loss, (x, cen, diag, sig), allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [3, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_activation_alone_equals_the_ops_activation(metric, d, dtype, monkeypatch):
    """Outside autograd, ``rbf`` without ``return_r2`` computes no r2 (the C++ forward writes r2 into
    the activation's buffer and applies the activation in place): the same bits as the op's act, on
    the difference and GEMM forms, with rows on centres (recomputed pairs) and non-finite rows."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    n, c = 70, 21
    x, cen, diag, tril = make_inputs(n, c, d, metric, dtype, seed=4)
    x = x.clone()
    x[::5] = cen[torch.arange(0, n, 5) % c]
    x[3, 0] = float("nan")
    x[8, 1] = float("inf")
    for i, kind in enumerate(KINDS):
        s = sigma_for(c, i % 2 == 1, dtype)
        alone = rbf(x, cen, diag=diag, tril=tril, sigma=s, kind=kind, shape=0.6)
        with_r2 = rbf(x, cen, diag=diag, tril=tril, sigma=s, kind=kind, shape=0.6, return_r2=True)[0]
        assert alone.shape == (n, c) and alone.dtype == dtype
        assert torch.equal(alone.isnan(), with_r2.isnan()), kind
        assert torch.equal(alone.nan_to_num(), with_r2.nan_to_num()), kind
        rows = x.isfinite().all(1)  # the reference's own rule for non-finite rows is another test's
        want = reference.rbf_activation(reference.rbf_r2(f64(x[rows]), f64(cen), f64(diag), f64(tril)), kind,
                                        f64(s), 0.6)
        assert_close_to_ref(alone[rows], want, dtype, what=f"{kind} {metric}")


def test_activation_alone_only_outside_autograd(monkeypatch):
    """With an input that requires grad the op runs (its act has a grad_fn and a backward); under
    no_grad the activation alone."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    x, cen, diag, _ = make_inputs(30, 7, 20, "diag", torch.float32)
    x.requires_grad_(True)
    act = rbf(x, cen, diag=diag, sigma=0.7)
    assert act.grad_fn is not None
    act.sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()
    with torch.no_grad():
        alone = rbf(x, cen, diag=diag, sigma=0.7)
    assert alone.grad_fn is None and torch.equal(alone, act.detach())
