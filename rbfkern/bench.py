"""``python -m rbfkern bench``: the headline cases of the benchmark suite (bench/bench_*.py, the
same cases pytest-benchmark runs) in one table: fused vs naive vs peers, ratios, peak memory,
GFLOP/s and % of this machine's measured peak. The timing, statistics and machine metadata are
bench/_harness.py's; this module only picks each family's columns.

The suite lives in the source checkout (``bench/`` beside the package), not in the wheel.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple

import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


class Family(NamedTuple):
    module: str  # bench/<module>.py
    fused: str  # the provider in the "fused" column
    naive: str | None  # provider in the "naive" column, and its label (a dict: per harness case)
    naive_label: str | dict
    peers: tuple  # providers given a row each (more than one: one row per peer), and their label
    peer_label: str | None  # None: the provider name
    rounds: tuple  # (quick, full)
    memory: tuple  # (quick, full)
    op: str = "{case}"  # the op column: formatted with the harness case name and the bench module (m)


FAMILIES = {
    "rbf": Family("bench_rbf", "fused", "naive", "naive", ("gemm",), "GEMM-expanded torch", (3, 5), (False, True),
                  op="rbf ({case})"),
    "rbf layers": Family("bench_rbf_layers", "rbfkern", None, "naive", ("sklearn", "faiss-blas", "faiss", "torch"),
                         None, (3, 3), (False, False)),
    "bcos": Family("bench_bcos", "ours", "plain", {"bcos_conv2d": "plain conv2d (2x channels)",
                                                  "bcos_linear": "plain linear (2x features)"},
                   ("official",), "official bcos", (3, 5), (False, False), op="{case} b={m.B:g} maxout={m.MAX_OUT}"),
    "gauss_deriv": Family("bench_gauss_deriv", "ours", "dense", "dense effective filter", ("depthwise+1x1",),
                          "depthwise basis + 1x1", (3, 3), (True, True)),
    "models": Family("bench_models", "converted", "floor", "B-cos layers as plain convs", ("official",),
                     "official bcos model", (3, 5), (False, False), op="model {case} (from_bcos)"),
}
CUDA_ROUNDS = (3, 10)  # rbf's cases again on the GPU (Triton kernels), when there is one


def _harness():
    if not BENCH_DIR.is_dir():
        raise FileNotFoundError(f"{BENCH_DIR} not found: `python -m rbfkern bench` runs from a source checkout")
    if str(BENCH_DIR) not in sys.path:  # the bench files import _harness, _machine, _memory
        sys.path.insert(0, str(BENCH_DIR))
    import _harness

    return _harness


def _load(name: str):
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: `python -m rbfkern bench` runs from a source checkout")
    spec = importlib.util.spec_from_file_location(f"rbfkern_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(fam: Family, mod, hrow: dict, backend: str) -> list[dict]:
    res = hrow["results"]
    fused = res.get(fam.fused) or {}
    naive = (res.get(fam.naive) or {}) if fam.naive else {}
    peers = [p for p in fam.peers if p in res]
    label = fam.naive_label.get(hrow["case"], "naive") if isinstance(fam.naive_label, dict) else fam.naive_label
    out = []
    for peer in peers or [None]:
        pr = (res.get(peer) or {}) if peer else {}
        out.append({"op": fam.op.format(case=hrow["case"], m=mod), "shape": hrow["shape"], "mode": hrow["mode"] or "fwd",
                    "backend": backend, "fused_s": fused.get("median_s"), "fused_p20_s": fused.get("p20_s"),
                    "fused_p80_s": fused.get("p80_s"), "naive": label, "naive_s": naive.get("median_s"),
                    "peer": (fam.peer_label or peer) if peer else "", "peer_s": pr.get("median_s"),
                    "fused_peak_mib": fused.get("peak_mib"), "fused_gflops": fused.get("gflops"),
                    "fused_pct_peak": fused.get("pct_peak")})
    return out


def run_family(name: str, quick: bool, threads: int = 2) -> list[dict]:
    h = _harness()
    fam = FAMILIES[name]
    mod = _load(fam.module)
    bench = mod.BENCH
    args = h.options(bench, ["--quick"] if quick else [])
    rows = h.measure(bench, bench.cases(args), fam.rounds[not quick], fam.memory[not quick], threads)
    out = [r for hr in rows for r in _rows(fam, mod, hr, "cpu (C++)")]
    if name == "rbf" and torch.cuda.is_available():
        args = h.options(bench, ["--device", "cuda"] + (["--quick"] if quick else []))
        rows = h.measure(bench, bench.cases(args), CUDA_ROUNDS[not quick], False, threads)
        out += [r for hr in rows for r in _rows(fam, mod, hr, "cuda (Triton)")]
    return out


def format_table(rows) -> str:
    h = _harness()

    def ms(v):
        return "-" if v is None else f"{v * 1e3:.1f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    header = ["op", "shape", "mode", "backend", "fused ms (p20-p80)", "naive ms (which)", "peer ms (which)",
              "naive/fused", "peer/fused", "fused peak MiB", "fused GFLOP/s", "% of peak"]
    body = []
    for r in rows:
        fused = ms(r["fused_s"]) + (f" ({ms(r['fused_p20_s'])}-{ms(r['fused_p80_s'])})" if r["fused_s"] else "")
        body.append([r["op"], r["shape"], r["mode"], r["backend"], fused, f"{ms(r['naive_s'])} ({r['naive']})",
                     f"{ms(r['peer_s'])} ({r['peer'] or '-'})", ratio(r["naive_s"], r["fused_s"]),
                     ratio(r["peer_s"], r["fused_s"]),
                     "-" if r["fused_peak_mib"] is None else f"{r['fused_peak_mib']:.0f}",
                     "-" if r["fused_gflops"] is None else f"{r['fused_gflops']:.1f}",
                     "-" if r["fused_pct_peak"] is None else f"{r['fused_pct_peak']:.1f}%"])
    return h.render(header, body)


def main(quick: bool = False, json_path: str | None = None, families=None, threads: int = 2) -> int:
    h = _harness()
    import _machine

    torch.set_num_threads(threads)
    meta = _machine.describe(threads)
    rows = []
    for name in FAMILIES:
        if families and name not in families:
            continue
        print(f"-- {name}", flush=True)
        rows += run_family(name, quick, threads)
    print()
    print(_machine.header(meta))
    print(format_table(rows))
    if json_path:
        h.write_json(json_path, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
