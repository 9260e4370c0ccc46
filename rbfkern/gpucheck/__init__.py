"""``python -m rbfkern gpucheck --out DIR [--quick | --full] [--dry-run | --rehearse]``: one prepared
check of the package on a CUDA device, sized for a short lease.

Steps (one subprocess each, so a CUDA fault in one cannot hide the others):

1. ``env``: device, driver, torch / triton / CUDA / cuDNN versions (printed and recorded);
2. ``tests``: the CUDA tests (``pytest -m "cuda and not slow"``, ``--full``: ``-m cuda``) under
   pytest-xdist with a JUnit XML report, in the background while step 3 runs;
3. ``warm``: every benchmark case's fused op run once in parallel subprocesses that share one
   ``TRITON_CACHE_DIR``, so the Triton JIT compiles (10-25 s each) happen on all cores at once;
4. ``peaks``: the device's rates measured in the run (bf16 matmul, float32 matmul with TF32 off
   and on, a device-to-device copy);
5. ``bench``: per family, serially, one subprocess each (restarted past a crash): the fused op vs
   the naive torch version vs the strongest peers, fwd and fwd+bwd, float32 and bfloat16, with
   ``triton.testing.do_bench`` medians and 20/80 % quantiles, TFLOP/s, GB/s and % of the measured
   peaks (the FLOP and byte models: :mod:`rbfkern.gpucheck.model`);
6. ``report``: ``DIR/gpucheck.json`` (schema: :mod:`rbfkern.gpucheck.report`) and ``DIR/gpucheck.md``.

A global budget (``--budget``) skips what no longer fits and records it as skipped. Exit code 0,
1 if a test failed or a fused op raised / crashed, 2 without CUDA (unless ``--dry-run`` or
``--rehearse``: the whole harness on CPU with tiny shapes and a CPU timer).
"""
from .cli import add_parser, main

__all__ = ["add_parser", "main"]
