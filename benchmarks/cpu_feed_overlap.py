#!/usr/bin/env python
"""Does preparing DINO batches *beside* the training step pay on a small CPU?

On this machine's cores, in one run (ViT-T/16, 64 px, batch 32, the smoke DINO config):
  (a) the bare DINO step alone (synthetic tensors; torch threads = the cores);
  (b) the step with the batched augmentation run inline before it, one after the other
      (what the recipe does on a CPU: `num_workers` 0, the augmentation in the main process);
  (c) the step while a separate 1-thread process augments batches beside it, at the rate the
      step consumes them (what a loader worker or a feed thread would do).
Prints (b)/(a) and (c)/(a). On 2 cores (c) < (b) says: keep the feed inline. A parallel op of
the step waits for its slowest thread, and the process beside it keeps taking one of the two.

    python benchmarks/cpu_feed_overlap.py       # ~1 minute
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "smoke_dino.yaml"


def _augment():
    from sewer_hf.feed.batched import GPUPretrainAugment
    from sewer_hf.feed.spec import pretrain_augmentation

    return GPUPretrainAugment(config=pretrain_augmentation("paper"), size=64, scale=(0.5, 1.0))


def _beside(stop, done, period_s: float) -> None:
    """A 1-thread process augmenting one batch every `period_s` seconds (the step's pace)."""
    torch.set_num_threads(1)
    augment, x = _augment(), torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    while not stop.is_set():
        start = time.perf_counter()
        augment(x)
        done.value += 1
        time.sleep(max(0.0, period_s - (time.perf_counter() - start)))


def main() -> int:
    from cpu_training import model_step_rate

    from sewer_hf.config import PretrainConfig, load_config
    from sewer_hf.feed.machine import available_cores

    cfg = load_config(PretrainConfig, str(CONFIG), {})
    torch.set_num_threads(available_cores())
    alone = model_step_rate("dino", cfg, steps=20, warmup=3)
    augment, x = _augment(), torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    for _ in range(3):
        augment(x)
    start = time.perf_counter()
    for _ in range(20):
        augment(x)
    augment_s = (time.perf_counter() - start) / 20
    inline = cfg.batch_size / (cfg.batch_size / alone + augment_s)
    ctx = mp.get_context("spawn")
    stop, done = ctx.Event(), ctx.Value("i", 0)
    worker = ctx.Process(target=_beside, args=(stop, done, cfg.batch_size / alone))
    worker.start()
    time.sleep(8)  # its imports and first batches
    beside = model_step_rate("dino", cfg, steps=20, warmup=3)
    stop.set()
    worker.join()
    print(f"{available_cores()} cores, torch {torch.__version__}: (a) step alone {alone:.1f} img/s | augmentation "
          f"{1000 * augment_s:.1f} ms/batch | (b) inline, one after the other {inline:.1f} img/s "
          f"({inline / alone:.2f} of (a)) | (c) a 1-thread augmenting process beside the step {beside:.1f} img/s "
          f"({beside / alone:.2f} of (a))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
