"""The README's main-job command works."""
import os
import subprocess
import sys


def test_info_lists_backends_and_ops():
    proc = subprocess.run([sys.executable, "-m", "rbfkern", "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "C++ extension : yes" in out
    assert any(f"C++ kernels   : {isa} instruction set" in out for isa in ("avx512", "avx2", "default")), out
    assert "torch.ops.rbfkern.rbf" in out and "torch.ops.rbfkern.rbf_r2" in out


def test_info_names_the_capped_instruction_set():
    env = dict(os.environ, RBFKERN_CPU_ISA="default")
    proc = subprocess.run([sys.executable, "-m", "rbfkern", "info"], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "C++ kernels   : default instruction set" in proc.stdout, proc.stdout
