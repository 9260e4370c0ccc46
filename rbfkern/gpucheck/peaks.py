"""The device's rates, measured in the run on random data (never zeros): a bf16 matmul, a float32
matmul with TF32 off and on (cuBLAS), and a device-to-device copy (bytes read + bytes written).
The benchmark rows' percentages are taken against these, not against a datasheet."""
from __future__ import annotations

import torch

from . import tf32


def _matmul(n: int, dt, on: bool, g, device, timer) -> dict:
    a = torch.randn(n, n, generator=g, device=device).to(dt)
    b = torch.randn(n, n, generator=g, device=device).to(dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    with tf32.switches(on):
        def step():
            torch.mm(a, b, out=c)
        step()
        timer.sync()
        t = timer(step, timer.once_ms(step))
    return {"what": f"torch.mm {n}x{n}x{n} {str(dt)[6:]}, TF32 {'on' if on else 'off'}", **vars(t),
            "tflops": 2 * n**3 / (t.median_ms * 1e-3) / 1e12}


def _copy(elems: int, g, device, timer) -> dict:
    src = torch.randn(elems, generator=g, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
    copy()
    timer.sync()
    t = timer(copy, timer.once_ms(copy))
    nbytes = 2 * src.numel() * src.element_size()
    return {"what": f"device-to-device copy of {nbytes / 2 / 2**20:.0f} MiB (read + write counted)", **vars(t),
            "gbps": nbytes / (t.median_ms * 1e-3) / 1e9}


def measure(device: str, timer, tiny: bool) -> dict:
    """{key: {"what", "median_ms", "p20_ms", "p80_ms", "samples", "timer", "tflops" | "gbps"}}; a
    measurement that fails has "error" instead (the percentages against that peak become None)."""
    n = 256 if tiny else 8192
    copy_elems = (4 << 20) if tiny else (1 << 29)  # float32: 16 MiB / 2 GiB
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for key, dt, on in (("bf16_matmul", torch.bfloat16, False), ("fp32_matmul", torch.float32, False),
                        ("fp32_matmul_tf32", torch.float32, True)):
        try:
            out[key] = _matmul(n, dt, on, g, device, timer)
        except Exception as e:  # noqa: BLE001 - recorded
            out[key] = {"what": f"torch.mm {n}^3 {dt}, TF32 {'on' if on else 'off'}", "error": f"{type(e).__name__}: {e}"}
    try:
        out["copy"] = _copy(copy_elems, g, device, timer)
    except Exception as e:  # noqa: BLE001
        out["copy"] = {"what": "device-to-device copy", "error": f"{type(e).__name__}: {e}"}
    return out
