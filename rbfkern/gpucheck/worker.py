"""Child process of the GPU check: ``python -m rbfkern.gpucheck.worker SPEC.json``.

SPEC (written by orchestrate.py): ``kind`` ("warm", "time" or "peaks"), ``device`` ("cuda" or
"cpu"), ``tiny`` (rehearsal shapes), ``units`` ([case key, dtype] pairs), ``deadline`` (epoch
seconds), ``timer`` ({"warmup_ms", "rep_ms"}) and ``results``: a file this process appends one
JSON object per line to, flushed at once, so what was measured before a crash survives it.

Exit status: 0 done; 3 the CUDA context is lost (an illegal address, say): the parent starts a
new process for the units left.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager

import torch

from .._environ import environ
from . import model, peaks, tf32
from .families import MODES, family, find_case
from .timing import CpuTimer, CudaTimer

EXIT_CONTEXT_LOST = 3
# "case key|dtype|mode|provider": the worker aborts when it reaches that measurement, as a CUDA
# fault would end it (tests/test_gpucheck.py drives the restart path with it on CPU).
FAULT_ENV = "RBFKERN_GPUCHECK_FAULT"
MIN_LEFT_S = 2.0  # a provider is not started with less than this left


class Recorder:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)

    def write(self, **rec):
        rec.setdefault("t", time.time())
        self.f.write(json.dumps(rec, default=str) + "\n")
        self.f.flush()


def error_text(e: BaseException) -> str:
    msg = str(e).strip().replace("\n", " | ")
    return f"{type(e).__name__}: {msg[:600]}"


def context_ok(device: str) -> bool:
    if device != "cuda":
        return True
    try:
        torch.cuda.synchronize()
        return float(torch.ones(1, device="cuda").sum()) == 1.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


@contextmanager
def provider_env(p):
    with environ(p.env), tf32.switches(p.tf32):
        yield


def make_step(p, mode: str):
    """The step timed for ``mode``: the forward under no_grad, or forward + backward with a fixed
    random output gradient (the leaves' gradients reset before each run)."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                p.fn()
        return fwd
    out = p.fn()
    g = torch.Generator(device=out.device).manual_seed(1)
    gy = torch.randn(out.shape, generator=g, device=out.device).to(out.dtype)
    del out

    def fwd_bwd():
        for t in p.leaves:
            t.grad = None
        p.fn().backward(gy)
    return fwd_bwd


def clear_grads(p):
    for t in p.leaves:
        t.grad = None


def peak_mib(step, device: str):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def saved_mib(p) -> float:
    """MiB autograd keeps for the backward of one forward, in storages other than the leaves'."""
    leaves = {t.untyped_storage().data_ptr() for t in p.leaves}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in leaves:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = p.fn()
    del out
    return sum(seen.values()) / 2**20


def measure(p, mode: str, timer, deadline: float, device: str) -> dict:
    row = {"provider": p.key, "label": p.label, "role": p.role, "tf32": p.tf32, "mode": mode, "note": p.note}
    reason = p.skip_reason(mode) or (None if p.fn is not None else "no implementation here")
    if reason:
        return {**row, "status": "skipped", "reason": reason}
    left = deadline - time.time()
    if left < MIN_LEFT_S:
        return {**row, "status": "skipped", "reason": f"budget: {max(left, 0):.0f} s left for this family"}
    try:
        with provider_env(p):
            t0 = time.perf_counter()
            step = make_step(p, mode)
            step()  # JIT compile (a miss in the warm-up's cache), cuDNN autotuning, allocator growth
            timer.sync()
            first_s = time.perf_counter() - t0
            once = timer.once_ms(step)
            need = timer.estimate_s(once)
            if time.time() + need > deadline:
                return {**row, "status": "skipped", "first_call_s": first_s,
                        "reason": f"budget: measuring needs ~{need:.1f} s, {deadline - time.time():.1f} s left"}
            mem = peak_mib(step, device)
            t = timer(step, once)
            saved = saved_mib(p) if mode == "fwd+bwd" else None
        clear_grads(p)
        return {**row, "status": "ok", **vars(t), "first_call_s": first_s, "peak_mem_mib": mem,
                "saved_for_backward_mib": saved}
    except Exception as e:  # noqa: BLE001 - recorded per provider; a lost context ends the process
        clear_grads(p)
        if device == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        return {**row, "status": "error", "error": error_text(e), "traceback": traceback.format_exc()[-3000:]}


def _free(device: str):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def run_time(spec, rec, timer):
    device, tiny, deadline = spec["device"], spec["tiny"], spec["deadline"]
    for key, dtype in spec["units"]:
        case = find_case(key)
        params = case.resolved(tiny)
        rec.write(type="unit_start", case=key, dtype=dtype)
        try:
            provs = family(case.family).providers(case, dtype, device, params)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory building the inputs
            rec.write(type="unit_error", case=key, dtype=dtype, error=error_text(e),
                      traceback=traceback.format_exc()[-3000:])
            if not context_ok(device):
                sys.exit(EXIT_CONTEXT_LOST)
            _free(device)
            continue
        for mode in MODES:
            c = model.cost(case.family, params, dtype, mode)
            for p in provs:
                rec.write(type="measure_start", case=key, dtype=dtype, mode=mode, provider=p.key, role=p.role)
                if os.environ.get(FAULT_ENV) == f"{key}|{dtype}|{mode}|{p.key}":
                    os.abort()
                row = measure(p, mode, timer, deadline, device)
                rec.write(type="row", case=key, dtype=dtype, params=params, flops=c.flops, bytes=c.bytes, **row)
                if row["status"] == "error" and not context_ok(device):
                    rec.write(type="context_lost", case=key, dtype=dtype, mode=mode, provider=p.key)
                    sys.exit(EXIT_CONTEXT_LOST)
        rec.write(type="unit_end", case=key, dtype=dtype)
        del provs
        _free(device)


def run_warm(spec, rec):
    device, tiny, deadline = spec["device"], spec["tiny"], spec["deadline"]
    for key, dtype in spec["units"]:
        case = find_case(key)
        rec.write(type="unit_start", case=key, dtype=dtype)
        if time.time() > deadline:
            rec.write(type="warm", case=key, dtype=dtype, status="skipped", reason="budget", wall_s=0.0)
            continue
        t0 = time.perf_counter()
        try:
            provs = family(case.family).providers(case, dtype, device, case.resolved(tiny))
            for p in provs:
                if not p.jit or p.fn is None:
                    continue
                with provider_env(p):
                    for mode in MODES:
                        if not p.skip_reason(mode):
                            make_step(p, mode)()
                            if device == "cuda":
                                torch.cuda.synchronize()
                clear_grads(p)
            rec.write(type="warm", case=key, dtype=dtype, status="ok", wall_s=time.perf_counter() - t0)
            del provs
        except Exception as e:  # noqa: BLE001
            rec.write(type="warm", case=key, dtype=dtype, status="error", error=error_text(e),
                      wall_s=time.perf_counter() - t0, traceback=traceback.format_exc()[-3000:])
            if not context_ok(device):
                sys.exit(EXIT_CONTEXT_LOST)
        rec.write(type="unit_end", case=key, dtype=dtype)
        _free(device)


def make_timer(spec):
    t = spec.get("timer", {})
    if spec["device"] == "cuda":
        if spec["kind"] == "peaks":  # few, slow steps (a float32 8192^3 matmul is ~20 ms): a longer window
            return CudaTimer(25, max(200, t.get("rep_ms", 100)))
        return CudaTimer(t.get("warmup_ms", 25), t.get("rep_ms", 100))
    return CpuTimer(t.get("cpu_rep_ms", 30))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m rbfkern.gpucheck.worker SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    rec = Recorder(spec["results"])
    if spec["device"] == "cuda":
        torch.backends.cudnn.benchmark = True  # fair to the cuDNN peers: their first call searches
    kind = spec["kind"]
    if kind == "warm":
        run_warm(spec, rec)
    elif kind == "time":
        run_time(spec, rec, make_timer(spec))
    elif kind == "peaks":
        rec.write(type="peaks", peaks=peaks.measure(spec["device"], make_timer(spec), spec["tiny"]))
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    rec.write(type="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
