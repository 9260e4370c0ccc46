"""A training step of every layer on a GPU, as a CUDA graph and without host syncs (issue 15).

Each step (forward, a loss, backward, an SGD update) is captured once in a CUDA graph and replayed
on new inputs; the parameters after every replay must equal those of an eager twin trained on the
same inputs. The capture runs with the value checks on: they must stand aside while a graph
captures (reading a value there is an error). The eager step, with value checks off, must make no
synchronizing CUDA call (``torch.cuda.set_sync_debug_mode("error")``).

Only a real GPU can capture; tests/test_cuda_trace.py traces the same steps on meta tensors on
every machine, where any read of a tensor's values fails the trace.
"""
import copy

import pytest
import torch

import rbfkern
from rbfkern import nn as rnn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (graph capture)")]

LAYERS = {
    "RBF/diag": (lambda: rnn.RBF(32, 48, metric="diag", kind="gaussian"), (256, 32)),
    "RBF/shared_diag": (lambda: rnn.RBF(32, 48, metric="shared_diag", kind="inverse_quadratic"), (256, 32)),
    "RBF/full": (lambda: rnn.RBF(16, 24, metric="full", kind="gaussian"), (128, 16)),
    "RBF/none": (lambda: rnn.RBF(40, 33, metric="none", kind="logistic"), (100, 40)),
    "BcosConv2d/fused": (lambda: rnn.BcosConv2d(8, 16, 3, padding=1, max_out=2), (4, 8, 20, 20)),
    "BcosConv2d/unfused": (lambda: rnn.BcosConv2d(8, 16, 3, padding=1, max_out=4), (2, 8, 12, 12)),
    "BcosLinear": (lambda: rnn.BcosLinear(64, 32, max_out=2), (64, 64)),
    "GaussDerivConv2d": (lambda: rnn.GaussDerivConv2d(4, 8, order=2, sigmas=(1.0, 2.0), learn_sigma=True),
                         (2, 4, 24, 24)),
    "GaussDerivConv3d": (lambda: rnn.GaussDerivConv3d(2, 4, order=1, sigmas=(1.0,), learn_sigma=True),
                         (1, 2, 10, 10, 10)),
}


def _setup(name):
    torch.manual_seed(0)
    build, shape = LAYERS[name]
    model = build().cuda()
    xs = [torch.randn(shape, device="cuda") for _ in range(4)]
    return model, xs


def _train_step(model, opt, x):
    opt.zero_grad(set_to_none=False)
    loss = model(x).float().square().mean()
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_training_step_captures_and_replays_like_eager(name):
    model, xs = _setup(name)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=1e-3)
    static_x = xs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernels) off the capturing stream
        for _ in range(2):
            _train_step(model, opt, static_x)
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(2):
        _train_step(twin, opt_twin, xs[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _train_step(model, opt, static_x)
    # the capture recorded the step without running it
    for x in xs[1:]:
        static_x.copy_(x)
        graph.replay()
        loss = _train_step(twin, opt_twin, x)
        torch.testing.assert_close(static_loss, loss, rtol=1e-5, atol=1e-6)
        for (pname, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, n=pname: f"{name}.{n}: {m}")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_eager_training_step_makes_no_host_sync(name):
    model, xs = _setup(name)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with rbfkern.set_value_checks(False):
        _train_step(model, opt, xs[0])  # compiles the kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _train_step(model, opt, xs[1])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_value_checks_run_in_eager_and_stand_aside_in_a_capture():
    x, c = torch.randn(8, 4, device="cuda"), torch.randn(5, 4, device="cuda")
    bad = -torch.rand(5, 4, device="cuda")
    with pytest.raises(ValueError, match="diag"):
        rbfkern.ops.rbf_r2(x, c, diag=bad)
    rbfkern.ops.rbf_r2(x, c, diag=bad.abs())  # compiles the kernel before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        r2 = rbfkern.ops.rbf_r2(x, c, diag=bad.abs())
    graph.replay()
    torch.testing.assert_close(r2, rbfkern.reference.rbf_r2(x.double(), c.double(), diag=bad.abs().double()).float(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # an inductor compile per layer: gpucheck --full
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_compiled_with_cuda_graphs_matches_eager(name):
    # torch.compile(mode="reduce-overhead") records the compiled step in CUDA graphs (cudagraph
    # trees); a host sync or a data read in the layer would make inductor skip the graphs or fail
    model, xs = _setup(name)
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for x in xs:
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(x)
        loss = out.float().square().mean()
        got = torch.autograd.grad(loss, list(model.parameters()))
        want = torch.autograd.grad(twin(x).float().square().mean(), list(twin.parameters()))
        torch.testing.assert_close(out, twin(x), rtol=1e-5, atol=1e-6)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
