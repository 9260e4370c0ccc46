"""Graph capture by tracing: torch.fx.symbolic_trace (what torchvision's feature extraction and
FX quantisation / pruning tools run) records each public op and layer as one call_function node,
and the GraphModule equals eager in outputs and gradients; torch.jit.trace (deprecated by PyTorch,
still in use) passes its own re-trace check and equals eager."""
import copy
import warnings

import pytest
import torch
from _util import AllFamilies

import rbfkern.nn as rn
from rbfkern.ops import (
    bcos_conv2d,
    bcos_linear,
    gauss_deriv_conv2d,
    gauss_deriv_conv3d,
    rbf,
    rbf_r2,
)


def _grads(model, y):
    model.zero_grad()
    y.square().sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _assert_same_as_eager(traced, model, x):
    want = model(x)
    g_want = _grads(model, want)
    got = traced(x)
    torch.testing.assert_close(got, want)
    g_got = _grads(model, got)  # a GraphModule / traced module shares the model's parameters
    for k in g_want:
        torch.testing.assert_close(g_got[k], g_want[k], msg=k)


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("metric", ["full", "diag", "none"])
def test_fx_graph_module_matches_eager(metric):
    torch.manual_seed(0)
    model = AllFamilies(metric)
    gm = torch.fx.symbolic_trace(model)
    targets = _targets(gm)
    for fn in (gauss_deriv_conv2d, bcos_conv2d, bcos_linear):
        assert targets.count(fn) == 1, (fn.__name__, targets)
    assert sum(getattr(t, "__name__", "") == "_layer_forward" for t in targets) == 1, targets
    for n in (2, 5):
        _assert_same_as_eager(gm, model, torch.randn(n, 3, 12, 12))
    gm2, model2 = copy.deepcopy((gm, model))  # one copy: the two keep sharing their parameters
    _assert_same_as_eager(gm2, model2, torch.randn(3, 3, 12, 12))


class _Functional(torch.nn.Module):
    """The functional API in a user's own module: tensor arguments by keyword, a learned sigma."""

    def __init__(self):
        super().__init__()
        self.alpha3 = torch.nn.Parameter(torch.randn(3, 2, 4))
        self.sigma = torch.nn.Parameter(torch.tensor([1.0]))
        self.centers = torch.nn.Parameter(torch.randn(6, 3))
        self.diag = torch.nn.Parameter(torch.rand(6, 3) + 0.5)

    def forward(self, x):
        h = gauss_deriv_conv3d(x, self.alpha3, self.sigma, order=1, max_sigma=1.5).mean((2, 3, 4))
        act = rbf(h, self.centers, diag=self.diag, sigma=self.sigma, kind="gaussian")
        return act + rbf_r2(h, self.centers, diag=self.diag)


def test_fx_records_the_functional_ops():
    torch.manual_seed(1)
    model = _Functional()
    gm = torch.fx.symbolic_trace(model)
    targets = _targets(gm)
    for fn in (gauss_deriv_conv3d, rbf, rbf_r2):
        assert targets.count(fn) == 1, (fn.__name__, targets)
    _assert_same_as_eager(gm, model, torch.randn(2, 2, 7, 7, 7))


def test_fx_layers_alone_and_bad_input_at_run_time():
    torch.manual_seed(2)
    head = rn.RBFClassifier(5, 7, 3, metric="shared_full")
    gm = torch.fx.symbolic_trace(head, concrete_args={"return_r2": False})
    _assert_same_as_eager(gm, head, torch.randn(4, 5))
    conv = rn.BcosConv2d(3, 4, 3, padding=1)
    gm = torch.fx.symbolic_trace(conv)
    # the recorded node is the public function: its checks run when the GraphModule does
    with pytest.raises(ValueError, match="weight must have shape"):
        gm(torch.randn(1, 5, 6, 6))


def test_fx_without_torch_tracing_flag(monkeypatch):
    """A torch without FX's private tracing flag: the arguments are scanned on every call, eager
    calls and traces give the same results."""
    from rbfkern.ops import _fx

    monkeypatch.setattr(_fx, "_HAS_FLAG", False)
    torch.manual_seed(4)
    model = AllFamilies("diag")
    gm = torch.fx.symbolic_trace(model)
    assert _targets(gm).count(bcos_conv2d) == 1
    _assert_same_as_eager(gm, model, torch.randn(2, 3, 12, 12))


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_jit_trace_matches_eager(grad):
    """A B-cos op keeps its saved maps in any TorchScript trace: the graph is replayed in any grad
    mode (and torch.jit.trace re-traces under no_grad to check it)."""
    torch.manual_seed(3)
    model = AllFamilies("diag")
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.set_grad_enabled(grad):
            traced = torch.jit.trace(model, x)  # raises if its re-trace differs
    _assert_same_as_eager(traced, model, torch.randn(3, 3, 12, 12))
