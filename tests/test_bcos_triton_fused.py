"""The fused Triton B-cos kernels (rbfkern/gpu/bcos.py) in the interpreter: the linear forward GEMM
and the fused backward (gv/q pre-pass, implicit-GEMM grad x and grad W) against the float64
reference, with the unfused path patched to raise so each test proves the fused one ran.

The fused kernels use tl.dot, so they run in float32 (float64 keeps the unfused path, which
test_bcos.py gradchecks); the oracle is the float64 reference on the same float32 inputs.

Every test runs on the interpreted kernels (backend "triton", CPU tensors) and, where there is a
device, compiled on CUDA (backend "cuda"); inputs are made on CPU and moved to device_of(backend)."""
import pytest
import torch

from rbfkern import reference
from rbfkern import _bcos_common as bcos_common
from rbfkern.ops import bcos_conv2d, bcos_linear

from _util import assert_bitwise, assert_close_to_ref, assert_within_naive_error
from conftest import CUDA, CUDA_ON_CPU, TRITON_BACKENDS, device_of

# The outermost decorator of every test (so the backend stays the last part of the test ids).
triton_backends = pytest.mark.parametrize("backend", TRITON_BACKENDS, indirect=True)

F64 = torch.float64

# name -> (N, C, H, W, O, kernel, stride, padding, dilation, groups); sizes chosen to leave partial
# tiles: N*H*W not a multiple of the 64-pixel gx tile, K = Cg*kh*kw not a multiple of 32.
GEOMS = {
    "s2p1": (2, 4, 9, 7, 3, 3, 2, 1, 1, 1),
    "d2g2": (2, 6, 8, 9, 4, 3, 1, 2, 2, 2),
    "asym": (3, 3, 7, 8, 5, (3, 2), (2, 1), (1, 0), (1, 2), 1),
    "k1": (1, 5, 5, 6, 2, 1, 1, 0, 1, 1),
}
# (b, max_out, explain) x geometry: every b / max_out / explain combination, geometries rotated
CASES = [(b, m, e, list(GEOMS)[i % len(GEOMS)])
         for i, (b, m, e) in enumerate((b, m, e) for b in (1.0, 2.0, 2.5) for m in (1, 2, 3) for e in (False, True))]


@pytest.fixture
def fused_only(monkeypatch):
    """Make every unfused Triton route raise: the torch linear map, the unfused backward and the
    epilogue-only kernels' launchers."""
    from rbfkern.gpu import bcos as gpu_bcos

    def boom(*args, **kwargs):
        raise AssertionError("the fused Triton path should have run")

    for mod, name in ((bcos_common, "linear_map"), (gpu_bcos, "_forward_unfused"), (gpu_bcos, "_backward_unfused"),
                      (gpu_bcos, "_epilogue_forward"), (gpu_bcos, "_epilogue_backward"), (gpu_bcos, "_norm_backward")):
        monkeypatch.setattr(mod, name, boom)


def _conv_inputs(geom, max_out, seed=0, device=torch.device("cpu")):
    N, C, H, W, O, k, stride, padding, dilation, groups = GEOMS[geom]
    g = torch.Generator().manual_seed(seed)
    kk = (k, k) if isinstance(k, int) else k
    x = torch.randn(N, C, H, W, generator=g).to(device)
    w = torch.randn(O * max_out, C // groups, *kk, generator=g).to(device)
    return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), g


def _check_conv(x, w, conv, b, max_out, explain, g, needs=(True, True)):
    xs, ws = x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
    y = bcos_conv2d(xs, ws, b=b, max_out=max_out, explain=explain, **conv)
    xd, wd = x.double().requires_grad_(needs[0]), w.double().requires_grad_(needs[1])
    y0 = reference.bcos_conv2d(xd, wd, b, max_out, conv["stride"], conv["padding"], conv["dilation"],
                               conv["groups"], explain)
    assert_close_to_ref(y, y0, x.dtype, what="y")
    gy = torch.randn(y.shape, generator=g).to(y.device)
    ins = [t for t, n in zip((xs, ws), needs) if n]
    got = torch.autograd.grad(y, ins, gy)
    want = torch.autograd.grad(y0, [t for t, n in zip((xd, wd), needs) if n], gy.double())
    for a, c, what in zip(got, want, [n for n, k in zip(("grad x", "grad w"), needs) if k]):
        assert_close_to_ref(a, c, x.dtype, what=what)
    return got


def _check_linear(x, w, b, max_out, explain, g, needs=(True, True)):
    xs, ws = x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
    y = bcos_linear(xs, ws, b=b, max_out=max_out, explain=explain)
    xd, wd = x.double().requires_grad_(needs[0]), w.double().requires_grad_(needs[1])
    y0 = reference.bcos_linear(xd, wd, b, max_out, explain)
    assert_close_to_ref(y, y0, x.dtype, what="y")
    gy = torch.randn(y.shape, generator=g).to(y.device)
    got = torch.autograd.grad(y, [t for t, n in zip((xs, ws), needs) if n], gy)
    want = torch.autograd.grad(y0, [t for t, n in zip((xd, wd), needs) if n], gy.double())
    for a, c, what in zip(got, want, [n for n, k in zip(("grad x", "grad w"), needs) if k]):
        assert_close_to_ref(a, c, x.dtype, what=what)
    return got


@triton_backends
@pytest.mark.parametrize("b,max_out,explain,geom", CASES)
def test_conv_fused_matches_reference(backend, fused_only, b, max_out, explain, geom):
    x, w, conv, g = _conv_inputs(geom, max_out, device=device_of(backend))
    _check_conv(x, w, conv, b, max_out, explain, g)


@triton_backends
@pytest.mark.parametrize("b,max_out,explain", [(b, m, e) for b, m, e, _ in CASES])
def test_linear_fused_matches_reference(backend, fused_only, b, max_out, explain):
    # R = 130 rows: three 64-row GEMM tiles and two 128-row pre-pass blocks, all with a partial
    # last one; C = 37 is two K chunks of 32; O = 17 a partial output tile.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(130, 37, generator=g).to(device_of(backend))
    x[5] = 0  # an all-zero row: finite outputs, zero gradient through its norm
    w = torch.randn(17 * max_out, 37, generator=g).to(device_of(backend))
    _check_linear(x, w, b, max_out, explain, g)


@triton_backends
@pytest.mark.parametrize("needs", [(True, False), (False, True)])
@pytest.mark.parametrize("linear", [False, True])
def test_fused_one_gradient(backend, fused_only, needs, linear):
    dev = device_of(backend)
    if linear:
        g = torch.Generator().manual_seed(2)
        _check_linear(torch.randn(9, 6, generator=g).to(dev), torch.randn(8, 6, generator=g).to(dev), 2.0, 2,
                      False, g, needs)
    else:
        x, w, conv, g = _conv_inputs("d2g2", 2, device=dev)
        _check_conv(x, w, conv, 2.0, 2, False, g, needs)


@triton_backends
@pytest.mark.parametrize("linear", [False, True])
def test_fused_empty_batch(backend, fused_only, linear):
    dev = device_of(backend)
    if linear:
        x = torch.zeros(0, 5, device=dev, requires_grad=True)
        w = torch.randn(6, 5).to(dev).requires_grad_()
        y = bcos_linear(x, w, b=2.0, max_out=2)
    else:
        x = torch.zeros(0, 4, 6, 6, device=dev, requires_grad=True)
        w = torch.randn(6, 2, 3, 3).to(dev).requires_grad_()
        y = bcos_conv2d(x, w, b=2.5, max_out=3, padding=1, groups=2)
    assert y.shape[0] == 0
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert gx.shape == x.shape
    assert gw.shape == w.shape and torch.equal(gw, torch.zeros_like(w))


@triton_backends
@pytest.mark.parametrize("linear", [False, True])
def test_fused_maxout_ties_take_the_first_unit(backend, fused_only, linear):
    # Units 0 and 1 of every output are the same filter, so every MaxOut is a tie: the first unit
    # gets the whole gradient (as torch.max), the second exactly none.
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    if linear:
        x, w = torch.randn(10, 6, generator=g), torch.randn(3, 1, 6, generator=g)
        w = w.expand(3, 2, 6).reshape(6, 6).contiguous()
        gx, gw = _check_linear(x.to(dev), w.to(dev), 2.0, 2, False, g)
    else:
        x, w = torch.randn(2, 4, 6, 5, generator=g), torch.randn(3, 1, 4, 3, 3, generator=g)
        w = w.expand(3, 2, 4, 3, 3).reshape(6, 4, 3, 3).contiguous()
        gx, gw = _check_conv(x.to(dev), w.to(dev), dict(stride=1, padding=1, dilation=1, groups=1), 2.0, 2, False, g)
    assert torch.equal(gw[1::2], torch.zeros_like(gw[1::2]))
    assert gw[0::2].abs().max() > 0


@triton_backends
def test_fused_weight_grad_split_and_deterministic(backend, fused_only, monkeypatch):
    # One pixel split (every tile loops over all N*P pixels) and one split per 32-pixel block give
    # the same gradient to rounding, and a rerun is bitwise identical (no atomics).
    from rbfkern.gpu import bcos as gpu_bcos

    x, w, conv, g = _conv_inputs("s2p1", 3, seed=4, device=device_of(backend))
    x = torch.cat([x] * 2)  # N*P = 4 * 20 = 80 output pixels: three 32-pixel blocks
    grads = []
    for programs in (1, 10**6, 10**6):
        monkeypatch.setattr(gpu_bcos, "_GW_PROGRAMS", programs)
        grads.append(_check_conv(x, w, conv, 2.0, 3, False, torch.Generator().manual_seed(5))[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(grads[1], grads[2])


@triton_backends
@pytest.mark.parametrize("linear", [False, True])
def test_unfused_fallback_for_wide_maxout(backend, monkeypatch, linear):
    # max_out > 3 has no fused kernel: the unfused path runs
    # (on CUDA: cuBLAS / cuDNN for the linear map, the Triton epilogue kernels).
    calls = []
    from rbfkern.gpu import bcos as gpu_bcos
    real = gpu_bcos._backward_unfused
    monkeypatch.setattr(gpu_bcos, "_backward_unfused", lambda *a: calls.append(1) or real(*a))
    dev = device_of(backend)
    g = torch.Generator().manual_seed(6)
    if linear:
        _check_linear(torch.randn(7, 5, generator=g).to(dev), torch.randn(8, 5, generator=g).to(dev), 2.0, 4, False, g)
    else:
        _check_conv(torch.randn(2, 3, 5, 5, generator=g).to(dev), torch.randn(8, 3, 3, 3, generator=g).to(dev),
                    dict(stride=1, padding=1, dilation=1, groups=1), 2.0, 4, False, g)
    assert calls == [1]


# (backend, dtype): not bfloat16 in the interpreter (its tl.dot on bfloat16 operands returns
# garbage, triton 3.8; the AOT compile covers those variants there); both half types on CUDA.
HALF_CASES = [pytest.param("triton", torch.float16, id="dtype0-triton")] if "triton" in TRITON_BACKENDS else []
HALF_CASES += [pytest.param("cuda", torch.float16, marks=CUDA.marks, id="dtype0-cuda"),
               pytest.param("cuda", torch.bfloat16, marks=CUDA.marks, id="dtype1-cuda")]


@pytest.mark.parametrize("backend,dtype", HALF_CASES, indirect=["backend"])
def test_fused_half_types(backend, fused_only, dtype):
    # Half inputs take the same kernels (float32 accumulation); compared to the float64 reference
    # on the rounded inputs with a tolerance for the half-precision operands and outputs. On CUDA
    # also the flash-attention rule: within 2x the error of the reference run in the half dtype.
    if CUDA_ON_CPU and backend == "cuda" and dtype == torch.bfloat16:
        pytest.skip("rehearsal: the interpreter's tl.dot on bfloat16 operands returns garbage (triton 3.8)")
    x, w, conv, g = _conv_inputs("s2p1", 2, seed=7, device=device_of(backend))
    x, w = x.to(dtype), w.to(dtype)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = bcos_conv2d(xs, ws, b=2.0, max_out=2, **conv)
    assert y.dtype == dtype
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    y0 = reference.bcos_conv2d(xd, wd, 2.0, 2, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
    gy = torch.randn(y.shape, generator=g).to(dtype).to(y.device)
    got = torch.autograd.grad(y, (xs, ws), gy)
    want = torch.autograd.grad(y0, (xd, wd), gy.double())
    assert_close_to_ref(y, y0, dtype, what="y", kind="reduction")
    for a, c, what in zip(got, want, ("grad x", "grad w")):
        assert a.dtype == dtype
        assert_close_to_ref(a, c, dtype, what=what, kind="reduction")
    if backend == "cuda":
        xn, wn = x.clone().requires_grad_(), w.clone().requires_grad_()
        yn = reference.bcos_conv2d(xn, wn, 2.0, 2, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
        naive = (yn,) + torch.autograd.grad(yn, (xn, wn), gy)
        for a, c, n, what in zip((y,) + got, (y0,) + want, naive, ("y", "grad x", "grad w")):
            assert_within_naive_error(a, c, n, f"{what} {dtype}")


def _forward_backward(fn, x, w, gy):
    """[y, grad x, grad w] of fn on fresh leaf copies of x and w."""
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fn(xs, ws)
    return [y.detach()] + list(torch.autograd.grad(y, (xs, ws), gy))


@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", ["conv_s2p1_m3", "conv_d2g2_m2_explain", "linear_m2"])
def test_fused_results_repeat_bitwise(backend, fused_only, dtype, case):
    # README, Determinism (GPU): no Triton kernel uses atomics (per-program partials summed in a
    # fixed order), so the fused forward and backward repeat bit for bit. Shapes with several
    # programs per reduction: grad W splits N*P = 40 / 144 pixels in 32-pixel blocks, the linear
    # layer's 130 rows span three GEMM tiles.
    dev = device_of(backend)
    g = torch.Generator().manual_seed(8)
    if case == "linear_m2":
        x, w = torch.randn(130, 37, generator=g), torch.randn(17 * 2, 37, generator=g)
        fn = lambda x, w: bcos_linear(x, w, b=2.5, max_out=2)  # noqa: E731
    else:
        geom, max_out, b, explain = ("s2p1", 3, 2.5, False) if case == "conv_s2p1_m3" else ("d2g2", 2, 2.0, True)
        x, w, conv, g = _conv_inputs(geom, max_out, seed=8)
        fn = lambda x, w: bcos_conv2d(x, w, b=b, max_out=max_out, explain=explain, **conv)  # noqa: E731
    x, w = x.to(dtype).to(dev), w.to(dtype).to(dev)
    with torch.no_grad():
        shape = fn(x, w).shape
    gy = torch.randn(shape, generator=g).to(dtype).to(dev)
    runs = [_forward_backward(fn, x, w, gy) for _ in range(3)]
    for r in runs[1:]:
        assert_bitwise(r, runs[0], case)
    assert all(bool(t.abs().sum() > 0) for t in runs[0]), "a result is all zeros: nothing was compared"


@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_float32_dots_follow_pytorchs_tf32_switch(linear):
    # The fused GEMMs take TF32 exactly where PyTorch would for the op the layer stands in for:
    # cuDNN convolutions (torch.backends.cudnn, TF32 on by default) for the conv, cuBLAS matmuls
    # (off by default) for the linear layer; the other switch does not matter; half types never.
    from rbfkern.gpu import bcos as gpu_bcos

    own, other = ((torch.backends.cuda.matmul, torch.backends.cudnn) if linear
                  else (torch.backends.cudnn, torch.backends.cuda.matmul))
    before = (own.allow_tf32, other.allow_tf32)
    try:
        own.allow_tf32, other.allow_tf32 = True, False
        assert gpu_bcos._precision(torch.float32, linear) == "tf32"
        assert gpu_bcos._precision(torch.bfloat16, linear) == "ieee"
        own.allow_tf32, other.allow_tf32 = False, True
        assert gpu_bcos._precision(torch.float32, linear) == "ieee"
    finally:
        own.allow_tf32, other.allow_tf32 = before


@pytest.mark.tf32
@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("linear", [False, True], ids=["conv", "linear"])
def test_fused_tf32_within_twice_the_error_of_torch_in_tf32(backend, fused_only, linear):
    # With PyTorch's TF32 switch on, the fused float32 kernels use TF32 dots: their error against
    # the float64 reference is at most 2x that of the reference itself run in float32 with TF32
    # (PyTorch's conv / linear under the same switch).
    owner = torch.backends.cuda.matmul if linear else torch.backends.cudnn
    before = owner.allow_tf32
    owner.allow_tf32 = True
    try:
        x, w, conv, g = _conv_inputs("d2g2", 2, seed=11, device=device_of(backend))
        if linear:
            x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            w = w.reshape(w.shape[0], -1)[:, : x.shape[1]].contiguous()

        def ours(a, b):
            return bcos_linear(a, b, b=2.0, max_out=2) if linear else bcos_conv2d(a, b, b=2.0, max_out=2, **conv)

        def ref(a, b):
            if linear:
                return reference.bcos_linear(a, b, 2.0, 2)
            return reference.bcos_conv2d(a, b, 2.0, 2, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])

        y = ours(x, w)
        gy = torch.randn(y.shape, generator=g).to(y.device)
        got = _forward_backward(ours, x, w, gy)
        want = _forward_backward(ref, x.double(), w.double(), gy.double())
        naive = _forward_backward(ref, x, w, gy)
        for a, c, n, what in zip(got, want, naive, ("y", "grad x", "grad w")):
            assert_within_naive_error(a, c, n, f"{what} TF32")
    finally:
        owner.allow_tf32 = before
