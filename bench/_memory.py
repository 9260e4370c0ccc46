"""Peak extra memory of one benchmark step, measured in a fresh process so each number is alone.

Linux keeps ru_maxrss across exec (a child would inherit its parent's peak), so the child resets the
high-water mark through /proc/self/clear_refs and reads VmHWM instead.

The child is this file run as a script: ``python bench/_memory.py BENCH_FILE CASE_JSON PROVIDER
THREADS``. It loads the bench file, runs the bench's warm-up case once (one-time costs: lazy
imports, first-call set-up), builds the step and prints the MiB it grew by.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys

CHILD_TIMEOUT_S = 1800


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def extra_peak_mib(run) -> float:
    """Resident-memory growth (MiB) while ``run()`` executes."""
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark
        run()
        peak = _status_kib("VmHWM")
    except OSError:  # not Linux: the process-lifetime peak (an upper bound)
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024.0


def in_child(bench_file: str, case, provider: str, threads: int) -> float | None:
    """Peak extra MiB of one step of ``provider`` on ``case`` in a fresh process (None if it failed, e.g. OOM)."""
    spec = json.dumps(case.to_json())
    proc = subprocess.run([sys.executable, __file__, bench_file, spec, provider, str(threads)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def load(path: str, name: str | None = None):
    """A bench file as a module (bench/ on sys.path, so it finds _harness)."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = name or os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _child(bench_file: str, spec: str, provider: str, threads: int) -> None:
    import torch

    import _harness

    torch.set_num_threads(threads)
    bench = load(bench_file).BENCH
    case = _harness.Case.from_json(json.loads(spec))
    warm = bench.warmup_case(case) if bench.warmup_case else case
    step = _harness.make_step(bench, warm, provider)
    step.run()
    if warm is not case:
        step = _harness.make_step(bench, case, provider)
    print(extra_peak_mib(step.run))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
