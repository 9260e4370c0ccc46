"""The tests step: pytest in a subprocess (pytest-xdist workers, a JUnit XML report), stopped at
its deadline with SIGINT first (pytest then still writes the report of what ran), and the report
read back into counts, the failing node ids with their messages, and the slowest tests."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Curated subset of the default run, and --full. A CUDA test marked `slow` is left to --full.
DEFAULT_MARKEXPR = "cuda and not slow"
FULL_MARKEXPR = "cuda"
# --rehearse (no GPU): the CUDA tests cannot run; one quick CLI test exercises the machinery.
REHEARSE_SELECTION = ["tests/test_cli.py::test_info_lists_backends_and_ops"]
PER_TEST_TIMEOUT_S = 180

PYTEST_EXIT = {0: "passed", 1: "failed", 2: "interrupted", 3: "internal error", 4: "usage error",
               5: "no tests collected"}


def plugins() -> dict:
    return {"xdist": importlib.util.find_spec("xdist") is not None,
            "pytest_timeout": importlib.util.find_spec("pytest_timeout") is not None}


def command(python: str, junit: Path, workers: int, markexpr: str | None, selection: list[str],
            extra: list[str]) -> list[str]:
    have = plugins()
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short", "--durations=15",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if have["xdist"] and workers > 0:
        cmd += ["-n", str(workers)]
    if have["pytest_timeout"]:
        cmd += [f"--timeout={PER_TEST_TIMEOUT_S}"]
    if markexpr:
        cmd += ["-m", markexpr]
    return cmd + list(extra) + list(selection)


class PytestRun:
    """pytest started in the background; :meth:`finish` waits for it (or stops it at the deadline)."""

    def __init__(self, cmd, cwd, env, log_path: Path, junit: Path):
        self.cmd, self.cwd, self.env, self.log_path, self.junit = cmd, cwd, env, log_path, junit
        self.proc = None
        self.t0 = None

    def start(self):
        self.t0 = time.time()
        self._log = open(self.log_path, "w")
        self._log.write("$ " + " ".join(self.cmd) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_child_setup)

    def finish(self, deadline: float) -> dict:
        stopped = None
        while self.proc.poll() is None:
            if time.time() >= deadline:
                stopped = self._stop()
                break
            time.sleep(0.5)
        rc = self.proc.returncode
        self._log.close()
        wall = time.time() - self.t0
        res = {"command": self.cmd, "rc": rc, "wall_s": wall}
        if self.junit.exists():
            try:
                res.update(parse_junit(self.junit))
            except ET.ParseError as e:
                res["junit_error"] = f"unreadable JUnit XML: {e}"
        if stopped:
            res["status"] = "timeout"
            res["reason"] = f"stopped at the budget's deadline after {wall:.0f} s ({stopped}); counts are what ran"
        elif rc == 0:
            res["status"] = "passed"
        elif rc == 1:
            res["status"] = "failed"
        elif rc == 5:
            res["status"] = "no tests"
            res["reason"] = "pytest collected no test for this selection"
        else:
            res["status"] = "error"
            res["reason"] = f"pytest exit status {rc} ({PYTEST_EXIT.get(rc, 'killed by a signal' if rc < 0 else '?')})"
        if "counts" not in res:
            res["counts"] = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
            res.setdefault("failures", [])
        return res

    def _stop(self) -> str:
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGINT)  # pytest writes the JUnit report of what ran, then exits
        try:
            self.proc.wait(timeout=30)
            return "SIGINT"
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
            return "SIGKILL after SIGINT did not end it in 30 s"


def _child_setup():
    """In the child before exec (started before any thread of the parent): its own process group,
    so the stop reaches the xdist workers too, in the parent's session, so whatever ends the
    parent's session ends it; SIGINT back to its default, as a shell's background job (a device
    command may be one) starts with SIGINT ignored, which would make pytest deaf to the stop."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _nodeid(case: ET.Element) -> str:
    """pytest's node id from a JUnit testcase (classname 'tests.test_x.TestY', name 'test_z[p]')."""
    parts = (case.get("classname") or "").split(".")
    mod = [p for p in parts if p and not p[0].isupper()]
    cls = [p for p in parts if p and p[0].isupper()]
    path = "/".join(mod) + ".py" if mod else (case.get("file") or "?")
    return "::".join([path, *cls, case.get("name") or "?"])


def _message(el: ET.Element, limit=600) -> str:
    msg = (el.get("message") or "").strip()
    text = (el.text or "").strip()
    if not msg and text:
        msg = text.splitlines()[-1]
    return msg[:limit]


def parse_junit(path: Path) -> dict:
    """{"counts": {...}, "failures": [{"nodeid", "kind", "message", "detail"}], "slowest": [...]}."""
    root = ET.parse(path).getroot()
    # A test interrupted by the stop leaves a <testcase> without a name: it did not run to an outcome.
    cases = [c for c in root.iter("testcase") if c.get("name")]
    counts = {"total": len(cases), "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, times = [], []
    for c in cases:
        nid = _nodeid(c)
        times.append((float(c.get("time") or 0.0), nid))
        fail, err, skip = c.find("failure"), c.find("error"), c.find("skipped")
        if fail is not None or err is not None:
            el = fail if fail is not None else err
            counts["failed" if fail is not None else "errors"] += 1
            failures.append({"nodeid": nid, "kind": "failed" if fail is not None else "error",
                             "message": _message(el), "detail": (el.text or "")[-2000:]})
        elif skip is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    times.sort(reverse=True)
    return {"counts": counts, "failures": failures,
            "slowest": [{"nodeid": n, "s": round(t, 2)} for t, n in times[:10]]}
