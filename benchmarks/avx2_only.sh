#!/bin/bash
# Run a command as on a CPU with AVX2 + FMA only (no AVX-512, VNNI, bf16 or AMX), on a bigger
# x86-64 CPU: every library that picks its kernels from CPUID (PyTorch, oneDNN, ONNX Runtime's
# MLAS, NumPy, FFmpeg, OpenBLAS) then runs its AVX2 kernels, and /proc/cpuinfo lists no more.
# A proxy for the 2-core AVX2 machine the #14/#17 goals were set on, not that machine: clock,
# caches and cores stay this CPU's. Needs Linux CPUID faulting (the `cpuid_fault` flag) and
# root (a private mount namespace for /proc/cpuinfo). Inside, it does nothing more.
#   benchmarks/avx2_only.sh .venv/bin/python benchmarks/inference_cpu.py --quick
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
[ -z "${SEWER_HF_AVX2_ONLY:-}" ] || exec "$@"  # already inside: the command is masked as it is
grep -qw cpuid_fault /proc/cpuinfo || {
    echo "avx2_only: this CPU/kernel has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)" >&2; exit 3; }
here=$(cd "$(dirname "$0")" && pwd)
lib="${TMPDIR:-/tmp}/sewer_hf_avx2_only.so"
[ "$lib" -nt "$here/avx2_only.c" ] || cc -O2 -shared -fPIC -o "$lib" "$here/avx2_only.c" -ldl
# torch.compile's cache keys do not see the mask: code it compiled for the real CPU, reused
# here, gave non-finite results (and the other way round is no safer), so keep a cache apart
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/torchinductor_$(id -un)}/avx2_only"
cpuinfo=$(mktemp)
sed -E '/^flags/s/ (avx512[a-z0-9_]*|avx_vnni[a-z0-9_]*|amx_[a-z0-9_]*|avx_ifma|avx_ne_convert)\b//g' \
    /proc/cpuinfo > "$cpuinfo"
echo "avx2_only: CPUID and /proc/cpuinfo show AVX2 + FMA only; the CPU is $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)" >&2
exec unshare --mount sh -c 'mount --bind "$0" /proc/cpuinfo && rm -f "$0" && LD_PRELOAD="$1${LD_PRELOAD:+:$LD_PRELOAD}" && SEWER_HF_AVX2_ONLY=1 && export LD_PRELOAD SEWER_HF_AVX2_ONLY && shift && exec "$@"' \
    "$cpuinfo" "$lib" "$@"
