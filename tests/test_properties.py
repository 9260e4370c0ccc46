"""Issue 8, property tests: generated shapes (0 and 1 sizes where legal, odd sizes, sizes just over
the tile and vector widths), strides (transposed, sliced, expanded inputs), dtypes and parameters
for every public op. For each, the backend under test (``cpp``; ``triton`` through the interpreter
on tiny shapes) equals the ``reference`` backend (the same public call on float64 copies, which
runs rbfkern.reference) forward and backward; outputs are finite where the reference's are; the
input tensors are never modified. The B-cos and Gaussian-derivative properties also run on CUDA
(backend "cuda": the Triton kernels compiled, the reference on the same device); in the CPU
rehearsal (RBFKERN_CUDA_ON_CPU=1) those take the interpreter's tiny sizes, on a GPU the cpp ones.

Example counts are bounded and derandomised (the same examples on every run), so CI is reproducible.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _util import assert_close_to_ref
from conftest import CPU_BACKENDS, CUDA, CUDA_ON_CPU, device_of
from rbfkern import ops, reference
from rbfkern._environ import environ

# Examples per parametrised case (the discrete axes -- activation, B, derivative order -- are
# pytest parameters so each is covered; hypothesis varies everything else).
CPP_EXAMPLES = 6
TRITON_EXAMPLES = 2

# Sizes around the kernels' tile and vector widths (8/16/32/64) and degenerate ones.
EDGE = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65]
DIMS = [1, 2, 3, 15, 16, 17, 31, 33]
TINY = [0, 1, 2, 3, 5, 9]  # for the interpreter: every program runs in Python


def _tiny(backend):
    """Whether ``backend`` runs the interpreted Triton kernels (tiny sizes, few examples)."""
    return backend == "triton" or (backend == "cuda" and CUDA_ON_CPU)


def _settings(backend, scale=1):
    n = TRITON_EXAMPLES if _tiny(backend) else CPP_EXAMPLES
    return settings(max_examples=n * scale, deadline=None,
                    derandomize=True, suppress_health_check=list(HealthCheck), database=None)


BACKENDS = [pytest.param(b, marks=pytest.mark.triton) if b == "triton" else b for b in CPU_BACKENDS]
# The B-cos and Gaussian-derivative properties also on CUDA.
BACKENDS_CUDA = BACKENDS + [CUDA]


def _env(**kv):
    """Set environment variables for one example (hypothesis re-enters the test body, so no monkeypatch)."""
    return environ(kv)


# ---------------------------------------------------------------------------------------------
# Layouts: a view of a contiguous leaf with other strides (the gradient lands on the leaf)
# ---------------------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "sliced", "expanded"]


def _leaf_shape(shape, layout):
    if layout == "expanded" and len(shape) and shape[0] > 1:
        return (1,) + tuple(shape[1:])
    if layout == "sliced" and len(shape):
        return tuple(shape[:-1]) + (2 * shape[-1] + 1,)
    return tuple(shape)


def _view(leaf, shape, layout):
    """``leaf`` (of _leaf_shape(shape, layout)) seen as ``shape`` with the layout's strides."""
    if layout == "transposed" and leaf.dim() >= 2:  # reversed memory order, same values
        return _reverse_strides(leaf)
    if layout == "sliced" and leaf.dim():
        return leaf[..., 1::2] if shape[-1] else leaf[..., :0]
    if layout == "expanded" and leaf.dim() and leaf.shape[0] != shape[0]:
        return leaf.expand(*shape)
    return leaf


def _reverse_strides(t):
    """The same values with reversed (column-major) strides, differentiable back to ``t``."""
    perm = list(range(t.dim()))[::-1]
    return t.permute(perm).contiguous().permute(perm)


class Call:
    """One public call ``fn(*views)`` and its definition ``ref(*views)`` (rbfkern.reference,
    differentiated by autograd); tensors are built from a seed in float64 then cast."""

    def __init__(self, fn, ref, specs, seed):
        self.fn, self.ref, self.specs = fn, ref, specs  # specs: [(shape, layout, maker)], maker(gen, shape) -> float64 tensor
        g = torch.Generator().manual_seed(seed)
        self.base = [maker(g, _leaf_shape(shape, layout)) for shape, layout, maker in specs]
        self.seed = seed

    def run(self, dtype, backend=None, device=torch.device("cpu")):
        """backend None: the reference functions themselves; the leaves on ``device``."""
        leaves = [b.to(dtype).to(device).requires_grad_(True) for b in self.base]
        before = [t.detach().clone() for t in leaves]
        views = [_view(t, shape, layout) for t, (shape, layout, _) in zip(leaves, self.specs)]
        # CUDA tensors always run the Triton kernels; in the rehearsal the CPU tensors must be told
        with _env(RBFKERN_BACKEND="triton" if backend == "cuda" else backend):
            y = self.fn(*views) if backend else self.ref(*views)
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(self.seed + 1),
                             dtype=torch.float64).to(device)
            grads = torch.autograd.grad(y, leaves, gy.to(dtype), allow_unused=True)
        for t, b in zip(leaves, before):  # inputs never modified
            assert torch.equal(t.detach(), b), "an input tensor was modified by the op"
        return y.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


def check(call, dtype, backend, what):
    dev = device_of(backend)  # the reference runs on the same device, in float64
    y, grads = call.run(dtype, backend, dev)
    y_ref, grads_ref = call.run(torch.float64, None, dev)
    assert y.dtype == dtype and y.shape == y_ref.shape, f"{what}: output {y.dtype} {tuple(y.shape)}"
    assert_close_to_ref(y, y_ref, dtype, what=f"{what} forward")
    if bool(torch.isfinite(y_ref).all()):
        assert bool(torch.isfinite(y).all()), f"{what}: non-finite output where the reference is finite"
    for i, (g, gr) in enumerate(zip(grads, grads_ref)):
        assert g.dtype == dtype and g.shape == gr.shape
        assert_close_to_ref(g, gr, dtype, what=f"{what} grad {i}")


def _normal(scale=1.0):
    return lambda g, shape: torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale


def _positive(lo, hi):
    return lambda g, shape: torch.rand(tuple(shape), generator=g, dtype=torch.float64) * (hi - lo) + lo


def _tril(d):
    return lambda g, shape: torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2**20)


# ---------------------------------------------------------------------------------------------
# rbf / rbf_r2
# ---------------------------------------------------------------------------------------------


@st.composite
def rbf_calls(draw, tiny, kind):
    sizes = TINY if tiny else EDGE
    n, c = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    d = draw(st.sampled_from([1, 2, 3, 8, 9] if tiny else DIMS))
    metric = draw(st.sampled_from(["none", "diag", "shared_diag", "tril", "shared_tril"]))
    sigma_form = draw(st.sampled_from(["float", "0d", "1", "C"]))
    shape = draw(st.sampled_from([0.3, 0.5, 1.5]))
    on_centre = draw(st.booleans())  # x_0 exactly on centre 0: r2 = 0, the singular derivatives
    lx, lc = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS[:3]))
    scale = 1.0 / max(1, d) ** 0.5

    specs = [((n, d), lx, _normal(scale)), ((c, d), lc, _normal(scale))]
    mshape = {"diag": (c, d), "shared_diag": (d,), "tril": (c, d, d), "shared_tril": (d, d)}.get(metric)
    if metric in ("diag", "shared_diag"):
        specs.append((mshape, "contiguous", _positive(0.1, 1.6)))
    elif metric in ("tril", "shared_tril"):
        specs.append((mshape, draw(st.sampled_from(["contiguous", "transposed"])), _tril(d)))
    sig_shape = {"0d": (), "1": (1,), "C": (c,)}.get(sigma_form)
    if kind != "r2" and sig_shape is not None:
        specs.append((sig_shape, "contiguous", _positive(0.5, 1.5)))
    key = "diag" if "diag" in metric else "tril" if "tril" in metric else None

    def args(x, cen, rest):
        if on_centre and n and c:
            cen = torch.cat([x[:1], cen[1:]], 0)
        metric_kw = {key: rest[0]} if key else {}
        sigma = rest[-1] if sig_shape is not None and kind != "r2" else 0.8
        return x, cen, metric_kw, sigma

    def fn(x, cen, *rest):
        x, cen, metric_kw, sigma = args(x, cen, rest)
        if kind == "r2":
            return ops.rbf_r2(x, cen, **metric_kw)
        return ops.rbf(x, cen, sigma=sigma, kind=kind, shape=shape, **metric_kw)

    def ref(x, cen, *rest):
        x, cen, metric_kw, sigma = args(x, cen, rest)
        r2 = reference.rbf_r2(x, cen, **metric_kw)
        return r2 if kind == "r2" else reference.rbf_activation(r2, kind, sigma, shape)

    return Call(fn, ref, specs, draw(SEEDS)), f"rbf n={n} c={c} d={d} {metric} {kind} sigma={sigma_form} {lx}/{lc}"


@pytest.mark.parametrize("kind", ("r2",) + reference.RBF_KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rbf_matches_reference(backend, kind):
    @_settings(backend)
    @given(case=rbf_calls(tiny=backend == "triton", kind=kind), dtype=DTYPES)
    def prop(case, dtype):
        call, what = case
        check(call, dtype, backend, f"[{backend} {dtype}] {what}")

    prop()


# ---------------------------------------------------------------------------------------------
# bcos_conv2d / bcos_linear
# ---------------------------------------------------------------------------------------------

B_VALUES = [1.0, 1.5, 2.0, 2.5, 3.0]


@st.composite
def bcos_conv_calls(draw, tiny, b):
    groups = draw(st.sampled_from([1, 2, 3]))
    cpg = draw(st.sampled_from([1, 2, 3] if tiny else [1, 2, 3, 5, 8, 9]))
    opg = draw(st.sampled_from([1, 2] if tiny else [1, 2, 3, 5]))
    max_out = draw(st.sampled_from([1, 2, 3]))
    n = draw(st.sampled_from([0, 1, 2] if tiny else [0, 1, 2, 3]))
    kh, kw = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 3]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    lo_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    lo_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    top = 7 if tiny else 17
    h, w = draw(st.integers(lo_h, max(lo_h, top))), draw(st.integers(lo_w, max(lo_w, top)))
    lx = draw(st.sampled_from(LAYOUTS))
    lw = draw(st.sampled_from(LAYOUTS[:3]))
    C, O = cpg * groups, opg * groups
    specs = [((n, C, h, w), lx, _normal()), ((O * max_out, cpg, kh, kw), lw, _normal())]

    def fn(x, wt):
        return ops.bcos_conv2d(x, wt, b=b, max_out=max_out, stride=stride, padding=padding, dilation=dilation,
                               groups=groups)

    def ref(x, wt):
        return reference.bcos_conv2d(x, wt, b, max_out, stride, padding, dilation, groups)

    what = (f"bcos_conv2d x=({n},{C},{h},{w}) w={specs[1][0]} b={b} max_out={max_out} s={stride} p={padding} "
            f"d={dilation} g={groups} {lx}/{lw}")
    return Call(fn, ref, specs, draw(SEEDS)), what


@st.composite
def bcos_linear_calls(draw, tiny, b):
    lead = draw(st.lists(st.sampled_from([0, 1, 2, 5] if tiny else [0, 1, 2, 5, 9, 17]), min_size=0, max_size=2))
    C = draw(st.sampled_from([1, 2, 5, 9] if tiny else DIMS + [64, 65]))
    O = draw(st.sampled_from([1, 2, 3] if tiny else [1, 2, 3, 8, 9, 17]))
    max_out = draw(st.sampled_from([1, 2, 3]))
    lx = draw(st.sampled_from(LAYOUTS if lead else ["contiguous", "sliced"]))
    specs = [((*lead, C), lx, _normal()), ((O * max_out, C), draw(st.sampled_from(LAYOUTS[:3])), _normal())]

    def fn(x, wt):
        return ops.bcos_linear(x, wt, b=b, max_out=max_out)

    def ref(x, wt):
        return reference.bcos_linear(x, wt, b, max_out)

    return Call(fn, ref, specs, draw(SEEDS)), f"bcos_linear x={(*lead, C)} O={O} max_out={max_out} b={b} {lx}"


@pytest.mark.parametrize("b", B_VALUES)
@pytest.mark.parametrize("backend", BACKENDS_CUDA)
def test_bcos_conv2d_matches_reference(backend, b):
    @_settings(backend, scale=1 if _tiny(backend) else 2)
    @given(case=bcos_conv_calls(tiny=_tiny(backend), b=b), dtype=DTYPES)
    def prop(case, dtype):
        call, what = case
        check(call, dtype, backend, f"[{backend} {dtype}] {what}")

    prop()


@pytest.mark.parametrize("b", B_VALUES)
@pytest.mark.parametrize("backend", BACKENDS_CUDA)
def test_bcos_linear_matches_reference(backend, b):
    @_settings(backend)
    @given(case=bcos_linear_calls(tiny=_tiny(backend), b=b), dtype=DTYPES)
    def prop(case, dtype):
        call, what = case
        check(call, dtype, backend, f"[{backend} {dtype}] {what}")

    prop()


# ---------------------------------------------------------------------------------------------
# gauss_deriv_conv2d / gauss_deriv_conv3d
# ---------------------------------------------------------------------------------------------


@st.composite
def gauss_deriv_calls(draw, ndim, tiny, order):
    n_scales = draw(st.integers(1, 1 if tiny else 2))
    sig_vals = draw(st.lists(st.sampled_from([0.4, 0.6, 0.8, 1.1, 1.7]), min_size=n_scales, max_size=n_scales))
    truncate = draw(st.sampled_from([1.0, 2.0, 4.0]))
    sigma_form = draw(st.sampled_from(["float", "list", "tensor", "0d"] if n_scales == 1 else ["list", "tensor"]))
    radii = [int(truncate * s + 0.5) for s in sig_vals]
    K = 2 * max(radii) + 1
    padding = draw(st.one_of(st.just("same"), st.integers(0, 3)))
    pad = max(radii) if padding == "same" else padding
    stride = draw(st.integers(1, 3))
    lo = max(1, K - 2 * pad)
    top = (lo + 4) if tiny or ndim == 3 else max(lo, 20)
    spatial = tuple(draw(st.integers(lo, max(lo, top))) for _ in range(ndim))
    n = draw(st.sampled_from([0, 1, 2] if not tiny else [0, 1]))
    cin = draw(st.sampled_from([1, 2, 3] if not tiny else [1, 2]))
    cout = draw(st.sampled_from([1, 2, 5] if not tiny else [1, 2]))
    M = {2: (order + 1) * (order + 2) // 2, 3: (order + 1) * (order + 2) * (order + 3) // 6}[ndim]
    scale_normalized = draw(st.booleans())
    path = draw(st.sampled_from(["separable", "dense"]))
    lx = draw(st.sampled_from(LAYOUTS))
    specs = [((n, cin, *spatial), lx, _normal()), ((cout, cin, n_scales * M), draw(st.sampled_from(LAYOUTS[:3])),
                                                    _normal())]
    if sigma_form in ("tensor", "0d"):
        values = torch.tensor(sig_vals, dtype=torch.float64)
        specs.append(((n_scales,) if sigma_form == "tensor" else (), "contiguous",
                      lambda g, shape, v=values: v.reshape(shape).clone()))
    op = ops.gauss_deriv_conv2d if ndim == 2 else ops.gauss_deriv_conv3d

    def fn(x, alpha, *rest):
        sigma = rest[0] if rest else (sig_vals[0] if sigma_form == "float" else list(sig_vals))
        with _env(RBFKERN_GD_PATH=path):
            return op(x, alpha, sigma, order=order, truncate=truncate, stride=stride, padding=padding,
                      scale_normalized=scale_normalized)

    ref_op = reference.gauss_deriv_conv2d if ndim == 2 else reference.gauss_deriv_conv3d

    def ref(x, alpha, *rest):
        sigma = rest[0].reshape(-1) if rest else torch.tensor(sig_vals, dtype=x.dtype, device=x.device)
        return ref_op(x, alpha, sigma, order, truncate, radii, stride, pad, scale_normalized)

    what = (f"gauss_deriv_conv{ndim}d x={(n, cin, *spatial)} cout={cout} sigma={sig_vals} ({sigma_form}) "
            f"order={order} truncate={truncate} stride={stride} padding={padding} sn={scale_normalized} "
            f"{path} {lx}")
    return Call(fn, ref, specs, draw(SEEDS)), what


def _gd_params():
    for backend in BACKENDS_CUDA:
        name = getattr(backend, "values", [backend])[0]
        for ndim, top in ((2, 4), (3, 2)):
            for order in range(0, (1 if name == "triton" else top) + 1):
                marks = getattr(backend, "marks", ())
                yield pytest.param(name, ndim, order, marks=marks, id=f"{name}-{ndim}d-order{order}")


@pytest.mark.parametrize("backend,ndim,order", list(_gd_params()))
def test_gauss_deriv_matches_reference(backend, ndim, order):
    @_settings(backend, scale=2 if _tiny(backend) else 1)
    @given(case=gauss_deriv_calls(ndim=ndim, tiny=_tiny(backend), order=order), dtype=DTYPES)
    def prop(case, dtype):
        call, what = case
        check(call, dtype, backend, f"[{backend} {dtype}] {what}")

    prop()
