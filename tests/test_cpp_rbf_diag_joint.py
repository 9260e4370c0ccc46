"""The C++ diag backward's one-pass form (csrc/cpu/rbf_bwd_joint.h) runs where gx and a centre
gradient are asked for and there are at least 1024 rows; it splits the rows into chunks and the
centres into groups (at most 1024 per group). On shapes that cross each of those lines, with row,
centre and feature tails, every gradient matches the reference, whichever subset is asked for,
and does not depend on the thread count."""
import pytest
import torch
from _util import assert_bitwise, assert_close_to_ref, run_tests_under_isa

from rbfkern import ops, reference

# (N, C, D): rows below and at the line; one group with a centre tail; two groups (1100 > 1024
# centres) with rows not a multiple of the 8-row micro-kernel or the 128-row block.
SHAPES = [(1023, 9, 20), (1024, 9, 20), (1030, 37, 40), (1100, 1101, 5)]
NEEDS = {"all": (True, True, True, True), "x_c": (True, True, False, False), "x_w": (True, False, True, False),
         "x_c_sigma": (True, True, False, True)}


def _case(n, c, d, shared, dtype):
    g = torch.Generator().manual_seed(n + c + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    cen = torch.randn(c, d, generator=g, dtype=torch.float64)
    w = torch.rand(d if shared else (c, d), generator=g, dtype=torch.float64) + 0.5
    sigma = torch.rand(c, generator=g, dtype=torch.float64) + 2.0
    gy = torch.randn(n, c, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, cen, w, sigma)], gy.to(dtype)


def _grads(fn, tensors, gy, needs):
    leaves = [t.detach().clone().requires_grad_(need) for t, need in zip(tensors, needs)]
    y = fn(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    return [y.detach()] + list(torch.autograd.grad(y, wanted, gy))


def _rbf(x, c, w, s):
    return ops.rbf(x, c, diag=w, sigma=s, kind="gaussian")


def _ref(x, c, w, s):
    return reference.rbf(x, c, diag=w, sigma=s, kind="gaussian")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_centre", "shared"])
@pytest.mark.parametrize("needs", list(NEEDS), ids=list(NEEDS))
@pytest.mark.parametrize("n,c,d", SHAPES, ids=[f"{n}x{c}x{d}" for n, c, d in SHAPES])
def test_cpp_diag_backward_matches_reference(n, c, d, needs, shared, dtype, monkeypatch):
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    tensors, gy = _case(n, c, d, shared, dtype)
    need = NEEDS[needs]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = _grads(_rbf, tensors, gy, need)
        torch.set_num_threads(1)
        assert_bitwise(_grads(_rbf, tensors, gy, need), got, "1 thread vs 2 threads")
    finally:
        torch.set_num_threads(before)
    want = _grads(_ref, [t.double() for t in tensors], gy.double(), need)
    names = ["act"] + [nm for nm, k in zip(["grad x", "grad centers", "grad diag", "grad sigma"], need) if k]
    for what, a, b in zip(names, got, want):
        assert_close_to_ref(a, b, dtype, what=what)


@pytest.mark.parametrize("rows", ["on_centres", "non_finite"])
def test_cpp_diag_backward_special_rows(rows, monkeypatch):
    """Rows on a centre (zero differences) keep every gradient finite; a row with an inf or a NaN
    spoils its own grad x and the centre sums, as in the reference, and no other row's grad x."""
    monkeypatch.setenv("RBFKERN_BACKEND", "cpp")
    (x, c, w, s), gy = _case(1030, 37, 40, False, torch.float32)
    x = x.clone()
    if rows == "on_centres":
        x[::3] = c[torch.arange(0, 1030, 3) % 37]
    else:
        x[5, 3] = float("inf")
        x[700, 0] = float("nan")
    got = _grads(_rbf, [x, c, w, s], gy, (True, True, True, True))
    want = _grads(_ref, [t.double() for t in (x, c, w, s)], gy.double(), (True, True, True, True))
    for what, a, b in zip(["act", "grad x", "grad centers", "grad diag", "grad sigma"], got, want):
        assert torch.equal(a.isfinite(), b.isfinite()), what
        fin = b.isfinite()
        assert_close_to_ref(a[fin], b[fin], torch.float32, what=what)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_cpp_diag_backward_other_instruction_sets(isa):
    run_tests_under_isa(isa, __file__, "test_cpp_diag_backward_matches_reference or test_cpp_diag_backward_special")
