"""Ahead-of-time compile every Triton kernel for real GPUs (no GPU needed).

    python -m rbfkern.gpu.aot [--arch 80 90] [--jobs N] [--family rbf ...]

Each family module ``rbfkern.gpu.<family>`` exposes ``aot_specs()`` -> list of
``(name, kernel_fn, signature, constexprs, options)``. Every spec is compiled with the real
Triton compiler (ttir -> ttgir -> llir -> ptx -> cubin via the bundled ptxas) for each arch, and
one line per kernel and arch reports registers, spills (from ``cuobjdump --dump-resource-usage``
on the cubin, as ``n_regs`` needs a driver) and shared memory (``metadata.shared``). Exits
non-zero if any compile fails. Families whose module does not exist yet are skipped.

The interpreter replaces ``@triton.jit`` functions, so when ``TRITON_INTERPRET`` is set this
re-runs itself in a child process with it removed.
"""
import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

FAMILIES = ("rbf", "bcos", "gauss_deriv")
_INTERP_VARS = ("TRITON_INTERPRET",)


def _load_family(family):
    """The family module, or None when it does not exist (yet)."""
    modname = f"rbfkern.gpu.{family}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return None
        raise


def _resource_usage(cubin):
    """(registers, spill bytes) of the one kernel in a cubin, or (None, None). ptxas puts register
    spills in the stack frame (STACK), local arrays in LOCAL: the larger of the two is reported."""
    import triton.backends.nvidia as nv
    tool = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    spill = [int(v) for v in re.findall(r"(?:STACK|LOCAL):(\d+)", out)]
    return (int(m.group(1)), max(spill, default=0)) if m else (None, None)


def _compile_one(job):
    """Compile spec `idx` of `family` for `arch`; returns a result dict (never raises)."""
    family, idx, arch = job
    t0 = time.perf_counter()
    name = f"{family}[{idx}]"
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        name, fn, signature, constexprs, options = _load_family(family).aot_specs()[idx]
        src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
        regs, local = _resource_usage(ck.asm["cubin"])
        return dict(ok=True, family=family, name=name, arch=arch, regs=regs, local=local,
                    shared=ck.metadata.shared, secs=time.perf_counter() - t0)
    except Exception as e:  # report and go on: one line per failure, non-zero exit at the end
        return dict(ok=False, family=family, name=name, arch=arch, secs=time.perf_counter() - t0,
                    error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rbfkern.gpu.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities")
    ap.add_argument("--family", nargs="+", default=list(FAMILIES), help="families to compile")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    args = ap.parse_args(argv)

    if any(os.environ.get(v, "0") not in ("", "0") for v in _INTERP_VARS):
        env = {k: v for k, v in os.environ.items() if k not in _INTERP_VARS}
        return subprocess.run([sys.executable, "-m", "rbfkern.gpu.aot", *(argv if argv is not None else sys.argv[1:])],
                              env=env).returncode

    t0 = time.perf_counter()
    jobs = []
    for family in args.family:
        mod = _load_family(family)
        if mod is None:
            print(f"skip   {family:<34} (no module rbfkern.gpu.{family})")
            continue
        n = len(mod.aot_specs())
        jobs += [(family, i, arch) for i in range(n) for arch in args.arch]
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            results = list(ex.map(_compile_one, jobs))
    else:
        results = [_compile_one(j) for j in jobs]

    failed = 0
    for r in results:
        if r["ok"]:
            print(f"ok     {r['name']:<34} sm_{r['arch']}  regs {r['regs']!s:>4}  spill {r['local']!s:>4} B"
                  f"  smem {r['shared']:>6} B  {r['secs']:5.1f} s")
        else:
            failed += 1
            print(f"FAIL   {r['name']:<34} sm_{r['arch']}  {r['error']}")
    print(f"{len(results) - failed}/{len(results)} compiled in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
