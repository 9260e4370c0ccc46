"""bench/_harness.py (the scaffold every bench file uses) and the bench files' declarations: what
is measured, how the statistics, ratios and rates are derived from the samples, and that every bench
file's cases build and run. No timing is asserted, only how the numbers are computed from it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import _harness as h  # noqa: E402
import _machine  # noqa: E402
import _memory  # noqa: E402

BENCH_FILES = ("bench_rbf", "bench_rbf_layers", "bench_bcos", "bench_gauss_deriv")


def _toy(calls: list, fail: str | None = None, unavailable: str | None = None, **kw) -> h.Bench:
    """A bench whose steps log their provider name in ``calls`` (and return it)."""

    def setup(case, provider):
        if provider == unavailable:
            raise h.Unavailable("not installed")

        def run():
            calls.append(provider)
            if provider == fail:
                raise RuntimeError("out of memory")
            return provider

        return run, (lambda result: {"echo": result})

    return h.Bench("toy", lambda args: [], setup, ours="a", **kw)


CASE = h.Case("toy-op", "N=1", ("a", "b", "c"), "fwd", {"n": 1}, flops=4e9, bytes=8e9)


def test_rounds_are_interleaved_after_one_warmup_each():
    calls = []
    row = h.measure_case(_toy(calls), CASE, rounds=3)
    assert calls == ["a", "b", "c"] * 4  # warm-up round, then 3 rounds, one step per provider each
    assert {p: row["results"][p]["rounds"] for p in "abc"} == {"a": 3, "b": 3, "c": 3}


def test_statistics_ratios_and_rates_follow_from_the_samples(monkeypatch):
    samples = {"a": [5.0, 1.0, 2.0, 4.0], "b": [9.0, 3.0, 6.0, 12.0], "c": [1.0, 1.0, 1.0, 1.0]}
    order = []

    def fake_timed(run):
        p = run()
        order.append(p)
        return samples[p][sum(q == p for q in order) - 1], p

    monkeypatch.setattr(h, "_timed", fake_timed)
    row = h.measure_case(_toy([]), CASE, rounds=3, peak_gflops=10.0)
    a, b = row["results"]["a"], row["results"]["b"]
    # the warm-up sample (first) is dropped
    assert a["median_s"] == 2.0 and a["min_s"] == 1.0 and a["rounds"] == 3
    assert a["p20_s"] == pytest.approx(np.quantile([1.0, 2.0, 4.0], 0.2))
    assert a["p80_s"] == pytest.approx(np.quantile([1.0, 2.0, 4.0], 0.8))
    assert row["ratios"] == {"b/a": pytest.approx(6.0 / 2.0), "c/a": pytest.approx(1.0 / 2.0)}
    assert a["gflops"] == pytest.approx(4e9 / 2.0 / 1e9) and b["gflops"] == pytest.approx(4e9 / 6.0 / 1e9)
    assert a["pct_peak"] == pytest.approx(100 * 2.0 / 10.0)
    assert a["gbps"] == pytest.approx(8e9 / 2.0 / 1e9)
    assert a["echo"] == "a"  # the check's figures beside the timing


def test_declared_ratio_pairs_and_best_of(monkeypatch):
    monkeypatch.setattr(h, "_timed", lambda run: ({"a": 2.0, "b": 8.0, "c": 4.0}[run()], None))
    bench = _toy([], ratios=(("a", "b"), (("b", "c"), "a"), ("a", "missing")))
    row = h.measure_case(bench, CASE, rounds=2)
    # pairs naming a provider the case lacks are left out
    assert row["ratios"] == {"a/b": pytest.approx(0.25), "best(b,c)/a": pytest.approx(2.0)}


def test_failed_and_unavailable_providers_leave_the_others_measured():
    calls = []
    row = h.measure_case(_toy(calls, fail="b", unavailable="c"), CASE, rounds=2)
    assert row["results"]["b"] is None and row["results"]["c"] is None
    assert "RuntimeError" in row["errors"]["b"] and row["errors"]["c"].startswith("unavailable")
    assert row["results"]["a"]["rounds"] == 2 and calls.count("b") == 1  # dropped after its failure
    assert row["ratios"] == {"b/a": None, "c/a": None}
    text = h.table(_toy([]), [row])
    assert "failed" in text


def test_slow_warmup_is_the_only_sample():
    calls = []
    row = h.measure_case(_toy(calls, slow_s=0.0), CASE, rounds=3)
    assert calls == ["a", "b", "c"] and all(row["results"][p]["rounds"] == 1 for p in "abc")


def test_case_crosses_to_json_and_back():
    assert h.Case.from_json(json.loads(json.dumps(CASE.to_json()))) == CASE


def test_table_markdown_and_plain():
    row = h.measure_case(_toy([]), CASE, rounds=2, peak_gflops=1.0)
    md = h.table(_toy([]), [row, row]).splitlines()
    assert len(md) == 4 and md[1].count("---") == md[0].count("|") - 1
    for col in ("a ms (p20-p80)", "b/a", "a GFLOP/s", "% of peak", "notes"):
        assert col in md[0]
    plain = h.table(_toy([]), [row], fmt="plain").splitlines()
    assert len(plain) == 2 and "|" not in plain[0]
    starts = [[m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", line)] for line in plain]
    assert starts[0] == starts[1]  # every cell starts under its header


def test_main_prints_machine_header_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_machine, "peak", lambda threads: {"gflops": 100.0, "threads": threads, "lanes": 16,
                                                           "accumulators": 12})
    bench = _toy([])
    bench.cases = lambda args: [CASE]
    out = tmp_path / "rows.json"
    assert h.main(bench, ["--rounds", "2", "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    meta = doc["machine"]
    for key in ("cpu", "logical_cores", "threads", "torch", "triton", "numpy", "rbfkern_commit", "date", "peak"):
        assert key in meta
    assert meta["threads"] == 1 and meta["torch"] == torch.__version__
    assert doc["rows"][0]["results"]["a"]["pct_peak"] == pytest.approx(doc["rows"][0]["results"]["a"]["gflops"])
    printed = capsys.readouterr().out
    assert printed.startswith(_machine.header(meta)[:40]) and "| toy-op |" in printed


def test_fma_peak_is_measured():
    pk = _machine.peak(1)
    if pk is None:
        pytest.skip("no C compiler to build the FMA loop")
    assert pk["gflops"] > 0 and pk["lanes"] in (4, 8, 16) and pk["accumulators"] >= 8


def test_memory_of_a_step_is_its_resident_growth():
    # in a fresh interpreter, as the bench uses it: a long-lived process (an xdist worker) may serve
    # the allocation from pages it freed earlier but still holds, which is growth 0
    mib = 64
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _memory\n"
            f"def run():\n    b = bytearray({mib} << 20)\n    for i in range(0, len(b), 4096):\n        b[i] = 1\n"
            "print(_memory.extra_peak_mib(run))")
    proc = subprocess.run([sys.executable, "-c", code, str(BENCH_DIR)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert mib * 0.9 < float(proc.stdout.strip()) < mib * 1.5


@pytest.mark.slow  # a fresh interpreter importing torch
def test_memory_child_runs_the_bench_file(tmp_path):
    src = (
        "import _harness as h\n"
        "import torch\n"
        "def setup(case, provider):\n"
        "    return lambda: float(torch.ones(case.params['mib'] * 2**18)[-1])\n"
        "BENCH = h.Bench('alloc', lambda a: [], setup, ours='a')\n"
    )
    path = tmp_path / "bench_alloc.py"
    path.write_text(src)
    case = h.Case("alloc", "-", ("a",), params={"mib": 48})
    mib = _memory.in_child(str(path), case, "a", 1)
    assert mib is not None and 48 * 0.9 < mib < 48 * 1.5


@pytest.mark.parametrize("name,argv", [(n, ["--quick"]) for n in BENCH_FILES] + [("bench_gauss_deriv", ["--3d"])],
                         ids=[*BENCH_FILES, "bench_gauss_deriv-3d"])
def test_bench_file_declares_cases_that_build_and_run(name, argv):
    """Every case's providers build and run a step (on the warm-up case where the bench has one)."""
    mod = _memory.load(str(BENCH_DIR / f"{name}.py"), f"test_{name}")
    bench = mod.BENCH
    args = h.options(bench, argv)
    cases = bench.cases(args)
    assert cases and all(bench.ours in c.providers for c in cases)
    for c in cases:
        assert h.Case.from_json(json.loads(json.dumps(c.to_json()))) == c
    # FLOP / byte models: every case but k-means (its work depends on the iterations each provider runs)
    assert all(c.flops and c.bytes for c in cases if c.name != "kmeans") and any(c.flops for c in cases)
    for c in cases:
        small = bench.warmup_case(c) if bench.warmup_case else c
        for p in small.providers:
            try:
                step = h.make_step(bench, small, p)
            except h.Unavailable:
                continue
            step.run()
    assert any(k.startswith("test_") and callable(v) for k, v in vars(mod).items())  # pytest-benchmark entry


# ---------------------------------------------------------------------------------------------
# python -m rbfkern bench: the front over the bench files
# ---------------------------------------------------------------------------------------------


def test_front_rows_take_each_family_columns():
    from rbfkern import bench as front

    fam = front.FAMILIES["rbf layers"]
    stats = lambda s: {"median_s": s, "p20_s": s, "p80_s": s, "gflops": 1.0, "pct_peak": 2.0}  # noqa: E731
    hrow = {"case": "retrieval", "shape": "(1, 2, 3, 4)", "mode": "",
            "results": {"rbfkern": stats(1.0), "rbfkern-op": stats(3.0), "faiss": stats(2.0), "torch": stats(4.0)}}
    rows = front._rows(fam, None, hrow, "cpu (C++)")
    # one row per peer present; the fused column is ours, never rbfkern-op
    assert [(r["peer"], r["peer_s"], r["fused_s"]) for r in rows] == [("faiss", 2.0, 1.0), ("torch", 4.0, 1.0)]
    assert rows[0]["fused_gflops"] == 1.0 and rows[0]["fused_pct_peak"] == 2.0 and rows[0]["mode"] == "fwd"
    text = front.format_table(rows)
    assert "fused GFLOP/s" in text and "% of peak" in text and "| 2.00x |" in text  # faiss / fused


def test_front_names_the_plain_layer_of_each_bcos_case():
    # the B-cos family's "naive" column is a plain conv2d for the conv cases and a plain linear
    # for the linear ones (once both were labelled conv2d)
    from rbfkern import bench as front

    fam = front.FAMILIES["bcos"]
    stats = {"median_s": 1.0}
    labels = {}
    for case in ("bcos_conv2d", "bcos_linear"):
        hrow = {"case": case, "shape": "s", "mode": "fwd", "results": {"ours": stats, "plain": stats, "official": stats}}
        mod = types.SimpleNamespace(B=2.0, MAX_OUT=2)  # what the op column reads of bench_bcos
        labels[case] = front._rows(fam, mod, hrow, "cpu (C++)")[0]["naive"]
    assert labels == {"bcos_conv2d": "plain conv2d (2x channels)", "bcos_linear": "plain linear (2x features)"}


@pytest.mark.slow  # a real quick run of one family in a fresh interpreter
def test_bench_command_prints_the_unified_table_and_json(tmp_path):
    import subprocess

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "rbfkern", "bench", "--quick", "--family", "bcos", "--json",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu"] and doc["machine"]["threads"] == 2
    rows = doc["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"} and all(r["fused_s"] > 0 for r in rows)
    assert all(r["fused_gflops"] > 0 for r in rows)
    assert {r["op"].split()[0] for r in rows} == {"bcos_conv2d", "bcos_linear"} and all(" b=" in r["op"] for r in rows)
    assert "| op | shape | mode | backend | fused ms (p20-p80) |" in proc.stdout
