"""``benchmarks/avx2_only.sh``: a command run through it sees an AVX2 + FMA CPU, in CPUID (what
PyTorch, ONNX Runtime and NumPy pick their kernels from) and in /proc/cpuinfo (what
``cpu_features`` reads), so AVX2-machine figures can be estimated on a bigger x86-64 CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sewer_hf.feed.machine import cpu_flags

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "avx2_only.sh"
PROBE = """
import json, numpy, torch
from numpy._core._multiarray_umath import __cpu_features__ as simd
from sewer_hf.feed.machine import cpu_features, native_bf16
print(json.dumps({"features": cpu_features(), "bf16": native_bf16(), "torch": torch.backends.cpu.get_cpu_capability(),
                  "numpy": sorted(k for k, v in simd.items() if v)}))
"""


@pytest.mark.skipif("cpuid_fault" not in cpu_flags() or not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs Linux CPUID faulting (cpuid_fault) and root, as the script says")
def test_a_command_run_through_it_sees_avx2_and_fma_only(tmp_path):
    import json

    before = cpu_flags()
    env = dict(os.environ, TMPDIR=str(tmp_path))  # builds the library afresh
    out = subprocess.run([str(SCRIPT), sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["features"] == "avx2 fma" and seen["bf16"] is False
    assert seen["torch"] == "AVX2"
    assert "AVX2" in seen["numpy"] and "FMA3" in seen["numpy"]
    assert not [k for k in seen["numpy"] if k.startswith("AVX512")]
    assert cpu_flags() == before  # the masked /proc/cpuinfo stayed in the command's own mount namespace


def test_it_refuses_to_run_without_a_command():
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "usage" in out.stderr
