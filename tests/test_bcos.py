"""B-cos ops, layers and explanations: equality with the official bcos 0.1.3 package (float64),
gradients, registration, bad input, and the explanation identities of the paper (eq. 13, 15)."""
import importlib
import importlib.util
import math
import os

import pytest
import torch

from rbfkern import _official_bcos, explain, reference
from rbfkern.nn import AddInverse, BcosConv2d, BcosLinear, convert_to_bcos, explanation_mode
from rbfkern.ops import bcos_conv2d, bcos_linear
from rbfkern._bcos_common import BcosGeometry

from _util import HALF, assert_close_to_ref, assert_within_naive_error, cudnn_deterministic, run_tests_under_isa
from conftest import CPU_BACKENDS, CUDA, CUDA_ON_CPU, DEVICES, TRITON_BACKENDS, device_of

ALL_BACKENDS = CPU_BACKENDS + ["reference"]
CPU = torch.device("cpu")


def _on_cuda(*values, id=None):
    """A parametrised row of the CUDA variant: backend "cuda" first, then ``values``, with its marks."""
    return pytest.param("cuda", *values, marks=CUDA.marks, id=id)


official = _official_bcos.find("modules")
needs_official = pytest.mark.skipif(official is None, reason="pip install --no-deps bcos==0.1.3 einops")

F64 = torch.float64


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


# ---------------------------------------------------------------------------------------------
# The reference against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_reference_hand_case():
    # One 1x1 filter w = [3, 4] (w-hat = [0.6, 0.8]) on one pixel x = [1, 2]: l = 0.6 + 1.6 = 2.2,
    # n = sqrt(1 + 4 + 1e-6); B = 2: y = l |l| / n.
    x = torch.tensor([1.0, 2.0], dtype=F64).reshape(1, 2, 1, 1)
    w = torch.tensor([3.0, 4.0], dtype=F64).reshape(1, 2, 1, 1)
    n = math.sqrt(5 + 1e-6)
    assert reference.bcos_conv2d(x, w, b=2.0).item() == pytest.approx(2.2 * 2.2 / n, rel=1e-14)
    assert reference.bcos_conv2d(x, w, b=1.0).item() == pytest.approx(2.2, rel=1e-14)
    assert reference.bcos_conv2d(x, w, b=3.0).item() == pytest.approx(2.2 * (2.2 / n + 1e-6) ** 2, rel=1e-14)
    # MaxOut before scaling: filters [3, 4] and [-3, -4] -> max is the first (+2.2).
    w2 = torch.cat([w, -w])
    assert reference.bcos_conv2d(x, w2, b=2.0, max_out=2).item() == pytest.approx(2.2 * 2.2 / n, rel=1e-14)
    # Linear: n = ||x|| + 1e-12.
    assert reference.bcos_linear(x.reshape(1, 2), w.reshape(1, 2)).item() == pytest.approx(
        2.2 * 2.2 / (math.sqrt(5) + 1e-12), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Equality with the official package, float64: forward, input and weight gradients, explain mode
# ---------------------------------------------------------------------------------------------

# (C, O, kernel, stride, padding, groups, H, W)
CONV_GEOMS = {
    "k3s1p1": (4, 6, 3, 1, 1, 1, 7, 6),
    "k3s2p0": (3, 4, 3, 2, 0, 1, 9, 8),
    "groups2": (4, 6, 3, 1, 1, 2, 5, 5),
    "k3x2_s21_p10": (3, 4, (3, 2), (2, 1), (1, 0), 1, 6, 5),
    "k1": (5, 3, 1, 1, 0, 1, 4, 3),
}


def _official_conv(C, O, k, s, p, groups, b, max_out, seed=0, device=CPU):
    # built on CPU (the same initial weights everywhere), then moved: the official layer is pure
    # PyTorch, so on CUDA it runs cuDNN in float64
    torch.manual_seed(seed)
    return official.BcosConv2d(C, O, k, stride=s, padding=p, groups=groups, b=b, max_out=max_out).to(F64).to(device)


def _check_vs_official(m, x, g, ours, tag):
    """ours(x, w, explain) against the official layer m with the same weight w, in both explanation
    modes: output and the gradients of x and w for a random upstream gradient drawn from g.
    Returns our (grad x, grad w) of each mode."""
    w = m.linear.weight.detach().clone().requires_grad_(True)
    grads = []
    for explain_mode in (False, True):
        m.set_explanation_mode(explain_mode)
        y0 = m(x)
        gy = torch.randn(y0.shape, generator=g, dtype=F64).to(x.device)
        gx0, gw0 = _grads(y0, (x, m.linear.weight), gy)
        y1 = ours(x, w, explain_mode)
        gx1, gw1 = _grads(y1, (x, w), gy)
        what = f"{tag} explain={explain_mode}"
        assert_close_to_ref(y1, y0, F64, what=f"y {what}")
        assert_close_to_ref(gx1, gx0, F64, what=f"grad x {what}")
        assert_close_to_ref(gw1, gw0, F64, what=f"grad w {what}")
        grads.append((gx1, gw1))
    return grads


def _check_conv_vs_official(geom, b, max_out, scale=1.0, zero_region=False, device=CPU):
    C, O, k, s, p, groups, H, W = CONV_GEOMS[geom]
    m = _official_conv(C, O, k, s, p, groups, b, max_out, device=device)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, C, H, W, generator=g, dtype=F64) * scale).to(device)
    if zero_region:
        x[:, :, : H // 2 + 1, : W // 2 + 1] = 0  # whole all-zero patches (and padding around them)
    x.requires_grad_(True)

    def ours(x, w, explain_mode):
        return bcos_conv2d(x, w, b=b, max_out=max_out, stride=s, padding=p, groups=groups, explain=explain_mode)

    for gx1, gw1 in _check_vs_official(m, x, g, ours, f"{geom} b={b} M={max_out}"):
        assert torch.isfinite(gx1).all() and torch.isfinite(gw1).all()


@needs_official
@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("geom", list(CONV_GEOMS))
@pytest.mark.parametrize("b", [1.0, 1.5, 2.0, 2.5])
def test_conv_matches_official(backend, geom, b):
    # float64 on CUDA: cuDNN's convolution and the Triton epilogue kernels (the unfused path)
    for max_out in (1, 2, 3):
        _check_conv_vs_official(geom, b, max_out, device=device_of(backend))


@needs_official
@pytest.mark.parametrize("backend", ["reference"], indirect=True)
@pytest.mark.parametrize("geom,b,max_out", [("groups2", 2.5, 3), ("k3x2_s21_p10", 2.0, 2), ("k3s2p0", 1.0, 2)])
def test_reference_matches_official(backend, geom, b, max_out):
    _check_conv_vs_official(geom, b, max_out)


@needs_official
@pytest.mark.triton
@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="needs triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("geom,b,max_out", [("k3s1p1", 2.0, 2), ("groups2", 1.5, 3), ("k3x2_s21_p10", 2.5, 1)])
def test_conv_matches_official_triton(backend, geom, b, max_out):
    _check_conv_vs_official(geom, b, max_out)


@pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)
@pytest.mark.parametrize("C,O,max_out,k,stride,padding,dilation,groups,b", [
    (6, 4, 3, (3, 2), (2, 1), (1, 0), 1, 2, 2.5), (20, 40, 1, 3, 1, 2, 2, 1, 1.0)])
def test_triton_fused_implicit_gemm_float32(backend, monkeypatch, C, O, max_out, k, stride, padding, dilation,
                                            groups, b):
    # float32 takes the implicit-GEMM kernel with the fused epilogue: l is never computed by torch.
    from rbfkern import _bcos_common as bcos_common
    real_map = bcos_common.linear_map

    def no_forward_conv(*args, **kwargs):
        raise AssertionError("the fused Triton forward should not run the torch convolution")

    dev = device_of(backend)
    g = torch.Generator().manual_seed(0)
    kk = (k, k) if isinstance(k, int) else k
    x = torch.randn(2, C, 7, 6, generator=g).to(dev).requires_grad_()
    w = torch.randn(O * max_out, C // groups, *kk, generator=g).to(dev).requires_grad_()
    kw = dict(b=b, max_out=max_out, stride=stride, padding=padding, dilation=dilation, groups=groups)
    monkeypatch.setattr(bcos_common, "linear_map", no_forward_conv)
    y = bcos_conv2d(x, w, **kw)
    monkeypatch.setattr(bcos_common, "linear_map", real_map)
    gy = torch.randn(y.shape, generator=g).to(dev)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y0 = reference.bcos_conv2d(xd, wd, b, max_out, stride, padding, dilation, groups)
    gx0, gw0 = torch.autograd.grad(y0, (xd, wd), gy.double())
    for got, want, what in ((y, y0, "y"), (gx, gx0, "grad x"), (gw, gw0, "grad w")):
        assert_close_to_ref(got, want, torch.float32, what=what)


@needs_official
@pytest.mark.parametrize(  # the interpreter runs a subset
    "backend,b", [(bk, b) for bk in ALL_BACKENDS for b in (1.5, 2.0) if bk != "triton" or b == 2.0]
    + [_on_cuda(b) for b in (1.5, 2.0)],
    indirect=["backend"],
)
def test_conv_tiny_magnitude_and_zero_patches(backend, b):
    _check_conv_vs_official("k3s1p1", b, 2, scale=1e-7, device=device_of(backend))
    _check_conv_vs_official("k3s1p1", b, 2, zero_region=True, device=device_of(backend))


@needs_official
@pytest.mark.parametrize(  # the interpreter runs a subset
    "backend,b,max_out",
    [(bk, b, m) for bk in ALL_BACKENDS for m in (1, 3) for b in (1.0, 1.5, 2.0, 2.5)
     if bk != "triton" or (b, m) in ((2.0, 3), (1.5, 1))]
    + [_on_cuda(b, m) for m in (1, 3) for b in (1.0, 1.5, 2.0, 2.5)],
    indirect=["backend"],
)
def test_linear_matches_official(backend, b, max_out):
    # float64 on CUDA: cuBLAS for the GEMM, the Triton epilogue kernels
    dev = device_of(backend)
    torch.manual_seed(0)
    m = official.BcosLinear(5, 4, b=b, max_out=max_out).to(F64).to(dev)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 5, generator=g, dtype=F64).to(dev)
    x[0, 0] = 0  # an all-zero row: n = 1e-12, finite gradients
    x[1, 1] *= 1e-9
    x.requires_grad_(True)
    _check_vs_official(m, x, g, lambda x, w, e: bcos_linear(x, w, b=b, max_out=max_out, explain=e), "")


@pytest.mark.parametrize("layer", ["conv2d", "linear"])
def test_a_loss_on_the_explanation_trains_the_weights_as_the_reference(layer):
    # an explanation loss (e.g. penalising contributions outside a mask) backpropagates through the
    # input gradient of explanation mode: the second-order path of the backward ops
    g = torch.Generator().manual_seed(7)
    if layer == "conv2d":
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=g)
        w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
        ours = lambda a, b: bcos_conv2d(a, b, max_out=2, padding=1, explain=True)
        ref = lambda a, b: reference.bcos_conv2d(a, b, 2.0, 2, (1, 1), (1, 1), (1, 1), 1, True)
    else:
        x = torch.randn(5, 7, dtype=torch.float64, generator=g)
        w = torch.randn(6, 7, dtype=torch.float64, generator=g)
        ours = lambda a, b: bcos_linear(a, b, b=2.5, max_out=2, explain=True)
        ref = lambda a, b: reference.bcos_linear(a, b, 2.5, 2, True)

    def weight_grad(f):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = f(xi, wi)
        contrib = torch.autograd.grad(y[:, 1].sum(), xi, create_graph=True)[0] * xi
        return torch.autograd.grad(contrib.pow(2).sum(), wi)[0]

    want = weight_grad(ref)
    torch.testing.assert_close(weight_grad(ours), want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


@needs_official
@pytest.mark.parametrize("backend", ALL_BACKENDS + [CUDA], indirect=True)
def test_maxout_ties_take_the_first(backend):
    dev = device_of(backend)
    m = _official_conv(3, 2, 3, 1, 1, 1, 2.0, 2, device=dev)
    with torch.no_grad():
        m.linear.weight[1::2] = m.linear.weight[0::2]  # identical filters in every MaxOut pair
    x = torch.randn(1, 3, 4, 4, dtype=F64).to(dev).requires_grad_()
    w = m.linear.weight.detach().clone().requires_grad_(True)
    gy = torch.randn(1, 2, 4, 4, dtype=F64).to(dev)
    gw0 = _grads(m(x), (m.linear.weight,), gy)[0]
    gw1 = _grads(bcos_conv2d(x, w, b=2.0, max_out=2, padding=1), (w,), gy)[0]
    assert_close_to_ref(gw1, gw0, F64, what="grad w")
    assert gw1[1::2].abs().max() == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS + [CUDA], indirect=True)
def test_dilation_with_maxout_and_tuples_match_reference(backend, monkeypatch):
    # The official layer breaks here; the spec is the same formula (dilation-aware patch norm).
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=F64).to(dev).requires_grad_()
    w = torch.randn(6, 2, 3, 2, generator=g, dtype=F64).to(dev).requires_grad_()
    kw = dict(b=2.5, max_out=3, stride=(2, 1), padding=(2, 1), dilation=(2, 3), groups=2)
    y = bcos_conv2d(x, w, **kw)
    gy = torch.randn(y.shape, generator=g, dtype=F64).to(dev)
    gx, gw = _grads(y, (x, w), gy)
    monkeypatch.setenv("RBFKERN_BACKEND", "reference")
    y0 = reference.bcos_conv2d(x, w, 2.5, 3, (2, 1), (2, 1), (2, 3), 2)
    gx0, gw0 = _grads(y0, (x, w), gy)
    assert_close_to_ref(y, y0, F64, what="y")
    assert_close_to_ref(gx, gx0, F64, what="grad x")
    assert_close_to_ref(gw, gw0, F64, what="grad w")


@pytest.mark.parametrize("backend", CPU_BACKENDS + [CUDA], indirect=True)
def test_float32_and_half_inputs(backend):
    # (half inputs on CUDA: test_half_inputs_within_naive_error)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g).to(device_of(backend))
    w = torch.randn(8, 4, 3, 3, generator=g).to(device_of(backend))
    want = reference.bcos_conv2d(x.double(), w.double(), 2.0, 2, 1, 1)
    assert_close_to_ref(bcos_conv2d(x, w, max_out=2, padding=1), want, torch.float32, what="y")
    if backend == "cpp":
        y = bcos_conv2d(x.bfloat16(), w.bfloat16(), max_out=2, padding=1)
        assert y.dtype == torch.bfloat16
        assert_close_to_ref(y, want, torch.bfloat16, what="bfloat16 y")


def _skip_bf16_in_rehearsal(dtype):
    if CUDA_ON_CPU and dtype == torch.bfloat16:
        pytest.skip("rehearsal: the interpreter's tl.dot on bfloat16 operands returns garbage (triton 3.8); "
                    "the float16 case runs the same test code")


@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("b", [2.0, 2.5])
@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"])
@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_half_inputs_within_naive_error(backend, linear, dtype, b):
    # float16/bfloat16 on CUDA run the fused kernels (float32 accumulation): output and both
    # gradients within 2x the error of the reference computed plainly in the half dtype, both
    # measured against the float64 reference on the same (rounded) inputs.
    _skip_bf16_in_rehearsal(dtype)
    dev = device_of(backend)
    g = torch.Generator().manual_seed(0)
    if linear:  # 130 rows, 37 features, 17 outputs: partial tiles everywhere
        x, w = torch.randn(130, 37, generator=g, dtype=F64), torch.randn(17 * 2, 37, generator=g, dtype=F64)
        ours = lambda x, w: bcos_linear(x, w, b=b, max_out=2)  # noqa: E731
        ref = lambda x, w: reference.bcos_linear(x, w, b, 2)  # noqa: E731
    else:
        x, w = torch.randn(2, 4, 9, 7, generator=g, dtype=F64), torch.randn(8, 2, 3, 3, generator=g, dtype=F64)
        ours = lambda x, w: bcos_conv2d(x, w, b=b, max_out=2, stride=(2, 1), padding=1, groups=2)  # noqa: E731
        ref = lambda x, w: reference.bcos_conv2d(x, w, b, 2, (2, 1), 1, 1, 2)  # noqa: E731
    xh, wh = x.to(dtype).to(dev), w.to(dtype).to(dev)
    results = {}
    for name, fn, cast in (("ours", ours, dtype), ("naive", ref, dtype), ("want", ref, F64)):
        xs, ws = xh.clone().to(cast).requires_grad_(), wh.clone().to(cast).requires_grad_()
        y = fn(xs, ws)
        assert y.dtype == cast, name
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(dev)
        results[name] = (y,) + torch.autograd.grad(y, (xs, ws), gy.to(cast))
    for i, what in enumerate(("y", "grad x", "grad w")):
        assert results["ours"][i].dtype == dtype
        assert_within_naive_error(results["ours"][i], results["want"][i], results["naive"][i],
                                  f"{what} {dtype} b={b}")


@pytest.mark.parametrize("backend", ALL_BACKENDS + [CUDA], indirect=True)
def test_empty_batch(backend):
    """N = 0 is legal (DESIGN.md, Errors): empty output, empty / zero gradients, on every backend."""
    dev = device_of(backend)
    x = torch.zeros(0, 3, 5, 5, dtype=F64, device=dev, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=F64).to(dev).requires_grad_()
    y = bcos_conv2d(x, w, max_out=2)
    assert y.shape == (0, 2, 3, 3)
    gx, gw = _grads(y.sum() + 0.0, (x, w), None)
    assert gx.shape == x.shape and torch.all(gw == 0)
    xl = torch.zeros(0, 3, dtype=F64, device=dev, requires_grad=True)
    wl = torch.randn(4, 3, dtype=F64).to(dev).requires_grad_()
    yl = bcos_linear(xl, wl, b=1.5, max_out=2)
    assert yl.shape == (0, 2)
    gx, gw = _grads(yl.sum() + 0.0, (xl, wl), None)
    assert gx.shape == xl.shape and torch.all(gw == 0)


# ---------------------------------------------------------------------------------------------
# Gradients (gradcheck in float64 on every backend) and saved-for-backward memory
# ---------------------------------------------------------------------------------------------


def _gradcheck(b, max_out, explain_mode, groups=1, linear=False, device=CPU):
    g = torch.Generator().manual_seed(5)
    if linear:
        x = torch.randn(3, 4, generator=g, dtype=F64).to(device).requires_grad_()
        w = torch.randn(2 * max_out, 4, generator=g, dtype=F64).to(device).requires_grad_()
        fn = lambda x, w: bcos_linear(x, w, b=b, max_out=max_out, explain=explain_mode)  # noqa: E731
    else:
        x = torch.randn(1, 2 * groups, 4, 3, generator=g, dtype=F64).to(device).requires_grad_()
        w = torch.randn(groups * max_out, 2, 3, 2, generator=g, dtype=F64).to(device).requires_grad_()
        fn = lambda x, w: bcos_conv2d(x, w, b=b, max_out=max_out, stride=(1, 2), padding=1,  # noqa: E731
                                      groups=groups, explain=explain_mode)
    if explain_mode:
        # In explain mode the backward is W(x) only: compare with the detached-factor reference.
        gy = torch.randn(fn(x, w).shape, generator=g, dtype=F64).to(device)
        want = torch.autograd.grad(
            (reference.bcos_linear(x, w, b, max_out, True) if linear else
             reference.bcos_conv2d(x, w, b, max_out, (1, 2), 1, 1, groups, True)), (x, w), gy)
        got = torch.autograd.grad(fn(x, w), (x, w), gy)
        for a, c in zip(got, want):
            assert_close_to_ref(a, c, F64, what="explain grads")
    else:
        with cudnn_deterministic():
            assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("b,max_out", [(1.0, 2), (1.5, 1), (2.0, 2), (2.5, 3)])
@pytest.mark.parametrize("explain_mode", [False, True])
@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_gradcheck_cpp(backend, b, max_out, explain_mode, linear):
    # (and the CUDA variant: float64 there is the unfused path, cuDNN / cuBLAS + Triton epilogues)
    _gradcheck(b, max_out, explain_mode, groups=1 if linear else 2, linear=linear, device=device_of(backend))


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("b,max_out,explain_mode,groups", [(1.0, 2, False, 1), (2.0, 2, False, 2), (2.5, 3, False, 1),
                                                           (2.0, 1, True, 1)])
@pytest.mark.parametrize("chunk_images", [1, 3])
def test_cpp_batch_chunks_match_reference(backend, monkeypatch, b, max_out, explain_mode, groups, chunk_images):
    # The C++ convolution runs forward and backward a batch chunk at a time (ops.bcos_cpp._CHUNK_BYTES
    # of raw conv output); chunks of 1 or 3 images of a batch of 5 (an uneven last chunk) must give
    # the reference's outputs and gradients, the weight gradient summed over the chunks.
    from rbfkern.ops import bcos_cpp as ob
    N, C, H, W, O = 5, 4, 6, 5, 2
    monkeypatch.setattr(ob, "_CONV_PATH", "onednn")  # the chunked forward, not the direct convolution
    monkeypatch.setattr(ob, "_CHUNK_BYTES", chunk_images * O * max_out * H * W * 8)
    geom = BcosGeometry(N, C, H, W, groups, O, max_out, H, W, 3, 3, 1, 1, 1, 1, 1, 1)
    assert len(ob._batch_chunks(geom, 8)) == -(-N // chunk_images)
    calls = []
    real = ob._linear_map_bwd
    monkeypatch.setattr(ob, "_linear_map_bwd", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, C, H, W, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(O * max_out, C // groups, 3, 3, generator=g, dtype=F64, requires_grad=True)
    y = bcos_conv2d(x, w, b=b, max_out=max_out, padding=1, groups=groups, explain=explain_mode)
    want = reference.bcos_conv2d(x, w, b, max_out, (1, 1), (1, 1), (1, 1), groups, explain_mode)
    assert_close_to_ref(y, want, F64, what="y")
    gy = torch.randn(y.shape, generator=g, dtype=F64)
    got = torch.autograd.grad(y, (x, w), gy)
    ref = torch.autograd.grad(want, (x, w), gy)
    assert calls == [min(chunk_images, N - i) for i in range(0, N, chunk_images)]
    assert_close_to_ref(got[0], ref[0], F64, what="grad x")
    assert_close_to_ref(got[1], ref[1], F64, what="grad w")


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("b,max_out", [(1.0, 2), (2.0, 1), (2.0, 3), (2.5, 2)])
@pytest.mark.parametrize("layer", ["linear", "conv1x1_groups", "conv1x1_groups_cl", "conv3x3_pad_on_1x1"])
def test_cpp_one_pixel_maps_match_reference(backend, b, max_out, layer):
    # A map with one output pixel that sees its input's only pixel (a linear layer, a 1x1 conv
    # without padding on 1x1 images, any groups) takes the channels-last epilogues whatever its
    # layout (csrc/cpu/bcos.h); a 3x3 conv with padding on a 1x1 image does not (its window has
    # zero taps). 17 rows, 19 outputs: row lengths off every vector width.
    g = torch.Generator().manual_seed(5)
    N, C, O, G = 17, 6, 19 if layer == "linear" else 18, 1 if layer == "linear" else 3
    if layer == "linear":
        x = torch.randn(N, C, generator=g, dtype=F64, requires_grad=True)
        w = torch.randn(O * max_out, C, generator=g, dtype=F64, requires_grad=True)
        fn = lambda a, c: bcos_linear(a, c, b=b, max_out=max_out)
        ref = lambda a, c: reference.bcos_linear(a, c, b, max_out, False)
    else:
        k, pad = (3, 1) if layer == "conv3x3_pad_on_1x1" else (1, 0)
        x = torch.randn(N, C, 1, 1, generator=g, dtype=F64)
        if layer.endswith("_cl"):
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
        x.requires_grad_()
        w = torch.randn(O * max_out, C // G, k, k, generator=g, dtype=F64, requires_grad=True)
        fn = lambda a, c: bcos_conv2d(a, c, b=b, max_out=max_out, padding=pad, groups=G)
        ref = lambda a, c: reference.bcos_conv2d(a, c, b, max_out, (1, 1), (pad, pad), (1, 1), G, False)
    y, want = fn(x, w), ref(x, w)
    assert_close_to_ref(y, want, F64, what=f"{layer} y")
    gy = torch.randn(y.shape, generator=g, dtype=F64)
    for got, exp, name in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(want, (x, w), gy),
                              ("grad x", "grad w")):
        assert_close_to_ref(got, exp, F64, what=f"{layer} {name}")


# (N, C, H, W, O, k, stride, padding, dilation, groups): column tails (W not a multiple of the
# vector), one / two / three column vectors, every tile shape (rows x column vectors: 2x2, 1x2,
# 4x1, 2x1, 1x1) with leftover rows, O not a multiple of the register tile, groups, row stride 2,
# dilation, asymmetric and no padding, fewer planes than threads.
DIRECT_GEOMS = {
    "w32": (3, 5, 6, 32, 13, 3, 1, 1, 1, 1),
    "w7": (2, 3, 5, 7, 4, 3, 1, 1, 1, 1),
    "w17_pad0": (2, 4, 9, 17, 9, 3, 1, 0, 1, 1),
    "w45_k5x1": (2, 2, 7, 45, 25, (5, 1), 1, (2, 0), 1, 1),
    "groups3_dil2": (2, 6, 11, 10, 6, 3, 1, 2, 2, 3),
    "rowstride2": (2, 4, 9, 12, 5, 3, (2, 1), (1, 2), (1, 2), 1),
    "n1_w16": (1, 8, 4, 16, 11, 3, 1, 1, 1, 1),
    "h1_w18": (2, 3, 3, 20, 7, 3, 1, 0, 1, 1),  # one output row: one row of column vectors
    "h1_w7": (2, 3, 3, 9, 5, 3, 1, 0, 1, 1),  # one narrow row: single-vector tiles
    "h2_w10": (2, 3, 4, 12, 6, 3, 1, 0, 1, 1),  # two narrow rows
}


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("geom", list(DIRECT_GEOMS))
@pytest.mark.parametrize("b,max_out", [(1.0, 2), (1.5, 3), (2.0, 2), (2.5, 1), (2.0, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cpp_direct_conv_matches_reference(backend, monkeypatch, geom, b, max_out, dtype):
    # The direct convolution with the epilogue in registers (csrc/cpu/bcos_direct.h), forced on,
    # against the float64 reference: y, the saved MaxOut value / argmax / root (through the
    # gradients), and against the oneDNN path's saved tensors. Padded-input chunks of one plane
    # (float32) or all planes (float64).
    from rbfkern.ops import bcos_cpp as ob
    if dtype == torch.float32:
        monkeypatch.setattr(ob, "_DIRECT_CHUNK_BYTES", 1)
    N, C, H, W, O, k, stride, padding, dilation, groups = DIRECT_GEOMS[geom]
    k = (k, k) if isinstance(k, int) else k
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, C, H, W, generator=g, dtype=F64)
    w = torch.randn(O * max_out, C // groups, *k, generator=g, dtype=F64)
    kw = dict(b=b, max_out=max_out, stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv = [(v, v) if isinstance(v, int) else v for v in (stride, padding, dilation)]
    want = reference.bcos_conv2d(x.requires_grad_(), w.requires_grad_(), b, max_out, *conv, groups, False)
    gy = torch.randn(want.shape, generator=g, dtype=F64)
    ref = torch.autograd.grad(want, (x, w), gy)
    outs = {}
    for path in ("direct", "onednn"):
        monkeypatch.setattr(ob, "_CONV_PATH", path)
        calls = []
        real = ob._backend.cext
        if path == "direct":  # the direct kernel must be the one that ran
            monkeypatch.setattr(ob._backend, "cext", lambda: _Spy(real(), calls))
        xs, ws_ = x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_()
        y = bcos_conv2d(xs, ws_, **kw)
        got = torch.autograd.grad(y, (xs, ws_), gy.to(dtype))
        outs[path] = torch.ops.rbfkern.bcos_conv2d(xs.detach(), ws_.detach(), float(b), max_out, *map(list, conv),
                                                   groups, False, True)
        monkeypatch.setattr(ob._backend, "cext", real)
        if path == "direct":
            assert "bcos_forward_direct" in calls and "bcos_forward" not in calls, calls
        assert_close_to_ref(y, want, dtype, what=f"{path} y", kind="reduction")
        assert_close_to_ref(got[0], ref[0], dtype, what=f"{path} grad x", kind="reduction")
        assert_close_to_ref(got[1], ref[1], dtype, what=f"{path} grad w", kind="reduction")
    (yd, md, idd, rd), (yo, mo, ido, ro) = outs["direct"], outs["onednn"]
    assert_close_to_ref(yd, yo, dtype, what="y direct vs oneDNN", kind="reduction")
    assert_close_to_ref(md, mo, dtype, what="lmax", kind="reduction")
    assert torch.equal(idd, ido), "argmax differs between the direct and oneDNN paths"
    if b != 1:
        assert_close_to_ref(rd, ro, dtype, what="root", kind="reduction")



def test_deterministic_weight_grad_ignores_unused_columns():
    # An inf in the last input column reaches only the taps that read it (j = 2 of a 3-wide window
    # without padding); the register tiles' unused lanes must not turn it into NaN elsewhere.
    from rbfkern.ops import bcos_cpp
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 4, 21, dtype=F64, generator=g)
    x[:, :, :, -1] = float("inf")
    gl = torch.randn(2, 3, 2, 19, dtype=F64, generator=g)
    w = torch.empty(3, 2, 3, 3, dtype=F64)
    got = bcos_cpp._weight_grad_deterministic(BcosGeometry.of_conv(x, w, 1, [1, 1], [0, 0], [1, 1], 1), gl, x, w)
    want = torch.ops.aten.convolution_backward(gl, x.nan_to_num(posinf=0.0), torch.empty(3, 2, 3, 3, dtype=F64), None,
                                               [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    assert torch.isfinite(got[..., :2]).all()
    torch.testing.assert_close(got[..., :2], want[..., :2], rtol=1e-12, atol=1e-12)
    assert not torch.isfinite(got[..., 2]).any()

@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_cpp_other_instruction_sets(isa):
    # The kernels are compiled once per instruction set with its own vector width and tile shapes
    # (fewer vectors for AVX2 / SSE's 16 registers): the direct convolution, the deterministic
    # weight gradient, the epilogues and the vectorised power, with the ISA capped.
    run_tests_under_isa(isa, __file__, "(test_cpp_direct_conv_matches_reference or test_deterministic_weight_grad "
                        "or test_gradcheck_cpp or test_vector_pow_matches_reference or test_power_of_non_finite "
                        "or test_conv_matches_official or test_linear_matches_official or test_cpp_linear_every_feature_count "
                        "or test_cpp_linear_tile) "
                        "and not triton and not cuda")

class _Spy:
    """Records the names of the C++ entry points called through it."""

    def __init__(self, mod, calls):
        self._mod, self._calls = mod, calls

    def __getattr__(self, name):
        self._calls.append(name)
        return getattr(self._mod, name)


@pytest.mark.triton
@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="needs triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
@pytest.mark.parametrize("b,max_out,linear", [(2.0, 2, False), (1.5, 1, True)])
def test_gradcheck_triton(backend, b, max_out, linear):
    _gradcheck(b, max_out, False, linear=linear)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("b", [0.5, 1.5, 2.5, 3.7])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_vector_pow_matches_reference(backend, b, dtype):
    # B != 1, 2 goes through the vectorised exp/log power of csrc/cpu/bcos_pow.h (CUDA: the power
    # of the Triton epilogues, fused in float32, unfused in float64): forward and both gradients
    # against the float64 reference on the same (rounded) inputs, cosines from ~0 to ~1 (inputs
    # spanning 1e-4 .. 1e3 in magnitude).
    dev = device_of(backend)
    g = torch.Generator().manual_seed(7)
    scale = torch.logspace(-4, 3, 6, dtype=F64).repeat_interleave(2).reshape(12, 1, 1, 1)
    x = (torch.randn(12, 4, 6, 6, generator=g, dtype=F64) * scale).to(dtype).to(dev)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=F64).to(dtype).to(dev)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    xo, wo = x.clone().requires_grad_(), w.clone().requires_grad_()
    want = reference.bcos_conv2d(xr, wr, b, 2, (1, 1), (1, 1), (1, 1), 1, False)
    got = bcos_conv2d(xo, wo, b=b, max_out=2, padding=1)
    gy = torch.randn(want.shape, generator=g, dtype=F64).to(dev)
    gw = torch.autograd.grad(want, (xr, wr), gy)
    gg = torch.autograd.grad(got, (xo, wo), gy.to(dtype))
    # float32: the oneDNN convolution itself is ~5e-5 off the float64 result (so is the float32
    # reference); a wrong power is off by O(1).
    assert_close_to_ref(got, want, dtype, what=f"y b={b}", kind="reduction")
    for a, c, name in zip(gg, gw, ("grad_x", "grad_w")):
        assert_close_to_ref(a, c, dtype, what=f"{name} b={b}", kind="reduction")


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("max_out", [1, 2, 5])
@pytest.mark.parametrize("b", [2.5, 1.3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_power_of_non_finite_inputs(backend, max_out, b, layout):
    # B other than 1, 2 runs the vector power (csrc/cpu/bcos_vpow.h) on blocks of pixels, in
    # either layout; with an inf, a NaN and a huge input in the batch, forward and both gradients
    # must have the reference's non-finite pattern and its finite values (no lane of a block
    # spoils its neighbours).
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 4, 6, 6, generator=g, dtype=F64)
    x[0, 1, 2, 3], x[1, 0, 0, 0], x[1, 2, 4, 4] = float("inf"), float("nan"), 1e300
    w = torch.randn(3 * max_out, 4, 3, 3, generator=g, dtype=F64)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gy = torch.randn(2, 3, 6, 6, generator=g, dtype=F64)
    outs = []
    for fn in (lambda a, c: bcos_conv2d(a, c, b=b, max_out=max_out, padding=1),
               lambda a, c: reference.bcos_conv2d(a, c, b, max_out, (1, 1), (1, 1), (1, 1), 1, False)):
        xa, wa = x.contiguous(memory_format=fmt).requires_grad_(), w.clone().requires_grad_()
        y = fn(xa, wa)
        outs.append((y, *torch.autograd.grad(y, (xa, wa), gy)))
    for got, want, what in zip(*outs, ("y", "grad x", "grad w")):
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)), f"{what}: non-finite pattern differs"
        fin = torch.isfinite(want)
        assert_close_to_ref(got[fin], want[fin], F64, what=what)


def _run_threads(nt, fn, shapes, seed=0):
    old = torch.get_num_threads()
    torch.set_num_threads(nt)
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*shapes[0], generator=g).requires_grad_()
        w = torch.randn(*shapes[1], generator=g).requires_grad_()
        y = fn(x, w)
        y.backward(torch.randn(y.shape, generator=g))
        return y.detach(), x.grad, w.grad
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("m,k,n", [(8, 300, 5), (40, 2000, 30), (200, 700, 100), (128, 256 * 3, 160)])
def test_fixed_k_matmul_equals_matmul(m, k, n):
    # Both ways of the K-chunked GEMM (one GEMM per chunk into a big output, a batched GEMM for a
    # small one), with and without a tail chunk, against a float64 matmul.
    from rbfkern.ops.bcos_cpp import _mm_fixed_k
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    want = a.double() @ b.double()
    for loop_min_out in (1, 1 << 30):
        got = _mm_fixed_k(a, b, loop_min_out=loop_min_out)
        assert got.shape == (m, n) and got.dtype == torch.float32
        assert_close_to_ref(got, want, torch.float32, f"loop_min_out={loop_min_out}", kind="reduction")


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("case", ["conv", "conv_groups_stride", "conv_n1", "linear_long_k", "linear_long_k_wide"])
def test_cpu_bitwise_deterministic_across_thread_counts(backend, case):
    # Issue 8: forward and backward identical across runs and torch.set_num_threads(1) vs (2).
    # MKL's long-K GEMMs change with the thread count: the linear op always uses fixed K chunks.
    # oneDNN's conv weight gradient does too: under torch.use_deterministic_algorithms the conv
    # op computes it with its own fixed-order C++ loop (rbfkern/ops/bcos_cpp.py).
    fn, shapes = {
        "conv": (lambda x, w: bcos_conv2d(x, w, b=2.0, max_out=2, padding=1), ((8, 16, 12, 12), (16, 16, 3, 3))),
        "conv_groups_stride": (lambda x, w: bcos_conv2d(x, w, b=1.5, max_out=1, stride=2, padding=1, groups=2),
                               ((6, 8, 13, 11), (12, 4, 3, 3))),
        "conv_n1": (lambda x, w: bcos_conv2d(x, w, b=2.0, max_out=2, padding=1), ((1, 8, 10, 10), (8, 8, 3, 3))),
        "linear_long_k": (lambda x, w: bcos_linear(x, w, b=2.0, max_out=2), ((8192, 64), (64, 64))),
        # outputs big enough for one GEMM per K chunk (forward, weight gradient), not the batched one
        "linear_long_k_wide": (lambda x, w: bcos_linear(x, w, b=2.0, max_out=2), ((1024, 768), (256, 768))),
    }[case]
    if torch.backends.mkldnn.is_available() is False and case.startswith("conv"):
        pytest.skip("needs oneDNN")
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        one, two, again = _run_threads(1, fn, shapes), _run_threads(2, fn, shapes), _run_threads(2, fn, shapes)
    finally:
        torch.use_deterministic_algorithms(old)
    for a, b_, c, name in zip(one, two, again, ("y", "grad_x", "grad_w")):
        assert torch.equal(a, b_), f"{case} {name}: 1 vs 2 threads differ by {float((a - b_).abs().max())}"
        assert torch.equal(b_, c), f"{case} {name}: repeated runs differ"



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geom", [
    # (N, C, H, W, O, kh, kw, stride, padding, dilation, groups)
    (3, 4, 9, 11, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 6, 10, 7, 4, 3, 2, (2, 1), (0, 2), (1, 2), 2),
    (1, 3, 5, 5, 5, 5, 5, (1, 2), (2, 2), (1, 1), 1),
    (4, 8, 6, 6, 8, 1, 1, (1, 1), (0, 0), (1, 1), 4),
    (2, 3, 5, 37, 9, 3, 3, (1, 1), (0, 1), (2, 1), 1),  # a column tail past two vectors
])
def test_deterministic_weight_grad_matches_torch(dtype, geom):
    # The fixed-order C++ weight gradient (use_deterministic_algorithms) against torch's own:
    # register tiles for column stride 1, the plain loop otherwise.
    from rbfkern.ops import bcos_cpp
    N, C, H, W, O, kh, kw, stride, padding, dilation, groups = geom
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, C, H, W, dtype=dtype, generator=g)
    w = torch.randn(O, C // groups, kh, kw, dtype=dtype, generator=g)
    ho, wo = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups).shape[-2:]
    gl = torch.randn(N, O, ho, wo, dtype=dtype, generator=g)
    want = torch.ops.aten.convolution_backward(gl, x, w, None, stride, padding, dilation, False, [0, 0], groups,
                                               [False, True, False])[1]
    geo = BcosGeometry.of_conv(x, w, 1, list(stride), list(padding), list(dilation), groups)
    got = bcos_cpp._weight_grad_deterministic(geo, gl, x, w)
    assert_close_to_ref(got, want, dtype, what="weight grad", kind="reduction")

def saved_bytes(fn, exclude=()):
    """Bytes of distinct storages autograd saves while ``fn()`` runs, but those of ``exclude``."""
    seen = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _grad_y(layout, shape):
    """A gradient of ``shape`` in one of the layouts autograd may hand a backward."""
    g = torch.Generator().manual_seed(8)
    if layout == "expanded":  # after y.sum(): one element, stride 0
        return torch.tensor(0.7).expand(shape)
    if layout == "strided":  # every other column of a wider map
        return torch.randn(*shape[:-1], 2 * shape[-1], generator=g)[..., ::2]
    return torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ALL_BACKENDS + [CUDA], indirect=True)
@pytest.mark.parametrize("linear,layout", [(False, "expanded"), (False, "strided"), (False, "channels_last"),
                                           (True, "expanded"), (True, "strided")])
def test_grad_y_in_any_layout(backend, linear, layout):
    # The Triton kernels once indexed grad y as a dense map, reading past the one element of the
    # stride-0 gradient of y.sum(); every backend must take it by its strides.
    dev = device_of(backend)
    g = torch.Generator().manual_seed(9)
    if linear:
        x, w = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
        fn, ref = (lambda a, c: bcos_linear(a, c, max_out=2)), (lambda a, c: reference.bcos_linear(a, c, 2.0, 2))
    else:
        x, w = torch.randn(2, 4, 5, 5, generator=g), torch.randn(6, 4, 3, 3, generator=g)
        fn = lambda a, c: bcos_conv2d(a, c, max_out=2, padding=1)  # noqa: E731
        ref = lambda a, c: reference.bcos_conv2d(a, c, 2.0, 2, (1, 1), (1, 1), (1, 1), 1, False)  # noqa: E731
    xd, wd = x.to(dev).requires_grad_(), w.to(dev).requires_grad_()
    y = fn(xd, wd)
    gy = _grad_y(layout, tuple(y.shape))
    got = torch.autograd.grad(y, (xd, wd), gy.to(dev))
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(ref(x64, w64), (x64, w64), gy.double())
    for a, c, what in zip(got, want, ("grad x", "grad w")):
        assert_close_to_ref(a, c, torch.float32, what=what, kind="reduction")


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", ["tile", "gemm"])
def test_cpp_linear_every_feature_count(backend, dtype, path, monkeypatch):
    # A linear row's input norm and its gradient run on vectors over the C features (two vectors
    # at a time, then one, then a partial one; csrc/cpu/bcos_kernels.h): every C from 1 to 70
    # (past two vectors of 32 lanes) against the float64 reference, forward and both gradients,
    # with the raw map from the C++ GEMM tile (csrc/cpu/bcos_linear.h) and from torch's GEMM.
    monkeypatch.setattr(importlib.import_module("rbfkern.ops.bcos_cpp"), "_LINEAR_PATH", path)
    g = torch.Generator().manual_seed(11)
    for c in range(1, 71):
        x = torch.randn(7, c, generator=g, dtype=F64) * torch.logspace(-2, 2, c, dtype=F64)
        w = torch.randn(6, c, generator=g, dtype=F64)
        gy = torch.randn(7, 3, generator=g, dtype=F64)
        xd, wd = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        y = bcos_linear(xd, wd, b=2.0, max_out=2)
        got = (y,) + torch.autograd.grad(y, (xd, wd), gy.to(dtype))
        x64, w64 = xd.detach().double().requires_grad_(), wd.detach().double().requires_grad_()
        y64 = reference.bcos_linear(x64, w64, 2.0, 2)
        want = (y64,) + torch.autograd.grad(y64, (x64, w64), gy)
        for a, b_, what in zip(got, want, ("y", "grad x", "grad w")):
            assert_close_to_ref(a, b_, dtype, what=f"C={c}: {what}", kind="reduction")


# (rows, features, outputs, max_out): row tiles of 12 / 24 with a partial last one, one- and
# two-vector panels with padding columns, several panels, K past one block of 256 (two-level sum),
# weight rows packed in blocks of 64 features with a partial last one, rows 4 KiB apart in x
_TILE_GRID = [(1, 5, 3, 1), (13, 16, 8, 2), (25, 33, 17, 1), (7, 300, 20, 2), (40, 600, 33, 1), (3, 64, 48, 2),
              (50, 257, 40, 2), (30, 1024, 5, 2)]


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b", [1.0, 2.0, 2.5])
def test_cpp_linear_tile_matches_reference(backend, dtype, b, monkeypatch):
    # The C++ GEMM-tile forward (csrc/cpu/bcos_linear.h) on every shape class of its tiling, the
    # saved maps through the backward included, against the float64 reference.
    monkeypatch.setattr(importlib.import_module("rbfkern.ops.bcos_cpp"), "_LINEAR_PATH", "tile")
    g = torch.Generator().manual_seed(12)
    for r, c, o, m in _TILE_GRID:
        x = torch.randn(r, c, generator=g, dtype=F64)
        w = torch.randn(o * m, c, generator=g, dtype=F64)
        gy = torch.randn(r, o, generator=g, dtype=F64)
        xd, wd = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        y = bcos_linear(xd, wd, b=b, max_out=m)
        got = (y,) + torch.autograd.grad(y, (xd, wd), gy.to(dtype))
        x64, w64 = xd.detach().double().requires_grad_(), wd.detach().double().requires_grad_()
        y64 = reference.bcos_linear(x64, w64, b, m)
        want = (y64,) + torch.autograd.grad(y64, (x64, w64), gy)
        for a, b_, what in zip(got, want, ("y", "grad x", "grad w")):
            assert_close_to_ref(a, b_, dtype, what=f"{(r, c, o, m)}: {what}", kind="reduction")


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
def test_cpp_linear_tile_does_not_depend_on_threads(backend, monkeypatch):
    # Each output is one lane of one tile, summed over k in a fixed order: bit for bit the same
    # with 1 and 2 threads (rows split between them).
    monkeypatch.setattr(importlib.import_module("rbfkern.ops.bcos_cpp"), "_LINEAR_PATH", "tile")
    g = torch.Generator().manual_seed(13)
    x, w = torch.randn(50, 600, generator=g), torch.randn(40, 600, generator=g)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(bcos_linear(x, w, b=2.0, max_out=2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_cpp_linear_path_rule():
    # sizes only (never the thread count): few outputs take the tile, whatever the feature count
    ob = importlib.import_module("rbfkern.ops.bcos_cpp")
    geo = BcosGeometry.of_linear
    for c in (1, 512, 4097):
        x = torch.empty(4, c)
        assert ob._small_linear(geo(x, torch.empty(ob._LINEAR_TILE_MAX_OUT, c), 2))
        assert ob._small_linear(geo(x, torch.empty(ob._LINEAR_TILE_MAX_OUT, c), 1))
        assert not ob._small_linear(geo(x, torch.empty(ob._LINEAR_TILE_MAX_OUT + 2, c), 2))


@needs_official
@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_saved_for_backward_is_a_third_of_official(backend):
    # Beyond the input and the weight (which both keep, and which the caller owns anyway).
    m = _official_conv(16, 16, 3, 1, 1, 1, 2.0, 2, device=device_of(backend)).float()
    x = torch.randn(2, 16, 12, 12).to(device_of(backend)).requires_grad_()
    w = m.linear.weight
    ours = saved_bytes(lambda: bcos_conv2d(x, w, max_out=2, padding=1), exclude=(x, w))
    theirs = saved_bytes(lambda: m(x), exclude=(x, w))
    assert ours * 3 <= theirs, (ours, theirs)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_no_grad_saves_nothing(backend):
    x = torch.randn(1, 3, 5, 5).to(device_of(backend))
    w = torch.randn(4, 3, 3, 3).to(device_of(backend))
    with torch.no_grad():
        out = torch.ops.rbfkern.bcos_conv2d(x, w, 2.0, 2, [1, 1], [1, 1], [1, 1], 1, False, False)
    assert out[0].shape == (1, 2, 5, 5) and all(t.numel() == 0 for t in out[1:])


# ---------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_opcheck(backend):
    b = 2.5
    dev = device_of(backend)
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(2, 4, 4, 3, generator=g, dtype=F64)
    w64 = torch.randn(4, 2, 3, 2, generator=g, dtype=F64)
    conv = ([1, 2], [1, 0], [1, 1], 2)
    # CUDA: float64 takes the unfused path (cuDNN / cuBLAS + Triton epilogues), float32 the fused kernels
    for dtype in (F64,) if backend == "cpp" else (F64, torch.float32):
        x, w = x64.to(dev, dtype), w64.to(dev, dtype)
        for rg in (False, True):
            xa, wa = x.clone().requires_grad_(rg), w.clone().requires_grad_(rg)
            torch.library.opcheck(torch.ops.rbfkern.bcos_conv2d.default, (xa, wa, b, 2, *conv, False, True))
            torch.library.opcheck(torch.ops.rbfkern.bcos_linear.default,
                                  (xa[:, :, 0, 0].contiguous(), wa[:, :, 0, 0].repeat(1, 2), b, 2, True, True))
        y, lmax, idx, root = torch.ops.rbfkern.bcos_conv2d(x, w, b, 2, *conv, False, True)
        torch.library.opcheck(torch.ops.rbfkern.bcos_conv2d_bwd.default,
                              (torch.ones_like(y), x, w, lmax, idx, root, b, 2, *conv, False, [True, True]))
        xl, wl = x[:, :, 0, 0].contiguous(), w[:, :, 0, 0].repeat(1, 2).contiguous()
        y, lmax, idx, root = torch.ops.rbfkern.bcos_linear(xl, wl, b, 2, False, True)
        torch.library.opcheck(torch.ops.rbfkern.bcos_linear_bwd.default,
                              (torch.ones_like(y), xl, wl, lmax, idx, root, b, 2, True, [True, False]))


@pytest.mark.parametrize("backend,compiler", [("cpp", "aot_eager"), _on_cuda("aot_eager"), _on_cuda("inductor")],
                         indirect=["backend"])
def test_compile_fullgraph(backend, compiler):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(BcosConv2d(6, 4, 3, padding=1, max_out=2), BcosConv2d(4, 4, 3, stride=2, b=1.5),
                                torch.nn.Flatten(), BcosLinear(16, 3, max_out=2)).to(device_of(backend))
    x = torch.rand(2, 6, 6, 6).to(device_of(backend))
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    y_eager, y_comp = model(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    for a, c in zip(torch.autograd.grad(y_comp.sum(), list(model.parameters())),
                    torch.autograd.grad(y_eager.sum(), list(model.parameters()))):
        torch.testing.assert_close(a, c)


# ---------------------------------------------------------------------------------------------
# Layers: official state dicts, explanation mode, convert_to_bcos, AddInverse
# ---------------------------------------------------------------------------------------------


@needs_official
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_modules_load_official_state_dicts(device):
    torch.manual_seed(0)
    oc = official.BcosConv2d(6, 4, 3, stride=2, padding=1, b=2.5, max_out=2).to(F64).to(device)
    ol = official.BcosLinear(8, 3, b=1.5, max_out=3).to(F64).to(device)
    mc = BcosConv2d(6, 4, 3, stride=2, padding=1, b=2.5, max_out=2, dtype=F64).to(device)
    ml = BcosLinear(8, 3, b=1.5, max_out=3, dtype=F64).to(device)
    mc.load_state_dict(oc.state_dict())
    ml.load_state_dict(ol.state_dict())
    x = torch.rand(2, 6, 7, 7, dtype=F64).to(device)
    assert_close_to_ref(mc(x), oc(x), F64, what="conv module")
    v = torch.randn(5, 8, dtype=F64).to(device)
    assert_close_to_ref(ml(v), ol(v), F64, what="linear module")
    # Explanation mode through the context manager, and the flag restored after it.
    x.requires_grad_(True)
    with mc.explanation_mode():
        assert mc.is_in_explanation_mode
        g1 = torch.autograd.grad(mc(x).sum(), x)[0]
    assert not mc.is_in_explanation_mode
    oc.set_explanation_mode(True)
    assert_close_to_ref(g1, torch.autograd.grad(oc(x).sum(), x)[0], F64, what="explain grad")


def test_add_inverse():
    x = torch.rand(2, 3, 4, 4)
    y = AddInverse()(x)
    assert y.shape == (2, 6, 4, 4)
    torch.testing.assert_close(y[:, 3:], 1 - x)
    assert torch.allclose(y[:, :3] + y[:, 3:], torch.ones(2, 3, 4, 4))


class _SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.ReLU(),
            torch.nn.AdaptiveMaxPool2d(1),
        )
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_convert_to_bcos_small_cnn(device):
    torch.manual_seed(0)
    model = convert_to_bcos(_SmallCNN(), b=2.0, max_out=2).double().to(device)
    f = model.features
    assert isinstance(f[0], BcosConv2d) and f[0].max_out == 2 and f[0].weight.shape == (16, 6, 3, 3)
    assert isinstance(f[4], BcosConv2d) and f[4].groups == 2
    assert isinstance(model.head, BcosLinear)
    assert isinstance(f[1], torch.nn.Identity) and isinstance(f[2], torch.nn.Identity)
    assert isinstance(f[3], torch.nn.AvgPool2d) and isinstance(f[6], torch.nn.AdaptiveAvgPool2d)
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.BatchNorm2d, torch.nn.MaxPool2d)) for m in model.modules())
    x = AddInverse()(torch.rand(2, 3, 8, 8, dtype=F64).to(device))
    assert model(x).shape == (2, 5)
    # The converted model is summarised exactly by W(x) (eq. 13): contributions sum to the logit.
    logits = model(x)
    contrib = explain.contributions(model, x, 3)
    assert_close_to_ref(contrib.sum((1, 2)), logits[:, 3], F64, what="contributions vs logit")


# ---------------------------------------------------------------------------------------------
# Explanations (eq. 13-15, Sec. 4)
# ---------------------------------------------------------------------------------------------


def _bcos_net(b=2.0, device=CPU):
    torch.manual_seed(1)
    return torch.nn.Sequential(
        AddInverse(), BcosConv2d(6, 8, 3, padding=1, b=b, max_out=2), BcosConv2d(8, 8, 3, stride=2, padding=1, b=b),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), BcosLinear(8, 4, b=b, max_out=2),
    ).double().to(device)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("b", [1.5, 2.0, 2.5])
def test_contributions_sum_to_the_logit(b, device):
    model = _bcos_net(b, device)
    x = torch.rand(3, 3, 10, 10, dtype=F64).to(device)
    w, out = explain.dynamic_linear_map(model[1:], AddInverse()(x), [0, 2, 3], return_output=True)
    assert w.shape == (3, 6, 10, 10)
    contrib = explain.contributions(model[1:], AddInverse()(x), [0, 2, 3])
    assert contrib.shape == (3, 10, 10)
    want = out[torch.arange(3), torch.tensor([0, 2, 3])]
    assert_close_to_ref(contrib.sum((1, 2)), want, F64, what="sum of contributions")
    # y = W(x) x (eq. 13) also for the single-image form.
    c1 = explain.contributions(model[1:], AddInverse()(x)[1], 2)
    assert_close_to_ref(c1, contrib[1], F64, what="single image")
    # Explanation mode is off again afterwards.
    assert not any(getattr(m, "explain", False) for m in model.modules())


@needs_official
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_explanation_image_matches_official_and_writes_png(tmp_path, device):
    common = importlib.import_module("bcos.common")
    model = _bcos_net(device=device)
    img = AddInverse()(torch.rand(3, 16, 16, dtype=F64).to(device))
    w = explain.dynamic_linear_map(model[1:], img, 1)
    path = tmp_path / "expl.png"
    rgba = explain.explanation_image(img, w, smooth=3, path=str(path))
    want = common.gradient_to_image(img, w, smooth=3)
    assert rgba.shape == (16, 16, 4)
    assert abs(rgba - want).max() < 1e-12
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert int.from_bytes(data[16:20], "big") == 16 and int.from_bytes(data[20:24], "big") == 16
    # Pixels that contribute negatively are (almost) transparent without smoothing.
    contrib = (img * w).sum(0)
    rgba0 = explain.explanation_image(img, w, smooth=0)
    assert (rgba0[..., 3][contrib.cpu().numpy() < 0] < 1e-6).all()


def test_linear_map_computes_no_weight_gradient(monkeypatch):
    """The explanation's backward asks the layers for input gradients only (a custom op's backward
    cannot tell from torch.autograd.grad(out, x) which inputs are wanted), the same map as a plain
    input gradient in explanation mode, and the parameters' flags and grads as they were."""
    import rbfkern.ops.bcos as bcos_ops

    model = _bcos_net()[1:]
    model[1].weight.requires_grad_(False)  # a frozen layer stays frozen
    asked = []
    real = bcos_ops._backward

    def spy(geo, gy, x, weight, lmax, idx, root, b, explain_, needs):
        asked.append(tuple(bool(n) for n in needs))
        return real(geo, gy, x, weight, lmax, idx, root, b, explain_, needs)

    monkeypatch.setattr(bcos_ops, "_backward", spy)
    x = AddInverse()(torch.rand(2, 3, 10, 10, dtype=F64))
    w = explain.dynamic_linear_map(model, x, [1, 3])
    assert len(asked) == 3 and all(not needs[1] for needs in asked), asked
    assert [p.requires_grad for p in model.parameters()] == [True, False, True]
    assert all(p.grad is None for p in model.parameters())
    xr = x.clone().requires_grad_()
    with explanation_mode(model):
        out = model(xr)
    (want,) = torch.autograd.grad(out.gather(1, torch.tensor([[1], [3]])).sum(), xr)
    assert torch.equal(w, want)
    # restored when the model raises too
    with pytest.raises(ValueError):
        explain.dynamic_linear_map(model, torch.rand(2, 5, 10, 10, dtype=F64), 0)
    assert [p.requires_grad for p in model.parameters()] == [True, False, True]


def test_linear_maps_of_several_targets_equal_separate_calls():
    """dynamic_linear_maps: one forward pass (hooked), then the maps of T targets per input, the
    same bits as T calls of dynamic_linear_map; the single-image form and the output too."""
    model = _bcos_net()[1:]
    seen = []
    model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x = AddInverse()(torch.rand(3, 3, 10, 10, dtype=F64))
    t = torch.tensor([[1, 3], [0, 0], [2, 1]])
    w, out = explain.dynamic_linear_maps(model, x, t, return_output=True)
    assert seen == [3] and w.shape == (3, 2, 6, 10, 10)
    for j in range(2):
        want, want_out = explain.dynamic_linear_map(model, x, t[:, j], return_output=True)
        assert torch.equal(w[:, j], want) and torch.equal(out, want_out)
    one = explain.dynamic_linear_maps(model, x[1], [2, 0])
    assert one.shape == (2, 6, 10, 10)
    assert torch.equal(one[0], explain.dynamic_linear_map(model, x[1], 2))
    assert explain.dynamic_linear_maps(model, x, torch.zeros(3, 0, dtype=torch.long)).shape == (3, 0, 6, 10, 10)


def test_explanation_mode_function_restores_flags():
    model = _bcos_net()
    model[2].set_explanation_mode(True)
    with explanation_mode(model):
        assert all(m.explain for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear)))
    assert model[2].explain and not model[1].explain


@pytest.mark.skipif(os.environ.get("RBFKERN_BACKEND", "auto") not in ("auto", "cpp"), reason="cpp only")
def test_backend_env_is_read_at_call_time(monkeypatch):
    x = torch.randn(1, 2, 4, 4, dtype=F64)
    w = torch.randn(2, 2, 3, 3, dtype=F64)
    monkeypatch.setenv("RBFKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="RBFKERN_BACKEND"):
        bcos_conv2d(x, w)
