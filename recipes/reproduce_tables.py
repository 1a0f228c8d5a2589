#!/usr/bin/env python
r"""Re-run the paper's Table 2 (SSL + fine-tuning at 10/50/100 %, linear probe, hybrid, fully
supervised; ViT-T/16 and ViT-S/16) and Table 3 (final RankMe) and write them as markdown next
to the paper's numbers.

    python recipes/reproduce_tables.py --budget smoke --out runs/tables            # ViT-T/16, 2 CPU cores, synthetic data
    python recipes/reproduce_tables.py --budget smoke --archs vit_tiny,vit_small   # and ViT-S/16 (~3x ViT-T's time)
    python recipes/reproduce_tables.py --budget paper --data /data/sewer-ml --out runs/tables_paper

`--budget smoke` is the quickstart's recipe across the grid: its synthetic frames (3,072 train,
2,048 Val, prepared once to 64-px shards; NOT Sewer-ML numbers when --data is not given), its
DINO stage (one epoch of smoke_dino.yaml with KoLeo) and smoke_finetune.yaml as it is, so that
the classifiers have the budget that makes the quickstart's learn. `--budget paper` uses the
paper configs (for a real run launch each stage with `accelerate launch`; this driver runs them
in-process). Each run's `stage.json` marks it finished: a re-run reuses it, an interrupted one
resumes from its checkpoint, and one made with another config is an error (never reused).
On a CPU the runs go side by side (`Stages.run_side_by_side`): an architecture's pretrainings at
once, then its fine-tunings, a process per core, the longest first, each run's output in
`<out>/<arch>/<run>.log`; `--one-at-a-time` runs each here with every core.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from pathlib import Path

from sewer_hf.config import FinetuneConfig, PretrainConfig, load_config
from sewer_hf.experiments.quickstart import TRAIN_FRAMES, VAL_FRAMES, dino_config, synthetic_prepared_data
from sewer_hf.experiments.stages import Stages, config_hash
from sewer_hf.feed.machine import machine_record
from sewer_hf.metrics import LEARNED_BAR, learned
from sewer_hf.train.finetune import finetune
from sewer_hf.train.pretrain import pretrain
from sewer_hf.train.run import training_progress

CONFIGS = Path(__file__).resolve().parent / "configs"

# Paper, Table 2: (F2_CIW %, F1_Normal %); None where the paper has no entry.
PAPER_TABLE2 = {
    ("vit_tiny", "hybrid"): ((37.95, 80.96), None), ("vit_tiny", "linear"): ((25.84, 57.04), None),
    ("vit_tiny", "10%"): ((28.58, 82.14), (32.65, 82.29)), ("vit_tiny", "50%"): ((52.78, 88.32), (50.15, 87.60)),
    ("vit_tiny", "100%"): ((58.18, 89.76), (58.94, 89.68)),
    ("vit_small", "hybrid"): ((43.48, 86.54), None), ("vit_small", "linear"): ((30.87, 62.65), None),
    ("vit_small", "10%"): ((50.05, 87.45), (36.44, 83.48)), ("vit_small", "50%"): ((57.17, 90.18), (56.23, 88.60)),
    ("vit_small", "100%"): ((60.39, 90.13), (58.81, 89.95)),
}
PAPER_TABLE3 = {("vit_tiny", False): 74.37, ("vit_tiny", True): 26.71, ("vit_small", False): 50.56,
                ("vit_small", True): 26.87}
# Smoke runs on the quickstart's frames (TRAIN_FRAMES + VAL_FRAMES) with its recipes: until 2026-12-03 the
# grid ran 2 + 2 epochs on 768 frames, and none of its 20 classifiers left the constant predictor.
ARCHS = {"smoke": ["vit_tiny"], "paper": ["vit_tiny", "vit_small"]}  # ViT-S/16 at smoke: ~3x ViT-T's CPU time
NAMES = {"vit_tiny": "ViT-T/16", "vit_small": "ViT-S/16"}
FRACTIONS = {"10%": 0.1, "50%": 0.5, "100%": 1.0}
# the ETA's weights per image and epoch (2-core CPU, ViT-T/16, 64 px): a DINO image is two views
# through student and teacher; a linear probe's backbone runs without gradients; ViT-S/16 ~3x
COST = {"pretrain": 2.5, "finetune": 1.0, "linear": 0.4}
ARCH_COST = {"vit_tiny": 1.0, "vit_small": 3.0}


def configs(budget: str, arch: str) -> tuple[str, str, str, str]:
    short = arch.replace("vit_", "")
    if budget == "smoke":
        return (str(CONFIGS / "smoke_dino.yaml"),) + (str(CONFIGS / "smoke_finetune.yaml"),) * 3
    return (str(CONFIGS / f"vit_{short}_dino.yaml"), str(CONFIGS / f"vit_{short}_finetune.yaml"),
            str(CONFIGS / f"vit_{short}_linear.yaml"), str(CONFIGS / f"vit_{short}_supervised.yaml"))


def grid_configs(args, data: str | None) -> list[tuple[str, PretrainConfig | FinetuneConfig]]:
    """Every run of the grid, in order: (name, config); a fine-tuning run's backbone is the
    output of the pretraining run named before it."""
    out = Path(args.out)
    # an interrupted run resumes from its last checkpoint; a finished one is reused (run_grid)
    common = {"seed": args.seed, "report_to": "none", "resume_from_checkpoint": "latest", **({"data": data} if data else {})}
    runs: list[tuple[str, PretrainConfig | FinetuneConfig]] = []
    for arch in args.archs:
        dino_yaml, ft_yaml, linear_yaml, sup_yaml = configs(args.budget, arch)
        for hybrid in (False, True):
            name = f"{arch}/dino{'_hybrid' if hybrid else ''}"
            over = {**common, "arch": arch, "hybrid": hybrid, "output_dir": str(out / name), "knn_eval": False}
            if args.budget == "smoke":  # the quickstart's DINO stage (one epoch of its frames, KoLeo)
                cfg = dino_config(over, args.pretrain_epochs)
            else:
                cfg = load_config(PretrainConfig, dino_yaml, {**over, **epochs(args.pretrain_epochs)})
            runs.append((name, cfg))

        def ft(name: str, yaml: str, **over):
            full = {**common, "arch": arch, "output_dir": str(out / arch / name), **over, **epochs(args.finetune_epochs)}
            runs.append((f"{arch}/{name}", load_config(FinetuneConfig, yaml, full)))

        ssl = str(out / arch / "dino" / "backbone")
        for label, fraction in FRACTIONS.items():
            ft(f"ssl_ft_{label[:-1]}", ft_yaml, backbone=ssl, fraction=fraction)
            ft(f"supervised_{label[:-1]}", sup_yaml, backbone=None, fraction=fraction)
        ft("linear", linear_yaml, backbone=ssl, linear_probe=True)
        ft("hybrid_ft", ft_yaml, backbone=str(out / arch / "dino_hybrid" / "backbone"))
    return runs


def epochs(value: int | None) -> dict:
    return {"epochs": value} if value else {}


def run_cost(cfg: PretrainConfig | FinetuneConfig) -> float:
    """A run's share of the grid's work, for the ETA: images processed times their relative cost."""
    if isinstance(cfg, PretrainConfig):
        kind, share = "pretrain", 1.0
    else:
        kind, share = ("linear" if cfg.linear_probe else "finetune"), cfg.fraction
    return COST[kind] * ARCH_COST.get(cfg.arch, 1.0) * cfg.epochs * share


def phases(runs: list[tuple[str, PretrainConfig | FinetuneConfig]]) -> list[list[tuple[str, PretrainConfig | FinetuneConfig]]]:
    """The grid's runs in groups that may run side by side: each architecture's pretrainings, then
    its fine-tunings (which read their backbones), each group longest first."""
    groups = itertools.groupby(runs, key=lambda run: (run[1].arch, isinstance(run[1], PretrainConfig)))
    return [sorted(group, key=lambda run: -run_cost(run[1])) for _, group in groups]


def run_grid(args) -> dict:
    out = Path(args.out)
    results: dict = {"budget": args.budget, "data": args.data or "synthetic", "runs": {}}
    data = args.data
    if not data and args.budget == "smoke":  # synthetic frames, prepared once at the training size (as the quickstart)
        data = str(synthetic_prepared_data(out / "data", TRAIN_FRAMES, VAL_FRAMES, args.seed)[1])
    runs = grid_configs(args, data)
    pending = [(name, cfg) for name, cfg in runs if not (out / name / "stage.json").is_file()]
    stages = Stages(out, "tables", sum(run_cost(cfg) for _, cfg in pending))
    cfgs = dict(runs)
    for group in phases(runs):  # on a CPU, side by side: a process per core, the next run where one ends
        jobs = {name: (functools.partial(pretrain if isinstance(cfg, PretrainConfig) else finetune, cfg), config_hash(cfg))
                for name, cfg in group}
        stages.run_side_by_side(jobs, progress=lambda name: training_progress(out / name, cfgs[name].epochs),
                                enabled=not args.one_at_a_time, costs={name: run_cost(cfg) for name, cfg in group})
    for name, cfg in runs:
        run_dir = out / name
        if isinstance(cfg, PretrainConfig):
            results["runs"][name] = {"rankme": final_rankme(run_dir)}
            continue
        ev = json.loads((run_dir / "eval.json").read_text())
        shipped = ev.get("at_shipped_thresholds", ev)
        results["runs"][name] = {"F2_CIW": shipped["F2_CIW"], "F1_Normal": shipped["F1_Normal"], "mAP": ev["mAP"],
                                 "at_0.5": {k: ev[k] for k in ("F2_CIW", "F1_Normal")}}
        if "constant_baseline" in ev:
            results["constant_baseline"] = ev["constant_baseline"]
    results["stage_seconds"] = stages.seconds  # every run's, a reused one's from its record
    results["side_by_side"] = stages.side_by_side  # the groups that ran at once, and their wall time
    return results


def final_rankme(run_dir: Path) -> float | None:
    values = [json.loads(l)["rankme"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"rankme"' in l]
    return values[-1] if values else None


def render(results: dict, archs: list[str]) -> str:
    runs = results["runs"]

    base = results.get("constant_baseline")

    def cell(key: str, paper) -> str:
        r = runs.get(key)
        ours = f"{100 * r['F2_CIW']:.2f} / {100 * r['F1_Normal']:.2f} · {100 * r['mAP']:.2f}" if r else "-"
        if r and base and not all(learned(r, base).values()):
            ours += " ⚠"  # has not cleared the bar over the constant predictor
        return f"{ours} ({paper[0]:.2f} / {paper[1]:.2f})" if paper else ours

    lines = [f"Budget `{results['budget']}`, data: {results['data']}.",
             "**Synthetic data: these are not Sewer-ML numbers**; the paper's values (F2_CIW / F1_Normal) are in "
             "parentheses."
             if results["data"] == "synthetic" else "The paper's values (F2_CIW / F1_Normal) are in parentheses.", "",
             "### Table 2 — F2_CIW (%) / F1_Normal (%) · mAP (%) on Val", "",
             "At each classifier's shipped thresholds (fitted on held-out train frames, not on Val)."
             + (f" Constant predictor on the same Val: F2_CIW {100 * base['F2_CIW']:.2f}, F1_Normal "
                f"{100 * base['F1_Normal']:.2f}, mAP {100 * base['mAP']:.2f}; ⚠ marks a classifier that does not clear "
                f"the bar ({LEARNED_BAR})." if base else ""), "",
             "| method | SSL + fine-tuning | fully supervised |", "| --- | --- | --- |"]
    for arch in archs:
        n = NAMES[arch]
        ssl_paper = lambda k: PAPER_TABLE2[(arch, k)][0]  # noqa: E731
        sup_paper = lambda k: PAPER_TABLE2[(arch, k)][1]  # noqa: E731
        lines.append(f"| {n}-HYBRID | {cell(f'{arch}/hybrid_ft', ssl_paper('hybrid'))} | - |")
        lines.append(f"| {n}-LINEAR | {cell(f'{arch}/linear', ssl_paper('linear'))} | - |")
        for label in FRACTIONS:
            lines.append(f"| {n}-{label} | {cell(f'{arch}/ssl_ft_{label[:-1]}', ssl_paper(label))} | "
                         f"{cell(f'{arch}/supervised_{label[:-1]}', sup_paper(label))} |")
    lines += ["", "### Table 3 — final RankMe of the pretraining", "", "| method | RankMe | paper |", "| --- | --- | --- |"]
    for arch in archs:
        for hybrid in (False, True):
            value = runs.get(f"{arch}/dino{'_hybrid' if hybrid else ''}", {}).get("rankme")
            lines.append(f"| {NAMES[arch]}{' HYBRID' if hybrid else ''} | "
                         f"{'-' if value is None else f'{value:.2f}'} | {PAPER_TABLE3[(arch, hybrid)]:.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("smoke", "paper"), default="smoke")
    parser.add_argument("--data", default=None, help="Sewer-ML root or prepared shards; default synthetic")
    parser.add_argument("--out", default="runs/tables")
    parser.add_argument("--archs", default=None, type=lambda s: s.split(","),
                        help="comma-separated; default: vit_tiny at --budget smoke, vit_tiny,vit_small at paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="override every pretraining's epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="override every fine-tuning's epochs")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="each run in this process with every core (default on a CPU: as many runs at once as "
                             "cores, each in a process of its own on one share of them)")
    args = parser.parse_args(argv)
    args.archs = args.archs or ARCHS[args.budget]
    unknown = [a for a in args.archs if a not in NAMES]
    if unknown:
        parser.error(f"--archs: unknown {unknown}; expected some of {sorted(NAMES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results = run_grid(args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = machine = machine_record()
    table = render(results, args.archs)
    out = Path(args.out)
    stages = sum(results["stage_seconds"].values())
    at_once = max((group["at_once"] for group in results["side_by_side"]), default=1)
    layout = f", up to {at_once} at once" if at_once > 1 else ""
    (out / "tables.md").write_text(table + f"\nRuns: {stages:.0f} s of training{layout} (this call: {results['seconds']:.0f} s "
                                   f"wall) on {machine['cpu_model']}, {machine['cores']} cores ({machine['cpu_features']}).\n")
    (out / "tables.json").write_text(json.dumps(results, indent=2))
    print(table)
    print(f"written to {out / 'tables.md'} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
