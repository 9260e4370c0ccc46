"""Part 4: the classic two-stage RBF network (TinyML text) fitted on the digits, exported to C and
run on the host and, where the cross toolchains and QEMU are installed, on emulated Cortex-M4F and
RV32IMC cores; the outputs are checked against PyTorch."""
from __future__ import annotations

import numpy as np
import torch

from .. import nn as rnn

TARGETS = ("host", "cortex-m4f", "rv32imc")


def run(data, out_dir, *, quick: bool, seed: int, progress: bool) -> dict:
    from .. import mcu
    from ..mcu.reporting import measure

    x_train = data.x_train.flatten(1).double()
    x_test = data.x_test.flatten(1).double()
    net = rnn.RBFNetwork(32, kind="gaussian", metric="none", task="classification", lam=1e-3, seed=seed,
                         progress=progress)
    net.fit(x_train, data.y_train)
    acc = float((net.predict(x_test) == data.y_test).float().mean())
    xs = x_test[: 10 if quick else 40]
    with torch.no_grad():
        want = net(xs).numpy()
    available = set(mcu.targets())
    rows = []
    for target in TARGETS:
        if target not in available:
            rows.append({"target": target, "status": "toolchain not installed"})
            continue
        work = out_dir / "mcu_build"
        work.mkdir(exist_ok=True)
        m = measure(net, xs.numpy(), target, dtype="f32", work_dir=work)
        got = m["outputs"]
        rel = float(np.abs(got - want).max() / max(1e-30, np.abs(want).max()))
        rows.append({
            "target": target, "status": "ok" if rel < 1e-5 else "MISMATCH", "max_rel_err": rel,
            "argmax_agrees": float((got.argmax(1) == want.argmax(1)).mean()),
            "insns": m.get("insns"), "model_flash": m.get("model_flash"), "kernel_flash": m.get("kernel_flash"),
        })
    return {"accuracy": acc, "targets": rows, "files": []}
