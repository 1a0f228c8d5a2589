#!/usr/bin/env python
"""CPU training throughput: is the model step fed? The recipes end to end against the step alone.

On this machine's CPU, in one run, for DINO pretraining and for fine-tuning (ViT-T/16, 64 px,
batch 32, the smoke configs):
  (a) model step alone: synthetic tensors, forward + backward + AdamW (DINO: the student on 2
      views, the teacher, the loss, the EMA), torch threads as the recipes choose them;
  (b) before: the recipe as the quickstart ran it until now: 352x288 PNG frames, the paper's
      augmentations per image (PIL) in 2 loader workers, 2 torch threads;
  (c) after: the recipe with its defaults on frames read at the size they train on
      (`sewer-hf prepare --size 64` shards): augmentation batched on the CPU, workers and
      threads chosen by `sewer_hf.feed.machine` (reading a 64-px frame is cheap: no workers).
(b) and (c) run the real `pretrain()` / `finetune()` with `max_steps`; their rate is the median
img/s the progress bar reports (20-step windows) after a warm-up, so loading, augmentation,
the step, the weight average, logging and the epoch-end checkpoints (one per 50 steps) all count;
scoring does not
(fine-tuning scores once, after the last step; DINO runs without its kNN and RankMe checks).
Prints (c)/(b) and (c)/(a), and (a)/(b): the most any feed could give over (b), since (c) runs
the same model step as (a) and also reads and augments its frames. Goals on a 2-core CPU:
fine-tuning (c)/(b) >= 2 and (c)/(a) >= 0.9, DINO (c)/(b) >= 1.5.

    python benchmarks/cpu_training.py            # ~6 minutes on 2 cores (1,600 frames rendered first)
    python benchmarks/cpu_training.py --quick    # a smoke test of the code (tiny)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sewer_hf.cli import main as cli
from sewer_hf.config import FinetuneConfig, PretrainConfig, load_config
from sewer_hf.feed.machine import available_cores, cpu_features
from sewer_hf.models.dino import DINOLoss
from sewer_hf.models.losses import WeightedBCE
from sewer_hf.models.vit import build_classifier, build_student_teacher, create_backbone
from sewer_hf.synth import generate_dataset
from sewer_hf.train.finetune import finetune
from sewer_hf.train.optim import ema_update, make_adamw, param_groups
from sewer_hf.train.pretrain import pretrain

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
FORMER = {"feed": "per_image", "num_workers": 2, "cpu_threads": 2}  # (b): how the quickstart ran before


def model_step_rate(kind: str, cfg, steps: int, warmup: int) -> float:
    """(a): images/s of the bare training step on synthetic tensors."""
    torch.manual_seed(0)
    x = [torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size) for _ in range(2)]
    if kind == "finetune":
        model = build_classifier(create_backbone(cfg.arch, img_size=cfg.image_size, drop_path_rate=cfg.drop_path_rate),
                                 num_classes=17)
        optimizer = make_adamw(param_groups(model), "cpu")  # as the recipe
        criterion, y = WeightedBCE(), (torch.rand(cfg.batch_size, 17) < 0.2).float()

        def step():  # as the recipe's: forward, weighted BCE, backward, clipping (when configured), AdamW
            loss = criterion(model(x[0]), y)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        student, teacher = build_student_teacher(cfg.arch, img_size=cfg.image_size, out_dim=cfg.out_dim,
                                                 hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim,
                                                 drop_path_rate=cfg.drop_path_rate)
        loss_fn = DINOLoss(cfg.out_dim, n_global_crops=2, warmup_teacher_temp=cfg.warmup_teacher_temp,
                           teacher_temp=cfg.teacher_temp, warmup_teacher_temp_epochs=0, n_epochs=cfg.epochs)
        optimizer = make_adamw(param_groups(student), "cpu")

        def step():
            with torch.no_grad():
                t = teacher(x)
            loss = loss_fn(student(x), t, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_update(teacher, student, 0.996)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        step()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def recipe_rate(kind: str, yaml: str, overrides: dict, out: Path, warmup_steps: int) -> float:
    """(b)/(c): median img/s of the recipe's steps after ``warmup_steps`` (progress-bar windows)."""
    overrides = {**overrides, "output_dir": str(out), "report_to": "none", "log_every": 1,
                 "save_every_steps": 100_000, "overwrite_output_dir": True}
    if kind == "finetune":
        # no per-epoch scoring inside the measured steps (the recipe scores once at the end here):
        # this measures whether the step is fed, as for DINO (no kNN, no RankMe)
        finetune(load_config(FinetuneConfig, yaml, {**overrides, "tune_thresholds": False, "eval_every_epochs": 10_000}))
    else:
        pretrain(load_config(PretrainConfig, yaml, {**overrides, "knn_eval": False, "rankme_samples": 0}))
    rates = [r["img_per_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "img_per_s" in r and r["step"] > warmup_steps and r["img_per_s"] == r["img_per_s"]]
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the speed")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per recipe run")
    args = parser.parse_args(argv)
    # epochs of 50 steps: most 20-step windows hold no epoch end (a checkpoint), as in real runs
    # (the quickstart's epochs are 86-96 steps); with 20-step epochs every window held one
    steps, warmup, frames = (args.steps, 25, 1600) if not args.quick else (12, 4, 96)
    size = {"image_size": 32, "batch_size": 8} if args.quick else {}
    print(f"machine: {platform.processor() or platform.machine()}, {available_cores()} cores ({cpu_features()}); torch {torch.__version__}; "
          f"{steps} steps per recipe run, rates after step {warmup}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, prepared = tmp / "raw", tmp / "prepared"
        generate_dataset(raw, frames, 32, seed=0, size=(352, 288), defect_fraction=0.6, progress=False,
                         workers=available_cores())
        for split in ("Train", "Val"):
            cli(["prepare", "--data-root", str(raw), "--split", split, "--out", str(prepared),
                 "--size", str(size.get("image_size", 64))])
        rows = {}
        for kind, yaml, cls in (("finetune", CONFIGS / "smoke_finetune.yaml", FinetuneConfig),
                                ("dino", CONFIGS / "smoke_dino.yaml", PretrainConfig)):
            common = {"max_steps": steps, "epochs": 50, **size}
            former = {**FORMER, **({"augmentation": "paper"} if kind == "finetune" else {})}  # the former smoke config's
            before = recipe_rate(kind, str(yaml), {**common, "data": str(raw), **former}, tmp / f"{kind}_before", warmup)
            after = recipe_rate(kind, str(yaml), {**common, "data": str(prepared)}, tmp / f"{kind}_after", warmup)
            cfg = load_config(cls, str(yaml), size)
            torch.set_num_threads(available_cores())  # what the recipe chose for (c) with no workers
            alone = model_step_rate(kind, cfg, steps=max(5, steps // 3), warmup=3)
            rows[kind] = (alone, before, after)
            print(f"{kind:9s} (a) step alone {alone:6.1f} img/s | (b) before {before:6.1f} img/s | "
                  f"(c) after {after:6.1f} img/s | (c)/(b) {after / before:5.2f}x | (c)/(a) {after / alone:5.2f} | "
                  f"ceiling (a)/(b) {alone / before:5.2f}x", flush=True)
    ft, dino = rows["finetune"], rows["dino"]
    print(f"finetune_speedup={ft[2] / ft[1]:.2f} finetune_fed={ft[2] / ft[0]:.2f} "
          f"dino_speedup={dino[2] / dino[1]:.2f} dino_fed={dino[2] / dino[0]:.2f} "
          f"dino_ceiling={dino[0] / dino[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
