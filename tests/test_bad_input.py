"""Issue 8, bad input: a table of malformed calls across the public API. Each must raise ValueError or
TypeError whose message names the offending argument, before any kernel runs.

This is the one table of bad input (tests/data/bad_input_cases.tsv, a row a case): the other test
files test behaviour, not argument checks.
The whole table runs in ONE subprocess per device that prints one JSON line per case, so a crash
(segfault, abort) fails the cases it did not reach instead of killing pytest; the test then asserts
per case. On a GPU the table runs with torch's default device set to it (every tensor and layer a
case makes is on the GPU), plus the cases that put one argument on the CPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import rbfkern

from conftest import CUDA, CUDA_ON_CPU, DEVICES

# Objects the cases use (built once in the subprocess).
PRELUDE = r"""
import math, os, tempfile
import numpy as np
import torch
from torch import nn
import rbfkern
from rbfkern import ops, explain
from rbfkern.nn import (RBF, RBFClassifier, RBFNetwork, BcosConv2d, BcosLinear, GaussDerivConv2d,
                        GaussDerivConv3d, kmeans, init_centers, similar, cluster_contributions)
from rbfkern.mcu import export_c

# The table's device: every tensor and layer made below or in a case lands there.
dev = torch.device(os.environ.get("RBFKERN_BAD_INPUT_DEVICE", "cpu"))
torch.set_default_device(dev)
torch.manual_seed(0)
x = torch.randn(6, 3)
c = torch.randn(4, 3)
img = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)
wl = torch.randn(5, 3)
xg = torch.randn(1, 2, 12, 12)
ag = torch.randn(3, 2, 6)  # order 2: M = 6, one scale
xg3 = torch.randn(1, 2, 7, 7, 7)
ag3 = torch.randn(3, 2, 4)  # order 1 in 3D: M = 4
nan, inf = float("nan"), float("inf")
meta = lambda t: t.to("meta")
tmp = tempfile.mkdtemp()
head = RBFClassifier(3, 4, 2)
fitted = RBFNetwork(3, centers="random").fit(torch.randn(20, 3), torch.randn(20))
bmodel = nn.Sequential(BcosLinear(3, 4), BcosLinear(4, 2))
six = torch.rand(6, 8, 8)
"""


def _read_cases(name: str) -> list[tuple[str, str, str, str]]:
    """The rows of tests/data/<name>: (id, statement, expected exception types, regex the message
    must match: the argument's name), tab-separated; '#' lines are comments."""
    with open(os.path.join(os.path.dirname(__file__), "data", name), encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip() and not line.startswith("#")]
    bad = [r for r in rows if len(r) != 4]
    assert not bad, f"{name}: rows without 4 tab-separated fields: {bad}"
    return [tuple(r) for r in rows]


CASES = _read_cases("bad_input_cases.tsv")
# Arguments on two devices: these need a GPU beside the CPU (the table runs on the GPU, one
# argument is moved to the CPU).
TWO_DEVICE_CASES = _read_cases("bad_input_two_device_cases.tsv")

RUNNER = r"""
import json, sys, traceback
ns = {}
exec(PRELUDE, ns)
for cid, stmt in CASES:
    res = {"id": cid}
    try:
        exec(stmt, dict(ns))
        res["exc"] = None
    except BaseException as e:  # noqa: BLE001 - every outcome is reported, KeyboardInterrupt too
        res["exc"] = type(e).__name__
        res["msg"] = str(e)[:500]
        res["where"] = traceback.extract_tb(e.__traceback__)[-1].filename.replace("\\\\", "/")
    print(json.dumps(res), flush=True)
print(json.dumps({"id": "__done__"}), flush=True)
"""


_RESULTS = {}


def _results(where: str) -> dict:
    """{case id: outcome} of the whole table on one device ("cpu", or "cuda": the GPU, or in the
    rehearsal on a machine without one the CPU through the interpreted Triton kernels), run once."""
    if where not in _RESULTS:
        on_gpu = where == "cuda" and not CUDA_ON_CPU
        cases = CASES + (TWO_DEVICE_CASES if on_gpu else [])
        script = f"PRELUDE = {PRELUDE!r}\nCASES = {[(c[0], c[1]) for c in cases]!r}\n{RUNNER}"
        env = dict(os.environ, RBFKERN_BACKEND="triton" if where == "cuda" and CUDA_ON_CPU else "cpp",
                   RBFKERN_BAD_INPUT_DEVICE="cuda" if on_gpu else "cpu", PYTHONFAULTHANDLER="1")
        if on_gpu:
            env.pop("RBFKERN_BACKEND")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
        out = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                out[rec["id"]] = rec
        out["__proc__"] = {"rc": proc.returncode, "stderr": proc.stderr[-3000:]}
        _RESULTS[where] = out
    return _RESULTS[where]


def test_table_is_large_and_unique():
    ids = [c[0] for c in CASES + TWO_DEVICE_CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("where", DEVICES)
def test_subprocess_finished(where):
    """The runner reached the end and exited normally: no case crashed the interpreter."""
    results = _results(where)
    proc = results["__proc__"]
    assert "__done__" in results and proc["rc"] == 0, f"rc={proc['rc']}\n{proc['stderr']}"


def _check(results, cid, stmt, excs, pattern):
    rec = results.get(cid)
    assert rec is not None, f"{cid}: no result (the subprocess died before it): {results['__proc__']['stderr']}"
    assert rec["exc"] is not None, f"{cid}: `{stmt}` raised nothing"
    assert rec["exc"] in excs.split("|"), (
        f"{cid}: `{stmt}` raised {rec['exc']} (in {rec.get('where')}), want {excs}: {rec['msg']}")
    assert re.search(pattern, rec["msg"]), f"{cid}: the message does not name the argument ({pattern}): {rec['msg']}"


@pytest.mark.parametrize("where", DEVICES)
@pytest.mark.parametrize("cid,stmt,excs,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(where, cid, stmt, excs, pattern):
    _check(_results(where), cid, stmt, excs, pattern)


@pytest.mark.parametrize("where", [CUDA])
@pytest.mark.parametrize("cid,stmt,excs,pattern", TWO_DEVICE_CASES, ids=[c[0] for c in TWO_DEVICE_CASES])
def test_bad_input_two_devices(where, cid, stmt, excs, pattern):
    if CUDA_ON_CPU:
        pytest.skip("rehearsal: needs two devices (the CPU and a GPU)")
    _check(_results(where), cid, stmt, excs, pattern)


def test_value_checks_can_be_switched_off_and_restored():
    # the checks that read values (a host sync on a GPU) obey rbfkern.set_value_checks; shape
    # checks do not; the context manager restores the setting, the plain call keeps it
    x, c, bad = torch.randn(5, 3), torch.randn(4, 3), -torch.rand(4, 3)
    with pytest.raises(ValueError, match="diag"):
        rbfkern.ops.rbf_r2(x, c, diag=bad)
    with rbfkern.set_value_checks(False):
        assert rbfkern.ops.rbf_r2(x, c, diag=bad).shape == (5, 4)
        with pytest.raises(ValueError, match="max_sigma"):  # a Python float: no data read, still checked
            rbfkern.ops.gauss_deriv_conv2d(torch.randn(1, 2, 9, 9), torch.randn(3, 2, 6), 3.0, order=2, max_sigma=2.0)
        with pytest.raises(ValueError, match="diag"):
            rbfkern.ops.rbf_r2(x, c, diag=torch.rand(2, 3))
    with pytest.raises(ValueError, match="diag"):
        rbfkern.ops.rbf_r2(x, c, diag=bad)
    try:
        rbfkern.set_value_checks(False)
        rbfkern.ops.gauss_deriv_conv2d(torch.randn(1, 2, 9, 9), torch.randn(3, 2, 6), torch.tensor([-1.0]), order=2,
                                       max_sigma=2.0)
    finally:
        rbfkern.set_value_checks(True)
    with pytest.raises(ValueError, match="sigma"):
        rbfkern.ops.gauss_deriv_conv2d(torch.randn(1, 2, 9, 9), torch.randn(3, 2, 6), torch.tensor([-1.0]), order=2,
                                       max_sigma=2.0)
    with pytest.raises(TypeError, match="enabled"):
        rbfkern.set_value_checks(0)
