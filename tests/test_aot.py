"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed)."""
import os
import subprocess
import sys

import pytest

from conftest import HAS_TRITON


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_aot_compiles_every_kernel():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "rbfkern.gpu.aot"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if "sm_" in ln]
    assert any("sm_80" in ln for ln in lines) and any("sm_90" in ln for ln in lines), proc.stdout
    assert not any("FAIL" in ln for ln in lines), proc.stdout
