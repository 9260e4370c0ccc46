"""compute-sanitizer over one call of every kernel (issue 15):
``python -m rbfkern.gpucheck.sanitize --out DIR [--tool memcheck racecheck] [--timeout S]``.

Each tool runs a child (``--child``) under ``compute-sanitizer --tool T --error-exitcode 3``. The
child calls every case of :mod:`rbfkern.gpucheck.op_calls` once on small CUDA tensors: each op
forward and backward (every metric / kind / MaxOut / B / rank, both Gaussian-derivative paths),
every layer's training step, in the dtypes asked for, so every Triton kernel launches at least
once. PyTorch's caching allocator is off in the child (``PYTORCH_NO_CUDA_MEMORY_CACHING=1``): each
tensor is then its own allocation, and a read past a tensor's end is past an allocation, which
memcheck sees. The tool's output goes to DIR/sanitize-<tool>.log, a summary to DIR/sanitize.json;
the exit status is 0 only when every tool ran every case and reported no error.

Without a GPU or without compute-sanitizer it says which and exits 2. ``--rehearse`` runs the
child on CPU tensors through the interpreted kernels, without a sanitizer (what CI checks).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DONE = "@@sanitize-cases-done"


def _inputs(shapes, dtype, device, grad):
    import torch

    gen = torch.Generator().manual_seed(0)
    # positive values: valid for every argument (sigma, diag, the scales)
    return [None if s is None else
            (torch.rand(s, generator=gen, dtype=torch.float64) + 0.5).to(device, dtype).requires_grad_(grad)
            for s in shapes]


def run_cases(device: str, dtypes: list[str], names: list[str] | None = None) -> int:
    """Every case (or those named) once per dtype and Gaussian-derivative path; returns the count."""
    import torch

    from .op_calls import CASES, GD_PATHS

    count = 0
    for name in sorted(names or CASES):
        make, params = CASES[name]
        layer = name.startswith("layer/")
        for path in GD_PATHS if name.startswith(("gauss", "layer/Gauss")) else ("auto",):
            os.environ["RBFKERN_GD_PATH"] = path
            for dt in dtypes:
                dtype = getattr(torch, dt)
                shapes, step = make(dtype, device) if layer else make(*params)
                step(*_inputs(shapes, dtype, device, layer))
                if device == "cuda":
                    torch.cuda.synchronize()  # a fault surfaces at its case
                print(f"ok {name} {path} {dt}", flush=True)
                count += 1
    os.environ.pop("RBFKERN_GD_PATH", None)
    print(f"{DONE} {count}", flush=True)
    return count


def _sanitizer() -> str | None:
    fallback = "/usr/local/cuda/bin/compute-sanitizer"
    return shutil.which("compute-sanitizer") or (fallback if os.path.exists(fallback) else None)


def _child_cmd(dtypes, names) -> list[str]:
    cmd = [sys.executable, "-m", "rbfkern.gpucheck.sanitize", "--child", "--dtypes", *dtypes]
    return cmd + (["--cases", *names] if names else [])


def _run_tool(exe, tool, args, out: Path) -> dict:
    log = out / f"sanitize-{tool}.log"
    cmd = [exe, "--tool", tool, "--error-exitcode", "3", "--print-limit", "50", *_child_cmd(args.dtypes, args.cases)]
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for k in ("TRITON_INTERPRET", "RBFKERN_BACKEND"):
        env.pop(k, None)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    log.write_text("$ " + " ".join(cmd) + "\n" + text)
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    done = re.search(DONE + r" (\d+)", text)
    return {"tool": tool, "rc": rc, "timed_out": rc is None, "errors": int(summary[-1]) if summary else None,
            "cases_run": int(done.group(1)) if done else sum(ln.startswith("ok ") for ln in text.splitlines()),
            "all_cases": bool(done), "wall_s": round(time.time() - t0, 1), "log": log.name,
            "clean": rc == 0 and bool(done) and bool(summary) and int(summary[-1]) == 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rbfkern.gpucheck.sanitize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("sanitize-out"))
    ap.add_argument("--tool", nargs="+", default=["memcheck", "racecheck"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float64"])
    ap.add_argument("--cases", nargs="+", default=None, help="case names of rbfkern.gpucheck.op_calls (default all)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per tool")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--rehearse", action="store_true", help="the child on CPU through the interpreter, no sanitizer")
    args = ap.parse_args(argv)
    if args.child:
        import rbfkern  # noqa: F401  (registers the ops)

        run_cases(args.device, args.dtypes, args.cases)
        return 0
    if args.rehearse:
        env = dict(os.environ, TRITON_INTERPRET="1", RBFKERN_BACKEND="triton")
        proc = subprocess.run(_child_cmd(args.dtypes, args.cases) + ["--device", "cpu"], env=env, check=False,
                              capture_output=True, text=True, timeout=args.timeout)
        print(proc.stdout[-4000:] + proc.stderr[-4000:])
        return 0 if proc.returncode == 0 and DONE in proc.stdout else 1
    import torch

    exe = _sanitizer()
    if not torch.cuda.is_available() or exe is None:
        print("sanitize: " + ("no CUDA device" if not torch.cuda.is_available() else "compute-sanitizer not found"))
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for tool in args.tool:
        r = _run_tool(exe, tool, args, args.out)
        results.append(r)
        print(f"sanitize {tool}: {'clean' if r['clean'] else 'NOT CLEAN'} ({r['cases_run']} cases, "
              f"{r['errors']} errors, rc {r['rc']}, {r['wall_s']} s; {r['log']})", flush=True)
    (args.out / "sanitize.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results},
                                                       indent=1))
    return 0 if all(r["clean"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
