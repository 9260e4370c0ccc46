"""Runs the demo parts in order and prints the summary table and the files written."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import bcos_cnn, cnn_rbf, data, mcu, speed, srf

PARTS = (
    ("cnn-rbf", cnn_rbf.run),
    ("b-cos", bcos_cnn.run),
    ("structured receptive fields", srf.run),
    ("microcontroller", mcu.run),
    ("speed", speed.run),
)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(results: dict) -> str:
    lines = ["", "== summary " + "=" * 60]
    r = results.get("cnn-rbf")
    if r:
        u = r["unsupervised_loss"]
        lines.append(f"CNN-RBF (diag metric, eq. 14)   test accuracy {r['accuracy']:.3f}; "
                     f"unsupervised loss {u[0]:.3f} -> {u[-1]:.3f}")
    r = results.get("b-cos")
    if r:
        lines.append(f"B-cos CNN (B=2, MaxOut 2)       test accuracy {r['accuracy']:.3f}; "
                     f"|sum(contributions) - logit| <= {r['contribution_sum_error']:.2e}")
    r = results.get("structured receptive fields")
    if r:
        lines.append(f"Structured RF vs plain CNN      on {r['train_samples']} training digits: "
                     f"SRF {r['srf_accuracy']:.3f} ({r['srf_parameters']} params) vs CNN {r['cnn_accuracy']:.3f} "
                     f"({r['cnn_parameters']} params)")
    r = results.get("microcontroller")
    if r:
        lines.append(f"RBFNetwork (32 centres, C99)    test accuracy {r['accuracy']:.3f}")
        for t in r["targets"]:
            if t["status"] == "toolchain not installed":
                lines.append(f"    {t['target']:<11} skipped: toolchain not installed")
                continue
            insns = "native" if t.get("insns") is None else f"{t['insns']:,.0f} instructions/inference"
            lines.append(f"    {t['target']:<11} {t['status']}: max rel err vs PyTorch {t['max_rel_err']:.1e}, "
                         f"{insns}, model flash {t['model_flash']} B, kernel code {t['kernel_flash']} B")
    r = results.get("speed")
    if r:
        lines.append("Speed on this machine (naive PyTorch time / fused time):")
        for row in r["rows"]:
            lines.append(f"    {row['op']:<36} {row['shape']:<14} forward {row['speedup fwd']:6.1f}x   "
                         f"forward+backward {row['speedup fwd+bwd']:6.1f}x")
    return "\n".join(lines)


def run(out: str | Path = "demo_out", quick: bool = False, seed: int = 0, progress: bool = True,
        parts: tuple[str, ...] | None = None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    digits = data.load(seed)
    print(f"digits: {len(digits.x_train)} training, {len(digits.x_test)} test images; "
          f"{torch.get_num_threads()} threads; output in {out_dir}/")
    results, t_all = {}, time.perf_counter()
    for name, fn in PARTS:
        if parts is not None and name not in parts:
            continue
        t0 = time.perf_counter()
        print(f"-- {name}", flush=True)
        results[name] = fn(digits, out_dir, quick=quick, seed=seed, progress=progress)
        results[name]["seconds"] = time.perf_counter() - t0
        print(f"   done in {results[name]['seconds']:.1f} s", flush=True)
    print(summary(results))
    files = [f for r in results.values() for f in r.get("files", [])]
    print(f"\nfiles written ({time.perf_counter() - t_all:.0f} s in all):")
    for f in files:
        print(f"    {f}")
    results["files"] = files
    return results
