#!/usr/bin/env python
"""Two fine-tunings one after the other (every core each) against side by side (a share each).

What the quickstart does with its two fine-tuning stages (`Stages.run_side_by_side`): on a CPU
whose fine-tuning step does not use every core well, two runs side by side finish sooner than
one after the other. Here, on the quickstart's frames (64-px shards), the smoke fine-tuning
recipe from scratch, seeds 0 and 1, `--epochs` each, run (a) one after the other, each with all
the cores, then (b) side by side in two processes, each pinned to half of them. Each variant runs
twice, interleaved (a b a b), since a shared machine's speed drifts. First, the reason: the bare
fine-tuning step of `cpu_training.py` (a) with every core's thread, with 1 thread, and as many
1-thread processes at once as there are cores (img/s of each, and their sum). Prints the wall time of
both runs of each, (a)/(b), and whether the two layouts' val mAPs agree (to 2 decimals: one
thread instead of two changes only the order of float sums). The side-by-side wall time includes
each process's start (~10 s of imports on 2 cores), which the quickstart's longer runs amortise.

    python benchmarks/side_by_side.py            # ~8 minutes on 2 cores (2 epochs per run)
    python benchmarks/side_by_side.py --epochs 4 # ~14 minutes: runs long enough that the start matters less
    python benchmarks/side_by_side.py --quick    # a smoke test of the code (tiny)
"""
from __future__ import annotations

import argparse
import functools
import platform
import tempfile
from pathlib import Path

import torch

from sewer_hf.config import FinetuneConfig, load_config
from sewer_hf.experiments.quickstart import shipped_config, synthetic_prepared_data
from sewer_hf.experiments.stages import Stages, config_hash
from sewer_hf.feed.machine import available_cores, available_cpus, cpu_features
from sewer_hf.train.finetune import finetune


def _bare_rate(threads: int, cpus, steps: int, size: dict) -> float:
    """In a process of its own: the bare fine-tuning step's img/s on ``cpus`` with ``threads``."""
    import os

    from cpu_training import model_step_rate

    if cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)
    cfg = load_config(FinetuneConfig, shipped_config("smoke_finetune.yaml"), size)
    return model_step_rate("finetune", cfg, steps=steps, warmup=3)


def bare_rates(steps: int, size: dict) -> tuple[float, float, list[float]]:
    """(img/s with every core's thread, with 1 thread, [each 1-thread process's img/s when one
    runs per core]); each measurement in fresh processes started together."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def rates(jobs):  # (threads, cpus) per process
        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_bare_rate, *zip(*jobs), [steps] * len(jobs), [size] * len(jobs)))

    cpus = sorted(available_cpus())
    return rates([(len(cpus), None)])[0], rates([(1, cpus[:1])])[0], rates([(1, [cpu]) for cpu in cpus])


def both_runs(folder: Path, prepared: Path, epochs: int, side_by_side: bool, size: dict) -> tuple[float, list[float]]:
    """(wall seconds of the two runs, their val mAPs)."""
    cfgs = {f"seed{seed}": load_config(FinetuneConfig, shipped_config("smoke_finetune.yaml"), {
        "data": str(prepared), "output_dir": str(folder / f"seed{seed}"), "seed": seed, "epochs": epochs,
        "report_to": "none", **size}) for seed in (0, 1)}
    stages = Stages(folder, "bench")
    results = stages.run_side_by_side({name: (functools.partial(finetune, cfg), config_hash(cfg))
                                       for name, cfg in cfgs.items()}, enabled=side_by_side)
    wall = stages.side_by_side[0]["seconds"] if stages.side_by_side else sum(stages.seconds.values())
    return wall, [round(100 * results[name]["mAP"], 2) for name in cfgs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the speed")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fine-tuning run")
    args = parser.parse_args(argv)
    train, val, epochs = (3072, 512, args.epochs) if not args.quick else (96, 64, 1)
    size = {"image_size": 32, "batch_size": 8} if args.quick else {}
    print(f"machine: {platform.processor() or platform.machine()}, {available_cores()} cores ({cpu_features()}); "
          f"torch {torch.__version__}; 2 runs of {epochs} epoch(s) on {train} frames", flush=True)
    every, one, apart = bare_rates(5 if args.quick else 20, size)
    print(f"bare step: {available_cores()} thread(s) {every:.1f} img/s | 1 thread {one:.1f} img/s | "
          f"{len(apart)} 1-thread processes at once {' + '.join(f'{r:.1f}' for r in apart)} = {sum(apart):.1f} img/s "
          f"(x{sum(apart) / every:.2f})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, prepared = synthetic_prepared_data(tmp / "data", train, val)
        walls: dict[bool, list[float]] = {False: [], True: []}
        maps = {}
        for round_ in range(2):
            for side_by_side in (False, True):
                wall, maps[side_by_side] = both_runs(tmp / f"{round_}_{side_by_side}", prepared, epochs, side_by_side, size)
                walls[side_by_side].append(wall)
                print(f"round {round_}: {'side by side' if side_by_side else 'one after the other'}: {wall:.0f} s, "
                      f"val mAP {maps[side_by_side]}", flush=True)
    first, second = min(walls[False]), min(walls[True])
    print(f"(a) one after the other {' / '.join(f'{w:.0f}' for w in walls[False])} s | (b) side by side "
          f"{' / '.join(f'{w:.0f}' for w in walls[True])} s | best (a)/(b) {first / second:.2f}x | "
          f"val mAP agrees: {maps[False] == maps[True]}")
    print(f"side_by_side_speedup={first / second:.2f} bare_step_speedup={sum(apart) / every:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
