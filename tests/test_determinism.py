"""Issue 8, determinism: forward and backward of every op on CPU (C++ backend) give bitwise-identical
results across repeated runs and across torch.set_num_threads(1) vs 2 (the kernels take their
thread count from torch, so the reduction order must not depend on it).

Our own kernels are deterministic by default. Where an op hands a convolution to PyTorch (oneDNN
splits the weight-gradient reduction by thread count), the thread-count independence holds under
``torch.use_deterministic_algorithms(True)``, PyTorch's own switch for it: the B-cos conv then
computes its weight gradient with a fixed-order C++ loop and the dense Gaussian-derivative path gives way to the
separable kernels. Those cases run in that mode here; all others in the default mode."""
import pytest
import torch

from _util import assert_bitwise, op_cases, run_case
from conftest import CUDA, device_of

CASES = sorted(op_cases())
# The Gaussian-derivative ops have two CPU paths (fused separable C++ kernels, dense conv): both.
PATHS = {"gauss_deriv_conv2d": ["separable", "dense"], "gauss_deriv_conv3d": ["separable", "dense"]}
# (op, path) pairs whose convolution comes from PyTorch: deterministic under use_deterministic_algorithms.
TORCH_CONV = {("bcos_conv2d", None), ("gauss_deriv_conv2d", "dense"), ("gauss_deriv_conv3d", "dense")}


def _params():
    for name in CASES:
        for path in PATHS.get(name, [None]):
            yield pytest.param(name, path, id=name if path is None else f"{name}-{path}")


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one call, restoring it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,path", list(_params()))
def test_bitwise_across_runs_and_thread_counts(name, path, dtype, threads, monkeypatch, request):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    if path is not None:
        monkeypatch.setenv("RBFKERN_GD_PATH", path)
    if (name.split("/")[0], path) in TORCH_CONV:
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        request.addfinalizer(lambda: torch.use_deterministic_algorithms(deterministic))
    # scale 4: enough rows / images / channels that every OpenMP loop is split over 2 threads.
    fn, tensors = op_cases(dtype, seed=3, scale=4)[name]
    threads(2)
    first = run_case(fn, tensors)
    assert_bitwise(run_case(fn, tensors), first, f"{name} repeated, 2 threads")
    threads(1)
    assert_bitwise(run_case(fn, tensors), first, f"{name} 1 thread vs 2 threads")
    assert all(bool(torch.isfinite(t).all()) for t in first), f"{name}: non-finite output or gradient"


# On a GPU the Triton kernels use no atomics (per-program partials summed in a fixed order): every
# op that runs only them repeats bit for bit. Excluded: what hands work to cuDNN / cuBLAS (B-cos in
# float64 takes the unfused path, the Gaussian-derivative dense path), deterministic only under
# torch.use_deterministic_algorithms with CUBLAS_WORKSPACE_CONFIG set (README, Guarantees).
@pytest.mark.parametrize("backend", [CUDA], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", CASES)
def test_cuda_bitwise_across_runs(name, dtype, backend, monkeypatch):
    if dtype == torch.float64 and name.startswith("bcos"):
        pytest.skip("float64 B-cos runs cuDNN / cuBLAS for its linear map")
    monkeypatch.setenv("RBFKERN_GD_PATH", "separable")
    dev = device_of(backend)
    fn, tensors = op_cases(dtype, seed=3, scale=4 if dev.type == "cuda" else 1)[name]
    tensors = [t.to(dev) for t in tensors]
    first = run_case(fn, tensors)
    for _ in range(2):
        assert_bitwise(run_case(fn, tensors), first, f"{name} repeated on {dev}")
    assert all(bool(torch.isfinite(t).all()) for t in first), f"{name}: non-finite output or gradient"
