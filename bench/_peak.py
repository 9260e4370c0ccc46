"""Peak extra memory of one benchmark step, measured in a fresh process.

Linux keeps ru_maxrss across exec (a child would inherit its parent's peak), so the child resets the
high-water mark through /proc/self/clear_refs and reads VmHWM instead.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def extra_peak_mib(run) -> float:
    """Resident-memory growth (MiB) while ``run()`` executes; call it after a warm-up run."""
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


def in_child(script: str, spec) -> float | None:
    """Run ``script --peak <json spec>`` and parse the MiB it prints last (None if it failed, e.g. OOM)."""
    proc = subprocess.run([sys.executable, script, "--peak", json.dumps(spec)], capture_output=True, text=True,
                          timeout=1800)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
