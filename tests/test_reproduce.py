"""``python -m rbfkern reproduce``: the statistics and the table on given numbers, the networks it
compares, a whole run with a tiny configuration, and the command line."""
import json

import pytest
import torch

from rbfkern.__main__ import main
from rbfkern.demo import srf as demo_srf
from rbfkern.nn import GaussDerivConv2d
from rbfkern.reproduce import Config, run
from rbfkern.reproduce import bcos_localisation, srf_data_efficiency
from rbfkern.reproduce.runner import rows
from rbfkern.reproduce.table import Row, fmt, mean_std, render, verdict


def test_mean_std_and_fmt():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample standard deviation
    assert mean_std([0.5]) == (0.5, 0.0)
    assert fmt([0.9, 0.95, 1.0]) == "0.950 ± 0.050"
    with pytest.raises(ValueError):
        mean_std([])


@pytest.mark.parametrize("better,worse,want", [
    ([0.9, 0.91, 0.92], [0.8, 0.8, 0.81], "holds"),
    ([0.8, 0.8, 0.81], [0.9, 0.91, 0.92], "fails"),
    ([0.95, 0.80, 0.96], [0.80, 0.95, 0.79], "unclear"),  # mean +0.057, but the seeds disagree
    ([0.900, 0.901, 0.902], [0.899, 0.900, 0.900], "no difference"),  # consistent, but under 0.005
    ([0.9], [0.8], "holds (1 seed)"),
    ([0.8], [0.9], "fails (1 seed)"),
])
def test_verdict(better, worse, want):
    assert verdict(better, worse) == want


def test_verdict_needs_pairs():
    with pytest.raises(ValueError, match="paired"):
        verdict([0.1, 0.2], [0.1])


def test_render_columns_line_up():
    table = [Row("claim A", "m", "1.0 ± 0.0", "holds", ["detail"]), Row("a longer claim", "measure", "r", "fails")]
    text = render(table, "title")
    lines = text.splitlines()
    assert lines[0] == "title" and lines[4] == "    detail"
    bars = {line.index("|") for line in (lines[1], lines[3], lines[5])}
    assert len(bars) == 1  # the first column has one width


def _fake_results():
    """Collected results as the parts return them, with numbers chosen so each verdict is known."""
    srf = [{"accuracy": {3: {"srf": a, "cnn5": b}}, "parameters": {"srf": 10, "cnn5": 20}}
           for a, b in ((0.9, 0.8), (0.91, 0.8), (0.92, 0.81))]
    bcos = [{"accuracy": 0.97, "pointing_game": p, "grids": 50} for p in (0.5, 0.55, 0.52)]
    prec = {"learned": {1: 0.9}, "euclidean": {1: 0.9}, "cosine": {1: 0.9}}
    raw = {"euclidean": {1: 0.7}, "cosine": {1: 0.95}}
    rbf = [{"accuracy": 0.98, "precision": prec, "precision_before_norm": raw}] * 3
    return {"srf": srf, "bcos": bcos, "cnn-rbf": rbf}


def test_rows_from_results():
    cfg = Config(seeds=3, srf_sizes=(3,), srf_kinds=("fixed",), ks=(1,))
    out = rows(_fake_results(), cfg)
    assert [r.verdict for r in out] == ["holds", "holds", "no difference", "fails"]
    assert out[0].result == "SRF 0.910 ± 0.010 vs CNN 0.803 ± 0.006" and "30 train digits" in out[0].measure
    assert out[0].details == ["parameters: SRF 10, CNN 20"]
    assert "chance 0.250" in out[1].result
    # before the LayerNorm the cosine baseline (0.95) beats the learned metric: the claim fails
    assert "cos. 0.950" in out[3].result and out[3].details == ["CNN-RBF test accuracy 0.980 ± 0.000"]


@pytest.mark.parametrize("kind", list(srf_data_efficiency.COMPARISONS))
def test_srf_comparisons_differ_in_the_spatial_layers_only(kind):
    srf, cnn = (demo_srf.build(n) for n in srf_data_efficiency.COMPARISONS[kind])
    a, b = ([type(m).__name__ for m in net] for net in (srf, cnn))
    assert [t for t in a if t != "GaussDerivConv2d"] == [t for t in b if t != "Conv2d"]
    assert a.count("GaussDerivConv2d") == b.count("Conv2d") == 2  # equal depth
    x = torch.randn(3, 1, 8, 8)
    assert srf(x).shape == cnn(x).shape == (3, 10)
    if kind != "demo":
        assert all(m.order == 3 for m in srf if isinstance(m, GaussDerivConv2d))


def test_srf_bad_names():
    with pytest.raises(ValueError, match="name"):
        demo_srf.build("wide")
    with pytest.raises(ValueError, match="kinds"):
        srf_data_efficiency.run(None, seed=0, sizes=(1,), steps=1, kinds=("wide",))


def test_bcos_model_takes_one_digit_and_a_grid():
    net = bcos_localisation.bcos_gap_cnn(width=4)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.slow
def test_tiny_run_writes_table_and_json(tmp_path, capsys):
    cfg = Config(seeds=1, srf_sizes=(1,), srf_steps=2, srf_kinds=("fixed",), bcos_epochs=1, bcos_width=4,
                 bcos_groups=2, rbf_pre_epochs=1, rbf_epochs=1, ks=(1,))
    threads = torch.get_num_threads()
    text = run(cfg=cfg, out=tmp_path, progress=False)
    assert torch.get_num_threads() == threads  # restored
    assert text in capsys.readouterr().out
    assert (tmp_path / "reproduce.txt").read_text() == text + "\n"
    raw = json.loads((tmp_path / "reproduce.json").read_text())
    assert raw["config"]["seeds"] == 1 and set(raw["results"]) == {"srf", "bcos", "cnn-rbf", "seconds"}
    for claim in ("SRF needs less data", "B-cos contributions localise", "CNN-RBF's learned metric"):
        assert claim in text


def test_bad_arguments():
    with pytest.raises(ValueError, match="seeds"):
        run(seeds=0)
    with pytest.raises(ValueError, match="threads"):
        run(cfg=Config(seeds=1), threads=0)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--seeds", "--out", "--threads"):
        assert opt in out


def test_cli_runs_the_given_configuration(monkeypatch):
    seen = {}
    monkeypatch.setattr("rbfkern.reproduce.run", lambda **kw: seen.update(kw) or "")
    assert main(["reproduce", "--quick", "--seeds", "2", "--no-progress"]) == 0
    assert seen == {"quick": True, "seeds": 2, "out": None, "progress": False, "threads": 1}


