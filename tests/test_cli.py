"""The README's main-job command works."""
import subprocess
import sys


def test_info_lists_backends_and_ops():
    proc = subprocess.run([sys.executable, "-m", "rbfkern", "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "C++ extension : yes" in out
    assert "torch.ops.rbfkern.rbf" in out and "torch.ops.rbfkern.rbf_r2" in out
