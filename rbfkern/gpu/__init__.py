"""Triton kernels, one module per op family (``rbfkern.gpu.rbf``, ...).

Import-light on purpose: nothing here imports triton, so ``import rbfkern`` works on machines
without it. The ops layer imports ``rbfkern.gpu.<family>`` lazily when it dispatches to Triton;
``python -m rbfkern.gpu.aot`` compiles every kernel ahead of time for sm_80 and sm_90.
"""
import importlib.util


def available() -> bool:
    """True when triton is installed (it may still lack a usable GPU driver)."""
    return importlib.util.find_spec("triton") is not None
