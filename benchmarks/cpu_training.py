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
      threads chosen by `sewer_hf.feed.machine` (reading a 64-px frame is cheap: no workers;
      so each frame is read from its shard once, in the first epoch, and kept decoded in memory).
(b) and (c) run the real `pretrain()` / `finetune()` with `max_steps`; their rate is the median
img/s the progress bar reports (20-step windows) from step 60 on (the second of the 50-step
epochs and later: the steady state, as in 8 of the quickstart's 9 fine-tuning epochs), so loading, augmentation,
the step, the weight average, logging and the epoch-end checkpoints (one per 50 steps) all count;
scoring does not
(fine-tuning scores once, after the last step; DINO runs without its kNN and RankMe checks).
Prints (c)/(b) and (c)/(a), and (a)/(b): the most any feed could give over (b), since (c) runs
the same model step as (a) and also reads and augments its frames. Goals on a 2-core CPU:
fine-tuning (c)/(b) >= 2 and (c)/(a) >= 0.9, DINO (c)/(b) >= 1.5.

Rounds: a shared 2-core host drifts by 10-20 % within minutes, more than the margins above
(one run measured DINO's (c) at 53 img/s, the same recipe minutes later at 59-70). So (a), (b)
and (c) are measured in rounds, in reverse order every other round (b, c, a then a, c, b: a
steady drift then weighs on both sides alike); each ratio is taken within its round, and the
last line gives each ratio's median over the rounds and its range (``_min``, ``_max``).

    python benchmarks/cpu_training.py               # 3 rounds, ~20 minutes on 2 cores (1,600 frames rendered first)
    python benchmarks/cpu_training.py --rounds 1    # ~8 minutes, one of each
    python benchmarks/cpu_training.py --quick       # a smoke test of the code (tiny)
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


def ratios(rates: dict[str, float]) -> dict[str, float]:
    """One round's ratios: speedup (c)/(b), fed (c)/(a), ceiling (a)/(b)."""
    return {"speedup": rates["after"] / rates["before"], "fed": rates["after"] / rates["alone"],
            "ceiling": rates["alone"] / rates["before"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not the speed")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per recipe run")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of (a), (b), (c) each, in alternating order (default 3; --quick 2)")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    if rounds < 1:
        parser.error(f"--rounds {rounds}: expected at least 1")
    # epochs of 50 steps: most 20-step windows hold no epoch end (a checkpoint), as in real runs
    # (the quickstart's epochs are 86-96 steps); with 20-step epochs every window held one.
    # Rates from step 60 on: (c) reads its frames from the shards in its first epoch only
    steps, warmup, frames = (args.steps, 60, 1600) if not args.quick else (12, 4, 96)
    if steps <= warmup:
        parser.error(f"--steps {steps}: expected more than the {warmup} steps before the rates are read")
    size = {"image_size": 32, "batch_size": 8} if args.quick else {}
    print(f"machine: {platform.processor() or platform.machine()}, {available_cores()} cores ({cpu_features()}); torch {torch.__version__}; "
          f"{steps} steps per recipe run, rates after step {warmup}; {rounds} round(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw, prepared = tmp / "raw", tmp / "prepared"
        generate_dataset(raw, frames, 32, seed=0, size=(352, 288), defect_fraction=0.6, progress=False,
                         workers=available_cores())
        for split in ("Train", "Val"):
            cli(["prepare", "--data-root", str(raw), "--split", split, "--out", str(prepared),
                 "--size", str(size.get("image_size", 64))])
        per_round: dict[str, list[dict[str, float]]] = {"finetune": [], "dino": []}  # each round's ratios
        for r in range(rounds):
            for kind, yaml, cls in (("finetune", CONFIGS / "smoke_finetune.yaml", FinetuneConfig),
                                    ("dino", CONFIGS / "smoke_dino.yaml", PretrainConfig)):
                common = {"max_steps": steps, "epochs": 50, **size}
                former = {**FORMER, **({"augmentation": "paper"} if kind == "finetune" else {})}  # the former smoke config's
                cfg = load_config(cls, str(yaml), size)

                def measure(what: str) -> float:
                    if what == "before":
                        return recipe_rate(kind, str(yaml), {**common, "data": str(raw), **former}, tmp / f"{kind}_before", warmup)
                    if what == "after":
                        return recipe_rate(kind, str(yaml), {**common, "data": str(prepared)}, tmp / f"{kind}_after", warmup)
                    torch.set_num_threads(available_cores())  # what the recipe chose for (c) with no workers
                    return model_step_rate(kind, cfg, steps=max(5, steps // 3), warmup=3)

                order = ("before", "after", "alone") if r % 2 == 0 else ("alone", "after", "before")
                rates = {what: measure(what) for what in order}
                q = ratios(rates)
                per_round[kind].append(q)
                print(f"round {r + 1}/{rounds} {kind:9s} (a) step alone {rates['alone']:6.1f} img/s | (b) before "
                      f"{rates['before']:6.1f} img/s | (c) after {rates['after']:6.1f} img/s | (c)/(b) {q['speedup']:5.2f}x | "
                      f"(c)/(a) {q['fed']:5.2f} | ceiling (a)/(b) {q['ceiling']:5.2f}x", flush=True)
    last = {}  # the last line's key=value pairs (cpu_goals.py reads them)
    for kind, qs in per_round.items():
        values = {name: [q[name] for q in qs] for name in ("speedup", "fed", "ceiling")}
        med = {name: statistics.median(v) for name, v in values.items()}
        print(f"{kind:9s} median of {rounds} round(s): (c)/(b) {med['speedup']:.2f}x "
              f"({min(values['speedup']):.2f}-{max(values['speedup']):.2f}) | (c)/(a) {med['fed']:.2f} "
              f"({min(values['fed']):.2f}-{max(values['fed']):.2f}) | ceiling (a)/(b) {med['ceiling']:.2f}x")
        for name in ("speedup", "fed"):
            last.update({f"{kind}_{name}": med[name], f"{kind}_{name}_min": min(values[name]),
                         f"{kind}_{name}_max": max(values[name])})
    last["dino_ceiling"] = med["ceiling"]  # dino is the last kind
    print(" ".join(f"{key}={value:.2f}" for key, value in last.items()) + f" rounds={rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
