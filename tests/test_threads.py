"""Issue 8, threads: every op called concurrently from 4 Python threads (forward and backward, the
C++ kernels release the GIL) gives bitwise the results of the same calls made serially."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from _util import assert_bitwise, op_cases, run_case

WORKERS = 4
ROUNDS = 3  # calls per op per thread


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_concurrent_calls_equal_serial(dtype, monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    cases = op_cases(dtype, seed=5, scale=2)
    names = sorted(cases)
    serial = {name: run_case(*cases[name]) for name in names}

    def work(k):
        # Each thread walks the ops from a different start, so different ops overlap in time.
        out = []
        for r in range(ROUNDS):
            for j in range(len(names)):
                name = names[(j + k + r) % len(names)]
                out.append((name, run_case(*cases[name])))
        return out

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(work, range(WORKERS)))
    assert sum(len(r) for r in results) == WORKERS * ROUNDS * len(names)
    for k, res in enumerate(results):
        for name, got in res:
            assert_bitwise(got, serial[name], f"{name} (thread {k})")
