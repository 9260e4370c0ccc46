"""The C++ tril backward takes the centres in groups (csrc/cpu/rbf_kernels.h: at most 256 per
group, fewer where the per-chunk partial sums would pass their memory bound), so it works at every
size with one code path. With more centres than one group and more than one chunk of rows, every
gradient matches the reference and does not depend on the thread count."""
import pytest
import torch

from rbfkern import ops, reference

from _util import assert_bitwise, assert_close_to_ref, run_case

N, C, D = 600, 300, 5  # 600 rows: two chunks of row blocks; 300 centres: two groups


def _case(dtype, shared):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    c = torch.randn(C, D, generator=g, dtype=torch.float64)
    m = 1 if shared else C
    L = torch.tril(torch.randn(m, D, D, generator=g, dtype=torch.float64)) * 0.3 + torch.eye(D, dtype=torch.float64)
    sigma = torch.rand(C, generator=g, dtype=torch.float64) + 1.0
    return [t.to(dtype) for t in (x, c, L[0] if shared else L, sigma)]


def _rbf(x, c, L, s):
    return ops.rbf(x, c, tril=L, sigma=s, kind="gaussian")


def _ref(x, c, L, s):
    return reference.rbf(x, c, tril=L, sigma=s, kind="gaussian")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_centre", "shared"])
def test_tril_backward_in_centre_groups(dtype, shared, monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    tensors = _case(dtype, shared)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = run_case(_rbf, tensors)
        torch.set_num_threads(1)
        assert_bitwise(run_case(_rbf, tensors), got, "1 thread vs 2 threads")
    finally:
        torch.set_num_threads(before)
    want = run_case(_ref, [t.double() for t in tensors])
    for what, a, b in zip(["act", "grad x", "grad centers", "grad tril", "grad sigma"], got, want):
        assert_close_to_ref(a, b, dtype, what=what)
