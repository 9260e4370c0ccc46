"""The portable C99 RBF kernel (csrc/mcu) and its generator (rbfkern.mcu), issue 6.

One cases header holds every model of this file (all metric x activation forms, sine regression,
XOR, digits; float and q15) and their inputs; it is built ONCE per target (module fixture) and run
once per target (natively for ``host``, under QEMU with semihosting otherwise, always with a
timeout). Tests then compare those outputs with PyTorch float64 (rbfkern.reference), with the
host build bit for bit (f32), and with the documented q15 bound.

Targets whose toolchain or QEMU is absent are skipped with the missing package named, except when
``CI`` is set: CI must have them all (.ci/run installs them).
"""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from rbfkern import mcu
from rbfkern.mcu import builder as mbuild
from rbfkern.mcu import emit, extraction, quantize
from rbfkern.mcu import export as mexport
from rbfkern.mcu import runner as mrun
from rbfkern.mcu._paths import csrc_dir, library_sources
from rbfkern.mcu.toolchains import TARGETS, targets
from rbfkern.nn import RBF, RBFClassifier, RBFNetwork

RUNNABLE = [n for n, t in TARGETS.items() if t.runnable]
METRICS = ["none", "diag", "shared_diag", "full", "shared_full"]
KINDS = ["linear", "gaussian", "thin_plate", "logistic", "inverse_multiquadric", "multiquadric",
         "inverse_quadratic", "quadratic"]
SHAPES = {"logistic": 0.8, "inverse_multiquadric": 0.75, "multiquadric": 0.5}  # 0.5: the sqrt path
Q15_KINDS = ["gaussian", "inverse_quadratic", "quadratic"]
RUN_TIMEOUT = 120
ARRAY = re.compile(r"const (\w+) (\w+)\[(\d+)\] = \{(.*?)\};", re.S)  # one const array of a header
F32_RTOL = 1e-5

# the malformed-descriptor checks of csrc/mcu/targets/rbfk_harness.c and the status each must return
EXPECTED_ERRORS = {
    "ok": 0, "null_net": -1, "null_x": -1, "null_y": -1, "null_cls": -1, "zero_in_dim": -2, "zero_centers": -2,
    "neg_out_dim": -2, "huge_in_dim": -2, "null_centers": -1, "null_sigma": -1, "null_weight": -1,
    "null_metric": -3, "bad_metric": -3, "neg_metric": -3, "bad_kind": -4, "neg_sigma": -5, "zero_sigma": -5,
    "mean_without_scale": -1, "zero_scale": -6, "null_scratch": -1, "scratch_size_invalid": 0, "nan_input": -7,
    "q_ok": 0, "q_null_net": -1, "q_null_scratch": -1, "q_zero_in_dim": -2, "q_full_metric": -3,
    "q_neg_metric": -3, "q_unsupported_kind": -4, "q_neg_sigma": -5, "q_bad_shift": -6, "q_bad_frac": -6,
    "q_predict": 0,
}


def _skip_if_missing(name: str):
    missing = TARGETS[name].missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"target {name}: {', '.join(missing)} not installed, and CI must have every toolchain")
        pytest.skip(f"target {name}: {', '.join(missing)} not installed (apt-get install --no-install-recommends ...)")


# ------------------------------------------------------------------------------------------------
# models, built directly (no training), deterministic
# ------------------------------------------------------------------------------------------------

def _grid_model(metric: str, kind: str, seed: int, d: int = 3, c: int = 5, k: int = 2):
    g = torch.Generator().manual_seed(seed)
    rbf = RBF(d, c, metric=metric, kind=kind, shape=SHAPES.get(kind, 0.5), dtype=torch.float64)
    with torch.no_grad():
        rbf.set_centers(torch.randn(c, d, generator=g, dtype=torch.float64))
        rbf.set_sigma(0.8 + 1.2 * torch.rand(c, generator=g, dtype=torch.float64))
        lead = () if metric.startswith("shared") else (c,)
        if metric in ("diag", "shared_diag"):
            rbf.set_diag(0.3 + torch.rand(*lead, d, generator=g, dtype=torch.float64))
        elif metric in ("full", "shared_full"):
            low = torch.tril(0.4 * torch.randn(*lead, d, d, generator=g, dtype=torch.float64), -1)
            rbf.set_tril(low + torch.diag_embed(0.5 + torch.rand(*lead, d, generator=g, dtype=torch.float64)))
    lin = nn.Linear(c, k, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, c, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64))
    return rbf, lin


def _grid_inputs(model, seed: int, n: int = 6):
    g = np.random.default_rng(seed)
    rbf = model[0]
    X = 1.5 * g.standard_normal((n, rbf.in_features))
    X[0] = rbf.centers.detach().numpy()[1].astype(np.float32)  # exactly on a centre: r2 = 0
    return X


@pytest.fixture(scope="module")
def models():
    """name -> (model, X, dtype). Fitting RBFNetwork runs on the reference backend (no C++ needed)."""
    from rbfkern.mcu.reporting import digits_model

    out = {}
    seed = 0
    for metric in METRICS:
        for kind in KINDS:
            m = _grid_model(metric, kind, seed)
            out[f"g_{metric}_{kind}"] = (m, _grid_inputs(m, seed), "f32")
            seed += 1
    for metric in mexport.Q15_METRICS:
        for kind in Q15_KINDS:
            m = _grid_model(metric, kind, seed)
            out[f"q_{metric}_{kind}"] = (m, _grid_inputs(m, seed, 10), "q15")
            seed += 1
    # large metric weights and outputs: negative fractional bits (LSB > 1) in the q15 formats
    big_rbf, big_lin = _grid_model("diag", "gaussian", seed)
    with torch.no_grad():
        big_rbf.set_diag(big_rbf.diag_weights() * 1e5)
        big_rbf.set_sigma(big_rbf.sigma_values() * 300)
        big_lin.weight.mul_(1e4)
        big_lin.bias.mul_(1e4)
    out["q_big"] = ((big_rbf, big_lin), _grid_inputs((big_rbf, big_lin), seed, 10), "q15")
    out["big"] = ((big_rbf, big_lin), _grid_inputs((big_rbf, big_lin), seed, 10), "f32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RBFKERN_BACKEND", "reference")
        torch.manual_seed(0)
        # the TinyML text's regression example: a noisy sine, standardised input
        x = torch.linspace(0, 2 * np.pi, 60, dtype=torch.float64)[:, None]
        y = torch.sin(x[:, 0]) + 0.05 * torch.randn(60, dtype=torch.float64)
        sine = RBFNetwork(10, kind="gaussian", task="regression", standardize=True).fit(x, y)
        xs = np.linspace(-0.5, 7.0, 9)[:, None]
        out["sine"] = (sine, xs, "f32")
        out["sine_q"] = (sine, xs, "q15")
        # XOR with a per-centre full metric
        pts = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], dtype=torch.float64)
        X = pts.repeat(10, 1) + 0.1 * torch.randn(40, 2, dtype=torch.float64)
        xor = RBFNetwork(4, kind="gaussian", metric="full", centers=pts, task="classification").fit(
            X, torch.tensor([0, 1, 1, 0]).repeat(10))
        out["xor"] = (xor, X[:8].numpy(), "f32")
    digits, Xd, _ = digits_model()
    out["digits"] = (digits, Xd[::150], "f32")
    out["digits_q"] = (digits, Xd[::150], "q15", Xd)  # calibration: the whole data set
    # the classifier head alone (embeddings in, logits out)
    head = RBFClassifier(4, 6, 3, metric="shared_diag", kind="inverse_quadratic", dtype=torch.float64)
    out["head"] = (head, np.random.default_rng(5).standard_normal((5, 4)), "f32")
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("mcu")


@pytest.fixture(scope="module")
def exported(models, work):
    """Export every model, write the one cases header. name -> Export; the case order."""
    exps, f32, q15 = {}, [], []
    for name, entry in models.items():
        model, X, dtype = entry[:3]
        calib = entry[3] if len(entry) > 3 else (X if dtype == "q15" else None)
        ex = mexport.export_c(model, work / f"{name}.h", name=name, dtype=dtype, calib=calib)
        exps[name] = ex
        (f32 if dtype == "f32" else q15).append((ex, X))
    hdr = mbuild.write_cases_header(work / "rbfk_cases_all.h", f32, q15)
    order = {"f32": [e.name for e, _ in f32], "q15": [e.name for e, _ in q15]}
    inputs = {e.name: X for e, X in f32 + q15}
    return {"exports": exps, "header": hdr, "order": order, "inputs": inputs}


_RESULTS: dict = {}


def _result(name: str, exported, work):
    """Build (cached) and run the all-cases harness on one target; once per session."""
    _skip_if_missing(name)
    if name not in _RESULTS:
        b = mbuild.build(name, exported["header"], work)
        _RESULTS[name] = (b, mrun.run_build(b, timeout=RUN_TIMEOUT))
    return _RESULTS[name]


def _f32_scale(p: mexport.NetParams, X):
    """Per-output magnitude of the terms summed: |b| + sum_j |W_kj| (|h_j| + |r2_j h'(r2_j)|).

    Float32 rounding of r2 (relative, ~D eps) moves h_j by r2 h'(r2); the output sum is as
    accurate as the sum of its terms' magnitudes, so 1e-5 relative is measured against this.
    """
    from rbfkern import reference

    x = torch.as_tensor(p.standardise(X), dtype=torch.float64)
    t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    r2 = reference.rbf_r2(x, t(p.centers), t(p.diag), t(p.tril))
    s = t(p.sigma)
    h = reference.rbf_activation(r2, p.kind, s, p.shape)
    dh = (reference.rbf_activation(r2 * (1 + 1e-6), p.kind, s, p.shape)
          - reference.rbf_activation(r2 * (1 - 1e-6), p.kind, s, p.shape)) / 2e-6
    hs = (h.abs() + dh.abs()).numpy()
    return hs @ np.abs(p.weight).T + (np.abs(p.bias) if p.bias is not None else 0.0)


# ------------------------------------------------------------------------------------------------
# targets and toolchains
# ------------------------------------------------------------------------------------------------

def test_targets_listed():
    names = targets()
    assert "host" in names
    assert set(names) <= set(RUNNABLE)
    assert set(targets(runnable_only=False)) >= set(names)
    for n, t in TARGETS.items():
        assert t.cmake_toolchain is None or (csrc_dir() / "targets" / t.cmake_toolchain).is_file(), n


@pytest.mark.parametrize("name", list(TARGETS))
def test_library_compiles_warning_free(name):
    """Every compiler: -std=c99 -Wall -Wextra -Werror -pedantic -ffp-contract=off (+ -Wdouble-promotion)."""
    t = TARGETS[name]
    if any(not m.startswith("qemu") for m in t.missing()):
        _skip_if_missing(name)  # the compiler or its C library is absent (QEMU is not needed here)
    cmd = [t.cc] + t.compile_flags() + (["-ffreestanding"] if t.mode == "compile" else []) + [
        "-fsyntax-only", "-I", str(csrc_dir())] + [str(f) for f in library_sources()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if t.mode != "compile":  # the libm build option (math.h is there)
        r = subprocess.run(cmd + ["-DRBFK_USE_LIBM"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stderr == "", r.stderr


def test_xtensa_compile_only(work):
    """ESP8266 (lx106): compile-only (Debian's lx106 libgcc lacks the soft-float routines to link)."""
    _skip_if_missing("xtensa-lx106")
    b = mbuild.build("xtensa-lx106", None, work)
    sz = mbuild.size_of(b)
    assert sz["text"] > 0 and len(b.objects) == len(library_sources())


# ------------------------------------------------------------------------------------------------
# every target: self-test, float, q15
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RUNNABLE)
def test_selftest_and_exit_status(name, exported, work):
    b, res = _result(name, exported, work)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.failures == 0
    assert res.errors == EXPECTED_ERRORS  # malformed descriptors: error codes, no crash
    assert set(res.math) == {"exp", "log", "sqrt", "pow", "exp2q15"}


@pytest.mark.parametrize("name", RUNNABLE)
def test_f32_matches_float64(name, exported, work):
    _, res = _result(name, exported, work)
    worst = []
    for i, cname in enumerate(exported["order"]["f32"]):
        ex = exported["exports"][cname]
        X = exported["inputs"][cname]
        assert res.statuses("f32", i) == [0] * len(X), cname
        y = res.f32_outputs(i).astype(np.float64)
        ref = ex.params.reference(X)
        err = np.abs(y - ref) / _f32_scale(ex.params, X)
        worst.append((float(err.max()), cname))
        assert err.max() <= F32_RTOL, f"{cname}: {err.max():.3g} relative (to the summed magnitudes)"
    assert len(worst) == len(exported["order"]["f32"])


@pytest.mark.parametrize("name", [n for n in RUNNABLE if n != "host"])
def test_f32_bit_identical_to_host(name, exported, work):
    _, host = _result("host", exported, work)
    _, res = _result(name, exported, work)
    assert res.math == host.math  # the exp/log/sqrt/pow/exp2 sweeps
    for i, cname in enumerate(exported["order"]["f32"]):
        np.testing.assert_array_equal(res.f32_outputs(i).view(np.uint32), host.f32_outputs(i).view(np.uint32),
                                      err_msg=cname)
    for i, cname in enumerate(exported["order"]["q15"]):
        np.testing.assert_array_equal(res.q15_outputs(i), host.q15_outputs(i), err_msg=cname)


@pytest.mark.parametrize("name", RUNNABLE)
def test_q15_within_documented_bound(name, exported, work):
    _, res = _result(name, exported, work)
    for i, cname in enumerate(exported["order"]["q15"]):
        ex = exported["exports"][cname]
        X = exported["inputs"][cname]
        q = ex.q15
        yq = res.q15_outputs(i)
        np.testing.assert_array_equal(yq, q.simulate(X), err_msg=f"{cname}: C != bit-exact Python model")
        y = q.dequantize_outputs(yq)
        ref = ex.params.reference(X)
        bound = mexport.q15_error_bound(q, X)
        assert np.all(np.isfinite(bound)), cname
        assert np.all(np.abs(y - ref) <= bound), f"{cname}: err {np.abs(y - ref).max():.3g} > bound {bound.min():.3g}"


def test_q15_digits_accuracy(exported):
    """The documented bound is useful: digits q15 predicts the float class on the calibration set."""
    ex = exported["exports"]["digits_q"]
    from rbfkern.mcu.reporting import digits_model

    _, X, _ = digits_model()
    X = X[::7]
    yq = ex.q15.dequantize_outputs(ex.q15.simulate(X))
    ref = ex.params.reference(X)
    assert (yq.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert ex.quant_report["calib_max_abs_err"] <= ex.quant_report["calib_max_bound"]


# ------------------------------------------------------------------------------------------------
# host-only: sanitizers, math accuracy
# ------------------------------------------------------------------------------------------------

def test_host_asan_ubsan(exported, work):
    _skip_if_missing("host")
    b = mbuild.build("host", exported["header"], work, sanitize=True)
    res = mrun.run_build(b, timeout=RUN_TIMEOUT)
    assert res.returncode == 0 and "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr, res.stderr
    _, plain = _result("host", exported, work)
    for i in range(len(exported["order"]["f32"])):
        np.testing.assert_array_equal(res.f32_outputs(i).view(np.uint32), plain.f32_outputs(i).view(np.uint32))
    assert res.errors == EXPECTED_ERRORS


def test_math_accuracy(work):
    """The accuracy documented in rbfk.h, measured against libm double."""
    _skip_if_missing("host")
    exe = work / "mathcheck"
    src = csrc_dir()
    subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-I", str(src), str(src / "targets" / "rbfk_mathcheck.c")] + [str(f) for f in library_sources()]
                   + ["-lm", "-o", str(exe)], check=True, timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=120).stdout
    vals = {ln.split()[0]: float(ln.split()[1]) for ln in out.splitlines()}
    assert vals["sqrt_incorrect"] == 0
    assert vals["exp_rel"] < 1.5e-7
    assert vals["log_abs_0.5_2"] < 1e-7
    assert vals["log_rel"] < 1.5e-7
    assert vals["pow_rel_per_bound"] < 2e-7
    assert vals["exp2q15_lsb"] < 1.2


# ------------------------------------------------------------------------------------------------
# instruction counting (QEMU plugin)
# ------------------------------------------------------------------------------------------------

def test_instruction_count_deterministic(exported, work):
    name = next((n for n in ("cortex-m4f", "rv32imafc", "cortex-m0", "rv32imc") if TARGETS[n].available), None)
    if name is None:
        _skip_if_missing("cortex-m4f")
    b, _ = _result(name, exported, work)
    a = mrun.run_build(b, timeout=RUN_TIMEOUT, count=True)
    c = mrun.run_build(b, timeout=RUN_TIMEOUT, count=True)
    assert a.counts == c.counts
    n_inf = sum(len(v) for v in a.f32.values()) + sum(len(v) for v in a.q15.values())
    assert a.counts["regions"] == 1 + n_inf  # the harness's empty calibration region + one per inference
    assert 0 < a.counts["region_first"] < 10
    assert a.counts["region_sum"] < a.counts["insns_total"]


# ------------------------------------------------------------------------------------------------
# generator API
# ------------------------------------------------------------------------------------------------

def test_run_on_target_api(models, work):
    sine, X, _ = models["sine"]
    y = mrun.run_on_target(sine, X, "host", work_dir=work)
    ref = mexport.extract(sine).reference(X)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    name = next((n for n in ("cortex-m0", "rv32imc") if TARGETS[n].available), None)
    if name is not None:
        yq = mrun.run_on_target(sine, X, name, dtype="q15", work_dir=work)
        assert np.abs(yq - ref).max() < 5e-3


def test_export_header_contents(models, work):
    model, _, _ = models["g_full_gaussian"]
    ex = mexport.export_c(model, work, name="tri", dtype="f32")
    text = ex.path.read_text()
    assert ex.path.name == "tri.h" and "const rbfk_net_f32 tri = {" in text and "RBFK_METRIC_FULL" in text
    assert "TRI_DECLARE_ONLY" in text and "torch" in text  # stamped with the versions
    assert f"[{5 * 3 * 4 // 2}]" in text  # packed lower triangles: C * D(D+1)/2 floats
    assert mexport.c_float(0.1) == "0.100000001f" and mexport.c_float(3.0) == "3.0f"


# export split by job (extraction / quantize / emit, export_c over them): deterministic headers that
# hold exactly the extracted (f32) or quantised (q15) parameters; every name importable as before

def _arrays(text: str) -> dict:
    """name -> (C type, values as float64) of every const array in a header."""
    out = {}
    for ctype, name, n, body in ARRAY.findall(text):
        vals = [v.strip().rstrip("fL") for v in body.replace("\n", " ").split(",") if v.strip()]
        out[name] = (ctype, np.array([float(v) for v in vals]))
        assert len(vals) == int(n), name
    return out


def test_public_names_stay_importable_from_export_and_the_package():
    moved = {"extract": extraction, "NetParams": extraction, "METRICS": extraction, "KINDS": extraction,
             "quantize_q15": quantize, "q15_error_bound": quantize, "Q15Params": quantize,
             "Q15_METRICS": quantize, "Q15_KINDS": quantize, "LOG2E": quantize,
             "c_float": emit, "header_f32": emit, "header_q15": emit}
    for name, home in moved.items():
        assert getattr(mexport, name) is getattr(home, name), name
    for name in ("export_c", "Export", "extract", "q15_error_bound"):  # the package's lazy attributes
        assert getattr(mcu, name) is getattr(mexport, name), name
    from rbfkern.mcu import extract as fn

    assert callable(fn) and fn is extraction.extract  # the function, not a module of that name


def test_max_dim_is_the_c_header_limit():
    text = (csrc_dir() / "rbfk.h").read_text()
    assert int(re.search(r"#define RBFK_MAX_DIM (\d+)", text).group(1)) == extraction.MAX_DIM


@pytest.mark.parametrize("metric", ["none", "diag", "shared_diag", "full", "shared_full"])
def test_f32_header_is_deterministic_and_holds_the_float32_parameters(tmp_path, metric):
    model = _grid_model(metric, "gaussian", 3)
    a = mexport.export_c(model, tmp_path / "a.h", name="net", dtype="f32")
    b = mexport.export_c(model, tmp_path / "b.h", name="net", dtype="f32")
    text = a.path.read_text()
    assert text == b.path.read_text()
    arrs = _arrays(text)
    p = a.params
    want = {"net_centers": p.centers, "net_sigma": p.sigma, "net_weight": p.weight, "net_bias": p.bias}
    if p.diag is not None:
        want["net_metric"] = p.diag
    if p.tril is not None:
        L = p.tril if p.tril.ndim == 3 else p.tril[None]
        want["net_metric"] = np.concatenate([m[np.tril_indices(p.in_dim)] for m in L])
    assert set(arrs) == set(want)
    for name, values in want.items():
        ctype, got = arrs[name]
        assert ctype == "float"
        # the literals round-trip the float32 values exactly
        np.testing.assert_array_equal(got.astype(np.float32), np.asarray(values, np.float32).reshape(-1), name)
    assert f"{extraction.METRICS[metric]}, {extraction.KINDS['gaussian']}" in text


@pytest.mark.parametrize("metric", ["none", "diag", "shared_diag"])
def test_q15_header_is_deterministic_and_holds_the_quantised_integers(tmp_path, metric):
    model = _grid_model(metric, "inverse_quadratic", 5)
    X = np.random.default_rng(0).standard_normal((9, 3))
    a = mexport.export_c(model, tmp_path / "a.h", name="q", dtype="q15", calib=X)
    b = mexport.export_c(model, tmp_path / "b.h", name="q", dtype="q15", calib=X)
    text = a.path.read_text()
    assert text == b.path.read_text()
    q = a.q15
    arrs = _arrays(text)
    want = {"q_centers": ("int16_t", q.centers), "q_gain_m": ("int16_t", q.gain_m),
            "q_gain_sh": ("int8_t", q.gain_sh), "q_weight": ("int16_t", q.weight), "q_bias": ("int32_t", q.bias)}
    if q.metric_w is not None:
        want["q_metric"] = ("int16_t", q.metric_w)
    assert set(arrs) == set(want)
    for name, (ctype, values) in want.items():
        assert arrs[name][0] == ctype
        np.testing.assert_array_equal(arrs[name][1], np.asarray(values, np.float64).reshape(-1), name)
    # the formats in the descriptor and the defines are the quantiser's
    assert f"{q.x_frac}, {q.w_frac}, {q.h_frac}, {q.wo_frac}, {q.y_frac}," in text
    assert f"#define Q_X_FRAC {q.x_frac}\n#define Q_Y_FRAC {q.y_frac}" in text
    # and the report's bound is the quantiser's bound at the calibration inputs
    assert a.quant_report["calib_max_bound"] == float(quantize.q15_error_bound(q, X).max())


def test_emit_alone_matches_export_c(tmp_path):
    """The three jobs composed by hand give export_c's file, byte for byte."""
    model = _grid_model("diag", "quadratic", 7)
    X = np.random.default_rng(1).standard_normal((5, 3))
    ex = mexport.export_c(model, tmp_path / "m.h", name="m", dtype="q15", calib=X)
    p = extraction.extract(model)
    assert emit.header_q15(quantize.quantize_q15(p, X), "m") == ex.path.read_text()
    ex = mexport.export_c(model, tmp_path / "f.h", name="f", dtype="f32")
    assert emit.header_f32(p, "f") == ex.path.read_text()


@pytest.mark.parametrize("bad", ["metric", "kind", "type", "nonfinite", "name", "dtype"])
def test_export_refuses_unsupported(bad, work):
    rbf, lin = _grid_model("full" if bad == "metric" else "diag", "linear" if bad == "kind" else "gaussian", 99)
    dtype, name, model = "f32", "m", (rbf, lin)
    if bad in ("metric", "kind"):
        dtype = "q15"
    elif bad == "type":
        model = nn.Linear(3, 2)
    elif bad == "nonfinite":
        with torch.no_grad():
            lin.weight[0, 0] = float("inf")
    elif bad == "name":
        name = "1model"
    else:
        dtype = "f16"
    with pytest.raises((ValueError, TypeError), match=r"q15 export supports|model must be|non-finite|C identifier|dtype must"):
        mexport.export_c(model, work / "bad.h", name=name, dtype=dtype)


def test_cli_export_and_run(models, work, capsys):
    from rbfkern.mcu.cli import main

    sine, X, _ = models["sine"]
    pt = work / "sine.pt"
    torch.save(sine, pt)
    assert main(["export", str(pt), "-o", str(work / "cli_sine.h"), "--name", "sine_cli"]) == 0
    assert "const rbfk_net_f32 sine_cli" in (work / "cli_sine.h").read_text()
    np.save(work / "x.npy", X)
    capsys.readouterr()
    assert main(["run", str(pt), str(work / "x.npy"), "--target", "host", "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]) == len(X)
    assert main(["targets"]) == 0


@pytest.mark.parametrize("name", ["cortex-m4f"])
def test_cmake_toolchain_file(name, work):
    """csrc/mcu/CMakeLists.txt + targets/<name>.cmake: configure, build, run the harness via ctest (QEMU)."""
    import shutil

    _skip_if_missing(name)
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake not installed")
    cases = work / "cmake_cases"
    cases.mkdir(exist_ok=True)
    (cases / "rbfk_cases.h").write_text("\n")
    bdir = work / f"cmake-{name}"
    tc = csrc_dir() / "targets" / TARGETS[name].cmake_toolchain
    subprocess.run(["cmake", "-S", str(csrc_dir()), "-B", str(bdir), f"-DCMAKE_TOOLCHAIN_FILE={tc}",
                    f"-DRBFK_CASES_DIR={cases}"], check=True, capture_output=True, timeout=120)
    subprocess.run(["cmake", "--build", str(bdir), "-j", "2"], check=True, capture_output=True, timeout=300)
    r = subprocess.run(["ctest", "-V", "--timeout", "60"], cwd=bdir, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "END 0" in r.stdout, r.stdout[-2000:]


def test_cli_wiring_into_main_parser():
    """The lead's rbfkern/__main__.py adds the sub-command with rbfkern.mcu.cli.add_parser(sub)."""
    import argparse

    from rbfkern.mcu.cli import add_parser

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = p.parse_args(["mcu", "targets"])
    assert args.fn(args) == 0
