"""What a benchmark ran on, and this machine's measured float32 peak FLOP/s.

The peak comes from a tiny C loop of independent vector FMAs (``FMA_SOURCE``, compiled once with
the system C compiler for this CPU, run by ``threads`` Python threads at once: ctypes releases the
GIL), not from a datasheet: it is the limit the benchmark tables compare each kernel's GFLOP/s with.
Without a C compiler the peak is None and the tables leave the % column empty.
"""
from __future__ import annotations

import ctypes
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import torch

from rbfkern.gpucheck.envinfo import git_commit, version

ROOT = Path(__file__).resolve().parent.parent

# ACC accumulators: more independent FMA chains than (FMA latency x FMA units) on current x86 and
# Arm cores, few enough to stay in registers. The vector width is the widest the compiler targets here.
FMA_SOURCE = r"""
#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
#define ACC 12
#define STR(x) #x
#define UNROLL(n) _Pragma(STR(GCC unroll n))
typedef float vf __attribute__((vector_size(VBYTES)));

int fma_lanes(void) { return VBYTES / 4; }
int fma_accumulators(void) { return ACC; }

float fma_loop(long iters) {
    vf a[ACC];
    vf m = (vf){0} + 0.999999f, c = (vf){0} + 1e-6f;
    for (int k = 0; k < ACC; k++) a[k] = (vf){0} + (float)k;
    for (long n = 0; n < iters; n++) {
        UNROLL(ACC)
        for (int k = 0; k < ACC; k++) a[k] = a[k] * m + c;
    }
    float s = 0.0f;
    for (int k = 0; k < ACC; k++)
        for (int i = 0; i < VBYTES / 4; i++) s += a[k][i];
    return s;
}
"""
FMA_FLAGS = ["-O2", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC"]
FMA_CALL_S = 0.2  # seconds one thread's loop runs per measurement
FMA_REPEATS = 3  # measurements; the peak is the fastest


def _compile_fma() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    key = hashlib.sha256((FMA_SOURCE + cc + " ".join(FMA_FLAGS) + platform.machine()).encode()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"rbfkern-fma-{os.getuid()}-{key}.so"
    if not lib.exists():
        src = lib.with_suffix(f".{os.getpid()}.c")
        src.write_text(FMA_SOURCE)
        tmp = lib.with_suffix(f".{os.getpid()}.so")
        proc = subprocess.run([cc, *FMA_FLAGS, str(src), "-o", str(tmp)], capture_output=True, text=True)
        src.unlink()
        if proc.returncode != 0:
            return None
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.fma_loop.argtypes, dll.fma_loop.restype = [ctypes.c_long], ctypes.c_float
    return dll


@lru_cache(maxsize=None)
def peak(threads: int) -> dict | None:
    """{"gflops", "threads", "lanes", "accumulators"}: float32 FMA rate of ``threads`` threads at once."""
    dll = _compile_fma()
    if dll is None:
        return None
    per_iter = 2 * dll.fma_lanes() * dll.fma_accumulators()  # FLOPs of one loop iteration (FMA = 2)
    iters = 1 << 16
    while True:  # size the loop to FMA_CALL_S on one thread
        t0 = time.perf_counter()
        dll.fma_loop(iters)
        dt = time.perf_counter() - t0
        if dt > FMA_CALL_S / 8:
            break
        iters *= 4
    iters = int(iters * FMA_CALL_S / dt)
    best = 0.0
    for _ in range(FMA_REPEATS):
        workers = [threading.Thread(target=dll.fma_loop, args=(iters,)) for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, threads * iters * per_iter / (time.perf_counter() - t0))
    return {"gflops": best / 1e9, "threads": threads, "lanes": dll.fma_lanes(), "accumulators": dll.fma_accumulators()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The instruction set rbfkern's C++ kernels run with here (avx512, avx2, default), or "none"."""
    from rbfkern import _backend

    return _backend.cpu_isa()


def describe(threads: int, measure_peak: bool = True) -> dict:
    """The machine metadata every table header and JSON file carries."""
    commit = git_commit(ROOT)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() if commit else ""
    return {
        "cpu": cpu_model(), "cpu_isa": cpu_isa(), "logical_cores": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "triton": version("triton"), "numpy": version("numpy"),
        "python": platform.python_version(), "rbfkern_commit": (commit or "unknown") + ("+dirty" if dirty else ""),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "peak": peak(threads) if measure_peak else None,
    }


def header(meta: dict) -> str:
    """One line for the top of a table."""
    pk = meta.get("peak")
    peak_txt = (f"measured peak {pk['gflops']:.0f} GFLOP/s float32 ({pk['threads']} threads, "
                f"{pk['lanes']}-lane FMA loop)" if pk else "peak FLOP/s not measured (no C compiler)")
    return (f"{meta['cpu']}, {meta['logical_cores']} logical cores, {meta['threads']} threads, C++ kernels "
            f"{meta.get('cpu_isa', '?')}; {peak_txt}; "
            f"torch {meta['torch']}, triton {meta['triton']}, numpy {meta['numpy']}; rbfkern "
            f"{meta['rbfkern_commit'][:12]}{'+dirty' if meta['rbfkern_commit'].endswith('+dirty') else ''}; "
            f"{meta['date']}; load {meta['loadavg_1min']:.1f}")
