"""Runs a :class:`~rbfkern.gpucheck.plan.Plan`: the steps in order, each in subprocesses, against
one deadline. The parent never times anything itself; it starts workers (worker.py), reads the
records they append, restarts a benchmark worker past a crash for the units left, and hands
everything to report.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

from . import envinfo, report
from .plan import ROOT, Plan
from .pytest_step import PytestRun

REPORT_RESERVE_S = 8.0  # kept at the end for the report
GRACE_S = 20.0  # a worker may overrun its deadline by this before it is killed
MAX_RESTARTS = 3  # benchmark workers started again past a crash, per family
LOG_TAIL = 512 << 10  # bytes of each child's log kept in gpucheck.log ...
LOG_TOTAL = 12 << 20  # ... and of all of them (a device run brings back files of at most 16 MiB)


class Runner:
    def __init__(self, plan: Plan, argv: list[str]):
        self.plan, self.argv = plan, argv
        self.t0 = time.time()
        self.deadline = self.t0 + plan.budget
        # What the tests and the warm-up must leave for peaks + timing (at most half the budget).
        self.reserve = min(plan.bench_reserve, 0.5 * plan.budget)
        plan.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="rbfkern-gpucheck-"))
        self.log = open(plan.out / "gpucheck.log", "w")
        self.lock = threading.Lock()  # the warm-up threads share the log
        self.log_left = LOG_TOTAL
        self.env = self._child_env()
        self.children = set()  # process groups of the running children (killed if the run is stopped)
        self.doc = {}

    # -- helpers ---------------------------------------------------------------------------------
    def say(self, msg: str):
        line = f"[{time.time() - self.t0:5.0f} s] {msg}"
        with self.lock:
            print(line, flush=True)
            self.log.write(line + "\n")
            self.log.flush()

    def _child_env(self) -> dict:
        env = dict(os.environ)
        for k in ("TRITON_INTERPRET", "RBFKERN_BACKEND", "RBFKERN_GD_PATH", "RBFKERN_RBF_FWD", "RBFKERN_RBF_BWD"):
            env.pop(k, None)  # CUDA tensors must meet compiled kernels; ours picks its paths itself
        env.setdefault("TRITON_CACHE_DIR", str(self.work / "triton-cache"))
        env["PYTHONUNBUFFERED"] = "1"
        if self.plan.rehearse:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _append_log(self, title: str, path: Path):
        try:
            data = path.read_bytes()
        except OSError:
            return
        with self.lock:
            keep = max(0, min(LOG_TAIL, self.log_left, len(data)))
            self.log_left -= keep
            cut = f" (last {keep >> 10} KiB of {len(data) >> 10} KiB)" if keep < len(data) else ""
            self.log.write(f"\n===== {title}{cut} =====\n")
            if keep:
                self.log.write(data[len(data) - keep:].decode(errors="replace"))
            self.log.write("\n")
            self.log.flush()

    def worker(self, name: str, kind: str, units: list, deadline: float) -> tuple:
        """Run one worker to completion (killed GRACE_S past ``deadline``): (rc, records, tail)."""
        res, spec_path, log_path = (self.work / f"{name}{s}" for s in (".jsonl", ".json", ".log"))
        spec = {"kind": kind, "device": self.plan.device, "tiny": self.plan.rehearse, "units": units,
                "deadline": deadline, "timer": self.plan.timer, "results": str(res)}
        spec_path.write_text(json.dumps(spec))
        with open(log_path, "w") as lf:
            # Its own process group (killed as one), in this session: what ends the session ends it.
            group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
            proc = subprocess.Popen([sys.executable, "-m", "rbfkern.gpucheck.worker", str(spec_path)], cwd=ROOT,
                                    env=self.env, stdout=lf, stderr=subprocess.STDOUT, **group)
            self.children.add(proc.pid)
            try:
                rc = proc.wait(timeout=max(1.0, deadline + GRACE_S - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "killed at the deadline"
            finally:
                self.children.discard(proc.pid)
        recs = []
        if res.exists():
            for line in res.read_text().splitlines():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a crash
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        self._append_log(f"{name} (rc {rc})", log_path)
        return rc, recs, tail

    # -- steps -----------------------------------------------------------------------------------
    def run(self) -> dict:
        plan = self.plan
        doc = self.doc
        doc.update({"schema": report.SCHEMA, "date": datetime.fromtimestamp(self.t0, timezone.utc).isoformat(timespec="seconds"),
               "mode": "rehearse" if plan.rehearse else "cuda", "profile": plan.profile,
               "command": "python -m rbfkern " + " ".join(self.argv), "budget_s": plan.budget})
        doc["env"] = envinfo.collect(plan.device, ROOT)
        self.say("env: " + envinfo.one_line(doc["env"]))
        tests = self.start_tests()
        doc["warmup"] = self.warm()
        doc["tests"] = self.finish_tests(tests)
        doc["peaks"] = self.peaks()
        doc["bench"] = self.bench()
        doc["wall_s"] = time.time() - self.t0
        self.say(f"done in {doc['wall_s']:.0f} s; writing the report")
        return doc

    def start_tests(self):
        plan = self.plan
        if plan.tests_cmd is None:
            self.say(f"tests: skipped ({plan.tests_skip})")
            return None
        if self.deadline - self.reserve - time.time() < 10:
            plan.tests_skip = f"budget: {plan.budget:.0f} s leaves no time for the tests before the benchmarks"
            self.say(f"tests: skipped ({plan.tests_skip})")
            return None
        env = dict(self.env)
        if not plan.rehearse:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // max(1, plan.test_workers))))
        run = PytestRun(plan.tests_cmd, ROOT, env, plan.out / "pytest.log", plan.out / "pytest-junit.xml")
        run.junit.unlink(missing_ok=True)
        run.start()
        self.children.add(run.proc.pid)
        self.say(f"tests: started {plan.tests_selection} ({plan.test_workers} xdist workers), log pytest.log")
        return run

    def finish_tests(self, run) -> dict:
        plan = self.plan
        if run is None:
            return {"status": "skipped", "reason": plan.tests_skip, "selection": plan.tests_selection,
                    "counts": {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}, "failures": []}
        if run.proc.poll() is None:
            self.say("tests: waiting for pytest")
        res = run.finish(self.deadline - self.reserve)
        self.children.discard(run.proc.pid)
        res["selection"] = plan.tests_selection
        res["workers"] = plan.test_workers
        c = res["counts"]
        self.say(f"tests: {res['status']} in {res['wall_s']:.0f} s: {c['passed']} passed, {c['failed']} failed, "
                 f"{c['errors']} errors, {c['skipped']} skipped" + (f" ({res['reason']})" if res.get("reason") else ""))
        for f in res.get("failures", [])[:20]:
            self.say(f"  FAILED {f['nodeid']}: {f['message'][:160]}")
        return res

    def warm(self) -> dict:
        plan = self.plan
        deadline = self.deadline - self.reserve
        t0 = time.time()
        self.say(f"warm: {len(plan.warm_jobs)} jobs, {plan.jobs} at a time, TRITON_CACHE_DIR={self.env['TRITON_CACHE_DIR']}")
        entries = []

        def one(i, units):
            if time.time() > deadline - 5:
                return [{"case": k, "dtype": d, "status": "skipped", "reason": "budget: no time left for the warm-up",
                         "wall_s": 0.0} for k, d in units]
            rc, recs, tail = self.worker(f"warm-{i:02d}", "warm", units, deadline)
            got = {(r["case"], r["dtype"]): r for r in recs if r.get("type") == "warm"}
            started = [(r["case"], r["dtype"]) for r in recs if r.get("type") == "unit_start"]
            out = []
            for k, d in units:
                r = got.get((k, d))
                if r is not None:
                    out.append({key: r.get(key) for key in ("case", "dtype", "status", "reason", "error", "wall_s")
                                if r.get(key) is not None})
                elif (k, d) in started:
                    out.append({"case": k, "dtype": d, "status": "crashed", "error": f"worker ended (rc {rc}) "
                                f"while warming this unit: {tail.strip().splitlines()[-1][:300] if tail.strip() else ''}"})
                else:
                    out.append({"case": k, "dtype": d, "status": "not run", "reason": f"worker ended (rc {rc}) before it"})
            return out

        with ThreadPoolExecutor(max_workers=plan.jobs) as ex:
            futs = [ex.submit(one, i, units) for i, units in enumerate(plan.warm_jobs)]
            for fut in as_completed(futs):
                for e in fut.result():
                    entries.append(e)
                    extra = e.get("error") or e.get("reason") or ""
                    self.say(f"warm: {e['case']} {e['dtype']}: {e['status']} {e.get('wall_s') or 0:.1f} s"
                             + (f" ({extra[:160]})" if extra else ""))
        return {"wall_s": time.time() - t0, "jobs": entries}

    def peaks(self) -> dict:
        left = self.deadline - REPORT_RESERVE_S - time.time()
        if left < 10:
            self.say("peaks: skipped (budget)")
            return {"skipped": "budget"}
        rc, recs, tail = self.worker("peaks", "peaks", [], time.time() + min(90.0, left))
        got = next((r["peaks"] for r in recs if r.get("type") == "peaks"), None)
        if got is None:
            self.say(f"peaks: FAILED (rc {rc})")
            return {"error": f"peaks worker ended (rc {rc}) without a result: {tail[-300:]}"}
        for k, v in got.items():
            val = v.get("error") or (f"{v['tflops']:.1f} TFLOP/s" if "tflops" in v else f"{v['gbps']:.0f} GB/s")
            self.say(f"peaks: {k}: {val} ({v['what']})")
        return got

    def bench(self) -> dict:
        plan = self.plan
        out = {"timer": dict(plan.timer), "families": {}}
        fams = [f for f in plan.families if plan.bench_units.get(f)]
        for i, fam in enumerate(fams):
            left = self.deadline - REPORT_RESERVE_S - time.time()
            deadline = time.time() + left / (len(fams) - i)
            out["families"][fam] = self.bench_family(fam, plan.bench_units[fam], deadline)
        return out

    def bench_family(self, fam: str, units: list, deadline: float) -> dict:
        """Time every unit of ``fam``; a worker that dies is replaced for the units it left."""
        rows, problems, pending, attempt = [], [], [tuple(u) for u in units], 0
        t0 = time.time()
        self.say(f"bench {fam}: {len(pending)} units, {deadline - time.time():.0f} s")
        while pending:
            if time.time() > deadline - 3 or attempt > MAX_RESTARTS:
                why = "budget" if attempt <= MAX_RESTARTS else f"{MAX_RESTARTS} restarts used"
                problems += [{"case": k, "dtype": d, "status": "skipped", "reason": why} for k, d in pending]
                break
            rc, recs, tail = self.worker(f"bench-{fam}-{attempt}", "time", [list(u) for u in pending], deadline)
            attempt += 1
            last_start = last_measure = None
            finished = set()
            for r in recs:
                t = r.get("type")
                if t == "unit_start":
                    last_start, last_measure = (r["case"], r["dtype"]), None
                elif t == "row":
                    rows.append(r)
                    self._say_row(r)
                elif t == "measure_start":
                    last_measure = r
                elif t in ("unit_end", "unit_error"):
                    finished.add((r["case"], r["dtype"]))
                    if t == "unit_error":
                        problems.append({"case": r["case"], "dtype": r["dtype"], "status": "error", "error": r["error"]})
                        self.say(f"bench {fam}: {r['case']} {r['dtype']}: ERROR building the case: {r['error'][:200]}")
            if rc == 0:
                break
            crashed = last_start if last_start and last_start not in finished else None
            if crashed:
                finished.add(crashed)
                m = last_measure or {}
                where = f"{m.get('mode')} {m.get('provider')}" if m else "setting the case up"
                err = (f"worker ended (rc {rc}) while measuring {where}"
                       + (f": {tail.strip().splitlines()[-1][:300]}" if tail.strip() else ""))
                problems.append({"case": crashed[0], "dtype": crashed[1], "status": "crashed", "error": err,
                                 "mode": m.get("mode"), "provider": m.get("provider"), "role": m.get("role")})
                self.say(f"bench {fam}: {crashed[0]} {crashed[1]}: CRASHED ({err[:200]}); restarting for the rest")
            pending = [u for u in pending if u not in finished]
        self.say(f"bench {fam}: done in {time.time() - t0:.0f} s")
        return {"rows": rows, "problems": problems, "wall_s": time.time() - t0}

    def _say_row(self, r: dict):
        what = f"bench {r['case']} {r['dtype']} {r['mode']} {r['provider']}"
        if r["status"] == "ok":
            self.say(f"{what}: {r['median_ms']:.3f} ms [{r['p20_ms']:.3f}, {r['p80_ms']:.3f}]")
        else:
            self.say(f"{what}: {r['status'].upper()} {(r.get('reason') or r.get('error') or '')[:200]}")

    def kill_children(self):
        for pgid in list(self.children):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass

    def close(self):
        self.kill_children()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


def run(plan: Plan, argv: list[str]) -> int:
    """Run the plan and write the report; on an error of the harness itself or SIGTERM / SIGINT,
    the children are killed and what was gathered so far is still written (exit 1)."""
    runner = Runner(plan, argv)

    def stop(signum, _frame):
        runner.kill_children()
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        try:
            runner.run()
        except BaseException as e:  # noqa: BLE001 - recorded; the partial report still gets written
            runner.kill_children()
            runner.doc["harness_error"] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-4000:]
            runner.say(f"HARNESS ERROR ({type(e).__name__}: {e}); writing what was gathered")
        doc = runner.doc
        doc.setdefault("wall_s", time.time() - runner.t0)
        try:
            doc = report.assemble(doc)
            report.write(doc, plan.out)
        except Exception:  # noqa: BLE001 - a report bug must not lose the raw results
            doc["report_error"] = traceback.format_exc()[-4000:]
            doc["exit_code"] = 1
            (plan.out / "gpucheck.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
            runner.say("REPORT ERROR: raw results written to gpucheck.json\n" + doc["report_error"])
            return 1
        runner.say(f"wrote {plan.out / 'gpucheck.json'} and {plan.out / 'gpucheck.md'}; exit {doc['exit_code']}"
                   + (f" ({'; '.join(doc['exit_reasons'])})" if doc["exit_reasons"] else ""))
        print()
        print(report.summary_text(doc))
        return doc["exit_code"]
    finally:
        signal.signal(signal.SIGTERM, before)
        runner.close()
