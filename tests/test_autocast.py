"""Issue 8, autocast: the documented policy (rbfkern/ops/_autocast.py) is "run in float32, return
float32", as PyTorch does for cdist/norm-like ops. Under torch.autocast("cpu", bfloat16 or float16)
every op runs, returns float32, equals the op called on the float32-cast inputs outside autocast
(bit for bit: autocast only casts), and gradients flow back to the leaves in their own dtype."""
import pytest
import torch

from _util import assert_bitwise, op_cases, run_case
from conftest import CUDA, CUDA_SLOW, device_of
from rbfkern.ops import _autocast

NAMES = sorted(op_cases())
AMP = [torch.bfloat16, torch.float16]


def _leaves(tensors, dtype):
    return [t.detach().to(dtype).requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("backend", ["cpp", CUDA_SLOW], indirect=True)
@pytest.mark.parametrize("amp", AMP, ids=["bf16", "f16"])
@pytest.mark.parametrize("inputs", ["f32", "bf16", "mixed"])
@pytest.mark.parametrize("name", NAMES)
def test_runs_in_float32(name, inputs, amp, backend):
    dev = device_of(backend)
    fn, tensors = op_cases(torch.float32, seed=7)[name]
    tensors = [t.to(dev) for t in tensors]
    if inputs == "f32":
        dtypes = [torch.float32] * len(tensors)
    elif inputs == "bf16":
        dtypes = [torch.bfloat16] * len(tensors)
    else:  # the first argument as a preceding autocast layer leaves it, the parameters float32
        dtypes = [torch.bfloat16] + [torch.float32] * (len(tensors) - 1)
    leaves = [t.detach().to(d).requires_grad_(True) for t, d in zip(tensors, dtypes)]
    with torch.autocast(dev.type, dtype=amp):
        y = fn(*leaves)
    assert y.dtype == torch.float32, f"{name}: autocast output is {y.dtype}, documented float32"

    # The same call outside autocast on the float32 values the cast produced.
    want = run_case(fn, [t.detach().float() for t in leaves])
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float().to(dev)
    y.backward(gy)
    assert_bitwise([y.detach()], want[:1], f"{name} forward under autocast")
    for leaf, d, g32 in zip(leaves, dtypes, want[1:]):
        assert leaf.grad is not None, f"{name}: no gradient under autocast"
        assert leaf.grad.dtype == d
        if d == torch.float32:
            assert_bitwise([leaf.grad], [g32], f"{name} gradient under autocast")
        else:
            # A half leaf gets the float32 gradient rounded to its dtype; a broadcast one (the () sigma)
            # is summed by autograd after the cast back, in that dtype.
            tol = 1e-2 * max(1.0, float(g32.abs().max()))
            assert float((leaf.grad.float() - g32).abs().max()) <= tol, f"{name} gradient under autocast"


@pytest.mark.parametrize("name", NAMES)
def test_float64_stays_float64(name, monkeypatch):
    """Autocast leaves float64 alone (as PyTorch does): the op runs in float64."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    fn, tensors = op_cases(torch.float64, seed=7)[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_case(fn, tensors)
    assert_bitwise(got, run_case(fn, tensors), f"{name} float64 under autocast")


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_gradients_flow_through_layers(backend):
    """A small autocast model (Linear -> RBF / B-cos / Gaussian-derivative layers) trains a step:
    every parameter gets a finite float32 gradient."""
    from rbfkern import nn as rnn

    dev = device_of(backend)
    torch.manual_seed(0)
    conv = rnn.GaussDerivConv2d(2, 4, order=2, sigmas=(1.0,))
    bconv = rnn.BcosConv2d(4, 6, kernel_size=3, padding=1, max_out=2)
    lin = torch.nn.Linear(6, 5)
    blin = rnn.BcosLinear(5, 5)
    head = rnn.RBFClassifier(5, 7, 3)
    for m in (conv, bconv, lin, blin, head):
        m.to(dev)
    params = [p for m in (conv, bconv, lin, blin, head) for p in m.parameters()]
    x = torch.randn(3, 2, 9, 9).to(dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        h = bconv(conv(x)).mean((2, 3))
        z = lin(h)
        assert z.dtype == torch.bfloat16  # the preceding op really is autocast
        b = blin(z)
        assert b.dtype == torch.float32
        out = head(b)  # the RBF activations (float32) feed the classifier's own autocast Linear
    out.float().square().mean().backward()
    for p in params:
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == p.dtype and bool(torch.isfinite(p.grad).all())


def test_every_op_has_cpu_and_cuda_autocast_kernels():
    """Every op of the rbfkern namespace is registered for AutocastCPU and AutocastCUDA (the CUDA
    rule cannot run here; its registration is checked)."""
    names = sorted({n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                    if n.startswith("rbfkern::")})
    assert names and set(names) == set(_autocast.OPS), f"ops and the autocast list differ: {names}"
    for n in names:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rbfkern::{n}", key), f"{n}: no {key} kernel"


def test_mixed_dtypes_still_rejected_outside_autocast():
    from rbfkern import ops

    with pytest.raises(TypeError, match="centers"):
        ops.rbf(torch.randn(3, 2, dtype=torch.bfloat16), torch.randn(4, 2))
