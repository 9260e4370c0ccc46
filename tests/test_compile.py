"""torch.compile(fullgraph=True) of modules built on the custom ops runs on CPU without graph breaks."""
import pytest
import torch

from conftest import CUDA, CUDA_ON_CPU, DEVICES
from rbfkern.ops import rbf, rbf_r2

# Triton's interpreter cannot run under torch.compile: the rehearsal leaves the cuda variants here
# to a GPU.
_NO_REHEARSAL = pytest.mark.skipif(CUDA_ON_CPU, reason="torch.compile does not run interpreted kernels")


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


@_NO_REHEARSAL
@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(compiler, device, monkeypatch):
    if device.type == "cpu":
        monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    torch._dynamo.reset()
    model = _RBFHead().to(device)
    x = torch.randn(8, 6).to(device)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    y_eager = model(x)
    y_comp = compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(y_comp.sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


@_NO_REHEARSAL
@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_compile_dynamic_batch(device, monkeypatch):
    if device.type == "cpu":
        monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    torch._dynamo.reset()
    model = _RBFHead().to(device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor",
                             dynamic=True)
    for n in (3, 9, 17):
        x = torch.randn(n, 6).to(device)
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("device", [CUDA], indirect=True)
def test_inductor_sees_the_triton_kernels(device):
    """On CUDA the ops are triton_ops: inductor's generated code launches our kernels itself
    (no opaque rbfkern op call left in it)."""
    if device.type != "cuda":
        pytest.skip("needs inductor's CUDA code generation")
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model = _RBFHead().to(device)
    x = torch.randn(8, 6, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    _, codes = run_and_get_code(compiled, x)
    code = "\n".join(codes)
    assert "_rbf_fwd_kernel" in code, "the RBF forward kernel is not in inductor's code"
    assert "torch.ops.rbfkern" not in code, "an rbfkern op stayed opaque on CUDA"
