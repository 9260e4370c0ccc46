"""Which implementation runs an op: the C++ extension, Triton, or the reference.

CUDA tensors always go to Triton. For CPU tensors ``RBFKERN_BACKEND`` picks, read at every call:
``auto`` (default, the C++ extension), ``cpp``, ``triton`` (needs ``TRITON_INTERPRET=1`` set
before triton is imported) or ``reference``.

``RBFKERN_EXT=/path/to/_C.so`` loads that file as the C++ extension instead of the installed
``rbfkern._C`` (CI's sanitizer stage, .ci/sanitize, loads its ASan/UBSan build this way).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "cpp", "triton", "reference")
# Device types whose tensors run the Triton kernels, compiled. tests/test_cuda_trace.py adds "meta"
# to trace the CUDA path of every op where no GPU is.
GPU_DEVICE_TYPES = ("cuda",)

_cext = None


def cext():
    """The compiled extension ``rbfkern._C`` (imported on first use)."""
    global _cext
    if _cext is None:
        try:
            _cext = _load_cext()
        except ImportError as e:  # pragma: no cover - only on a broken install
            raise ImportError(
                "rbfkern._C (the C++ extension) is not built; reinstall with "
                "`pip install -e .` or set RBFKERN_BACKEND=reference"
            ) from e
    return _cext


def _load_cext():
    # RBFKERN_EXT=/path/to/_C.so loads that build instead of the installed one (CI's sanitizer
    # stage points it at the -fsanitize=address,undefined build; see .ci/sanitize).
    path = os.environ.get("RBFKERN_EXT", "")
    if not path:
        return importlib.import_module("rbfkern._C")
    spec = importlib.util.spec_from_file_location("rbfkern._C", path)
    if spec is None or not os.path.isfile(path):
        raise ImportError(f"RBFKERN_EXT={path!r} is not an extension module file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def has_cext() -> bool:
    try:
        cext()
        return True
    except ImportError:
        return False


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gpu_module(family: str):
    """``rbfkern.gpu.<family>``, imported lazily so triton stays optional."""
    if not has_triton():
        raise RuntimeError(
            f"the Triton kernels for {family!r} need triton: pip install 'rbfkern[gpu]'"
        )
    return importlib.import_module(f"rbfkern.gpu.{family}")


_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("rbfkern_forced_backend", default=None)


@contextlib.contextmanager
def forced(name: str):
    """Every op body run inside takes backend ``name`` whatever the device and RBFKERN_BACKEND say
    (the second-order gradients run the reference this way)."""
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def choose(device: torch.device) -> str:
    """Backend name for tensors on ``device``: 'cpp', 'triton' or 'reference'."""
    name = _FORCED.get()
    if name is not None:
        return name
    if device.type in GPU_DEVICE_TYPES:
        return "triton"
    name = os.environ.get("RBFKERN_BACKEND")
    if name is None:  # the common case, without the string handling (this runs at every op call)
        return "cpp"
    name = name.strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"RBFKERN_BACKEND must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "cpp"
    if name == "triton" and not triton_interpreting():
        raise RuntimeError(
            "RBFKERN_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 "
            "(set before triton is imported)"
        )
    return name


def cpp_takes(t: torch.Tensor) -> bool:
    """Whether the C++ helper kernels called outside the ops (k-means passes, the kNN candidate
    search) take this tensor: CPU float32/float64 under the cpp backend, extension built."""
    return (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and choose(t.device) == "cpp" and has_cext())


def cpu_isa() -> str:
    """The instruction set the C++ kernels run with in this process (avx512, avx2, default; capped
    by RBFKERN_CPU_ISA), or "none" without the extension."""
    return cext().rbf_isa() if has_cext() else "none"


def num_threads() -> int:
    return max(1, torch.get_num_threads())
