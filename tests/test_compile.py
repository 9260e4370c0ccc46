"""torch.compile(fullgraph=True) of modules built on the custom ops runs on CPU without graph breaks."""
import pytest
import torch

from rbfkern.ops import rbf, rbf_r2


class _RBFHead(torch.nn.Module):
    def __init__(self, d=6, c=5, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.centers = torch.nn.Parameter(torch.randn(c, d, generator=g))
        self.log_w = torch.nn.Parameter(torch.zeros(c, d))
        self.sigma = torch.nn.Parameter(torch.ones(c))
        self.out = torch.nn.Linear(c, k)

    def forward(self, x):
        act, r2 = rbf(x, self.centers, diag=self.log_w.exp(), sigma=self.sigma, kind="gaussian", return_r2=True)
        return self.out(act) + 0.01 * r2.min(1, keepdim=True).values + rbf_r2(x, self.centers).mean()


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(compiler, monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    torch._dynamo.reset()
    model = _RBFHead()
    x = torch.randn(8, 6)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    y_eager = model(x)
    y_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(y_comp.sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


def test_compile_dynamic_batch(monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    torch._dynamo.reset()
    model = _RBFHead()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (3, 9, 17):
        x = torch.randn(n, 6)
        torch.testing.assert_close(compiled(x), model(x))
