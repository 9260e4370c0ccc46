"""Gaussian-derivative basis convolution: basis vs scipy, op vs scipy and the reference on every
backend and path, gradients (x, alpha, sigma), opcheck, compile, errors, layers, steering.

The CUDA variants (backend or device "cuda") make their inputs on CPU as the others do and move
them to device_of(backend); both paths run there (separable: the Triton kernels; dense: cuDNN)."""
import math

import pytest
import torch
from scipy import ndimage

from rbfkern import basis, reference
from rbfkern.nn import GaussDerivConv2d, GaussDerivConv3d, RFNiNBlock
from rbfkern.ops import gauss_deriv_conv2d, gauss_deriv_conv3d
from rbfkern.ops import gauss_deriv as gd

from _util import HALF, assert_close_to_ref, assert_within_naive_error, cudnn_deterministic, run_tests_under_isa
from conftest import CPU_BACKENDS, CUDA, CUDA_ON_CPU, CUDA_SLOW, DEVICES, TRITON_BACKENDS, device_of

F64 = torch.float64
CPU = torch.device("cpu")
PATHS = ["separable", "dense"]
# (backend, path) pairs: the dense path is torch's convolution on every backend, so it runs once.
COMBOS = [("cpp", "separable"), ("cpp", "dense")] + [(b, "separable") for b in CPU_BACKENDS if b != "cpp"]
# On CUDA both paths: the Triton kernels and cuDNN's convolution.
CUDA_COMBOS = [pytest.param("cuda", p, marks=CUDA.marks, id=f"cuda-{p}") for p in PATHS]


def _interpreted(backend):
    """Whether ``backend`` runs the Triton kernels in the interpreter (every program in Python:
    those tests take their smallest shapes)."""
    return backend == "triton" or (backend == "cuda" and CUDA_ON_CPU)


@pytest.fixture
def path(request, monkeypatch):
    """Force the evaluation path (RBFKERN_GD_PATH) for one test."""
    monkeypatch.setenv("RBFKERN_GD_PATH", request.param)
    return request.param


def _rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def _reference(ndim, x, alpha, sigma, order, truncate, stride, padding, scale_normalized):
    """rbfkern.reference on x's device, with the radii and "same" padding the op documents: what
    RBFKERN_BACKEND=reference runs for CPU tensors (CUDA tensors always run the Triton backend)."""
    radii = [basis.radius(v, truncate) for v in sigma.detach().reshape(-1).tolist()]
    pad = max(radii) if padding == "same" else padding
    fn = reference.gauss_deriv_conv2d if ndim == 2 else reference.gauss_deriv_conv3d
    return fn(x, alpha, sigma, order, truncate, radii, stride, pad, scale_normalized)


def _out_and_grads(fn, tensors, gout):
    """[fn(*leaves), its gradients w.r.t. the leaves] on fresh leaf copies; gout cast to the output dtype."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, gout.to(out.dtype)))


def _check_cuda_against_reference(ndim, got, inputs64, dtype, gout, kw):
    """A CUDA variant's [out, gx, galpha, gsigma] ``got`` (inputs: ``inputs64`` cast to dtype) against
    the reference on the same device: float32/float64 by the tolerance table against the float64
    reference of ``inputs64``; float16/bfloat16 by the flash-attention rule (the float64 reference of
    the rounded inputs; the naive error: the reference run in the half dtype)."""
    dev = got[0].device
    ref = lambda x, a, s: _reference(ndim, x, a, s, **kw)  # noqa: E731
    names = ("out", "gx", "galpha", "gsigma")
    if dtype in HALF:
        rounded = [t.to(dtype).to(dev) for t in inputs64]
        want = _out_and_grads(ref, [t.double() for t in rounded], gout.to(dev))
        naive = _out_and_grads(ref, rounded, gout.to(dtype).to(dev))
        for a, c, n, name in zip(got, want, naive, names):
            assert a.dtype == dtype
            assert_within_naive_error(a, c, n, f"{name} {dtype}")
        return
    want = _out_and_grads(ref, [t.to(dev) for t in inputs64], gout.to(dev))
    for a, c, name in zip(got, want, names):
        assert_close_to_ref(a, c, dtype, what=name)


def _check_op_against_reference(ndim, backend, inputs64, dtype, kw, monkeypatch, reference_of_rounded):
    """The op of ``ndim`` on ``backend`` (inputs: ``inputs64`` = (x, alpha, sigma) cast to dtype):
    output and the gradients of all three for a random upstream gradient, against the reference
    backend in float64 on the inputs as the op saw them (``reference_of_rounded``) or on
    ``inputs64``; CUDA by :func:`_check_cuda_against_reference`. Returns the op's output."""
    op = gauss_deriv_conv2d if ndim == 2 else gauss_deriv_conv3d
    dev = device_of(backend)
    x, a, s = (t.to(dtype).to(dev).requires_grad_() for t in inputs64)
    out = op(x, a, s, **kw)
    gout = _rand(*out.shape, seed=4)
    grads = torch.autograd.grad(out, (x, a, s), gout.to(dtype).to(dev))
    if backend == "cuda":
        _check_cuda_against_reference(ndim, [out.detach(), *grads], inputs64, dtype, gout, kw)
        return out
    monkeypatch.setenv("RBFKERN_BACKEND", "reference")
    seen = (x, a, s) if reference_of_rounded else inputs64
    xr, ar, sr = (t.detach().cpu().double().clone().requires_grad_() for t in seen)
    want = op(xr, ar, sr, **kw)
    wgrads = torch.autograd.grad(want, (xr, ar, sr), gout)
    assert_close_to_ref(out.detach(), want.detach(), dtype, what="out")
    for got, ref, name in zip(grads, wgrads, ("gx", "galpha", "gsigma")):
        assert_close_to_ref(got, ref, dtype, what=name)
    return out


# ---------------------------------------------------------------------------------------------
# Basis
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.2])
@pytest.mark.parametrize("truncate", [2.0, 4.0])
def test_kernels_equal_scipy_samples(sigma, truncate):
    # Filtering a unit impulse with scipy gives its kernel; ours must match exactly.
    r = basis.radius(sigma, truncate)
    g = basis.gauss_kernels_1d(sigma, 4, truncate)[0]
    assert g.shape == (5, 2 * r + 1)
    delta = torch.zeros(4 * r + 3, dtype=F64)
    delta[2 * r + 1] = 1
    for m in range(5):
        want = ndimage.gaussian_filter1d(delta.numpy(), sigma, order=m, mode="constant", truncate=truncate)
        want = torch.from_numpy(want[r + 1: 3 * r + 2])
        assert (g[m] - want).abs().max() < 1e-14, m


def test_kernel_closed_form_and_normalisation():
    s, r = 1.3, basis.radius(1.3, 4.0)
    g = basis.gauss_kernels_1d(s, 4, 4.0)[0]
    u = torch.arange(-r, r + 1, dtype=F64)
    e = torch.exp(-u * u / (2 * s * s))
    he = [torch.ones_like(u), u / s, (u / s) ** 2 - 1, (u / s) ** 3 - 3 * u / s, (u / s) ** 4 - 6 * (u / s) ** 2 + 3]
    for m in range(5):
        assert torch.allclose(g[m], (-1 / s) ** m * he[m] * e / e.sum(), atol=1e-15)
    gn = basis.gauss_kernels_1d(s, 4, 4.0, scale_normalized=True)[0]
    for m in range(5):
        assert torch.allclose(gn[m], g[m] * s ** m, atol=1e-15)


def test_multi_scale_support_and_orders():
    g = basis.gauss_kernels_1d(torch.tensor([0.6, 2.0], dtype=F64), 2, 3.0)
    r0, r1 = basis.radius(0.6, 3.0), basis.radius(2.0, 3.0)
    assert g.shape == (2, 3, 2 * r1 + 1)
    assert (g[0, :, : r1 - r0] == 0).all() and (g[0, :, r1 + r0 + 1:] == 0).all()
    assert [len(basis.derivative_orders(o)) for o in range(5)] == [1, 3, 6, 10, 15]
    assert [len(basis.derivative_orders_3d(o)) for o in range(5)] == [1, 4, 10, 20, 35]
    assert basis.derivative_orders(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    assert all(sum(m) <= 3 for m in basis.derivative_orders_3d(3))


@pytest.mark.parametrize("scale_normalized", [False, True], ids=["plain", "scale_norm"])
def test_dsigma_matches_finite_differences(scale_normalized):
    s = torch.tensor([0.7, 1.9, 3.1], dtype=F64)
    rad = basis.radii(s, 3.5)
    d = basis.gauss_kernels_1d_dsigma(s, 4, 3.5, rad, scale_normalized)
    h = 1e-6
    fd = (basis.gauss_kernels_1d(s + h, 4, 3.5, rad, scale_normalized)
          - basis.gauss_kernels_1d(s - h, 4, 3.5, rad, scale_normalized)) / (2 * h)
    assert (d - fd).abs().max() < 1e-8
    # and autograd through the torch definition agrees
    sg = s.clone().requires_grad_()
    w = _rand(*d.shape, seed=3)
    (ga,) = torch.autograd.grad((basis.gauss_kernels_1d(sg, 4, 3.5, rad, scale_normalized) * w).sum(), sg)
    assert torch.allclose(ga, (d * w).sum((1, 2)), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The op against scipy (the sign convention) and against the reference
# ---------------------------------------------------------------------------------------------

SCIPY_CASES = [  # (H, W, sigmas, order, truncate)
    pytest.param(13, 16, (1.0,), 3, 4.0, id="13x16-s1-o3"),
    pytest.param(12, 9, (0.7, 1.6), 4, 3.0, id="12x9-2scales-o4"),
    pytest.param(20, 21, (2.5,), 2, 2.0, id="20x21-s2.5-t2"),
    pytest.param(7, 8, (1.3,), 1, 2.5, id="7x8-kernel>image"),
]


@pytest.mark.parametrize("backend,path", COMBOS + [("reference", "separable")] + CUDA_COMBOS, indirect=True)
@pytest.mark.parametrize("h,w,sigmas,order,truncate", SCIPY_CASES)
def test_one_hot_alpha_equals_scipy_gaussian_filter(backend, path, h, w, sigmas, order, truncate):
    dev = device_of(backend)
    x = _rand(1, 1, h, w)
    pq = basis.derivative_orders(order)
    n = len(sigmas) * len(pq)
    alpha = torch.eye(n, dtype=F64).reshape(n, 1, n)  # output channel j selects (scale, member) j
    out = gauss_deriv_conv2d(x.to(dev), alpha.to(dev), sigmas, order=order, truncate=truncate).cpu()
    assert out.shape == (1, n, h, w)
    for si, s in enumerate(sigmas):
        for b, (p, q) in enumerate(pq):
            want = ndimage.gaussian_filter(x[0, 0].numpy(), s, order=(q, p), mode="constant", cval=0.0,
                                           truncate=truncate)
            err = (out[0, si * len(pq) + b] - torch.from_numpy(want)).abs().max().item()
            assert err < 1e-10, (s, p, q, err)


GEOMS = [  # (N, Ci, Co, H, W, sigmas, order, stride, padding)
    pytest.param(2, 3, 4, 11, 14, (0.8, 1.5), 3, 1, "same", id="same"),
    pytest.param(1, 2, 5, 16, 9, (1.2,), 2, 2, "same", id="stride2"),
    pytest.param(3, 1, 1, 10, 10, (1.0,), 4, 3, 2, id="stride3-pad2"),
    pytest.param(1, 4, 3, 14, 15, (0.9, 2.0), 1, 1, 0, id="valid"),
]


def _fb_cases():
    """Every backend/path x geometry x dtype; the interpreter (time) runs the smaller geometries in
    float64/float32 only. CUDA: both paths, every geometry, float64/32/16 and bfloat16."""
    for combo in COMBOS:
        for geom in GEOMS:
            n, ci, co = geom.values[:3]
            for dtype, did in ((F64, "f64"), (torch.float32, "f32"), (torch.bfloat16, "bf16")):
                if combo[0] == "triton" and (dtype == torch.bfloat16 or n * ci * co > 20):
                    continue
                yield pytest.param(*combo, *geom.values, dtype, id=f"{combo[0]}-{combo[1]}-{geom.id}-{did}")
    for p in PATHS:
        for geom in GEOMS:
            for dtype, did in ((F64, "f64"), (torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")):
                yield pytest.param("cuda", p, *geom.values, dtype, marks=CUDA.marks, id=f"cuda-{p}-{geom.id}-{did}")


@pytest.mark.parametrize("backend,path,n,ci,co,h,w,sigmas,order,stride,padding,dtype", list(_fb_cases()),
                         indirect=["backend", "path"])
def test_forward_backward_match_reference(backend, path, n, ci, co, h, w, sigmas, order, stride, padding, dtype,
                                          monkeypatch):
    m = basis.num_basis(order)
    x64, a64 = _rand(n, ci, h, w, seed=1), _rand(co, ci, len(sigmas) * m, seed=2)
    kw = dict(order=order, truncate=3.0, stride=stride, padding=padding, scale_normalized=order % 2 == 0)
    # the float64 reference of the inputs as the op saw them (rounded to dtype)
    out = _check_op_against_reference(2, backend, (x64, a64, torch.tensor(sigmas, dtype=F64)), dtype, kw, monkeypatch,
                                      reference_of_rounded=True)
    assert out.dtype == dtype


@pytest.mark.parametrize("backend,path", COMBOS + CUDA_COMBOS, indirect=True)
def test_gradcheck(backend, path):
    tiny = _interpreted(backend)  # the interpreter runs every program in Python: one scale, order 1
    dev = device_of(backend)
    x = _rand(1 if tiny else 2, 2, 7, 8, seed=5).to(dev).requires_grad_()
    a = _rand(2 if tiny else 3, 2, 3 if tiny else 2 * 6, seed=6).to(dev).requires_grad_()
    s = torch.tensor([1.1] if tiny else [0.8, 1.3], dtype=F64).to(dev).requires_grad_()
    order = 1 if tiny else 2
    for stride, padding, sn in [(1, "same", False), (2, 1, True)]:
        f = lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=order, truncate=2.5, stride=stride,  # noqa: E731
                                               padding=padding, scale_normalized=sn)
        with cudnn_deterministic():
            assert torch.autograd.gradcheck(f, (x, a, s), fast_mode=True)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_opcheck(backend, path):
    dev = device_of(backend)
    x = _rand(2, 2, 7, 9, seed=7).to(dev)
    a = _rand(3, 2, 6, seed=8).to(dev)
    s = torch.tensor([1.1], dtype=F64).to(dev)
    for rg in (False, True):
        args = (x.clone().requires_grad_(rg), a.clone().requires_grad_(rg), s.clone().requires_grad_(rg),
                2, 3.0, [3], 1, 3, False)
        torch.library.opcheck(torch.ops.rbfkern.gauss_deriv_conv2d.default, args)
    for rg in (False, True):
        args = (_rand(1, 2, 5, 6, 5).to(dev).requires_grad_(rg), _rand(2, 2, 4).to(dev).requires_grad_(rg),
                s.clone().requires_grad_(rg), 1, 2.0, [2], 1, 2, False)
        torch.library.opcheck(torch.ops.rbfkern.gauss_deriv_conv3d.default, args)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_opcheck_channels_last(backend):
    """The gradients in the layouts of the inputs' empty_like (what the backward's fake returns):
    a channels-last x and a permuted alpha (torch.compile checks the real strides against the
    fake's)."""
    dev = device_of(backend)
    s = torch.tensor([1.1], dtype=F64).to(dev)
    perm = lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)
    cases = ((_rand(2, 2, 7, 9, seed=7).to(dev).contiguous(memory_format=torch.channels_last),
              perm(_rand(3, 2, 6, seed=8).to(dev)), 2, 3.0, [3], 1, 3, False),
             (_rand(1, 2, 5, 6, 5).to(dev).contiguous(memory_format=torch.channels_last_3d),
              perm(_rand(2, 2, 4).to(dev)), 1, 2.0, [2], 1, 2, False))
    for x, a, *args in cases:
        op = torch.ops.rbfkern.gauss_deriv_conv2d if x.dim() == 4 else torch.ops.rbfkern.gauss_deriv_conv3d
        bwd = torch.ops.rbfkern.gauss_deriv_conv2d_bwd if x.dim() == 4 else torch.ops.rbfkern.gauss_deriv_conv3d_bwd
        torch.library.opcheck(op.default, (x, a, s, *args))
        y = op(x, a, s, *args)
        torch.library.opcheck(bwd.default, (torch.ones_like(y), x, a, s, *args, [True, True, True]))


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, CUDA], indirect=True)
@pytest.mark.parametrize("ndim", [2, 3])
def test_channels_last_in_channels_last_out(backend, ndim):
    """conv2d's / conv3d's layout rule: a channels-last input gives a channels-last output and
    gradient (a channels-last model keeps its layout through the layer), the same values."""
    dev = device_of(backend)
    mf = torch.channels_last if ndim == 2 else torch.channels_last_3d
    shape = (2, 3, 7, 9) if ndim == 2 else (1, 3, 5, 6, 5)
    op = gauss_deriv_conv2d if ndim == 2 else gauss_deriv_conv3d
    a = _rand(4, 3, 3 if ndim == 2 else 4, seed=3).to(dev).requires_grad_()
    x = _rand(*shape, seed=2).to(dev)
    outs = []
    for xx in (x, x.contiguous(memory_format=mf)):
        xx = xx.detach().requires_grad_()
        y = op(xx, a, 1.2, order=1, truncate=2.0)
        g = torch.autograd.grad(y.square().sum(), (xx, a))
        outs.append((y, *g))
        assert y.is_contiguous(memory_format=torch.contiguous_format if xx.is_contiguous() else mf)
        assert g[0].stride() == xx.stride()
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", ["cpu", CUDA_SLOW], indirect=True)  # an inductor compile: gpucheck --full
def test_inductor_channels_last_backward(device):
    """A channels-last model: the compiled forward and backward equal eager (the backward's real
    strides used to differ from its fake's, which inductor checks)."""
    torch._dynamo.reset()
    layer = GaussDerivConv2d(3, 4, order=2, sigmas=(1.0,), learn_sigma=True, truncate=2.5).to(device)
    x = torch.randn(2, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last)

    def loss(h):
        return (layer(h) * h[:, :1]).sin().sum()

    compiled = torch.compile(loss, fullgraph=True)
    got, want = [], []
    for f, out in ((compiled, got), (loss, want)):
        h = (x * 1).requires_grad_()
        h2 = h * 2  # a non-leaf input: its gradient reaches the next node as the op returns it
        val = f(h2)
        out.extend([val, *torch.autograd.grad(val, (h2, layer.alpha, layer.sigma))])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device,compiler", [("cpu", "aot_eager"), pytest.param("cuda", "aot_eager", marks=CUDA.marks),
                                             pytest.param("cuda", "inductor", marks=CUDA.marks)],
                         indirect=["device"])
def test_torch_compile_fullgraph(device, compiler):
    layer = GaussDerivConv2d(2, 3, order=2, sigmas=(1.0,), truncate=3.0).double().to(device)
    x = _rand(1, 2, 9, 10, seed=9).to(device).requires_grad_()
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend=compiler)
    out = compiled(x)
    assert torch.allclose(out, eager, atol=1e-12)
    (g1,) = torch.autograd.grad(out.sum(), x)
    (g2,) = torch.autograd.grad(eager.sum(), x)
    assert torch.allclose(g1, g2, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("layer_cls,shape", [(GaussDerivConv2d, (1, 2, 9, 10)), (GaussDerivConv3d, (1, 2, 6, 7, 5))],
                         ids=["2d", "3d"])
def test_torch_compile_fullgraph_learnable_sigma(backend, layer_cls, shape):
    # The kernel size comes from max_sigma (a Python number), so a tensor sigma traces; forward
    # and backward (x, alpha, sigma) equal eager mode, and new sigma values need no recompile.
    torch._dynamo.reset()
    # the interpreted 3D kernels take minutes at order 2 / 11 taps: order 1, 5 taps there
    order, sigmas = (1, (0.4, 0.6)) if _interpreted(backend) and layer_cls is GaussDerivConv3d else (2, (0.8, 1.3))
    layer = layer_cls(2, 3, order=order, sigmas=sigmas, learn_sigma=True, truncate=2.5).double()
    layer = layer.to(device_of(backend))
    assert layer.max_sigma == 1.5 * sigmas[1]
    x = _rand(*shape, seed=9).to(device_of(backend)).requires_grad_()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for step in range(2):
        eager = layer(x)
        ge = torch.autograd.grad(eager.square().sum(), (x, layer.alpha, layer.sigma))
        out = compiled(x)
        gc = torch.autograd.grad(out.square().sum(), (x, layer.alpha, layer.sigma))
        assert torch.allclose(out, eager, atol=1e-12)
        for a, b in zip(gc, ge):
            assert torch.allclose(a, b, atol=1e-10)
        with torch.no_grad():
            layer.sigma.mul_(1.2)  # still below max_sigma


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_max_sigma_fixes_the_support(device):
    x, a = _rand(1, 2, 11, 12, seed=17).to(device), _rand(3, 2, 2 * 6, seed=18).to(device)
    s = torch.tensor([0.8, 1.2], dtype=F64).to(device)
    r = basis.radius(2.0, 3.0)
    out = gauss_deriv_conv2d(x, a, s, order=2, truncate=3.0, max_sigma=2.0)
    want = reference.gauss_deriv_conv2d(x, a, s, 2, 3.0, [r, r], 1, r)
    assert torch.allclose(out, want, atol=1e-12)
    with pytest.raises(ValueError, match="max_sigma"):
        gauss_deriv_conv2d(x, a, s, order=2, truncate=3.0, max_sigma=1.0)
    layer = GaussDerivConv2d(2, 3, order=2, sigmas=(0.8, 1.2), learn_sigma=True, truncate=3.0, max_sigma=2.0)
    assert layer.effective_weight().shape[-1] == 2 * r + 1
    with pytest.raises(ValueError, match="max_sigma"):
        GaussDerivConv2d(2, 3, sigmas=(1.0,), learn_sigma=True, max_sigma=0.5)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_degenerate_inputs_are_finite(backend, path):
    dev = device_of(backend)
    a = _rand(2, 1, 3, seed=1, dtype=torch.float32).to(dev).requires_grad_()
    x0 = torch.zeros(0, 1, 6, 6, device=dev, requires_grad=True)
    out = gauss_deriv_conv2d(x0, a, 1.0, order=1, truncate=2.0)
    assert out.shape == (0, 2, 6, 6)
    out.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    s = torch.tensor([1.0], device=dev, requires_grad=True)
    xz = torch.zeros(1, 1, 6, 6, device=dev, requires_grad=True)
    out = gauss_deriv_conv2d(xz, a, s, order=1, truncate=2.0)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(xz.grad).all() and torch.isfinite(s.grad).all()
    assert (out == 0).all()


# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------


def test_cost_model_picks_the_faster_path_on_the_benchmark_shapes(monkeypatch):
    monkeypatch.delenv("RBFKERN_GD_PATH", raising=False)
    # bench/bench_gauss_deriv.py: x (16, 64, 64, 64), C_out 64, order 3, truncate 4. Measured there
    # (README table): the separable kernels win at every sigma, 2x at sigma 1, 20x+ at sigma 4.
    for sigma, want in [(1.0, "separable"), (2.0, "separable"), (4.0, "separable")]:
        k = 2 * basis.radius(sigma, 4.0) + 1
        assert gd.choose_path(16, 64, 64, 64, 64, 64, 64, 1, 3, k) == want, sigma
    # few channels and a small kernel: one dense conv
    assert gd.choose_path(8, 3, 8, 32, 32, 32, 32, 1, 3, 5) == "dense"
    monkeypatch.setenv("RBFKERN_GD_PATH", "separable")
    assert gd.choose_path(8, 3, 8, 32, 32, 32, 32, 1, 3, 5) == "separable"
    monkeypatch.setenv("RBFKERN_GD_PATH", "bogus")
    with pytest.raises(ValueError, match="RBFKERN_GD_PATH"):
        gd.choose_path(8, 3, 8, 32, 32, 32, 32, 1, 3, 5)


def test_cost_model_3d_picks_the_faster_path_on_benchmarked_shapes(monkeypatch):
    monkeypatch.delenv("RBFKERN_GD_PATH", raising=False)
    # Measured (float32, 2 threads; bench/bench_gauss_deriv.py --3d and the shapes below): the
    # separable kernels win forward and backward on x (2, 8, 32^3), C_out 8, order 2 at sigma 1
    # (3.5x fwd) and 2 (10x fwd); one input channel, sigma 0.5 (5 taps): conv3d wins the forward
    # (4-5x) but its backward is 10x slower than ours.
    for k in (9, 17):
        assert gd.choose_path_3d(2, 8, 8, (32, 32, 32), 1, 2, k) == "separable"
        assert gd.choose_path_3d(2, 8, 8, (32, 32, 32), 1, 2, k, backward=True) == "separable"
    assert gd.choose_path_3d(4, 1, 2, (24, 24, 24), 1, 2, 5) == "dense"
    assert gd.choose_path_3d(4, 1, 2, (24, 24, 24), 1, 2, 5, backward=True) == "separable"
    monkeypatch.setenv("RBFKERN_GD_PATH", "dense")
    assert gd.choose_path_3d(2, 8, 8, (32, 32, 32), 1, 2, 9, backward=True) == "dense"


# ---------------------------------------------------------------------------------------------
# 3D
# ---------------------------------------------------------------------------------------------


SCIPY_3D = [  # (D, H, W, sigmas, order, truncate); the interpreter runs the first only
    pytest.param(5, 6, 7, (0.8,), 2, 2.0, id="5x6x7-s0.8-o2"),
    pytest.param(7, 9, 8, (0.6, 1.3), 3, 2.5, id="7x9x8-2scales-o3"),
]


def _scipy3d_cases():
    for combo in COMBOS:
        for i, case in enumerate(SCIPY_3D):
            if combo[0] == "triton" and i > 0:
                continue
            yield pytest.param(*combo, *case.values, id=f"{combo[0]}-{combo[1]}-{case.id}")
    for p in PATHS:
        for case in SCIPY_3D:
            yield pytest.param("cuda", p, *case.values, marks=CUDA.marks, id=f"cuda-{p}-{case.id}")


@pytest.mark.parametrize("backend,path,d,h,w,sigmas,order,truncate", list(_scipy3d_cases()),
                         indirect=["backend", "path"])
def test_conv3d_one_hot_alpha_equals_scipy_gaussian_filter(backend, path, d, h, w, sigmas, order, truncate):
    # Axis convention: p along x (dim -1), q along y (dim -2), t along z (dim -3), so scipy's
    # per-axis order is (t, q, p), as (q, p) in 2D.
    dev = device_of(backend)
    x = _rand(1, 1, d, h, w, seed=11)
    pqt = basis.derivative_orders_3d(order)
    n = len(sigmas) * len(pqt)
    out = gauss_deriv_conv3d(x.to(dev), torch.eye(n, dtype=F64).reshape(n, 1, n).to(dev), sigmas, order=order,
                             truncate=truncate).cpu()
    assert out.shape == (1, n, d, h, w)
    for si, s in enumerate(sigmas):
        for b, (p, q, t) in enumerate(pqt):
            want = ndimage.gaussian_filter(x[0, 0].numpy(), s, order=(t, q, p), mode="constant", truncate=truncate)
            err = (out[0, si * len(pqt) + b] - torch.from_numpy(want)).abs().max().item()
            assert err < 1e-10, (s, p, q, t, err)


GEOMS_3D = [  # (N, Ci, Co, D, H, W, sigmas, order, stride, padding)
    pytest.param(2, 2, 3, 6, 7, 9, (0.7, 1.2), 2, 1, "same", id="same"),
    pytest.param(1, 3, 2, 8, 7, 6, (1.0,), 1, 2, 1, id="stride2-pad1"),
]


@pytest.mark.parametrize("backend,path", [c for c in COMBOS if c[0] == "cpp"] + CUDA_COMBOS, indirect=True)
@pytest.mark.parametrize("n,ci,co,d,h,w,sigmas,order,stride,padding", GEOMS_3D)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_conv3d_forward_backward_match_reference(backend, path, n, ci, co, d, h, w, sigmas, order, stride, padding,
                                                 dtype, monkeypatch):
    if CUDA_ON_CPU and backend == "cuda" and path == "separable" and padding == "same":
        pytest.skip("rehearsal: ~50 s per case in the interpreter; stride2-pad1 runs the same test code")
    m = basis.num_basis(order, 3)
    x64, a64 = _rand(n, ci, d, h, w, seed=1), _rand(co, ci, len(sigmas) * m, seed=2)
    kw = dict(order=order, truncate=2.5, stride=stride, padding=padding, scale_normalized=order == 1)
    _check_op_against_reference(3, backend, (x64, a64, torch.tensor(sigmas, dtype=F64)), dtype, kw, monkeypatch,
                                reference_of_rounded=False)


@pytest.mark.parametrize("backend,path", COMBOS + CUDA_COMBOS, indirect=True)
def test_conv3d_gradcheck(backend, path):
    tiny = _interpreted(backend)  # the interpreter: one channel, order 1, a 3-tap kernel
    dev = device_of(backend)
    x = _rand(1, 1 if tiny else 2, *((3, 4, 5) if tiny else (4, 5, 5)), seed=12).to(dev).requires_grad_()
    a = _rand(1 if tiny else 2, x.shape[1], 4 if tiny else 2 * 10, seed=13).to(dev).requires_grad_()
    s = torch.tensor([0.8] if tiny else [0.7, 1.1], dtype=F64).to(dev).requires_grad_()
    order = 1 if tiny else 2
    for stride, padding in [(1, "same")] + ([] if tiny else [(2, 1)]):
        f = lambda x, a, s: gauss_deriv_conv3d(x, a, s, order=order, truncate=1.5 if tiny else 2.0,  # noqa: E731
                                               stride=stride, padding=padding)
        with cudnn_deterministic():
            assert torch.autograd.gradcheck(f, (x, a, s), fast_mode=True)


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
def test_triton_3d_strided_matches_reference(backend, monkeypatch):
    # gx of a strided op runs the forward kernel on the dilated gradient: check it once at stride 2.
    monkeypatch.setenv("RBFKERN_GD_PATH", "separable")
    dev = device_of(backend)
    x, a, s = _rand(1, 1, 4, 5, 5, seed=21), _rand(1, 1, 4, seed=22), torch.tensor([0.8], dtype=F64)
    x, a, s = x.to(dev), a.to(dev), s.to(dev)
    kw = dict(order=1, truncate=1.5, stride=2, padding=1)
    xs, as_, ss = (t.clone().requires_grad_() for t in (x, a, s))
    out = gauss_deriv_conv3d(xs, as_, ss, **kw)
    gout = _rand(*out.shape, seed=23).to(dev)
    grads = torch.autograd.grad(out, (xs, as_, ss), gout)
    xr, ar, sr = (t.clone().requires_grad_() for t in (x, a, s))
    want = reference.gauss_deriv_conv3d(xr, ar, sr, 1, 1.5, None, 2, 1)
    wgrads = torch.autograd.grad(want, (xr, ar, sr), gout)
    assert torch.allclose(out, want, atol=1e-12)
    for got, ref in zip(grads, wgrads):
        assert torch.allclose(got, ref, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Determinism (issue 8): bitwise-identical results across thread counts and repeated runs
# ---------------------------------------------------------------------------------------------


def _run_fb(fn, shape_x, m, dtype, seed, device=CPU):
    x = _rand(*shape_x, seed=seed, dtype=dtype).to(device).requires_grad_()
    a = _rand(5, shape_x[1], 2 * m, seed=seed + 1, dtype=dtype).to(device).requires_grad_()
    s = torch.tensor([0.9, 1.7], dtype=dtype).to(device).requires_grad_()
    out = fn(x, a, s)
    grads = torch.autograd.grad(out, (x, a, s), _rand(*out.shape, seed=seed + 2, dtype=dtype).to(device))
    return (out.detach(),) + grads


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("path", ["separable"], indirect=True)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_cpu_results_are_bitwise_identical_across_threads_and_runs(backend, path, ndim, dtype):
    if ndim == 2:
        shape, m = (2, 3, 160, 16), basis.num_basis(2)  # 3 backward tiles: 2 slots
        fn = lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=2, truncate=3.0)  # noqa: E731
    else:
        shape, m = (2, 3, 13, 19, 17), basis.num_basis(2, 3)
        fn = lambda x, a, s: gauss_deriv_conv3d(x, a, s, order=2, truncate=2.5)  # noqa: E731
    before = torch.get_num_threads()
    try:
        runs = []
        for nt in (1, 2, 2, 1):
            torch.set_num_threads(nt)
            runs.append(_run_fb(fn, shape, m, dtype, seed=30))
    finally:
        torch.set_num_threads(before)
    for r in runs[1:]:
        for got, first, name in zip(r, runs[0], ("out", "gx", "galpha", "gsigma")):
            assert torch.equal(got, first), name


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("path", ["dense"], indirect=True)
def test_dense_path_backward_is_bitwise_identical_in_deterministic_mode(backend, path):
    # The dense path's conv weight gradient depends on the thread count; deterministic mode
    # routes the backward through the separable kernels.
    fn = lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=2, truncate=3.0)  # noqa: E731
    before = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for nt in (1, 2):
            torch.set_num_threads(nt)
            runs.append(_run_fb(fn, (4, 8, 40, 40), basis.num_basis(2), torch.float32, seed=50))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(before)
    for got, first in zip(runs[1], runs[0]):
        assert torch.equal(got, first)


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("path", ["separable"], indirect=True)
def test_triton_backward_is_deterministic(backend, path):
    # No atomics: the same partials summed in the same order (meaningful on a GPU; here a check
    # that the partial buffers are fully written and reduced).
    fn = lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=1, truncate=1.0)  # noqa: E731
    dev = device_of(backend)
    r1 = _run_fb(fn, (1, 1, 5, 18), basis.num_basis(1), F64, seed=40, device=dev)  # two tiles along x
    r2 = _run_fb(fn, (1, 1, 5, 18), basis.num_basis(1), F64, seed=40, device=dev)
    for got, first in zip(r2, r1):
        assert torch.equal(got, first)


@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("path", ["separable"], indirect=True)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_cuda_results_are_bitwise_identical_across_runs(backend, path, ndim, dtype):
    # README, Determinism (GPU): the Triton kernels use no atomics (per-program partials summed in
    # a fixed order), so forward and backward repeat bit for bit. Several tiles per image (2D:
    # 2 x 2 tiles of 16 x 16; 3D: 2 along x), two input channels, two scales (sizes small enough
    # for the interpreter).
    dev = device_of(backend)
    if ndim == 2:
        shape, m = (1, 2, 18, 17), basis.num_basis(2)
        fn = lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=2, truncate=1.0)  # noqa: E731
    else:
        shape, m = (1, 2, 2, 3, 18), basis.num_basis(1, 3)
        fn = lambda x, a, s: gauss_deriv_conv3d(x, a, s, order=1, truncate=1.0)  # noqa: E731
    first, again = (_run_fb(fn, shape, m, dtype, seed=60, device=dev) for _ in range(2))
    for a, b, name in zip(again, first, ("out", "gx", "galpha", "gsigma")):
        assert torch.equal(a, b), name
    assert all(bool(t.abs().sum() > 0) for t in first), "a result is all zeros: nothing was compared"


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_layer_effective_weight_equals_the_op(device):
    layer = GaussDerivConv2d(3, 4, order=3, sigmas=(0.8, 1.5), truncate=3.0).double().to(device)
    x = _rand(2, 3, 12, 11, seed=14).to(device)
    w = layer.effective_weight()
    r = basis.radius(1.5, 3.0)
    assert w.shape == (4, 3, 2 * r + 1, 2 * r + 1)
    assert torch.allclose(layer(x), torch.nn.functional.conv2d(x, w, padding=r), atol=1e-12)


def test_layer_learns_sigma():
    layer = GaussDerivConv2d(1, 2, order=2, sigmas=(1.5,), learn_sigma=True, truncate=3.0).double()
    x = _rand(1, 1, 10, 10, seed=15)
    layer(x).square().mean().backward()
    assert layer.sigma.grad is not None and torch.isfinite(layer.sigma.grad).all()
    assert layer.alpha.grad.shape == layer.alpha.shape


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_cpp_taps_follow_sigma_changed_in_place(backend, dtype):
    # the C++ backend keeps the taps of recent scales, by value: a sigma changed in place (as an
    # optimizer step changes it) gives the new scale's output and gradient, and going back to a
    # scale gives its first result bit for bit
    x = _rand(2, 3, 11, 11, seed=16).to(dtype).requires_grad_()
    alpha = _rand(4, 3, 6, seed=17).to(dtype)
    sigma = torch.tensor([1.2], dtype=dtype, requires_grad=True)
    first = None
    for scale in (1.2, 1.45, 1.2):
        with torch.no_grad():
            sigma.fill_(scale)
        y = gauss_deriv_conv2d(x, alpha, sigma, order=2, truncate=3.0)
        gx, gs = torch.autograd.grad(y.square().sum(), (x, sigma))
        xr, sr = x.detach().double().requires_grad_(), sigma.detach().double().requires_grad_()
        want = reference.gauss_deriv_conv2d(xr, alpha.double(), sr, 2, 3.0)
        want_gx, want_gs = torch.autograd.grad(want.square().sum(), (xr, sr))
        assert_close_to_ref(y, want, dtype, what=f"y at sigma {scale}")
        assert_close_to_ref(gx, want_gx, dtype, what=f"grad x at sigma {scale}", kind="reduction")
        assert_close_to_ref(gs, want_gs, dtype, what=f"grad sigma at sigma {scale}", kind="reduction")
        if first is None:
            first = (y.detach(), gx, gs)
    assert all(torch.equal(a, b) for a, b in zip(first, (y.detach(), gx, gs)))


def _blobs(h, w, theta):
    """A smooth test image, rotated by theta about its centre, evaluated analytically (no resampling)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=F64) - h // 2, torch.arange(w, dtype=F64) - w // 2, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    # I_theta(z) = I(R_theta^{-1} z)
    xr, yr = c * x + s * y, -s * x + c * y
    img = torch.zeros_like(x)
    for cx, cy, sx, sy, amp in [(2.0, -1.0, 3.0, 1.7, 1.0), (-3.0, 2.5, 2.0, 2.6, -0.7), (0.5, 3.0, 1.5, 1.2, 0.5)]:
        img = img + amp * torch.exp(-((xr - cx) ** 2) / (2 * sx * sx) - ((yr - cy) ** 2) / (2 * sy * sy))
    return img[None, None]


@pytest.mark.parametrize("theta", [math.pi / 2, math.radians(30), math.radians(200)], ids=["90", "30", "200"])
def test_steer_equals_filtering_the_rotated_image(theta):
    h = w = 31
    layer = GaussDerivConv2d(1, 5, order=4, sigmas=(2.0,), truncate=4.0).double()
    img, img_rot = _blobs(h, w, 0.0), _blobs(h, w, theta)
    with torch.no_grad():
        base = layer(img_rot)[0, :, h // 2, w // 2]
        layer.alpha.copy_(layer.steer(theta))
        steered = layer(img)[0, :, h // 2, w // 2]
    # Exact for the continuous basis; sampled Gaussians at sigma 2 are steerable to ~1e-4.
    assert torch.allclose(steered, base, rtol=0, atol=2e-3 * base.abs().max())
    # eq. 22 (ch. 3): Gxx^t = cos^2 Gxx - 2 cos sin Gxy + sin^2 Gyy
    t = basis.steering_matrix(2, -theta)
    c, s = math.cos(theta), math.sin(theta)
    pq = basis.derivative_orders(2)
    row = t[pq.index((2, 0))]
    assert torch.allclose(row[3:], torch.tensor([c * c, -2 * c * s, s * s], dtype=F64), atol=1e-15)


def test_steer_90_degrees_is_exact_on_the_grid():
    layer = GaussDerivConv2d(1, 3, order=3, sigmas=(1.0,), truncate=3.0).double()
    img = _rand(1, 1, 15, 15, seed=16)
    with torch.no_grad():
        base = layer(torch.rot90(img, 1, (-1, -2)))  # rotate the image on the grid by +90 degrees
        layer.alpha.copy_(layer.steer(math.pi / 2))
        steered = layer(img)
    assert torch.allclose(torch.rot90(steered, 1, (-1, -2)), base, atol=1e-12)


def test_conv3d_layer_and_rfnin_block_train_a_step():
    torch.manual_seed(0)
    layer3 = GaussDerivConv3d(2, 3, order=1, sigmas=(1.0,), truncate=2.0)
    assert layer3(torch.randn(1, 2, 6, 7, 8)).shape == (1, 3, 6, 7, 8)
    model = torch.nn.Sequential(RFNiNBlock(1, 8, order=2, sigmas=(1.0, 2.0), truncate=2.0),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    loss0 = torch.nn.functional.cross_entropy(model(x), y)
    loss0.backward()
    opt.step()
    assert torch.isfinite(loss0)
    assert model[0][0].alpha.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_cpp_other_instruction_sets(isa):
    # The separable kernels' GEMM and dot products are compiled once per instruction set, each with
    # its own vector width: their reference and scipy tests with the ISA capped.
    run_tests_under_isa(isa, __file__, "(test_forward_backward_match_reference or test_gradcheck or "
                        "test_conv3d_forward_backward_match_reference or test_conv3d_gradcheck or "
                        "test_one_hot_alpha_equals_scipy or test_conv3d_one_hot) and cpp")
