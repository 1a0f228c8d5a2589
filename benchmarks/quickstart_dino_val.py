#!/usr/bin/env python
"""Does the quickstart's one-epoch DINO help its fine-tuning? Scored on a large val.

For one quickstart seed, on its own 3,072 train frames (prepared at 64 px): the quickstart's DINO
stage (`dino_config`: smoke_dino.yaml, one epoch, KoLeo at 0.5) then the smoke fine-tuning from its
teacher; the same after each `--dino-variant` (`--key=value` overrides of that DINO config); and
the fine-tuning from scratch, from the same random init. Each classifier is scored on 3,072 val
frames rendered with another seed (as in benchmarks/smoke_finetune_val.py), next to the
constant-predictor baseline.

    python benchmarks/quickstart_dino_val.py --seed 1     # as shipped, without KoLeo, from scratch (~12 min, 2 cores)
    python benchmarks/quickstart_dino_val.py --seed 1 --dino-variant="--koleo_weight=0.1"
    python benchmarks/quickstart_dino_val.py --quick      # a smoke test of the code (tiny)
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

from smoke_finetune_val import VAL_SEED, finetune_and_score, print_table, quickstart_frames

from sewer_hf.config import parse_overrides
from sewer_hf.experiments.quickstart import dino_config
from sewer_hf.feed.machine import machine_record
from sewer_hf.train.pretrain import pretrain

PLAIN_DINO = "--koleo_weight=0"  # the paper's DINO objective, as the quickstart ran it before KoLeo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dino-variant", action="append",
                        help="--dino-variant='--key=value ...': overrides of the quickstart's DINO config; repeatable "
                             f"(default: {PLAIN_DINO!r})")
    parser.add_argument("--seed", type=int, default=0, help="the quickstart's --seed: its train frames and its runs' seed")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the learning")
    args = parser.parse_args(argv)
    variants = args.dino_variant if args.dino_variant is not None else [PLAIN_DINO]
    n_train, n_val = (3072, 3072) if not args.quick else (96, 64)
    tiny_ft = {"epochs": 1, "image_size": 32, "batch_size": 8, "lr_milestones": []} if args.quick else {}
    tiny_dino = {"image_size": 32, "batch_size": 8, "knn_eval": False, "rankme_samples": 16} if args.quick else {}
    print(f"machine: {machine_record()}; train {n_train} frames (seed {args.seed}), val {n_val} (seed {VAL_SEED})",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = quickstart_frames(tmp, n_train, n_val, train_seed=args.seed, size=tiny_ft.get("image_size", 64))
        common = {"data": str(data), "seed": args.seed, "report_to": "none", "overwrite_output_dir": True}
        rows, dino_lines = [], []
        for name, variant in [("DINO as shipped", "")] + [(f"DINO {v}", v) for v in variants] + [("from scratch", None)]:
            began, backbone = time.perf_counter(), None
            if variant is not None:
                out = tmp / f"dino{len(rows)}"
                result = pretrain(dino_config({**common, **parse_overrides(shlex.split(variant))[1], **tiny_dino,
                                               "output_dir": str(out)}))
                backbone = result["backbone"]
                epoch_end = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "rankme" in l]
                knn = result.get("knn")
                dino_lines.append(f"{name}: teacher RankMe {epoch_end[-1]['rankme']:.1f}" + (
                    f", kNN mAP {100 * knn['pretrained']['mAP']:.2f} (random init {100 * knn['random_init']['mAP']:.2f})"
                    if knn else ""))
            report = finetune_and_score({"data": str(data), "seed": args.seed, **tiny_ft,
                                         **({"backbone": backbone} if backbone else {})}, tmp / f"finetune{len(rows)}")
            rows.append((name, report, time.perf_counter() - began))
    print_table(rows)
    print("\n".join(dino_lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
