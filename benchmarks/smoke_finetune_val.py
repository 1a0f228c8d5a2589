#!/usr/bin/env python
"""Does the smoke fine-tuning recipe learn at the quickstart's budget? Scored on a large val.

The quickstart's Val (512 frames) holds 2-7 positives of the rarer classes, so its mAP moves by
~2 points between equally good models: too noisy to choose settings on. Here the recipe itself
(`finetune()`, recipes/configs/smoke_finetune.yaml, ViT-T/16 from scratch at 64 px) trains on the
quickstart's own train frames (3,072, seed 0, prepared at 64 px) and is scored on 3,072 val
frames rendered with another seed, at 0.5 and at its shipped thresholds, next to the
constant-predictor baseline of those frames. Each `--variant` (`--key=value` overrides of the
config, as the recipes take them) is one run; the first is the baseline the others are compared with.

    python benchmarks/smoke_finetune_val.py            # the shipped config vs the former one (~8 min, 2 cores)
    python benchmarks/smoke_finetune_val.py --variant= --variant="--lr_milestones=4,6,8 --warmup_epochs=0.5"
    python benchmarks/smoke_finetune_val.py --quick    # a smoke test of the code (tiny)
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

from sewer_hf.config import FinetuneConfig, load_config, parse_overrides
from sewer_hf.experiments.quickstart import generate_synthetic, prepare_shards, shipped_config
from sewer_hf.feed.machine import machine_record
from sewer_hf.train.finetune import finetune

VAL_SEED = 12345  # not the quickstart's: other frames than any it trains, holds out or scores
FORMER = "--repeat_factor_threshold=0"  # the smoke config until 2026-12-02 16:00: uniform shuffling


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append",
                        help="--variant='--key=value ...': config overrides as the recipes take them (empty = as shipped); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (the frames are the quickstart's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the learning")
    args = parser.parse_args(argv)
    variants = args.variant if args.variant is not None else ["", FORMER]
    n_train, n_val = (3072, 3072) if not args.quick else (96, 64)
    tiny = {"epochs": 1, "image_size": 32, "batch_size": 8, "lr_milestones": []} if args.quick else {}
    print(f"machine: {machine_record()}; train {n_train} frames (seed 0), val {n_val} (seed {VAL_SEED})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = quickstart_frames(tmp, n_train, n_val, train_seed=0, size=tiny.get("image_size", 64))
        rows = []
        for variant in variants:
            over = {**parse_overrides(shlex.split(variant))[1], **tiny, "data": str(data), "seed": args.seed}
            began = time.perf_counter()
            report = finetune_and_score(over, tmp / f"run{len(rows)}")
            rows.append((variant or "as shipped", report, time.perf_counter() - began))
    print_table(rows)
    return 0


def quickstart_frames(tmp: Path, n_train: int, n_val: int, train_seed: int, size: int) -> Path:
    """``tmp/prepared``: the quickstart's train frames of ``train_seed`` (its ``--seed``) and
    ``n_val`` val frames of VAL_SEED, prepared at ``size`` px."""
    data = tmp / "prepared"
    generate_synthetic(tmp / "train", n_train, 0, seed=train_seed)
    generate_synthetic(tmp / "val", 0, n_val, seed=VAL_SEED)
    prepare_shards(tmp / "train", data, size=size, splits=("Train",))
    prepare_shards(tmp / "val", data, size=size, splits=("Val",))
    return data


def finetune_and_score(overrides: dict, out: Path) -> dict:
    """smoke_finetune.yaml with ``overrides`` into ``out``; its eval.json (Val at 0.5 and at the shipped thresholds)."""
    finetune(load_config(FinetuneConfig, shipped_config("smoke_finetune.yaml"), {
        **overrides, "report_to": "none", "output_dir": str(out), "overwrite_output_dir": True}))
    return json.loads((out / "eval.json").read_text())


def print_table(rows: list[tuple[str, dict, float]]) -> None:
    """(name, eval.json of a fine-tuning run, seconds) rows, next to the constant predictor; the
    first row is the one the others are compared with."""
    base = rows[0][1]["constant_baseline"]
    print(f"\nconstant predictor on these val frames: F2_CIW {100 * base['F2_CIW']:.2f} "
          f"F1_Normal {100 * base['F1_Normal']:.2f} mAP {100 * base['mAP']:.2f}")
    print("| variant | mAP | x constant | F2_CIW (shipped) | F1_Normal (shipped) | learned | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, report, seconds in rows:
        shipped = report["at_shipped_thresholds"]
        print(f"| {name} | {100 * report['mAP']:.2f} | {report['mAP'] / base['mAP']:.2f} | {100 * shipped['F2_CIW']:.2f} | "
              f"{100 * shipped['F1_Normal']:.2f} | {all(report['learned'].values())} | {seconds:.0f} |")
    for name, report, _ in rows[1:]:
        print(f"mAP {name} / {rows[0][0]}: {report['mAP'] / rows[0][1]['mAP']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
