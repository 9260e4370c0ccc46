"""Shared test helpers: tolerance table, readable comparisons."""
import torch

# (rtol, atol) per dtype for results compared with a float64 reference of the same inputs.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def assert_close_to_ref(got, want64, dtype, scale=None, what=""):
    """Compare ``got`` (any dtype) with a float64 reference, tolerances scaled by the reference's size."""
    rtol, atol = TOL[dtype]
    want = want64.to(torch.float64)
    got = got.to(torch.float64)
    if scale is None:
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    err = (got - want).abs()
    bound = atol * scale + rtol * want.abs()
    if err.numel() and not bool((err <= bound).all()):
        idx = int((err - bound).argmax())
        raise AssertionError(
            f"{what}: max abs err {float(err.max()):.3g} (at flat {idx}: got {float(got.flatten()[idx]):.10g}, "
            f"want {float(want.flatten()[idx]):.10g}); rtol={rtol}, atol={atol}*{scale:.3g}"
        )
    assert torch.isfinite(got).all() == torch.isfinite(want).all(), f"{what}: finiteness differs"
