"""Export a few real models as C headers plus the rbfk_cases.h that includes them (.ci/sanitize).

    python csrc/fuzz/export_models.py OUT_DIR

OUT_DIR/rbfk_cases.h feeds both the sanitized MCU harness (csrc/mcu, RBFK_CASES_DIR) and
csrc/fuzz/rbfk_seed.c, which turns every exported descriptor into a fuzz seed. The models cover
every metric form, the standardised-input path (in_mean/in_scale), all three q15 activations and a
real trained classifier (sklearn digits, f32 and q15).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("RBFKERN_BACKEND", "reference")  # fitting needs no C++ extension

from rbfkern.mcu import builder, export  # noqa: E402
from rbfkern.mcu.reporting import digits_model  # noqa: E402
from rbfkern.nn import RBF, RBFNetwork  # noqa: E402


def _pair(metric: str, kind: str, seed: int, d: int = 3, c: int = 5, k: int = 2):
    """An (RBF, Linear) pair with random, valid parameters."""
    g = torch.Generator().manual_seed(seed)
    rbf = RBF(d, c, metric=metric, kind=kind, shape=0.75, dtype=torch.float64)
    with torch.no_grad():
        rbf.set_centers(torch.randn(c, d, generator=g, dtype=torch.float64))
        rbf.set_sigma(0.8 + torch.rand(c, generator=g, dtype=torch.float64))
        lead = () if metric.startswith("shared") else (c,)
        if metric.endswith("diag"):
            rbf.set_diag(0.3 + torch.rand(*lead, d, generator=g, dtype=torch.float64))
        elif metric.endswith("full"):
            low = torch.tril(0.4 * torch.randn(*lead, d, d, generator=g, dtype=torch.float64), -1)
            rbf.set_tril(low + torch.diag_embed(0.5 + torch.rand(*lead, d, generator=g, dtype=torch.float64)))
    lin = nn.Linear(c, k, dtype=torch.float64)
    return rbf, lin


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    f32, q15 = [], []
    # every metric form and every activation (gaussian: sine, digits below)
    for i, (metric, kind) in enumerate([("none", "linear"), ("diag", "thin_plate"), ("shared_diag", "logistic"),
                                        ("full", "multiquadric"), ("shared_full", "inverse_multiquadric"),
                                        ("none", "inverse_quadratic"), ("diag", "quadratic")]):
        m = _pair(metric, kind, i)
        f32.append((export.export_c(m, out, f"g_{metric}_{kind}"), rng.standard_normal((2, 3))))
    for i, (metric, kind) in enumerate([("none", "gaussian"), ("diag", "inverse_quadratic"),
                                        ("shared_diag", "quadratic")]):
        m = _pair(metric, kind, 10 + i)
        X = rng.standard_normal((2, 3))
        q15.append((export.export_c(m, out, f"q_{metric}_{kind}", "q15", calib=X), X))
    torch.manual_seed(0)
    x = torch.linspace(0, 6.3, 40, dtype=torch.float64)[:, None]
    sine = RBFNetwork(6, kind="gaussian", task="regression", standardize=True).fit(x, torch.sin(x[:, 0]))
    f32.append((export.export_c(sine, out, "sine"), x[:2].numpy()))
    digits, X, _ = digits_model()
    f32.append((export.export_c(digits, out, "digits"), X[:2]))
    q15.append((export.export_c(digits, out, "digits_q", "q15", calib=X), X[:2]))
    builder.write_cases_header(out / "rbfk_cases.h", f32, q15)
    print(f"{len(f32)} f32 + {len(q15)} q15 models -> {out / 'rbfk_cases.h'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
