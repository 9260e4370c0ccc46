"""Forward-mode AD over the ops: torch.func.jvp, jacfwd, hessian and torch.autograd.forward_ad's
dual tensors. The tangents come from the reference on the ops' own arguments (rbfkern/ops/_eager.py,
``_functorch_function``); they must match finite differences (gradcheck's forward-AD check), be the
transpose of the fused backward kernels (<u, J t> = <J^T u, t>), and compose with reverse mode
(hessian = jacfwd of jacrev against jacrev of jacrev, forward-over-reverse products)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from _util import op_cases, scalar_of_a_few_inputs
from conftest import CUDA_SLOW, DEVICES
from torch.func import functional_call, hessian, jacrev, jvp, vjp

from rbfkern import nn as rnn

CASES = sorted(op_cases())


def _case(name, device="cpu"):
    fn, tensors = op_cases(torch.float64)[name]
    return fn, tuple(t.to(device) for t in tensors)


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _randn_like(ts, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in ts)


def _first_output(fn):
    return lambda *a: _tuple(fn(*a))[0]


@pytest.mark.parametrize("case", CASES)
def test_jvp_matches_finite_differences(case):
    """gradcheck's forward-AD check (fast mode: the Jacobian along random directions) from dual
    tensors, and the batched forward grad (vmap over jvp), against central differences."""
    fn, args = _case(case)
    leaves = tuple(a.clone().requires_grad_() for a in args)
    assert torch.autograd.gradcheck(_first_output(fn), leaves, check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_forward_grad=True,
                                    fast_mode=True)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("case", CASES)
def test_jvp_is_the_transpose_of_the_fused_vjp(case, device):
    """<u, J t> from torch.func.jvp against <J^T u, t> from the fused backward kernels."""
    fn, args = _case(case, device)
    tangents = _randn_like(args, seed=2)
    out, tout = jvp(fn, args, tangents)
    us = _randn_like(_tuple(out), seed=3)
    _, pull = vjp(fn, *args)
    back = pull(us if isinstance(out, tuple) else us[0])
    lhs = sum((u * t).sum() for u, t in zip(us, _tuple(tout)))
    rhs = sum((b * t).sum() for b, t in zip(back, tangents))
    scale = sum((u.abs() * t.abs()).sum() for u, t in zip(us, _tuple(tout))) + 1.0
    assert abs(float(lhs - rhs)) <= 1e-10 * float(scale), (float(lhs), float(rhs))


@pytest.mark.parametrize("case", CASES)
def test_dual_tensors_equal_torch_func_jvp(case):
    """torch.autograd.forward_ad (no functorch) gives a tangent, the one torch.func.jvp gives. Through
    the op alone, torch.library drops it: the tangent came back None."""
    fn, args = _case(case)
    tangents = _randn_like(args, seed=4)
    _, want = jvp(fn, args, tangents)
    with fwAD.dual_level():
        out = fn(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents)))
        got = [fwAD.unpack_dual(o).tangent for o in _tuple(out)]
    for g, w in zip(got, _tuple(want)):
        assert g is not None
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_hessian_equals_reverse_over_reverse(case):
    """hessian (jacfwd of jacrev: the jvp of the backward ops) against jacrev of jacrev."""
    p, loss = scalar_of_a_few_inputs(*_case(case))
    torch.testing.assert_close(hessian(loss)(p), jacrev(jacrev(loss))(p), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["rbf/tril_gaussian", "bcos_conv2d/b2.5", "gauss_deriv_conv2d"])
def test_forward_over_reverse_with_dual_tensors(case):
    """A Hessian-vector product the forward_ad way: the tangent of autograd's gradient of a dual input."""
    p, loss = scalar_of_a_few_inputs(*_case(case))
    v = _randn_like((p,), seed=5)[0]
    want = jacrev(jacrev(loss))(p) @ v
    with fwAD.dual_level():
        xd = fwAD.make_dual(p.clone().requires_grad_(), v)
        g, = torch.autograd.grad(loss(xd), xd, create_graph=True)
        got = fwAD.unpack_dual(g).tangent
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", ["cpu", CUDA_SLOW], indirect=True)
def test_jvp_over_module_parameters(device):
    """A parameter-space jvp (linearised models, neural-tangent products) through functional_call of
    a model made of all three families, against the transpose of its backward."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        rnn.GaussDerivConv2d(3, 4, order=2, sigmas=(1.0,), learn_sigma=True, max_sigma=2.0),
        rnn.BcosConv2d(4, 4, 3, padding=1, max_out=2), torch.nn.Flatten(),
        rnn.RBF(4 * 8 * 8, 5, metric="diag", kind="gaussian")).to(device, torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    params = {k: p.detach() for k, p in model.named_parameters()}
    tangents = dict(zip(params, _randn_like(tuple(params.values()), seed=6)))
    out, tout = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangents,))
    u = _randn_like((out,), seed=7)[0]
    _, pull = vjp(lambda p: functional_call(model, p, (x,)), params)
    back = pull(u)[0]
    rhs = sum((back[k] * tangents[k]).sum() for k in params)
    assert abs(float((u * tout).sum() - rhs)) <= 1e-10 * (float((u.abs() * tout.abs()).sum()) + 1.0)


@pytest.mark.parametrize("mode", ["torch.func.jvp", "dual tensors"])
def test_compiled_forward_mode_equals_eager(mode):
    """Under torch.compile a trace zeroes (torch.func.jvp) or drops (dual tensors) the tangent of a
    custom op or a Function's jvp; rbfkern runs forward mode outside the graph instead."""
    torch._dynamo.reset()
    fn, args = _case("rbf/tril_gaussian")
    x, rest = args[0], args[1:]
    t = _randn_like((x,), seed=8)[0]
    f = _first_output(lambda x_: fn(x_, *rest))
    want = jvp(f, (x,), (t,))[1]
    if mode == "torch.func.jvp":
        got = torch.compile(lambda x_, t_: jvp(f, (x_,), (t_,))[1])(x, t)
    else:
        compiled = torch.compile(f)
        compiled(x)  # traced first without forward AD: the dual call must not reuse that graph
        with fwAD.dual_level():
            got = fwAD.unpack_dual(compiled(fwAD.make_dual(x, t))).tangent
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
