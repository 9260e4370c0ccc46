"""``python -m rbfkern bench``: the headline cases of the benchmark suite (bench/bench_*.py, the
same functions pytest-benchmark runs) in one table: fused vs naive vs peers, ratios, peak memory.

The suite lives in the source checkout (``bench/`` beside the package), not in the wheel.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `python -m rbfkern bench` runs from a source checkout")
    if str(BENCH_DIR) not in sys.path:  # the bench modules share bench/_peak.py
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(f"rbfkern_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(op, shape, mode, fused, naive=None, peer=None, peer_name="", mem=None, naive_name="naive",
         backend="cpu (C++)"):
    return {"op": op, "shape": shape, "mode": mode, "backend": backend, "fused_s": fused,
            "naive": naive_name, "naive_s": naive, "peer": peer_name, "peer_s": peer, "fused_peak_mib": mem}


def _rbf(quick):
    m = _load("bench_rbf")
    cases = m.QUICK_CASES if quick else m.CASES
    rows = m.table(cases, 3 if quick else 5, memory=not quick)
    if torch.cuda.is_available():  # the same cases on the GPU: Triton kernels vs the torch versions
        rows += m.table(cases, 3 if quick else 10, memory=False, device="cuda")
    return [_row("rbf (" + r["case"].split()[0] + ")", " ".join(r["case"].split()[1:]), r["mode"], r["fused"],
                 r.get("naive"), r.get("gemm"), "GEMM-expanded torch", r.get("fused_mb"),
                 backend="cuda (Triton)" if r.get("device") == "cuda" else "cpu (C++)") for r in rows]


def _rbf_layers(quick):
    m = _load("bench_rbf_layers")
    rows = m.table(quick=quick, rounds=3)
    out = []
    for group in ("kmeans", "retrieval"):
        mine = next(r for r in rows if r["group"] == group and r["provider"] == "rbfkern")
        for r in rows:
            if r["group"] == group and r["provider"] not in ("rbfkern", "rbfkern-op"):
                out.append(_row(group, str(r["size"]), "fwd", mine["median_s"], None, r["median_s"], r["provider"]))
    return out


def _bcos(quick):
    m = _load("bench_bcos")
    rows = m.table(m.QUICK_CASES if quick else m.CASES, 3 if quick else 5, memory=False)
    return [_row("bcos_conv2d b=2 maxout=2", r["case"], r["mode"], r["ours"], r.get("plain"), r.get("official"),
                 "official bcos", naive_name="plain conv2d (2x channels)") for r in rows]


def _gauss(quick):
    m = _load("bench_gauss_deriv")
    rows = m.table(2 if quick else m.N, m.SIGMAS)
    out = []
    for sigma, mode, cells in rows:
        t = {p: c["time_s"] for p, c in cells.items()}
        out.append(_row(f"gauss_deriv_conv2d sigma={sigma:g}", f"N={2 if quick else m.N} C=64 64x64", mode,
                        t["ours"], t["dense"], t["depthwise+1x1"], "depthwise basis + 1x1",
                        cells["ours"]["peak_mib"], naive_name="dense effective filter"))
    return out


FAMILIES = (("rbf", _rbf), ("rbf layers", _rbf_layers), ("bcos", _bcos), ("gauss_deriv", _gauss))


def format_table(rows) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1e3:.1f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    lines = ["| op | shape | mode | backend | fused ms | naive ms (which) | peer ms (which) | naive/fused | "
             "peer/fused | fused peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = "-" if r["fused_peak_mib"] is None else f"{r['fused_peak_mib']:.0f}"
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['backend']} | {ms(r['fused_s'])} | "
                     f"{ms(r['naive_s'])} ({r['naive']}) | {ms(r['peer_s'])} ({r['peer'] or '-'}) | "
                     f"{ratio(r['naive_s'], r['fused_s'])} | {ratio(r['peer_s'], r['fused_s'])} | {mem} |")
    return "\n".join(lines)


def main(quick: bool = False, json_path: str | None = None, families=None) -> int:
    torch.set_num_threads(2)
    rows = []
    for name, fn in FAMILIES:
        if families and name not in families:
            continue
        print(f"-- {name}", flush=True)
        rows += fn(quick)
    print()
    print(format_table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
