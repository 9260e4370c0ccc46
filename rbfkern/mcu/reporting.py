"""Cost report: instructions per inference (QEMU plugin), flash and RAM per target, f32 vs q15,
for the digits classifier of issue 6 (64 inputs, 32 centres, 10 classes, diag metric, gaussian)."""
from __future__ import annotations

import numpy as np
import torch

from .builder import build, default_work_dir, size_of, write_cases_header
from .export import export_c
from .runner import run_build
from .toolchains import get_target, targets as available_targets


def digits_model(n_centers: int = 32, seed: int = 0):
    """(model, X, y): an RBFClassifier on sklearn's 8x8 digits (pixels / 16), built in closed form:
    k-means centres, diag metric = 1 / (within-cluster variance + 0.05), sigma_j^2 = mean member r2 / 2,
    output layer by ridge regression on one-hot targets. Deterministic, about a second."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from rbfkern.nn import RBFClassifier

    d = load_digits()
    X = d.data / 16.0
    y = d.target
    km = KMeans(n_centers, n_init=1, random_state=seed).fit(X)
    C = km.cluster_centers_
    lab = km.labels_
    var = np.stack([X[lab == j].var(0) if np.sum(lab == j) > 1 else np.zeros(X.shape[1]) for j in range(n_centers)])
    w = 1.0 / (var + 0.05)
    r2 = (((X[:, None, :] - C[None]) ** 2) * w[None]).sum(-1)
    sig = np.sqrt(np.array([r2[lab == j, j].mean() / 2 if np.any(lab == j) else 1.0 for j in range(n_centers)]))
    H = np.exp(-r2 / (2 * sig ** 2))
    A = np.hstack([H, np.ones((len(X), 1))])
    T = np.eye(10)[y]
    sol = np.linalg.solve(A.T @ A + 1e-3 * np.eye(A.shape[1]), A.T @ T)
    m = RBFClassifier(64, n_centers, 10, metric="diag", kind="gaussian", dtype=torch.float64)
    m.rbf.set_centers(torch.tensor(C))
    m.rbf.set_diag(torch.tensor(w))
    m.rbf.set_sigma(torch.tensor(sig))
    with torch.no_grad():
        m.out.weight.copy_(torch.tensor(sol[:-1].T))
        m.out.bias.copy_(torch.tensor(sol[-1]))
    return m, X, y


def measure(model, X, target, dtype="f32", calib=None, work_dir=None, timeout=300) -> dict:
    """One target x dtype: instructions per inference, sizes, outputs."""
    t = get_target(target)
    work = default_work_dir() if work_dir is None else work_dir
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        ex = export_c(model, Path(tmp) / "digits.h", name="digits", dtype=dtype, calib=calib)
        hdr = write_cases_header(Path(tmp) / "cases.h", [(ex, X)] if dtype == "f32" else [],
                                 [(ex, X)] if dtype == "q15" else [])
        b = build(t, hdr, work, selftest=False)
    row = {"target": t.name, "dtype": dtype}
    sz = size_of(b)
    syms = sz.pop("symbols", {})
    model_bytes = sum(s for n, (s, typ) in syms.items() if n.startswith("digits") and typ in "tTrR")
    p = ex.params
    C, D, K = p.n_centers, p.in_dim, p.out_dim
    if dtype == "f32":
        ram = 4 * (D + K + (D if p.mean is not None else 0) + (D if p.tril is not None else 0))
    else:
        ram = 2 * (D + K + C)
    # everything the kernel pulls in, libgcc soft-float / 64-bit helpers included: the ELF's text
    # minus an empty harness's, minus the model and input arrays
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        base = build(t, write_cases_header(Path(tmp) / "empty.h"), work, selftest=False)
    base_text = size_of(base)["text"]
    inputs = sum(s for n, (s, typ) in syms.items() if n.startswith("rbfk_case"))
    row.update(sz)
    row.update({"model_flash": model_bytes, "kernel_flash": sz["kernel_code"], "ram_buffers": ram,
                "kernel_total": sz["text"] - base_text - model_bytes - inputs})
    if t.runnable:
        res = run_build(b, timeout=timeout, count=t.mode == "qemu")
        if dtype == "f32":
            yo = res.f32_outputs(0).astype(np.float64)
        else:
            yo = ex.q15.dequantize_outputs(res.q15_outputs(0))
        row["outputs"] = yo
        row["insns"] = res.inference_insns
        row["counts"] = res.counts
    row["export"] = ex
    return row


def report(target_names=None, n: int = 20, work_dir=None, verbose: bool = True) -> list[dict]:
    """Rows for every available target, f32 and q15, on n digits samples; prints a Markdown table."""
    model, X, y = digits_model()
    Xs = X[:: max(1, len(X) // n)][:n]
    names = target_names or available_targets()
    rows = []
    for name in names:
        for dtype in ("f32", "q15"):
            rows.append(measure(model, Xs, name, dtype, calib=X if dtype == "q15" else None, work_dir=work_dir))
    ref = rows[0]["export"].params.reference(Xs) if rows else None
    from .extraction import extract

    acc_f = (np.argmax(extract(model).reference(X), 1) == y).mean()
    if verbose:
        print(format_table(rows, ref, acc_f))
    return rows


def format_table(rows, ref=None, train_acc=None) -> str:
    out = ["| target | dtype | instructions / inference | rbfk code+tables (B) | all kernel code incl. libgcc helpers (B) | "
           "model flash (B) | RAM buffers (B) | ELF text / data / bss (B) | max abs err vs float64 | argmax agrees |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        ins = "native" if r.get("insns") is None else f"{r['insns']:,.0f}"
        err = agree = "-"
        if ref is not None and "outputs" in r:
            err = f"{np.abs(r['outputs'] - ref).max():.2e}"
            agree = f"{(r['outputs'].argmax(1) == ref.argmax(1)).mean() * 100:.0f}%"
        out.append(f"| {r['target']} | {r['dtype']} | {ins} | {r['kernel_flash']:,} | {r['kernel_total']:,} | {r['model_flash']:,} | "
                   f"{r['ram_buffers']:,} | {r['text']:,} / {r['data']:,} / {r['bss']:,} | {err} | {agree} |")
    if train_acc is not None:
        out.append(f"\nDigits classifier (64-32-10, diag, gaussian), training accuracy (float64): {train_acc * 100:.1f}%")
    return "\n".join(out)
