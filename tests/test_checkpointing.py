"""Activation checkpointing and module backward hooks around the layers: torch.utils.checkpoint in
both modes gives eager's gradients bit for bit (its first forward runs without saving, under
no_grad for the reentrant mode, and the recompute saves), and full backward hooks see each
layer's input gradient."""
import pytest
import torch
from _util import AllFamilies
from torch.utils.checkpoint import checkpoint


def _grads(model, x, run):
    model.zero_grad()
    x.grad = None
    run(x).square().sum().backward()
    return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("reentrant", [False, True], ids=["nonreentrant", "reentrant"])
def test_checkpoint_gives_eager_gradients(reentrant):
    torch.manual_seed(0)
    model = AllFamilies("full")
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    want = _grads(model, x, model)
    got = _grads(model, x, lambda t: checkpoint(model, t, use_reentrant=reentrant))
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), i


def test_full_backward_hooks_see_each_layer_input_gradient():
    torch.manual_seed(1)
    model = AllFamilies("diag")
    seen = {}
    layers = {"gauss": model.gauss, "conv": model.conv, "linear": model.linear, "rbf": model.head.rbf}
    for name, layer in layers.items():
        layer.register_full_backward_hook(lambda mod, gi, go, name=name: seen.__setitem__(name, gi[0]))
    acts = {}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda mod, i, o, name=name: acts.__setitem__(name, i[0]))
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert set(seen) == set(layers)
    torch.testing.assert_close(seen["gauss"], x.grad)
    # each hook's input gradient is the gradient of the output w.r.t. that layer's input
    for name in ("conv", "linear", "rbf"):
        (want,) = torch.autograd.grad(model(x).sum(), acts[name])
        torch.testing.assert_close(seen[name], want, msg=name)
