"""Runs the three claims over the seeds and prints the table (``python -m rbfkern reproduce``)."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..demo import data as ddata
from . import bcos_localisation, cnn_rbf_retrieval, srf_data_efficiency
from .table import Row, fmt, render, verdict


@dataclass(frozen=True)
class Config:
    """What one run trains. Seeds 0..seeds-1 each give a data split, subsets and initialisations."""

    seeds: int = 5
    srf_sizes: tuple = (3, 5, 10, 20, 50)  # training digits per class
    srf_steps: int = 300
    srf_kinds: tuple = ("fixed", "params", "demo")
    bcos_epochs: int = 12
    bcos_width: int = 16
    bcos_groups: int = 100  # 2x2 grids per seed
    rbf_pre_epochs: int = 4
    rbf_epochs: int = 12
    ks: tuple = (1, 5, 10)


FULL = Config()
QUICK = Config(seeds=3, srf_sizes=(3, 10), srf_steps=200, srf_kinds=("fixed",), bcos_epochs=6, bcos_groups=50,
               rbf_pre_epochs=3, rbf_epochs=8, ks=(1, 10))
PARTS = ("srf", "bcos", "cnn-rbf")


def collect(cfg: Config, *, progress: bool = True, parts=PARTS) -> dict:
    """Every part for every seed: ``{part: [result of seed 0, result of seed 1, ...]}``."""
    from tqdm.auto import tqdm

    jobs = {
        "srf": lambda d, s: srf_data_efficiency.run(d, seed=s, sizes=cfg.srf_sizes, steps=cfg.srf_steps,
                                                    kinds=cfg.srf_kinds),
        "bcos": lambda d, s: bcos_localisation.run(d, seed=s, epochs=cfg.bcos_epochs, groups=cfg.bcos_groups,
                                                   width=cfg.bcos_width, progress=progress),
        "cnn-rbf": lambda d, s: cnn_rbf_retrieval.run(d, seed=s, pre_epochs=cfg.rbf_pre_epochs, epochs=cfg.rbf_epochs,
                                                      ks=cfg.ks, progress=progress),
    }
    res = {p: [] for p in parts}
    res["seconds"] = {p: 0.0 for p in parts}
    for seed in tqdm(range(cfg.seeds), desc="seeds", disable=not progress):
        digits = ddata.load(seed)
        for part in parts:
            t0 = time.perf_counter()
            res[part].append(jobs[part](digits, seed))
            res["seconds"][part] += time.perf_counter() - t0
    return res


def rows(res: dict, cfg: Config) -> list[Row]:
    """The table rows of collected results."""
    out = []
    if res.get("srf"):
        seeds = res["srf"]
        for kind in cfg.srf_kinds:
            srf, cnn = srf_data_efficiency.COMPARISONS[kind]
            p = seeds[0]["parameters"]
            for n in cfg.srf_sizes:
                a = [s["accuracy"][n][srf] for s in seeds]
                b = [s["accuracy"][n][cnn] for s in seeds]
                out.append(Row("SRF needs less data than a CNN of equal depth (thesis ch. 3)",
                               f"test acc, {n * 10} train digits, {srf_data_efficiency.LABELS[kind]}",
                               f"SRF {fmt(a)} vs CNN {fmt(b)}", verdict(a, b),
                               [f"parameters: SRF {p[srf]}, CNN {p[cnn]}"] if n == cfg.srf_sizes[-1] else []))
    if res.get("bcos"):
        r = res["bcos"]
        pg = [s["pointing_game"] for s in r]
        out.append(Row("B-cos contributions localise (B-cos Sec. 4)", "2x2 digit-grid pointing game",
                       f"{fmt(pg)} (chance 0.250)", verdict(pg, [0.25] * len(pg)),
                       [f"B-cos CNN test accuracy {fmt([s['accuracy'] for s in r])}, "
                        f"{min(s['grids'] for s in r)}+ grids per seed"]))
    if res.get("cnn-rbf"):
        r = res["cnn-rbf"]
        acc = fmt([s["accuracy"] for s in r])
        claim = "CNN-RBF's learned metric retrieves better (CNN-RBF Fig. 7)"
        for k in cfg.ks:
            lrn = [s["precision"]["learned"][k] for s in r]
            for key, where in (("precision", "on the RBF input"), ("precision_before_norm", "before the LayerNorm")):
                euc, cos = ([s[key][m][k] for s in r] for m in ("euclidean", "cosine"))
                best = [max(e, c) for e, c in zip(euc, cos)]  # the claim: better than both
                out.append(Row(claim, f"precision@{k}; baselines {where}",
                               f"learned {fmt(lrn)} vs Eucl. {fmt(euc)}, cos. {fmt(cos)}", verdict(lrn, best)))
        out[-1].details.append(f"CNN-RBF test accuracy {acc}")
    return out


def run(quick: bool = False, seeds: int | None = None, out: str | Path | None = None, progress: bool = True,
        cfg: Config | None = None, threads: int = 1) -> str:
    """Train, evaluate, print and return the table; with ``out``, also write it and the raw
    per-seed numbers (JSON) there. ``threads``: torch's intra-op threads meanwhile (restored
    after): the batches are 8x8 digits, where one thread is the fastest, and a second thread on a
    busy machine makes every parallel region wait for a core."""
    cfg = cfg or (QUICK if quick else FULL)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
        cfg = dataclasses.replace(cfg, seeds=seeds)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    before = torch.get_num_threads()
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        res = collect(cfg, progress=progress)
    finally:
        torch.set_num_threads(before)
    parts = ", ".join(f"{p} {s:.0f} s" for p, s in res["seconds"].items())
    title = (f"rbfkern reproduce{' --quick' if quick else ''}: {cfg.seeds} seeds, scikit-learn digits, "
             f"{threads} thread{'s' if threads > 1 else ''}, {time.perf_counter() - t0:.0f} s ({parts})")
    text = render(rows(res, cfg), title)
    print(text)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "reproduce.txt").write_text(text + "\n")
        raw = {"config": dataclasses.asdict(cfg), "results": _jsonable(res)}
        (folder / "reproduce.json").write_text(json.dumps(raw, indent=1))
    return text


def _jsonable(v):
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else "/".join(map(str, k)) if isinstance(k, tuple) else str(k)): _jsonable(x)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
