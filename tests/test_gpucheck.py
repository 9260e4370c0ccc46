"""`python -m rbfkern gpucheck`: the dry run, the no-CUDA exit, the CPU rehearsal of the whole
harness (report keys, the crash-restart path), and its pure parts (JUnit reading, quantiles, the
FLOP model). Timings are never asserted."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rbfkern.gpucheck import model, pytest_step
from rbfkern.gpucheck.families import all_cases
from rbfkern.gpucheck.timing import quantile

ROOT = Path(__file__).resolve().parents[1]


def _gpucheck(*args, env=None, timeout=240):
    e = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RBFKERN_BACKEND")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "rbfkern", "gpucheck", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=e)


def test_dry_run_lists_the_steps(tmp_path):
    out = tmp_path / "out"
    proc = _gpucheck("--out", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for step in ("step 1  env", "step 2  tests", "step 3  warm", "step 4  peaks", "step 5  bench", "step 6  report"):
        assert step in proc.stdout
    assert '-m "cuda and not slow"' in proc.stdout and "--junitxml=" in proc.stdout
    for case in all_cases():
        assert case.key in proc.stdout
    assert not out.exists(), "a dry run writes nothing"
    full = _gpucheck("--out", str(out), "--dry-run", "--full", "--quick")
    assert full.returncode == 2 and "not allowed with" in full.stderr  # one size at a time


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_exits_2_with_one_line(tmp_path):
    proc = _gpucheck("--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


ROW_KEYS = {"provider", "label", "role", "tf32", "status", "median_ms", "p20_ms", "p80_ms", "samples", "timer",
            "tflops", "gbps", "peak_flops_key", "pct_peak_flops", "pct_peak_bw", "pct_roofline", "first_call_s"}


@pytest.mark.slow
def test_rehearsal_writes_the_report(tmp_path):
    out = tmp_path / "out"
    # a generous budget: this test reads the report's structure, and a loaded machine (xdist
    # workers beside it) must not stop the pytest step before it writes its JUnit file
    proc = _gpucheck("--out", str(out), "--rehearse", "--budget", "900", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("gpucheck.json", "gpucheck.md", "gpucheck.log", "pytest.log", "pytest-junit.xml"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "gpucheck.json").read_text())
    assert {"schema", "date", "mode", "profile", "command", "budget_s", "wall_s", "exit_code", "exit_reasons", "env",
            "tests", "warmup", "peaks", "timer", "bench", "cases", "skipped", "errors", "models"} <= set(doc)
    assert doc["schema"] == "rbfkern.gpucheck/1" and doc["mode"] == "rehearse" and doc["exit_code"] == 0
    assert doc["errors"] == [], doc["errors"]
    assert {"device", "torch", "triton", "torch_cuda", "cext", "bcos", "tf32_defaults"} <= set(doc["env"])
    t = doc["tests"]
    assert t["status"] == "passed" and t["counts"]["passed"] >= 1 and t["counts"]["failed"] == 0
    assert set(doc["peaks"]) == {"bf16_matmul", "fp32_matmul", "fp32_matmul_tf32", "copy"}
    assert all("error" not in v for v in doc["peaks"].values())
    assert all(j["status"] == "ok" for j in doc["warmup"]["jobs"])
    ids = {e["id"] for e in doc["cases"]}
    want = {f"{c.key}/{dt}/{m}" for c in all_cases() for dt in c.dtypes for m in ("fwd", "fwd+bwd")}
    assert ids == want
    for e in doc["cases"]:
        assert e["status"] == "ok", e["id"]
        assert e["flops"] > 0 and e["bytes"] > 0
        f = e["fused"]
        assert ROW_KEYS <= set(f) and f["role"] == "fused"
        assert f["p20_ms"] <= f["median_ms"] <= f["p80_ms"]
        assert e["peers"] and set(e["ratios"]) <= set(e["peers"])
        assert e["best_peer"] in e["ratios"]
        for r in e["peers"].values():
            assert r["status"] in ("ok", "skipped"), (e["id"], r)
            if r["status"] == "skipped":
                assert r["reason"]
        if e["mode"] == "fwd+bwd":
            assert f["saved_for_backward_mib"] is not None
    rbf = next(e for e in doc["cases"] if e["case"] == "rbf/diag-16384x1024x64" and e["dtype"] == "float32")
    assert {"diff_form", "naive", "gemm_tf32_off", "gemm_tf32_on", "cdist_tf32_off", "cdist_tf32_on"} == set(rbf["peers"])
    assert rbf["peers"]["diff_form"]["status"] == "skipped"  # the forward switch exists on CUDA only
    assert rbf["peers"]["cdist_tf32_off"]["status"] == "skipped"  # a per-centre metric: cdist cannot express it
    shared = next(e for e in doc["cases"] if e["case"] == "rbf/shared_diag-16384x1024x64")
    assert shared["peers"][next(k for k in shared["peers"] if k.startswith("cdist"))]["status"] == "ok"
    md = (out / "gpucheck.md").read_text()
    for head in ("## Tests", "## Measured peaks", "## Headline", "## rbf: every provider", "## bcos: every provider",
                 "## gauss_deriv: every provider", "## B-cos: saved for backward", "## Skipped", "## FLOP and byte"):
        assert head in md


@pytest.mark.slow
def test_a_crashed_worker_is_recorded_and_replaced(tmp_path):
    out = tmp_path / "out"
    fault = "bcos/conv3x3-32x64x32x32x64|float32|fwd+bwd|fused"
    proc = _gpucheck("--out", str(out), "--rehearse", "--quick", "--family", "bcos", "--no-tests",
                     env={"RBFKERN_GPUCHECK_FAULT": fault})
    assert proc.returncode == 1, proc.stdout[-3000:]
    doc = json.loads((out / "gpucheck.json").read_text())
    by_id = {e["id"]: e for e in doc["cases"]}
    crashed = by_id["bcos/conv3x3-32x64x32x32x64/float32/fwd+bwd"]
    assert crashed["fused"]["status"] == "crashed" and "while measuring fwd+bwd fused" in crashed["fused"]["error"]
    assert by_id["bcos/conv3x3-32x64x32x32x64/float32/fwd"]["status"] == "ok"  # measured before the crash
    assert by_id["bcos/conv3x3-32x64x32x32x64/bfloat16/fwd+bwd"]["status"] == "ok"  # by the replacement worker
    assert any("fused op failed" in r for r in doc["exit_reasons"])
    assert doc["tests"]["status"] == "skipped"


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="3.0">
<testcase classname="tests.test_rbf" name="test_ok[cuda]" time="0.50"/>
<testcase classname="tests.test_bcos.TestConv" name="test_bad[cuda-float32]" time="2.00">
  <failure message="AssertionError: max abs err 1e-2">traceback line 1
AssertionError: max abs err 1e-2</failure></testcase>
<testcase classname="tests.test_gauss_deriv" name="test_setup" time="0.01"><error message="fixture failed">E boom</error></testcase>
<testcase classname="tests.test_rbf" name="test_skip" time="0.00"><skipped type="pytest.skip" message="no GPU">skip</skipped></testcase>
</testsuite></testsuites>
"""


def test_junit_report_is_read_into_counts_and_node_ids(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    res = pytest_step.parse_junit(path)
    assert res["counts"] == {"total": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    ids = [(f["nodeid"], f["kind"], f["message"]) for f in res["failures"]]
    assert ids == [
        ("tests/test_bcos.py::TestConv::test_bad[cuda-float32]", "failed", "AssertionError: max abs err 1e-2"),
        ("tests/test_gauss_deriv.py::test_setup", "error", "fixture failed")]
    assert res["slowest"][0] == {"nodeid": "tests/test_bcos.py::TestConv::test_bad[cuda-float32]", "s": 2.0}


def test_pytest_stopped_at_its_deadline_keeps_what_ran(tmp_path):
    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import time
        def test_fast():
            pass
        def test_slow():
            time.sleep(120)
    """))
    junit = tmp_path / "junit.xml"
    cmd = pytest_step.command(sys.executable, junit, 0, None, ["test_slow.py"], ["-p", "no:xdist"])
    run = pytest_step.PytestRun(cmd, tmp_path, dict(os.environ), tmp_path / "pytest.log", junit)
    run.start()
    res = run.finish(time.time() + 8)
    assert res["status"] == "timeout" and "(SIGINT)" in res["reason"], res
    assert res["counts"]["passed"] == 1  # the JUnit report of what ran before the stop


def test_quantiles_interpolate_like_torch():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert quantile(xs, q) == pytest.approx(float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q)))


def test_flop_and_byte_models():
    conv = dict(kind="conv", n=2, cin=3, h=4, w=5, cout=6, k=3)
    fwd = model.cost("bcos", conv, "float32", "fwd")
    both = model.cost("bcos", conv, "float32", "fwd+bwd")
    gemm = 2 * (2 * 4 * 5) * (2 * 6) * (3 * 9)  # 2 * pixels * (MaxOut 2 * C_out) * C_in k^2
    assert fwd.flops == gemm + 2 * 40 * 27 + 8 * 40 * 6
    assert fwd.bytes == 4 * (2 * 3 * 4 * 5 + 12 * 27 + 2 * 6 * 4 * 5)
    assert both.flops > 2.9 * gemm and both.bytes > fwd.bytes
    half = model.cost("bcos", conv, "bfloat16", "fwd")
    assert half.flops == fwd.flops and half.bytes == fwd.bytes / 2
    rbf = model.cost("rbf", dict(metric="diag", n=10, c=7, d=3), "float32", "fwd")
    assert rbf.flops == 10 * 7 * (2 * 3 * 2 + 8)  # the GEMM form: cross term and x'^2 w_j per centre
    shared = [model.cost("rbf", dict(metric="shared_diag", n=10, c=7, d=3), "float32", m).flops
              for m in ("fwd", "fwd+bwd")]
    assert shared == [10 * 7 * (2 * 3 + 8), 10 * 7 * (2 * 3 + 8) + 2 * 10 * 7 * 3 * 3 + 10 * 10 * 7]
    peaks = {"fp32_matmul": {"tflops": 50.0}, "copy": {"gbps": 4000.0}}
    r = model.rates(model.Cost(50e12 * 1e-3, 4000e9 * 0.5e-3, "", ""), 1.0, "float32", False, peaks)
    assert r["tflops"] == pytest.approx(50.0) and r["pct_peak_flops"] == pytest.approx(100.0)
    assert r["pct_peak_bw"] == pytest.approx(50.0) and r["pct_roofline"] == pytest.approx(100.0)
    assert model.rates(model.Cost(1, 1, "", ""), 1.0, "bfloat16", False, peaks)["pct_peak_flops"] is None


def test_sanitize_rehearsal_runs_the_cases_it_is_given():
    # the compute-sanitizer driver's child, on CPU through the interpreter (no sanitizer): the
    # Gaussian-derivative layer runs both paths, so three names are four cases
    cases = ["rbf/shared_diag/logistic", "bcos_linear/fused", "layer/GaussDerivConv2d"]
    proc = subprocess.run([sys.executable, "-m", "rbfkern.gpucheck.sanitize", "--rehearse", "--dtypes", "float32",
                           "--cases", *cases], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "@@sanitize-cases-done 4" in proc.stdout, proc.stdout[-3000:]


def test_sanitize_without_a_gpu_exits_2_with_the_reason(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "-m", "rbfkern.gpucheck.sanitize", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout, proc.stdout + proc.stderr
