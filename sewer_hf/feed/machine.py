"""Fitting a run to the machine it runs on: its cores and CPU features, torch threads and
DataLoader workers.

On a CPU the model step, the batched augmentation and the loader workers share the same few
cores. Workers that decode large frames earn their cores; workers that decode small prepared
frames (a 64-px PNG takes ~0.2 ms) mostly take cores away from the model step, whose OpenMP
threads then wait for each other. So the cost of reading one frame is measured here, on this
machine, before the loader is built, and the split of cores follows from it.

The core count and CPU features need no torch (imported only where threads are set), so the
torch-free data commands (``check-data``, ``prepare``) size their decoding processes here too.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# Reading a frame in the main process costs this much or less: no worker processes. A CPU
# ViT-T/16 step at 64 px takes ~10 ms per image on 2 cores, so this is <= ~15 % of the step.
MAIN_PROCESS_READ_MS = 1.5
MAX_CUDA_WORKERS = 8
PROBE_ITEMS = 12


def available_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity, e.g. a container's share); where that is
    unknown (not on Linux), all of them."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


# a container's CPU time limit (Docker --cpus, Kubernetes limits, a Space's vCPUs): cgroup v2, then v1
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_CPU_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cpu_quota() -> Optional[float]:
    """The CPUs' worth of time this container may use per second (its cgroup's CPU limit), None
    without a limit. Such a container still sees every host CPU in ``available_cpus``."""
    try:
        quota, period = Path(CGROUP_V2_CPU_MAX).read_text().split()[:2]  # "<quota> <period>" or "max <period>"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(Path(path).read_text()) for path in CGROUP_V1_CPU_QUOTA)  # quota -1: no limit
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """How many cores this process may keep busy: the CPUs it may run on (``available_cpus``), at
    most its container's CPU limit (``cpu_quota``, rounded down: threads beyond it are throttled)."""
    cores = len(available_cpus())
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo ("" where there is none, e.g. not on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC" ("cpu" where it cannot be read)."""
    return _cpuinfo("model name") or "cpu"


def native_bf16(flags: Optional[set[str]] = None) -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_features() -> str:
    """The CPU features that decide which precision is fast, as one line."""
    flags = cpu_flags()
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return " ".join(f for f in wanted if f in flags) or "unknown"


def machine_record() -> dict[str, Any]:
    """The machine a figure was measured on, for the results files that report it."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_features": cpu_features(), "cores": available_cores()}


def local_processes(accelerator) -> int:
    """Training processes on this machine (they share its cores)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))


def read_cost_ms(dataset, items: int = PROBE_ITEMS) -> float:
    """Median milliseconds to produce one item of ``dataset`` (decode, resize and, without
    batched augmentation, the per-image augmentation) in this process."""
    import torch

    n = min(len(dataset), items + 2)
    if n == 0:
        return 0.0
    times = []
    with torch.random.fork_rng(devices=[]):  # items may draw random augmentations
        for i in range(n):
            start = time.perf_counter()
            dataset[i * max(1, len(dataset) // n)]
            if i >= 2:  # the first reads open files and warm caches
                times.append(time.perf_counter() - start)
    times = times or [0.0]
    return 1000.0 * sorted(times)[len(times) // 2]


# keep_frames_mb: None -> a quarter of the memory available, at most this much (per machine)
MAX_KEPT_FRAMES_MB = 4096


def memory_available_mb() -> Optional[float]:
    """The memory this machine can still give without swapping (``MemAvailable``), in MB; None
    where it cannot be read (not on Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def kept_frames_budget(cfg: Any, accelerator) -> int:
    """Bytes of decoded frames each training process may keep in memory (``keep_frames_mb``;
    None: a quarter of the memory available now, at most ``MAX_KEPT_FRAMES_MB``, shared by this
    machine's processes; nothing where the available memory is unknown)."""
    mb = cfg.keep_frames_mb
    if mb is None:
        available = memory_available_mb()
        mb = 0 if available is None else min(MAX_KEPT_FRAMES_MB, available / 4) / local_processes(accelerator)
    return int(mb * 2**20)


@dataclass
class MachinePlan:
    """How the run uses the machine's cores, and why (printed in the run's opening line)."""

    workers: int
    threads: Optional[int]  # torch threads set on a CPU; None = torch's default (GPU runs)
    read_ms: Optional[float] = None

    def describe(self) -> str:
        read = f", reading a frame takes {self.read_ms:.2f} ms" if self.read_ms is not None else ""
        threads = f"{self.threads} torch thread(s), " if self.threads is not None else ""
        return f"{threads}{self.workers} loader worker(s){read}"


def plan_for_machine(cfg: Any, accelerator, dataset) -> MachinePlan:
    """Loader workers and (on a CPU) torch threads for this run; ``cfg.num_workers`` and
    ``cfg.cpu_threads`` (or OMP_NUM_THREADS) override each choice. Sets torch's thread count on
    a CPU."""
    import torch

    cores = max(1, available_cores() // local_processes(accelerator))
    if accelerator.device.type != "cpu":
        workers = cfg.num_workers if cfg.num_workers is not None else min(MAX_CUDA_WORKERS, max(1, cores - 1))
        return MachinePlan(workers=workers, threads=None)
    read_ms = None
    workers = cfg.num_workers
    if workers is None:
        read_ms = read_cost_ms(dataset)
        workers = 0 if read_ms <= MAIN_PROCESS_READ_MS or cores == 1 else max(1, cores // 2)
    if cfg.cpu_threads is not None:
        threads = cfg.cpu_threads
    elif os.environ.get("OMP_NUM_THREADS"):  # the user's (or launcher's) own choice stands
        threads = torch.get_num_threads()
    else:
        threads = max(1, cores - workers)
    torch.set_num_threads(threads)
    return MachinePlan(workers=workers, threads=threads, read_ms=read_ms)
