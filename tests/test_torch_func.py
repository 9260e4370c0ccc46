"""torch.func over the ops: grad, vjp, jacrev and per-sample gradients (vmap over grad) must give
what torch.autograd gives; second order (grad of grad) must give autograd's double backward. Forward
mode: tests/test_forward_mode.py.

torch.library's generated autograd.Function cannot run under functorch transforms (pytorch#170834);
rbfkern.ops._eager applies the same formula through one that can."""
import warnings

import pytest
import torch
from _util import TOL, op_cases, scalar_of_a_few_inputs
from conftest import CUDA, CUDA_SLOW, DEVICES
from torch.func import functional_call, grad, jacrev, vjp, vmap

import rbfkern
from rbfkern.ops import _vmap, gauss_deriv_conv2d, rbf

CASES = sorted(op_cases())


def _case(name, dtype=torch.float64, device="cpu"):
    """(fn, leaves): ``_util.op_cases``' call ``name``, its tensors as leaves on ``device`` that need grad."""
    fn, tensors = op_cases(dtype)[name]
    return fn, tuple(t.to(device).requires_grad_() for t in tensors)


@pytest.fixture(autouse=True)
def _no_batching_fallback():
    # every op has a batching rule (rbfkern/ops/_vmap.py): torch's per-slice fallback, which warns,
    # must not run
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*batching rule.*")
        yield


@pytest.fixture
def no_per_slice(monkeypatch):
    """Fail where a batching rule calls the op once per slice instead of once on B*N rows."""
    def fail(op, *args):
        raise AssertionError(f"{op._name} ran per slice")
    monkeypatch.setattr(_vmap, "_per_slice", fail)


def _weighted_sum(out):
    outs = out if isinstance(out, tuple) else (out,)
    return sum((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outs)


def _detached(args):
    return tuple(a.detach() for a in args)


def _assert_same(got, want, device):
    """Bit for bit on CPU; on a GPU the Triton backward kernels may sum in any order (atomics)."""
    if device.type == "cpu":
        assert torch.equal(got, want)
    else:
        rtol, atol = TOL["reduction"][want.dtype]
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(1.0, float(want.abs().max())))


# the eager path is CPU-only: on CUDA both settings take the op
@pytest.mark.parametrize(("eager", "device"), [
    pytest.param(True, "cpu", id="eager_path"), pytest.param(False, "cpu", id="op_path"),
    pytest.param(True, "cuda", marks=CUDA.marks, id="cuda")], indirect=["device"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_grad_equals_autograd(case, dtype, eager, device):
    fn, args = _case(case, dtype, device)
    want = torch.autograd.grad(_weighted_sum(fn(*args)), args)
    with rbfkern.set_eager_fast_path(eager):
        got = grad(lambda *a: _weighted_sum(fn(*a)), argnums=tuple(range(len(args))))(*_detached(args))
    for g, w in zip(got, want):
        _assert_same(g, w, device)


@pytest.mark.parametrize("device", ["cpu", CUDA_SLOW], indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_per_sample_gradients_equal_a_loop(case, device):
    fn, args = _case(case, device=device)
    x, params = args[0].detach(), _detached(args[1:])

    def loss(params, xi):
        return _weighted_sum(fn(xi.unsqueeze(0), *params))

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        want = torch.autograd.grad(loss(args[1:], x[i]), args[1:])
        for g, w in zip(got, want):
            torch.testing.assert_close(g[i], w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_vmap_over_rows_is_one_call_equal_to_a_loop(case, no_per_slice, device):
    """vmap over a stack of inputs with shared parameters: one call on B*N rows, forward and the
    input gradient (the backward ops fold too when no parameter gradient is asked for)."""
    fn, args = _case(case, device=device)
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(3, *args[0].shape, dtype=torch.float64, generator=g).to(device)
    params = _detached(args[1:])
    got = vmap(lambda x_: fn(x_, *params))(xs)
    got_gx = vmap(grad(lambda x_: _weighted_sum(fn(x_, *params))))(xs)
    for b in range(3):
        xb = xs[b].clone().requires_grad_()
        want = fn(xb, *params)
        want_gx, = torch.autograd.grad(_weighted_sum(want), xb)
        for o, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(o[b], w.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_gx[b], want_gx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["rbf/tril_gaussian", "rbf/diag_multiquadric", "bcos_linear", "gauss_deriv_conv2d"])
def test_jacrev_and_vjp_equal_autograd(case, no_per_slice):
    fn, args = _case(case)
    first = (lambda *a: fn(*a)[0]) if isinstance(fn(*args), tuple) else fn
    x, rest = args[0].detach(), _detached(args[1:])
    got = jacrev(lambda x_: first(x_, *rest))(x)
    want = torch.autograd.functional.jacobian(lambda x_: first(x_, *rest), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    out, pull = vjp(lambda *a: first(*a), x, *rest)
    v = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    for g, w in zip(pull(v), torch.autograd.grad(first(*args), args, v)):
        assert torch.equal(g, w)


def test_vmap_over_parameters_runs_every_model_and_checks_every_slice():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 4, dtype=torch.float64, generator=g)
    centers = torch.randn(5, 3, 4, dtype=torch.float64, generator=g)
    diag = torch.rand(5, 3, 4, dtype=torch.float64, generator=g) + 0.1
    got = vmap(lambda c, d: rbf(x, c, diag=d))(centers, diag)
    for m in range(5):
        assert torch.equal(got[m], rbf(x, centers[m], diag=diag[m]))
    diag[3, 2, 1] = -0.5  # one model's metric, read inside vmap
    with pytest.raises(ValueError, match="diag must be >= 0, got min -0.5"):
        vmap(lambda c, d: rbf(x, c, diag=d))(centers, diag)


def test_per_sample_gradients_of_a_module():
    torch.manual_seed(3)
    model = torch.nn.Sequential(rbfkern.nn.GaussDerivConv2d(2, 3, order=2, sigmas=(1.0, 1.5), learn_sigma=True),
                                torch.nn.Flatten(), torch.nn.LazyLinear(4)).double()
    x, y = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 1])
    model(x)  # materialise the lazy layer
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(params, xi, yi):
        out = functional_call(model, params, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    got = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(got[k][i], p.grad, rtol=1e-10, atol=1e-12)


def test_vmap_over_a_learned_sigma_needs_max_sigma():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=g)
    alpha = torch.randn(4, 3, 6, dtype=torch.float64, generator=g)
    sigmas = torch.tensor([[1.0], [1.5], [2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma is batched by torch.func.vmap.*pass max_sigma"):
        vmap(lambda s: gauss_deriv_conv2d(x, alpha, s, order=2))(sigmas)
    got = vmap(lambda s: gauss_deriv_conv2d(x, alpha, s, order=2, max_sigma=2.0))(sigmas)
    for i in range(3):
        assert torch.equal(got[i], gauss_deriv_conv2d(x, alpha, sigmas[i], order=2, max_sigma=2.0))


@pytest.mark.parametrize("case", ["bcos_linear", "rbf/tril_gaussian", "gauss_deriv_conv2d"])
def test_grad_of_grad_equals_autograd_double_backward(case):
    fn, args = _case(case)

    def inner(*a):
        return sum(g.pow(2).sum() for g in grad(lambda *b: _weighted_sum(fn(*b)), argnums=tuple(range(len(a))))(*a))

    got = grad(inner, argnums=tuple(range(len(args))))(*_detached(args))
    first = torch.autograd.grad(_weighted_sum(fn(*args)), args, create_graph=True)
    want = torch.autograd.grad(sum(g.pow(2).sum() for g in first), args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_jacrev_of_grad_equals_autograd_hessian(case):
    """jacrev of grad vmaps the backward ops' backward; it failed inside torch ("escaped?") while the
    reference backwards differentiated inputs that were not asked for (sigma of rbf_r2, the weight
    of a B-cos layer)."""
    fn, args = _case(case)
    p, loss = scalar_of_a_few_inputs(fn, args)
    torch.testing.assert_close(jacrev(grad(loss))(p), torch.autograd.functional.hessian(loss, p),
                               rtol=1e-12, atol=1e-12)
