import os

import torch

# The Triton kernels run on CPU tensors in interpreter mode; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None

# Every backend that runs CPU tensors; the Triton one only where triton is installed.
CPU_BACKENDS = ["cpp"] + (["triton"] if HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1" else [])


@pytest.fixture
def backend(request, monkeypatch):
    """Force RBFKERN_BACKEND for one test (parametrise indirectly with a backend name)."""
    name = request.param
    monkeypatch.setenv("RBFKERN_BACKEND", name)
    return name


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "triton":
            item.add_marker(pytest.mark.triton)
