"""The eager CPU path (rbfkern/ops/_eager.py): plain calls run the op bodies without torch.library's
dispatch layers; they must give what the op gives, bit for bit, and every call that needs those
layers (modes, traces, autocast, functorch, forward AD, the profiler, subclasses) must take the op."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from rbfkern.ops import (
    _eager,
    bcos_conv2d,
    bcos_linear,
    gauss_deriv_conv2d,
    gauss_deriv_conv3d,
    rbf,
    rbf_r2,
)


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape, pos=False):
        t = torch.randn(*shape, generator=g, dtype=dtype)
        return (t.abs() + 0.5 if pos else t).requires_grad_()

    return {
        "rbf_r2_none": (lambda x, c: rbf_r2(x, c), (r(9, 5), r(4, 5))),
        "rbf_r2_diag": (lambda x, c, d: rbf_r2(x, c, diag=d), (r(9, 20), r(4, 20), r(4, 20, pos=True))),
        "rbf_gaussian_diag": (lambda x, c, d, s: rbf(x, c, diag=d, sigma=s, return_r2=True),
                              (r(9, 5), r(4, 5), r(5, pos=True), r(4, pos=True))),
        "rbf_imq_tril": (lambda x, c, t: rbf(x, c, tril=t, kind="inverse_multiquadric", sigma=1.5),
                         (r(9, 3), r(4, 3), r(4, 3, 3))),
        "bcos_conv2d": (lambda x, w: bcos_conv2d(x, w, max_out=2, padding=1), (r(2, 3, 6, 6), r(8, 3, 3, 3))),
        "bcos_linear_b3": (lambda x, w: bcos_linear(x, w, b=3.0), (r(2, 3, 7), r(5, 7))),
        "gauss_deriv_conv2d": (lambda x, a, s: gauss_deriv_conv2d(x, a, s, order=2),
                               (r(2, 3, 9, 9), r(4, 3, 6), torch.tensor([1.2], dtype=dtype, requires_grad=True))),
        "gauss_deriv_conv3d": (lambda x, a: gauss_deriv_conv3d(x, a, 0.8, order=1), (r(1, 2, 6, 6, 6), r(3, 2, 4))),
    }


CASES = list(_inputs(torch.float64))


def test_every_op_with_an_autograd_formula_has_a_case():
    # backward ops have a formula too (it raises: no double backward); the forward cases reach them
    ops = {op._name for op in _eager._FUNCTION if not op._name.endswith("_bwd")}
    # a case is named after its op (the longest op name it starts with), then what it varies
    covered = {max((n for n in ops if case == n or case.startswith(n + "_")), key=len, default=None) for case in CASES}
    assert covered == ops, f"add a case for {sorted(ops - covered)}"


class _FunctionPassthrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _DispatchPassthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def _op_node(t):
    """The type name of the first autograd node behind ``t`` that is not a view or reshape."""
    node = t.grad_fn
    while type(node).__name__.startswith(("View", "Reshape", "Unsafe")):
        node = node.next_functions[0][0]
    return type(node).__name__


def _run(fn, args):
    """Outputs, the op's autograd node's type name and the gradients of a weighted sum of the outputs."""
    outs = _outputs(fn(*args))
    grad_fn = _op_node(outs[0])
    loss = sum((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outs)
    grads = torch.autograd.grad(loss, args)
    return [o.detach() for o in outs], grad_fn, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_eager_path_matches_the_op_bit_for_bit(case, dtype):
    fn, args = _inputs(dtype)[case]
    outs, grad_fn, grads = _run(fn, args)
    with _FunctionPassthrough():  # any torch function mode sends the call through the op
        op_outs, op_grad_fn, op_grads = _run(fn, args)
    # the B-cos ops' aux outputs are non-differentiable: the public function, which returns y
    # alone, applies the Function with y as its only output
    eager = "_eager_firstBackward" if case.startswith("bcos") else "_eagerBackward"
    assert grad_fn.endswith(eager), grad_fn
    assert op_grad_fn.startswith("GeneratedBackwardFor_rbfkern_"), op_grad_fn
    for got, want in zip(outs + list(grads), op_outs + list(op_grads)):
        assert torch.equal(got, want)


@pytest.fixture
def body_calls(monkeypatch):
    """How often the eager path ran an op body directly (the op path calls its own copy)."""
    calls = []
    for table in (_eager._BODY, _eager._PART):  # a body, or the part of it a caller wants
        for op, body in list(table.items()):
            def counted(*args, _body=body, _op=op):
                calls.append(_op)
                return _body(*args)
            monkeypatch.setitem(table, op, counted)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_no_grad_calls_run_the_body(case, body_calls):
    fn, args = _inputs(torch.float64)[case]
    want = _outputs(fn(*args))
    assert len(body_calls) == 0  # forward with grad: through the autograd.Function
    with torch.no_grad():
        got = _outputs(fn(*args))
    assert len(body_calls) == 1
    assert all(torch.equal(a, b.detach()) for a, b in zip(got, want))


# name -> (context, whether it is still in effect when autograd runs the backward): the engine runs
# a backward without the caller's torch function modes, so there the backward op runs eagerly.
_CONDITIONS = {
    "torch_function_mode": (_FunctionPassthrough, False),
    "torch_dispatch_mode": (_DispatchPassthrough, True),
    "autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), True),
    "profiler": (torch.autograd.profiler.profile, True),
    "forward_ad_level": (fwAD.dual_level, True),
}


@pytest.mark.parametrize("condition", list(_CONDITIONS))
@pytest.mark.parametrize("case", ["rbf_gaussian_diag", "bcos_conv2d", "gauss_deriv_conv2d"])
def test_calls_that_need_the_dispatcher_take_the_op(case, condition, body_calls):
    fn, args = _inputs(torch.float32)[case]
    context, in_backward = _CONDITIONS[condition]
    with context():
        outs = _outputs(fn(*args))
        assert body_calls == [], f"the eager path ran under {condition}"
        grads = torch.autograd.grad(sum(o.float().sum() for o in outs), args)
    assert len(body_calls) == (0 if in_backward else 1), body_calls
    assert all(g.shape == a.shape for g, a in zip(grads, args))


def test_profiler_records_the_op():
    fn, args = _inputs(torch.float32)["rbf_gaussian_diag"]
    with torch.autograd.profiler.profile() as prof:
        fn(*args)[0].sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"rbfkern::rbf", "rbfkern::rbf_bwd"} <= names, sorted(n for n in names if "rbf" in n)


class _Subclass(torch.Tensor):
    pass


def test_tensor_subclasses_and_other_devices_take_the_op(body_calls):
    x, c = torch.randn(6, 3), torch.randn(2, 3)
    rbf_r2(x.as_subclass(_Subclass), c)
    assert body_calls == []
    out = rbf_r2(x.to("meta"), c.to("meta"))
    assert out.shape == (6, 2) and out.device.type == "meta" and body_calls == []
    rbf_r2(x, c)
    assert len(body_calls) == 1


def test_parameters_take_the_eager_path():
    x = torch.randn(6, 3)
    c = torch.nn.Parameter(torch.randn(2, 3))
    assert type(rbf_r2(x, c).grad_fn).__name__.endswith("_eagerBackward")


def test_functorch_transforms_take_the_op(body_calls):
    x, c = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    got = torch.func.vmap(lambda x_: rbf(x_[None], c, sigma=1.3))(x)  # torch's per-sample fallback
    assert body_calls == []
    assert torch.equal(got[:, 0], rbf(x, c, sigma=1.3))
    assert len(body_calls) == 1


def test_jit_trace_records_the_op(body_calls):
    c = torch.randn(2, 3)
    traced = torch.jit.trace(lambda x: rbf_r2(x, c), torch.randn(4, 3), check_trace=False)
    assert body_calls == []
    assert "rbfkern::rbf_r2" in str(traced.graph)
    x = torch.randn(7, 3)
    assert torch.equal(traced(x), rbf_r2(x, c))


@pytest.mark.parametrize("case", ["rbf_gaussian_diag", "bcos_conv2d", "gauss_deriv_conv2d"])
def test_double_backward_matches_the_op_bit_for_bit(case):
    fn, args = _inputs(torch.float64)[case]

    def second():
        out = _outputs(fn(*args))[0]
        g = torch.autograd.grad(out.pow(2).sum(), args, create_graph=True)
        return torch.autograd.grad(sum(t.pow(2).sum() for t in g), args)

    got = second()
    with _FunctionPassthrough():
        want = second()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_in_place_change_of_a_saved_input_is_caught():
    x, c = torch.randn(5, 3, requires_grad=True), torch.randn(2, 3)
    y = rbf_r2(x, c)
    c.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("case", ["rbf_gaussian_diag", "bcos_linear_b3", "gauss_deriv_conv2d"])
def test_batched_gradients_take_the_op(case):
    # is_grads_batched (and jacobian(vectorize=True), gradcheck(check_batched_grad=True)) hand the
    # backward legacy batched tensors: plain CPU tensors to look at, no numpy buffers to give.
    fn, args = _inputs(torch.float64)[case]
    out = _outputs(fn(*args))[0]
    basis = torch.eye(out.numel(), dtype=out.dtype)[:5].reshape(5, *out.shape)
    got = torch.autograd.grad(out, args[0], basis, retain_graph=True, is_grads_batched=True)[0]
    want = torch.stack([torch.autograd.grad(out, args[0], v, retain_graph=True)[0] for v in basis])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_switch_sends_every_call_through_the_op(body_calls):
    import rbfkern

    fn, args = _inputs(torch.float64)["rbf_gaussian_diag"]
    with rbfkern.set_eager_fast_path(False):
        outs, grad_fn, _ = _run(fn, args)
        with torch.no_grad():
            fn(*args)
    assert body_calls == [] and grad_fn.startswith("GeneratedBackwardFor_rbfkern_"), grad_fn
    assert _run(fn, args)[1].endswith("_eagerBackward")  # restored on exit
    with pytest.raises(TypeError, match="enabled must be a bool"):
        rbfkern.set_eager_fast_path(0)
