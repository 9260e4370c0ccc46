"""How the launchers start a kernel: ``launch(kernel)[grid](...)``.

Compiled kernels go through ``torch.library.wrap_triton``, so that ``torch.compile`` tracing an
op body (rbfkern/ops/_family.py) records the launch instead of running it; in eager code, inside
the op, wrap_triton is off and the kernel launches directly. Interpreted kernels
(TRITON_INTERPRET=1) are not JIT functions that wrap_triton accepts, and never run under a trace
(their CPU ops are opaque), so they launch as they are.
"""
import os

import torch


def launch(kernel):
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return kernel
    return torch.library.wrap_triton(kernel)
