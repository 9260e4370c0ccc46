"""Shared test helpers: tolerance table, readable comparisons, a small model with every family."""
import contextlib
import os
import subprocess
import sys

import torch

import rbfkern.nn

# The one tolerance table: (rtol, atol) per kind and dtype for a result compared with a float64
# reference of the same (rounded) inputs; atol is relative to the reference's largest magnitude
# (at least 1).
#   "value":     outputs and gradients of short reductions (distances, epilogues, separable taps)
#   "reduction": outputs and gradients that sum hundreds of products in float32 (a convolution or
#                GEMM inside the op, a weight gradient over every pixel): oneDNN's / MKL's own
#                float32 rounding reaches a few 1e-5 of the scale there; half types are inputs and
#                outputs rounded to the half dtype around a float32 accumulation.
# Half types computed *in* the half dtype are held to the flash-attention rule instead
# (assert_within_naive_error).
TOL = {
    "value": {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (2e-5, 2e-5),
        torch.float16: (2e-2, 2e-2),
        torch.bfloat16: (5e-2, 5e-2),
    },
    "reduction": {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (3e-4, 3e-5),
        torch.float16: (4e-3, 4e-3),
        torch.bfloat16: (2e-2, 2e-2),
    },
}


def assert_close_to_ref(got, want64, dtype, what="", *, kind="value", scale=None):
    """Compare ``got`` (any dtype) with a float64 reference by TOL[kind][dtype], the absolute part
    scaled by the reference's size; shapes and finiteness must agree."""
    rtol, atol = TOL[kind][dtype]
    want = want64.detach().to(torch.float64)
    got = got.detach().to(torch.float64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if scale is None:
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    err = (got - want).abs()
    bound = atol * scale + rtol * want.abs()
    if err.numel() and not bool((err <= bound).all()):
        idx = int((err - bound).argmax())
        raise AssertionError(
            f"{what}: max abs err {float(err.max()):.3g} (at flat {idx}: got {float(got.flatten()[idx]):.10g}, "
            f"want {float(want.flatten()[idx]):.10g}); rtol={rtol}, atol={atol}*{scale:.3g}"
        )
    assert torch.isfinite(got).all() == torch.isfinite(want).all(), f"{what}: finiteness differs"


HALF = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def cudnn_deterministic():
    """cuDNN's default convolution algorithms may sum in any order; gradcheck runs backward twice
    and wants the same bits (its reentrancy check), which the README promises for the cuDNN parts
    only in deterministic mode. No effect on CPU tensors."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = before


def assert_within_naive_error(got, want, naive, what="", factor=2.0):
    """The flash-attention rule for float16/bfloat16 results: the error of ``got`` against a float32
    (or float64) reference ``want`` is at most ``factor`` times the error of ``naive``, the same
    computation done plainly in the half dtype (the reference called on the half inputs). A floor of
    one unit in the last place of the half dtype at the reference's scale keeps an exact ``naive``
    from demanding more than exactness."""
    want = want.detach().to(torch.float64)
    g, n = got.detach().to(torch.float64), naive.detach().to(torch.float64)
    assert g.shape == want.shape == n.shape, f"{what}: shapes {tuple(g.shape)}, {tuple(want.shape)}, {tuple(n.shape)}"
    if not want.numel():
        return
    fin = torch.isfinite(want)
    assert torch.equal(torch.isfinite(g), fin), f"{what}: finiteness differs from the reference"
    scale = max(1.0, float(want[fin].abs().max())) if bool(fin.any()) else 1.0
    err = float((g - want)[fin].abs().max()) if bool(fin.any()) else 0.0
    err_naive = float((n - want)[fin & torch.isfinite(n)].abs().max()) if bool((fin & torch.isfinite(n)).any()) else 0.0
    floor = torch.finfo(got.dtype).eps * scale
    bound = factor * err_naive + floor
    assert err <= bound, (f"{what}: max abs err {err:.3g} > {factor} x naive {got.dtype} err {err_naive:.3g} "
                          f"+ {floor:.3g} (reference scale {scale:.3g})")


# ---------------------------------------------------------------------------------------------
# One representative call of every public op (determinism, threads, autocast tests)
# ---------------------------------------------------------------------------------------------


def op_cases(dtype=torch.float32, seed=0, scale=1):
    """{name: (fn, tensors)}: ``fn(*tensors)`` calls one public op; ``scale`` grows the sizes so
    the OpenMP loops split over threads. Every tensor is a leaf that needs a gradient."""
    from rbfkern import ops

    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=None):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        if lo is not None:
            t = t.abs() + lo
        return t.to(dtype)

    n, c, d = 37 * scale, 19 * scale, 17
    return {
        "rbf_r2/none": (lambda x, cc: ops.rbf_r2(x, cc), (r(n, d), r(c, d))),
        "rbf_r2/diag": (lambda x, cc, w: ops.rbf_r2(x, cc, diag=w), (r(n, d), r(c, d), r(c, d, lo=0.1))),
        "rbf/tril_gaussian": (lambda x, cc, L, s: ops.rbf(x, cc, tril=L, sigma=s),
                              (r(n, d), r(c, d), r(c, d, d) / 4, r(c, lo=1.0))),
        "rbf/diag_multiquadric": (lambda x, cc, w, s: ops.rbf(x, cc, diag=w, sigma=s, kind="multiquadric", shape=0.7),
                                  (r(n, d), r(c, d), r(d, lo=0.1), r((), lo=0.5))),
        "rbf/thin_plate": (lambda x, cc: ops.rbf(x, cc, kind="thin_plate"), (r(n, d), r(c, d))),
        "bcos_conv2d/b2": (lambda x, w: ops.bcos_conv2d(x, w, b=2.0, max_out=2, stride=2, padding=1, groups=2),
                           (r(2 * scale, 4, 11, 9), r(8, 2, 3, 3))),
        "bcos_conv2d/b2.5": (lambda x, w: ops.bcos_conv2d(x, w, b=2.5, dilation=2, padding=2),
                             (r(2 * scale, 3, 10, 10), r(5, 3, 3, 3))),
        # 14 output columns: the CPU forward takes the direct convolution (bcos_conv2d/b2, b2.5: oneDNN)
        "bcos_conv2d/direct": (lambda x, w: ops.bcos_conv2d(x, w, b=1.5, max_out=3, padding=1),
                               (r(2 * scale, 3, 7, 14), r(15, 3, 3, 3))),
        "bcos_linear": (lambda x, w: ops.bcos_linear(x, w, b=2.0, max_out=2), (r(3 * scale, 5, 17), r(12, 17))),
        "gauss_deriv_conv2d": (lambda x, a, s: ops.gauss_deriv_conv2d(x, a, s, order=2),
                               (r(2 * scale, 3, 13, 12), r(4, 3, 12), r(2, lo=0.7))),
        "gauss_deriv_conv3d": (lambda x, a, s: ops.gauss_deriv_conv3d(x, a, s, order=1, stride=2),
                               (r(scale, 2, 7, 8, 6), r(3, 2, 4), r(1, lo=0.7))),
    }


def scalar_of_a_few_inputs(fn, tensors, k=40):
    """(p, loss): a smooth scalar loss of ``fn`` as a function of the first ``k`` entries ``p`` of its
    first tensor, the rest fixed, so that a full Hessian (k x k) stays cheap on every op case."""
    x, rest = tensors[0].detach(), tuple(t.detach() for t in tensors[1:])
    flat = x.reshape(-1)
    k = min(k, flat.numel())

    def loss(p):
        out = fn(torch.cat([p, flat[k:]]).reshape(x.shape), *rest)
        out = out[0] if isinstance(out, tuple) else out
        return (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)).sin().sum()

    return flat[:k].clone(), loss


def run_case(fn, tensors, seed=1):
    """Forward and backward of ``fn`` on fresh leaf copies: [output, grad of each tensor]."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.device, y.dtype)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


def assert_bitwise(got, want, what=""):
    """Every tensor of two lists identical bit for bit (NaNs included)."""
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}[{i}]: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        same = torch.equal(a.view(-1).view(torch.uint8 if a.element_size() == 1 else
                                          {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]),
                           b.view(-1).view(torch.uint8 if b.element_size() == 1 else
                                           {2: torch.int16, 4: torch.int32, 8: torch.int64}[b.element_size()]))
        if not same:
            diff = (a.double() - b.double()).abs()
            raise AssertionError(f"{what}[{i}] not bitwise equal: max abs diff {float(diff.max()):.3g}, "
                                 f"{int((a != b).sum())} of {a.numel()} elements differ")


def run_tests_under_isa(isa, test_file, select, timeout=900):
    """Run ``pytest test_file -k select`` in a child process whose C++ kernels run the instruction
    set ``isa`` (RBFKERN_CPU_ISA: fixed per process, hence the child); each set has its own vector
    width and tile shapes. Fails unless something ran, passed, and nothing was skipped."""
    env = dict(os.environ, RBFKERN_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", test_file,
                          "-k", select], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " skipped" not in out.stdout, out.stdout[-500:]


class AllFamilies(torch.nn.Module):
    """Gaussian derivatives -> B-cos conv (MaxOut 2) -> B-cos linear on a 3-D input -> RBF classifier."""

    def __init__(self, metric="full"):
        super().__init__()
        self.gauss = rbfkern.nn.GaussDerivConv2d(3, 6, order=2, sigmas=(1.0, 1.5), learn_sigma=True)
        self.conv = rbfkern.nn.BcosConv2d(6, 8, 3, padding=1, max_out=2)
        self.linear = rbfkern.nn.BcosLinear(8, 5, max_out=2)
        self.head = rbfkern.nn.RBFClassifier(5, 7, 4, metric=metric, kind="gaussian")

    def forward(self, x):
        h = self.conv(self.gauss(x))  # (N, 8, H, W)
        h = self.linear(h.flatten(2).transpose(1, 2))  # (N, H*W, 5): the linear layer's leading dims
        return self.head(h.mean(1))
