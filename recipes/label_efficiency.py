#!/usr/bin/env python
r"""The paper's label-efficiency claim in miniature: DINO on an unlabelled pool of synthetic frames,
then DINO + fine-tune, DINO + linear probe and from-scratch training on the same 10 % / 100 % of
the labels, several seeds each, scored on a separate test set.

    python recipes/label_efficiency.py --budget cpu              # <= 2 h on 2 CPU cores
    accelerate launch recipes/label_efficiency.py --budget gpu   # minutes on one GPU

Writes `<out>/results.json`, `label_efficiency.png` and `pretraining_curve.png` (default out:
runs/label_efficiency/<budget>). A re-run reuses finished runs and resumes an interrupted one.
The experiment lives in `sewer_hf.experiments.label_efficiency`; budgets in recipes/configs/label_efficiency_*.yaml.
"""
import argparse
import sys
from pathlib import Path

from sewer_hf.experiments.label_efficiency import load_experiment, run_experiment

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--config", help="an experiment YAML instead of the budget's")
    parser.add_argument("--out", help="output folder (default: runs/label_efficiency/<budget>)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="on a CPU, the runs after pretraining one after the other with every core "
                             "(default: side by side, a process per core)")
    args = parser.parse_args()
    spec = load_experiment(args.config or CONFIGS / f"label_efficiency_{args.budget}.yaml")
    run_experiment(spec, args.out or f"runs/label_efficiency/{args.budget}",
                   budget="custom" if args.config else args.budget, side_by_side=not args.one_at_a_time)
    sys.exit(0)
