"""What the check ran on: device, driver, versions, the TF32 defaults, the relevant variables.
Read-only: nvidia-smi is only queried, never used to change a setting."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

SMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "temperature.gpu",
              "power.draw", "power.limit", "memory.used", "memory.total")


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def nvidia_smi() -> dict:
    """One read-only query of the first GPU (an error string where nvidia-smi is missing or fails)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[:300]}
    vals = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(SMI_FIELDS, vals))


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def collect(device: str, root: Path) -> dict:
    import rbfkern
    from rbfkern import _backend

    from . import tf32
    from .families import bcos

    _, bcos_version = bcos.official()
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": version("triton"),
        "numpy": version("numpy"),
        "pytest": version("pytest"),
        "pytest_xdist": version("pytest-xdist"),
        "pytest_timeout": version("pytest-timeout"),
        "rbfkern": rbfkern.__version__,
        "rbfkern_path": str(Path(rbfkern.__file__).parent),
        "git_commit": git_commit(root),
        "cext": _backend.has_cext(),
        "bcos": bcos_version if bcos_version != "not installed" else "not installed",
        "tf32_defaults": tf32.state(),
        "variables": {k: v for k, v in sorted(os.environ.items())
                      if k.startswith(("RBFKERN_", "TRITON_", "CUDA_", "PYTORCH_")) or k in ("PYTHONPATH",)},
        "device": "cpu (rehearsal)" if device == "cpu" else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update({
            "device": torch.cuda.get_device_name(0),
            "capability": f"sm_{props.major}{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            "device_count": torch.cuda.device_count(),
            "nvidia_smi": nvidia_smi(),
        })
        env["driver"] = env["nvidia_smi"].get("driver_version")
    return env


def one_line(env: dict) -> str:
    if env.get("capability"):
        head = (f"{env['device']} ({env['capability']}, {env['sm_count']} SMs, {env['memory_gib']} GiB), "
                f"driver {env.get('driver') or '?'}")
    else:
        head = env["device"]
    return (f"{head}; torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), triton {env['triton']}, "
            f"python {env['python']}; rbfkern {env['rbfkern']} (C++ extension: {'yes' if env['cext'] else 'NO'}), "
            f"bcos {env['bcos']}")
