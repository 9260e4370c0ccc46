"""Export trained RBF networks to the portable C99 kernel (csrc/mcu), build and run them on
Cortex-M / RISC-V targets under QEMU, and report their cost. See issue 6 and shared/MCU.md.

    from rbfkern.mcu import export_c, run_on_target, targets
    export_c(model, "model.h", name="model", dtype="f32")       # or "q15"
    y = run_on_target(model, X, "cortex-m4f")                    # numpy (N, K)

Attributes are imported lazily, so ``python -m rbfkern mcu ...`` starts without importing torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "export_c": "export", "Export": "export", "extract": "extraction", "q15_error_bound": "quantize",
    "build": "builder", "size_of": "builder", "write_cases_header": "builder", "Build": "builder",
    "BuildError": "builder",
    "run_on_target": "runner", "run_build": "runner", "RunResult": "runner", "RunError": "runner",
    "targets": "toolchains", "TARGETS": "toolchains", "Target": "toolchains",
    "report": "reporting", "digits_model": "reporting",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
