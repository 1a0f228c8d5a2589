"""Fitting a run to the machine (sewer_hf.feed.machine): loader workers and torch threads follow the
measured cost of reading a frame, and every choice can be overridden."""
import os
import time
from types import SimpleNamespace

import pytest
import torch

from sewer_hf.config import FinetuneConfig
from sewer_hf.feed import machine
from sewer_hf.feed.machine import MAIN_PROCESS_READ_MS, plan_for_machine, read_cost_ms

REAL_AVAILABLE_CORES = machine.available_cores
REAL_MEMORY_AVAILABLE_MB = machine.memory_available_mb


class Frames(torch.utils.data.Dataset):
    def __init__(self, ms: float, n: int = 40) -> None:
        self.ms, self.n = ms, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        end = time.perf_counter() + self.ms / 1000
        while time.perf_counter() < end:  # busy, like decoding
            pass
        return i


CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1)


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("sewer_hf.feed.machine.available_cores", lambda: 4)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cheap_frames_are_read_in_the_main_process_and_every_core_runs_the_step():
    plan = plan_for_machine(FinetuneConfig(), CPU, Frames(0.05))
    assert plan.workers == 0 and plan.threads == 4 == torch.get_num_threads()
    assert plan.read_ms < MAIN_PROCESS_READ_MS and "0 loader worker(s)" in plan.describe()


def test_costly_frames_get_workers_and_the_step_keeps_the_other_cores():
    plan = plan_for_machine(FinetuneConfig(), CPU, Frames(4 * MAIN_PROCESS_READ_MS))
    assert plan.workers == 2 and plan.threads == 2
    assert read_cost_ms(Frames(4 * MAIN_PROCESS_READ_MS)) >= 4 * MAIN_PROCESS_READ_MS


def test_keys_and_omp_num_threads_override_the_choice(monkeypatch):
    plan = plan_for_machine(FinetuneConfig(num_workers=3, cpu_threads=1), CPU, Frames(0.0))
    assert (plan.workers, plan.threads, plan.read_ms) == (3, 1, None)
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert plan_for_machine(FinetuneConfig(), CPU, Frames(0.0)).threads == 1
    two_processes = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert plan_for_machine(FinetuneConfig(), two_processes, Frames(0.0)).threads == 2  # 4 cores / 2 processes


def test_gpu_runs_leave_threads_alone_and_take_workers_from_the_cores():
    cuda = SimpleNamespace(device=torch.device("cuda"), num_processes=1)
    plan = plan_for_machine(FinetuneConfig(), cuda, Frames(5.0))
    assert plan.threads is None and plan.workers == 3 and plan.read_ms is None


def test_a_container_cpu_limit_caps_the_cores(tmp_path, monkeypatch):
    """A container limited to N CPUs' time (cgroup v2 cpu.max, or v1's CFS quota) still sees every
    host CPU: threads and side-by-side runs are planned for the limit, never for the host."""
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us"
    monkeypatch.setattr(machine, "CGROUP_V2_CPU_MAX", str(v2))
    monkeypatch.setattr(machine, "CGROUP_V1_CPU_QUOTA", (str(quota), str(period)))
    monkeypatch.setattr(machine, "available_cpus", lambda: set(range(16)))
    cores = REAL_AVAILABLE_CORES  # the autouse fixture stands in a fixed count for the other tests
    assert machine.cpu_quota() is None and cores() == 16  # no cgroup files: the CPUs it may run on
    for text, limit, expected in (("max 100000\n", None, 16), ("200000 100000\n", 2.0, 2), ("50000 100000\n", 0.5, 1)):
        v2.write_text(text)
        assert machine.cpu_quota() == limit and cores() == expected, text
    v2.unlink()
    period.write_text("100000\n")
    for text, limit, expected in (("-1\n", None, 16), ("350000\n", 3.5, 3)):
        quota.write_text(text)
        assert machine.cpu_quota() == limit and cores() == expected, text


def test_data_commands_size_their_processes_by_the_allowed_cores_without_torch():
    """`check-data` / `prepare` decode in processes sized by the cores this process may use (here
    its affinity cut to one CPU), not by the host's count, and still import no torch."""
    import subprocess
    import sys

    code = ("import os, sys; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from sewer_hf.data.check import DEFAULT_CHECK_WORKERS; import sewer_hf.data.prepare; "
            "print(DEFAULT_CHECK_WORKERS, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False"]


def test_kept_frames_budget_follows_the_memory_and_the_key(monkeypatch):
    """keep_frames_mb: None -> a quarter of the memory available, at most MAX_KEPT_FRAMES_MB,
    shared by the machine's processes (nothing where the memory is unknown); a number stands."""
    two_processes = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
    monkeypatch.setattr(machine, "memory_available_mb", lambda: 1000.0)
    assert machine.kept_frames_budget(FinetuneConfig(), CPU) == 250 * 2**20
    assert machine.kept_frames_budget(FinetuneConfig(), two_processes) == 125 * 2**20
    monkeypatch.setattr(machine, "memory_available_mb", lambda: 10**6)
    assert machine.kept_frames_budget(FinetuneConfig(), CPU) == machine.MAX_KEPT_FRAMES_MB * 2**20
    monkeypatch.setattr(machine, "memory_available_mb", lambda: None)
    assert machine.kept_frames_budget(FinetuneConfig(), CPU) == 0
    assert machine.kept_frames_budget(FinetuneConfig(keep_frames_mb=3), CPU) == 3 * 2**20
    if os.path.exists("/proc/meminfo"):  # Linux: read from there, in MB
        assert 0 < REAL_MEMORY_AVAILABLE_MB() < 2**30


def test_the_feed_keeps_frames_read_in_the_training_process(tmp_path, monkeypatch):
    """make_train_feed keeps the decoded frames when the loader reads in this process and says
    so in the run's opening line; not with loader workers, nor with keep_frames_mb 0."""
    import datasets
    import numpy as np
    from PIL import Image

    from sewer_hf.feed.pipeline import make_train_feed

    images = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(path)
        images.append(str(path))
    hf = datasets.Dataset.from_dict({"image": images, "labels": [[0.0] * 17] * 6}).cast_column("image", datasets.Image())
    monkeypatch.setattr(machine, "memory_available_mb", lambda: 1000.0)
    build = dict(cpu_transform=lambda: None, batched_augment=lambda dtype: torch.nn.Identity(), decode_size=16)
    feed = make_train_feed(FinetuneConfig(num_workers=0), CPU, hf, **build)
    assert feed.dataset.kept is not None and "decoded frames kept in memory" in feed.describe()
    assert feed.dataset[4]["pixel_values"].unique().tolist() == [160] and feed.dataset.kept.has(4)
    for cfg in (FinetuneConfig(num_workers=1), FinetuneConfig(num_workers=0, keep_frames_mb=0)):
        feed = make_train_feed(cfg, CPU, hf, **build)
        assert feed.dataset.kept is None and "kept in memory" not in feed.describe()
