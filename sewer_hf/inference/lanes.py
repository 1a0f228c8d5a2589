"""Lanes: batches scored in parallel on a CPU, each in its own thread with one torch thread.
``SewerClassifier`` (files), the footage scan and ``--precision auto``'s timing all run them."""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

from sewer_hf.feed.machine import available_cores


def inference_lanes(cores: Optional[int] = None) -> int:
    """Batches scored in parallel by a model on the CPU, each on one thread: one per core."""

    return max(1, cores or available_cores())


def in_lanes(items: Iterable, work: Callable, lanes: int) -> Iterator:
    """``work(item)`` for each item, ``lanes`` at a time in threads, results in the items' order.
    At most ``lanes + 1`` items are in flight: the caller prepares the next one (e.g. decodes
    footage) while the lanes work. An error in a lane is raised here, when its turn comes.
    torch ops in a lane (resize, normalisation) run on that lane's thread only: two lanes sharing
    torch's thread pool would wait for each other at every parallel op."""
    import torch

    caller_threads = torch.get_num_threads()
    # torch's thread count is per thread (OpenMP); setting it in a lane also becomes the default
    # of threads started later, which is put back below. A single lane keeps the caller's threads
    # (a PyTorch model scored there still uses every core).
    with ThreadPoolExecutor(max_workers=lanes, initializer=torch.set_num_threads,
                            initargs=(1 if lanes > 1 else caller_threads,)) as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) > lanes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            torch.set_num_threads(caller_threads)
