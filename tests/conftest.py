"""Shared fixtures, and the suite's split over the cores.

``make test`` runs the suite in pytest-xdist workers (``-n auto --dist loadfile``): one per
core, up to ``MAX_WORKERS``, each with its share of the cores as torch/OpenMP threads, whole
files to a worker (module fixtures built once) and the files with a ``slow`` test first (so the
longest do not start last, leaving the other workers idle). Most
tests run one thread at a time (imports, small tensors, subprocess start-up), so on 2 cores one
process used ~1.15 of them: 555 s of tests alone, 293 s in 2 workers of 1 thread each (the same
busy AMX Xeon, cold compile cache). Every port a test opens is a free one (``free_port``), so
the workers never collide.
"""
from __future__ import annotations

import os
import socket

import pytest

from sewer_hf.feed.machine import available_cores

# beyond this the suite's longest file sets its time, and each worker holds its own torch (~0.5 GB)
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: the cores this process may run on (its affinity: a container's share, not
    the host's count), at most ``MAX_WORKERS``."""
    return min(available_cores(), MAX_WORKERS)


def _threads_per_worker() -> None:
    """In an xdist worker: the cores split between the workers (an oversubscribed OpenMP pool
    spins), unless the caller set OMP_NUM_THREADS. Set before any test imports torch's pool."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, available_cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


_threads_per_worker()


def pytest_collection_modifyitems(config, items) -> None:
    """The files holding a ``slow`` test first, each file's tests together and in their order."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
