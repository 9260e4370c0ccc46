import os

import torch

HAS_CUDA = torch.cuda.is_available()
# Rehearsal of the CUDA variants where there is no GPU: RBFKERN_CUDA_ON_CPU=1 runs every test marked
# `cuda` on CPU tensors through the interpreted Triton kernels, so the test code itself (inputs,
# reference calls, error bounds) has run before it meets a device. It says nothing about the GPU.
CUDA_ON_CPU = not HAS_CUDA and os.environ.get("RBFKERN_CUDA_ON_CPU") == "1"

# The Triton kernels run on CPU tensors in interpreter mode; it must be set before triton is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Every backend that runs CPU tensors; the Triton one only where triton is installed.
CPU_BACKENDS = ["cpp"] + (["triton"] if HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1" else [])

CUDA_RUNS = HAS_CUDA or (CUDA_ON_CPU and "triton" in CPU_BACKENDS)
_CUDA_SKIP = "needs a CUDA device (RBFKERN_CUDA_ON_CPU=1 rehearses the cuda tests on CPU through the interpreter)"
# The CUDA variant of a test: the parameter value "cuda" of `backend` or `device` (`-m cuda` selects them).
CUDA = pytest.param("cuda", marks=(pytest.mark.cuda, pytest.mark.skipif(not CUDA_RUNS, reason=_CUDA_SKIP)),
                    id="cuda")
# The same, outside the default GPU check's subset (`-m "cuda and not slow"`, python -m rbfkern
# gpucheck): grids whose variants the quicker tests already cover.
CUDA_SLOW = pytest.param("cuda", marks=(*CUDA.marks, pytest.mark.slow), id="cuda")


def fast_subset(values, keep):
    """A parametrize list: ``values`` with every value not in ``keep`` marked slow, so that the fast
    selection (``pytest -m "not slow"``) runs ``keep`` and the full run everything. A value is one
    argument or a tuple of arguments, as parametrize takes them."""
    return [v if v in keep else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow)
            for v in values]


# Backends of tests that compare an implementation with the reference, the CUDA one included.
BACKENDS = CPU_BACKENDS + [CUDA]
# The Triton kernels: interpreted on CPU tensors where that is on, compiled on a CUDA device.
TRITON_BACKENDS = [b for b in CPU_BACKENDS if b == "triton"] + [CUDA]
DEVICES = ["cpu", CUDA]


def device_of(backend: str) -> torch.device:
    """The device a test's tensors live on for ``backend`` (a name of BACKENDS)."""
    return torch.device("cuda" if backend == "cuda" and not CUDA_ON_CPU else "cpu")


def _select(monkeypatch, name: str) -> None:
    if name == "cuda":
        # CUDA tensors always run the Triton kernels; the rehearsal forces them on CPU tensors.
        if CUDA_ON_CPU:
            monkeypatch.setenv("RBFKERN_BACKEND", "triton")
        else:
            monkeypatch.delenv("RBFKERN_BACKEND", raising=False)
    elif name != "cpu":
        monkeypatch.setenv("RBFKERN_BACKEND", name)


@pytest.fixture
def backend(request, monkeypatch):
    """Force RBFKERN_BACKEND for one test (parametrise indirectly with a backend name, or "cuda")."""
    name = request.param
    _select(monkeypatch, name)
    return name


@pytest.fixture
def device(request, monkeypatch):
    """The torch.device of one test (parametrise indirectly with "cpu" or "cuda")."""
    name = request.param
    _select(monkeypatch, name)
    return device_of(name)


@pytest.fixture(autouse=True)
def _full_float32_on_cuda(request):
    """CUDA tests run with TF32 off in PyTorch's own matmuls / convolutions (the float32 bounds of the
    tests, and the float64 references, assume full float32); a test marked `tf32` sets it itself."""
    if not HAS_CUDA or request.node.get_closest_marker("cuda") is None or request.node.get_closest_marker("tf32"):
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        if callspec.params.get("backend") == "triton":
            item.add_marker(pytest.mark.triton)
        if "cuda" in (callspec.params.get("backend"), callspec.params.get("device")):
            item.add_marker(pytest.mark.cuda)  # also where a test wrote a plain "cuda", not CUDA
            if not CUDA_RUNS:
                item.add_marker(pytest.mark.skip(reason=_CUDA_SKIP))


@pytest.fixture(scope="session")
def cuda_traces():
    """The CUDA path of every op traced on the meta device (tests/test_cuda_trace.py), once per run:
    test_cuda_trace checks the traces, test_contract that their kernels are compiled ahead of time."""
    pytest.importorskip("triton")
    from test_cuda_trace import run_traces

    return run_traces()
