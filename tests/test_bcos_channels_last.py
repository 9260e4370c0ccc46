"""B-cos conv on channels-last inputs (what the official models' position norm hands the next layer):
every backend gives the reference's values and gradients; the outputs follow the input's layout
and each gradient its input's (as conv2d does, and as the ops' fakes say); the C++ backend runs
the NHWC epilogues and makes no activation-sized layout copy."""
import pytest
import torch

from rbfkern import reference
from rbfkern.nn import BcosConv2d
from rbfkern.ops import bcos_conv2d

from _util import assert_close_to_ref
from conftest import CPU_BACKENDS, CUDA, device_of

F64 = torch.float64
CL = torch.channels_last

# name: (N, C, H, W, O, k, stride, padding, dilation, groups, max_out)
GEOMS = {
    "3x3": (2, 8, 7, 9, 6, 3, 1, 1, 1, 1, 1),
    "maxout2": (2, 8, 7, 9, 6, 3, 1, 1, 1, 1, 2),
    "groups3_stride2_maxout3": (3, 12, 8, 8, 6, 3, 2, 1, 1, 3, 3),
    "depthwise": (2, 6, 9, 7, 6, 3, 1, 1, 1, 6, 1),
    "1x1": (2, 8, 6, 6, 4, 1, 1, 0, 1, 1, 1),
    "maxout5_dil2_stride2": (2, 8, 10, 11, 5, 3, 2, 2, 2, 1, 5),
    "k2_groups2_pad0": (1, 4, 5, 5, 4, 2, 1, 0, 1, 2, 2),
}
MODES = [(2.0, False), (2.5, False), (1.0, False), (2.0, True), (1.5, True)]  # (b, explain)


def _cases():
    """Every geometry x mode x dtype on the C++ and reference backends; on Triton (interpreted or
    on the device) float32 and two modes per geometry."""
    out = []
    for backend in ["cpp", "reference"] + [b for b in CPU_BACKENDS if b == "triton"] + [CUDA]:
        name = backend if isinstance(backend, str) else "cuda"
        modes = MODES if name in ("cpp", "reference") else MODES[1:4:2]
        dtypes = (torch.float32, F64) if name in ("cpp", "reference") else (torch.float32,)
        for geom in GEOMS:
            for b, explain in modes:
                for dtype in dtypes:
                    marks = backend.marks if not isinstance(backend, str) else ()
                    out.append(pytest.param(name, geom, b, explain, dtype, marks=marks,
                                            id=f"{name}-{geom}-b{b}-{'explain' if explain else 'train'}-"
                                               f"{str(dtype)[6:]}"))
    return out


def _inputs(geom, dtype, device, w_layout=torch.contiguous_format, seed=0):
    N, C, H, W, O, k, s, p, d, G, M = GEOMS[geom]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=F64)
    w = torch.randn(O * M, C // G, k, k, generator=g, dtype=F64)
    xl = x.to(device, dtype).contiguous(memory_format=CL).requires_grad_()
    wl = w.to(device, dtype).contiguous(memory_format=w_layout).requires_grad_()
    kw = {"max_out": M, "stride": s, "padding": p, "dilation": d, "groups": G}
    return x, w, xl, wl, kw


def _reference(x, w, gy, b, explain, kw):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = reference.bcos_conv2d(x, w, b, kw["max_out"], (kw["stride"],) * 2, (kw["padding"],) * 2,
                              (kw["dilation"],) * 2, kw["groups"], explain)
    return (y, *torch.autograd.grad(y, (x, w), gy))


@pytest.mark.parametrize("backend,geom,b,explain,dtype", _cases(), indirect=["backend"])
def test_channels_last_matches_reference_in_its_layout(backend, geom, b, explain, dtype):
    dev = device_of(backend)
    x, w, xl, wl, kw = _inputs(geom, dtype, dev)
    y = bcos_conv2d(xl, wl, b=b, explain=explain, **kw)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous(), f"y strides {y.stride()}"
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    gx, gw = torch.autograd.grad(y, (xl, wl), gy.to(dev, dtype).contiguous(memory_format=CL))
    assert gx.stride() == xl.stride() and gw.stride() == wl.stride(), (gx.stride(), gw.stride())
    want_y, want_gx, want_gw = _reference(x, w, gy, b, explain, kw)
    assert_close_to_ref(y, want_y, dtype, what="y")
    assert_close_to_ref(gx, want_gx, dtype, what="grad x", kind="reduction")
    assert_close_to_ref(gw, want_gw, dtype, what="grad w", kind="reduction")


@pytest.mark.parametrize("backend", ["cpp", "reference", CUDA], indirect=True)
@pytest.mark.parametrize("geom", ["maxout2", "groups3_stride2_maxout3", "1x1"])
def test_channels_last_weight_keeps_its_layout(backend, geom):
    # model.to(memory_format=torch.channels_last) stores the weight channels-last too: the C++
    # backend then hands it to oneDNN as it is, and its gradient comes back in that layout
    dev = device_of(backend)
    x, w, xl, wl, kw = _inputs(geom, F64, dev, w_layout=CL)
    y = bcos_conv2d(xl, wl, b=2.0, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    gx, gw = torch.autograd.grad(y, (xl, wl), gy.to(dev))
    assert gw.stride() == wl.stride() and gx.stride() == xl.stride()
    want_y, want_gx, want_gw = _reference(x, w, gy, 2.0, False, kw)
    for got, want, what in ((y, want_y, "y"), (gx, want_gx, "grad x"), (gw, want_gw, "grad w")):
        assert_close_to_ref(got, want, F64, what=what)


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("deterministic", [False, True])
def test_cpp_channels_last_batch_chunks(backend, monkeypatch, deterministic):
    # forward and backward a batch chunk (here one image) at a time into channels-last slices of
    # the outputs and of grad x; under torch.use_deterministic_algorithms the weight gradient is
    # the fixed-order NCHW loop
    from rbfkern.ops import bcos_cpp as ob
    x, w, xl, wl, kw = _inputs("groups3_stride2_maxout3", F64, "cpu")
    N, O, M = x.shape[0], w.shape[0] // kw["max_out"], kw["max_out"]
    monkeypatch.setattr(ob, "_CHUNK_BYTES", O * M * 4 * 4 * 8)  # one image's raw map (4 x 4 outputs)
    geo = ob.common.BcosGeometry.of_conv(xl, wl, M, [2, 2], [1, 1], [1, 1], 3)
    assert len(ob._batch_chunks(geo, 8)) == N
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        y = bcos_conv2d(xl, wl, b=2.5, **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        gx, gw = torch.autograd.grad(y, (xl, wl), gy)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert gx.is_contiguous(memory_format=CL) and y.is_contiguous(memory_format=CL)
    want_y, want_gx, want_gw = _reference(x, w, gy, 2.5, False, kw)
    for got, want, what in ((y, want_y, "y"), (gx, want_gx, "grad x"), (gw, want_gw, "grad w")):
        assert_close_to_ref(got, want, F64, what=what)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
@pytest.mark.parametrize("b,explain", [(2.0, False), (2.5, False), (1.0, False)])
def test_gradcheck_channels_last(backend, b, explain):
    dev = device_of(backend)
    _, _, xl, wl, kw = _inputs("k2_groups2_pad0", F64, dev, w_layout=CL, seed=4)
    assert torch.autograd.gradcheck(lambda a, c: bcos_conv2d(a, c, b=b, explain=explain, **kw), (xl, wl),
                                    eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", ["cpp", CUDA], indirect=True)
def test_opcheck_channels_last(backend):
    # the fakes must give the real outputs' strides (channels-last y, lmax, idx, root; grads in
    # their inputs' layouts), or torch.compile would plan for the wrong layout
    dev = device_of(backend)
    _, _, xl, wl, kw = _inputs("groups3_stride2_maxout3", F64, dev)
    conv = ([2, 2], [1, 1], [1, 1], 3)
    for rg in (False, True):
        xa, wa = xl.detach().clone().requires_grad_(rg), wl.detach().clone().requires_grad_(rg)
        torch.library.opcheck(torch.ops.rbfkern.bcos_conv2d.default, (xa, wa, 2.5, 3, *conv, False, True))
    x, w = xl.detach(), wl.detach().contiguous(memory_format=CL)
    y, lmax, idx, root = torch.ops.rbfkern.bcos_conv2d(x, w, 2.5, 3, *conv, False, True)
    assert all(t.is_contiguous(memory_format=CL) for t in (y, lmax, idx, root))
    torch.library.opcheck(torch.ops.rbfkern.bcos_conv2d_bwd.default,
                          (torch.ones_like(y), x, w, lmax, idx, root, 2.5, 3, *conv, False, [True, True]))


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
def test_compile_channels_last(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(BcosConv2d(6, 4, 3, padding=1, max_out=2), BcosConv2d(4, 4, 3, stride=2, b=1.5))
    model = model.to(memory_format=CL)
    x = torch.rand(2, 6, 6, 6).contiguous(memory_format=CL)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = model(x), compiled(x)
    assert y_comp.stride() == y_eager.stride() and y_eager.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y_comp, y_eager)
    for a, c in zip(torch.autograd.grad(y_comp.sum(), list(model.parameters())),
                    torch.autograd.grad(y_eager.sum(), list(model.parameters()))):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("backend", ["cpp"], indirect=True)
@pytest.mark.parametrize("max_out", [1, 2])
def test_cpp_channels_last_makes_no_activation_copy(backend, max_out):
    # the point of the NHWC path: no copy of x, y, the raw map or their gradients (the weight,
    # a few KiB, may still be reordered by oneDNN)
    from torch.profiler import profile
    x = torch.randn(4, 8, 10, 10).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(6 * max_out, 8, 3, 3, requires_grad=True)
    with profile(record_shapes=True) as prof:
        y = bcos_conv2d(x, w, max_out=max_out, padding=1)
        y.backward(torch.randn_like(y))
    big = {(4, 8, 10, 10), (4, 6, 10, 10), (4, 6 * max_out, 10, 10)}
    copies = [(e.name, e.input_shapes) for e in prof.events()
              if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")
              and any(tuple(s) in big for s in e.input_shapes if s)]
    assert copies == [], copies


def _weight_grad_formula(w, g):
    """gW = g - W <g, W> / <W, W> per filter, in float64."""
    w, g = w.double().flatten(1), g.double().flatten(1)
    return g - w * ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True))


def _weight_grad_cases():
    shapes = {"3x3": (6, 4, 3, 3), "2x3": (5, 3, 2, 3), "one_channel": (4, 1, 3, 3), "1x1": (6, 8, 1, 1),
              "parallel": (300, 64, 3, 3), "linear": (7, 5)}
    out = []
    for name, shape in shapes.items():
        for w_layout in ("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",):
            for g_layout in ("weight's", "other", "strided") if len(shape) == 4 else ("weight's", "strided"):
                for dtype in (torch.float32, F64):
                    out.append(pytest.param(w_layout, g_layout, shape, dtype,
                                            id=f"{name}-w_{w_layout}-g_{g_layout}-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize("w_layout,g_layout,shape,dtype", _weight_grad_cases())
def test_cpp_weight_grad_reads_either_layout(w_layout, g_layout, shape, dtype):
    # the unit-weight backward takes the raw map's weight gradient in the weight's layout or in the
    # other one as it is (oneDNN hands a channels-last input's weight gradient back channels-last
    # whatever the weight's layout), and anything else through a copy: the formula's values, the
    # same bits in every case, returned in the weight's layout
    from rbfkern.ops import bcos_cpp as ob
    gen = torch.Generator().manual_seed(5)
    fmt = {"contiguous": torch.contiguous_format, "channels_last": CL}
    w = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=fmt[w_layout])
    g0 = torch.randn(shape, generator=gen, dtype=dtype)
    other = "channels_last" if w_layout == "contiguous" else "contiguous"

    def g_in_layout():  # _weight_grad writes over its gradient argument: a fresh copy of g0 each call
        if g_layout == "strided":
            return torch.empty(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2].copy_(g0)
        return g0.clone(memory_format=fmt[w_layout if g_layout == "weight's" else other])

    want_bits = ob._weight_grad(w, g0.clone(memory_format=fmt[w_layout]))
    got = ob._weight_grad(w, g_in_layout())
    assert got.shape == w.shape and got.stride() == w.stride(), (got.stride(), w.stride())
    assert torch.equal(got, want_bits)
    prev = torch.get_num_threads()
    try:  # the rows split between two threads (the "parallel" case) or not: the same bits
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(ob._weight_grad(w, g_in_layout()), got), f"{threads} threads"
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(got.double().flatten(1), _weight_grad_formula(w, g0),
                               **({"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}))
