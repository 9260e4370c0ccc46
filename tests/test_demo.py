"""`python -m rbfkern demo --quick` end to end: it writes its pictures and reaches the accuracies."""
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rbfkern", "demo", "--quick", "--no-progress", "--out", str(out), "--seed", "0"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for name in ("retrieval.png", "clusters.png", "bcos_explanations.png", "basis.png"):
        f = out / name
        assert f.exists() and f.stat().st_size > 1000, name
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    def number(pattern):
        m = re.search(pattern, text)
        assert m, f"{pattern!r} not in output:\n{text[-3000:]}"
        return float(m.group(1))

    assert number(r"CNN-RBF .*test accuracy ([0-9.]+)") >= 0.90
    assert number(r"B-cos CNN .*test accuracy ([0-9.]+)") >= 0.90
    # B-cos: the contribution maps add up to the logit (eq. 15).
    assert number(r"\|sum\(contributions\) - logit\| <= ([0-9.e+-]+)") < 1e-3
    assert number(r"RBFNetwork .*test accuracy ([0-9.]+)") >= 0.85
    # Every microcontroller target that ran agrees with PyTorch.
    assert "MISMATCH" not in text
    assert re.search(r"host +ok: max rel err", text)
