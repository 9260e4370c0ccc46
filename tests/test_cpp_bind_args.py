"""The C++ bindings' argument checks (csrc/bind_args.h), called directly: every malformed buffer is
a ValueError naming the function and the argument, before any kernel runs; in particular a dtype
that differs from the first array's (once unchecked for alpha / taps of a float64 x)."""
import numpy as np
import pytest

from rbfkern import _backend

F32 = np.float32
G = [1, 2, 4, 4, 1, 3, 1, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1]  # B-cos geometry: 3x3 window, padding 1
GL = [5, 4, 1, 1, 1, 3, 2, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]  # linear: 5 rows, 4 features, 3 outputs x MaxOut 2


def _z(*shape, dtype=F32):
    return np.zeros(shape, dtype)


def _pq():
    return _z(3, 2, dtype=np.int64)


CASES = [
    ("rbf_forward", "'r2'", lambda c: c.rbf_forward(_z(3, 3), _z(2, 3), None, 0, False, _z(2), 1, 0.5, _z(3, 2),
                                                     _z(3, 3), 1)),
    ("rbf_forward", "'centers'", lambda c: c.rbf_forward(_z(3, 3), _z(2, 3, dtype=np.float64), None, 0, False,
                                                          _z(2), 1, 0.5, _z(3, 2), _z(3, 2), 1)),
    ("rbf_forward", "'act' and 'r2'", lambda c: c.rbf_forward(_z(3, 3), _z(2, 3), None, 0, False, _z(2), 1, 0.5,
                                                               None, None, 1)),
    ("rbf_backward", "'gx'", lambda c: c.rbf_backward(_z(3, 2), None, _z(3, 3), _z(2, 3), None, 0, False, _z(2),
                                                       _z(3, 2), 1, 0.5, _z(3, 2), None, None, None, 1)),
    ("rbf_nearest", "'label'", lambda c: c.rbf_nearest(_z(3, 3), _z(2, 3), None, 0, False, _z(3), _z(3), 1)),
    ("rbf_nearest", "'centers'", lambda c: c.rbf_nearest(_z(3, 3), _z(0, 3), None, 0, False, _z(3, dtype=np.int64),
                                                          _z(3), 1)),
    ("rbf_min_with", "'floor'", lambda c: c.rbf_min_with(_z(3, 3), _z(2, 3), None, 0, False, _z(3), _z(3, 2), 1)),
    ("rbf_min_with", "'out'", lambda c: c.rbf_min_with(_z(3, 3), _z(2, 3), None, 0, False, _z(3, dtype=np.float64),
                                                        _z(3, 3, dtype=np.float64), 1)),
    ("rbf_cluster_sums", "'sums'", lambda c: c.rbf_cluster_sums(_z(3, 2), _z(3, dtype=np.int64), 2, _z(2, 2),
                                                                 _z(2, dtype=np.float64), 1)),
    ("rbf_cluster_sums", "label", lambda c: c.rbf_cluster_sums(_z(3, 2), _z(3, dtype=np.int64) - 1, 2,
                                                                _z(2, 2, dtype=np.float64), _z(2, dtype=np.float64), 1)),
    ("bcos_forward", "'l'", lambda c: c.bcos_forward(G, 2.0, 1e-6, 1e-6, _z(1, 2, 4, 4), _z(1, 3, 15), _z(3),
                                                      _z(1, 3, 16), None, None, None, False, False, 1)),
    ("bcos_forward", "'idx'", lambda c: c.bcos_forward(G, 2.0, 1e-6, 1e-6, _z(1, 2, 4, 4), _z(1, 3, 16), _z(3),
                                                        _z(1, 3, 16), _z(1, 3, 16), _z(1, 3, 16), _z(1, 1, 16),
                                                        True, False, 1)),
    ("bcos_forward", "geometry", lambda c: c.bcos_forward(G[:5], 2.0, 1e-6, 1e-6, _z(1, 2, 4, 4), _z(1, 3, 16),
                                                           _z(3), _z(1, 3, 16), None, None, None, False, False, 1)),
    ("bcos_linear_forward", "'weight'", lambda c: c.bcos_linear_forward(GL, 2.0, 1e-6, 1e-6, _z(5, 4), _z(6, 3),
                                                                         _z(6), _z(5, 3), None, None, None, False, 1)),
    ("bcos_linear_forward", "'y'", lambda c: c.bcos_linear_forward(GL, 2.0, 1e-6, 1e-6, _z(5, 4), _z(6, 4), _z(6),
                                                                    _z(5, 6), None, None, None, False, 1)),
    ("bcos_backward_norm", "'grad_x'", lambda c: c.bcos_backward_norm(G, _z(1, 2, 4, 4), _z(1, 1, 16),
                                                                       _z(1, 2, 4, 4), _z(1, 2, 4, 3), False, 1)),
    ("bcos_weight_scale", "'out'", lambda c: c.bcos_weight_scale(_z(3, 4) + 1, _z(2), 1)),
    ("bcos_weight_grad", "'grad'", lambda c: c.bcos_weight_grad(_z(3, 4) + 1, _z(3, 3), 0, 1)),
    ("bcos_weight_grad", "'transposed_rows'", lambda c: c.bcos_weight_grad(_z(3, 4) + 1, _z(3, 4), 3, 1)),
    ("gauss_deriv2d_forward", "'alpha'", lambda c: c.gauss_deriv2d_forward(_z(1, 1, 8, 8, dtype=np.float64), _z(2, 3),
                                                                            _z(1, 2, 3, dtype=np.float64), _pq(), 1, 1,
                                                                            _z(1, 2, 8, 8, dtype=np.float64), 1)),
    ("gauss_deriv2d_forward", "'taps'", lambda c: c.gauss_deriv2d_forward(_z(1, 1, 8, 8, dtype=np.float64),
                                                                           _z(2, 3, dtype=np.float64), _z(1, 2, 3),
                                                                           _pq(), 1, 1,
                                                                           _z(1, 2, 8, 8, dtype=np.float64), 1)),
    ("gauss_deriv2d_forward", "'out'", lambda c: c.gauss_deriv2d_forward(_z(1, 1, 8, 8), _z(2, 3), _z(1, 2, 3), _pq(),
                                                                          1, 1, None, 1)),
    ("gauss_deriv2d_backward", "'gtaps'", lambda c: c.gauss_deriv2d_backward(_z(1, 2, 8, 8), _z(1, 1, 8, 8), _z(2, 3),
                                                                              _z(1, 2, 3), _pq(), 1, 1, None, None,
                                                                              _z(1, 2, 4), 1)),
]


@pytest.mark.parametrize("fn,arg,call", CASES, ids=[f"{f}-{a.strip(chr(39))}" for f, a, _ in CASES])
def test_bad_buffer_is_a_value_error_naming_it(fn, arg, call):
    with pytest.raises(ValueError) as e:
        call(_backend.cext())
    assert str(e.value).startswith(fn + ":") and arg in str(e.value), str(e.value)


def test_good_buffers_pass_the_checks():
    c = _backend.cext()
    y = _z(1, 3, 16)
    c.bcos_forward(G, 2.0, 1e-6, 1e-6, _z(1, 2, 4, 4) + 1, _z(1, 3, 16) + 1, _z(3) + 1, y, None, None, None, False, False,
                   1)
    assert np.isfinite(y).all() and (y != 0).all()
    y = _z(5, 3)
    assert c.bcos_linear_forward(GL, 2.0, 1e-6, 1e-6, _z(5, 4) + 1, _z(6, 4) + 1, _z(6) + 1, y, None, None, None,
                                 False, 1)
    assert np.isfinite(y).all() and (y != 0).all()
    # a conv geometry is not a linear layer: nothing written
    y = _z(1, 3, 16)
    assert not c.bcos_linear_forward(G, 2.0, 1e-6, 1e-6, _z(1, 2, 4, 4) + 1, _z(3, 2, 3, 3) + 1, _z(3) + 1, y, None,
                                     None, None, False, 1)
    assert (y == 0).all()
    out = _z(1, 2, 8, 8) - 1
    c.gauss_deriv2d_forward(_z(1, 1, 8, 8), _z(2, 3), _z(1, 2, 3), _pq(), 1, 1, out, 1)
    assert (out == 0).all()
