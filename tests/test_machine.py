"""Fitting a run to the machine (sewer_hf.feed.machine): loader workers and torch threads follow the
measured cost of reading a frame, and every choice can be overridden."""
import time
from types import SimpleNamespace

import pytest
import torch

from sewer_hf.config import FinetuneConfig
from sewer_hf.feed.machine import MAIN_PROCESS_READ_MS, plan_for_machine, read_cost_ms


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
