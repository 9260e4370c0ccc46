"""Shapes past 2^31 elements on a GPU (issue 15): an index into one of the op's tensors no longer
fits in int32, and some grids have more blocks than CUDA's y axis takes.

Each op runs forward and backward once on the whole input and once per piece that stays below the
limit (a split along a dimension the op treats independently: rows, images); the whole must equal
the pieces (per-row / per-image outputs and input gradients piece by piece, parameter gradients
summed over the pieces), and a few rows (the first, the last, those across the 2^31st element)
equal the float64 reference. Marked slow (gpucheck --full runs them); one at a time across xdist
workers (each needs up to ~40 GB), skipped where the GPU has less free memory than that.

tests/test_cuda_trace.py checks the grids of the same shapes on every machine.
"""
import fcntl
import os
import tempfile

import pytest
import torch

from rbfkern import basis, ops, reference

pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device with tens of GB")]

BIG = 2 ** 31


@pytest.fixture
def one_at_a_time():
    """Serialises the tests of this file across xdist workers and frees their memory after."""
    with open(os.path.join(tempfile.gettempdir(), "rbfkern_cuda_large.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            fcntl.flock(f, fcntl.LOCK_UN)


def _needs_gib(gib):
    free, _ = torch.cuda.mem_get_info()
    if free < gib * 2 ** 30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2 ** 30:.0f} GiB free")


def _leaves(*ts):
    return [t.detach().requires_grad_() for t in ts]


def _close(a, b, what, rtol=2e-5, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(1.0, float(b.detach().abs().max())),
                               msg=lambda m: f"{what}: {m}")


def _check_pieces(run, whole_in, shared, dim, cuts, g, what):
    """run(split_input, *shared) -> output; the whole vs the pieces of whole_in along ``dim``."""
    x, *params = _leaves(whole_in, *shared)
    out = run(x, *params)
    assert out.numel() > BIG or x.numel() > BIG, f"{what}: the case does not cross 2^31 elements"
    gx, *gp = torch.autograd.grad(out, [x, *params], g)
    sums = [torch.zeros_like(p) for p in params]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        xp, *pp = _leaves(whole_in.narrow(dim, lo, hi - lo), *shared)
        op = run(xp, *pp)
        _close(out.narrow(dim, lo, hi - lo), op, f"{what} output [{lo}:{hi}]")
        gxp, *gpp = torch.autograd.grad(op, [xp, *pp], g.narrow(dim, lo, hi - lo))
        _close(gx.narrow(dim, lo, hi - lo), gxp, f"{what} input gradient [{lo}:{hi}]")
        for s, q in zip(sums, gpp):
            s += q
        del op, gxp, gpp
    for i, (a, s) in enumerate(zip(gp, sums)):
        _close(a, s, f"{what} gradient of parameter {i}", rtol=1e-4, atol=1e-5)
    return out


def test_rbf_pairs_past_int32(one_at_a_time):
    _needs_gib(48)
    n, c, d = 2 ** 21 + 37, 1031, 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=gen)
    cen, diag = torch.randn(c, d, device="cuda", generator=gen), torch.rand(c, d, device="cuda", generator=gen) + 0.5
    sigma = torch.rand(c, device="cuda", generator=gen) + 2.0
    g = torch.randn(n, c, device="cuda", generator=gen)

    def run(xx, cc, dd, ss):
        return ops.rbf(xx, cc, diag=dd, sigma=ss, kind="gaussian")

    out = _check_pieces(run, x, (cen, diag, sigma), 0, [0, n // 2, n], g, "rbf diag gaussian")
    rows = torch.tensor([0, 1, BIG // c - 1, BIG // c, BIG // c + 1, n - 1], device="cuda")
    want = reference.rbf(x[rows].double(), cen.double(), diag=diag.double(), sigma=sigma.double(), kind="gaussian")
    _close(out[rows].double(), want, "rbf rows across 2^31 vs the float64 reference", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,cuts", [((33, 64, 1024, 1024), [0, 16, 33]),  # x past 2^31 elements
                                        ((1, 4, 8192, 8192), None)],  # more pixel blocks than grid axis y
                         ids=["elements", "pixels"])
def test_bcos_conv2d_past_int32(one_at_a_time, shape, cuts):
    _needs_gib(56)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(shape, device="cuda", generator=gen)
    w = torch.randn(2 * (32 if cuts else 8), shape[1], 3, 3, device="cuda", generator=gen)

    def run(xx, ww):
        return ops.bcos_conv2d(xx, ww, b=2.0, max_out=2, padding=1)

    if cuts:
        out_shape = (shape[0], w.shape[0] // 2, *shape[2:])
        g = torch.randn(out_shape, device="cuda", generator=gen)
        out = _check_pieces(run, x, (w,), 0, cuts, g, "bcos_conv2d")
        want = reference.bcos_conv2d(x[:1].double(), w.double(), b=2.0, max_out=2, padding=1)
        _close(out[:1].double(), want, "bcos_conv2d first image vs the float64 reference", rtol=1e-5, atol=1e-6)
        return
    xx, ww = _leaves(x, w)
    out = run(xx, ww)
    g = torch.randn(out.shape, device="cuda", generator=gen)
    got = [out, *torch.autograd.grad(out, [xx, ww], g)]
    xr, wr = _leaves(x.double(), w.double())
    outr = reference.bcos_conv2d(xr, wr, b=2.0, max_out=2, padding=1)
    want = [outr, *torch.autograd.grad(outr, [xr, wr], g.double())]
    for name, a, e in zip(("output", "input gradient", "weight gradient"), got, want):
        _close(a.double(), e, f"bcos_conv2d one 8192^2 image, {name}", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_out", [2, 5], ids=["fused", "unfused"])
def test_bcos_linear_rows_past_int32(one_at_a_time, max_out):
    _needs_gib(48)
    n, c, o = 2 ** 25 + 11, 64, 16
    gen = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(n, c, device="cuda", generator=gen)
    w = torch.randn(o * max_out, c, device="cuda", generator=gen)
    g = torch.randn(n, o, device="cuda", generator=gen)

    def run(xx, ww):
        return ops.bcos_linear(xx, ww, b=2.0, max_out=max_out)

    out = _check_pieces(run, x, (w,), 0, [0, n // 2, n], g, f"bcos_linear max_out {max_out}")
    rows = torch.tensor([0, BIG // c - 1, BIG // c, n - 1], device="cuda")
    want = reference.bcos_linear(x[rows].double(), w.double(), b=2.0, max_out=max_out)
    _close(out[rows].double(), want, "bcos_linear rows across 2^31 vs the float64 reference", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ndim,shape", [(2, (40, 16, 1920, 1920)), (3, (2, 4, 660, 660, 660))], ids=["2d", "3d"])
def test_gauss_deriv_past_int32(one_at_a_time, ndim, shape):
    _needs_gib(56)
    order = 2 if ndim == 2 else 1
    m = basis.num_basis(order, ndim)
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(shape, device="cuda", generator=gen)
    alpha = torch.randn(4, shape[1], m, device="cuda", generator=gen) / m
    sigma = torch.tensor([1.5], device="cuda")
    fn = ops.gauss_deriv_conv2d if ndim == 2 else ops.gauss_deriv_conv3d
    g = torch.randn(shape[0], 4, *shape[2:], device="cuda", generator=gen)

    def run(xx, aa, ss):
        return fn(xx, aa, ss, order=order, max_sigma=2.0)

    out = _check_pieces(run, x, (alpha, sigma), 0, [0, shape[0] // 2, shape[0]], g, f"gauss_deriv {ndim}d")
    ref = reference.gauss_deriv_conv2d if ndim == 2 else reference.gauss_deriv_conv3d
    want = ref(x[-1:].double(), alpha.double(), sigma.double(), order, radii=[basis.radius(2.0, 4.0)])
    _close(out[-1:].double(), want, f"gauss_deriv {ndim}d last image vs the float64 reference", rtol=1e-5, atol=1e-6)
