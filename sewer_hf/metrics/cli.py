"""`sewer-hf evaluate`: score a scores CSV against an official annotation CSV."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sewer_hf.data.labels import CLASSES
from sewer_hf.errors import DataError
from sewer_hf.metrics.core import DEFAULT_THRESHOLD, compute_metrics
from sewer_hf.metrics.files import align_by_filename, read_annotation_targets, read_scores_csv
from sewer_hf.metrics.report import format_report
from sewer_hf.metrics.thresholds import load_thresholds, save_thresholds, tune_thresholds


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", required=True, type=Path,
                        help="official annotation CSV, e.g. SewerML_Val.csv")
    parser.add_argument("--scores", required=True, type=Path,
                        help="CSV with Filename and the 17 class scores (any column order)")
    parser.add_argument("--threshold", default=str(DEFAULT_THRESHOLD),
                        help="a number (default 0.5, inclusive) or a JSON file of per-class thresholds")
    parser.add_argument("--json", type=Path, default=None, help="also write all metrics to this JSON file")
    parser.add_argument("--tune-thresholds", type=Path, default=None, metavar="OUT.json",
                        help="fit per-class thresholds maximising F2_CIW on THESE data and write them; "
                             "only on a validation split, never on the split you report")
    parser.set_defaults(func=run_evaluate)


def parse_threshold(text: str):
    """A float in [0, 1], or the path of a JSON file of 17 per-class thresholds in [0, 1] (scores
    are sigmoid probabilities: a threshold above 1 flags nothing, one below 0 everything)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise DataError(f"--threshold {text}: expected a number in [0, 1] (scores are probabilities), "
                            f"e.g. 0.5, or a JSON file of per-class thresholds")
        return value
    path = Path(text)
    if not path.is_file():
        raise DataError(f"--threshold {text!r} is neither a number nor an existing JSON file")
    thresholds = load_thresholds(path)
    bad = [(code, float(t)) for code, t in zip(CLASSES, thresholds) if not 0.0 <= float(t) <= 1.0]
    if bad:
        raise DataError(f"threshold file {path}: " + ", ".join(f"{code}={t:g}" for code, t in bad)
                        + " outside [0, 1]; expected per-class thresholds for probabilities")
    return thresholds


def run_evaluate(args: argparse.Namespace) -> int:
    threshold = parse_threshold(args.threshold)
    names, targets = read_annotation_targets(args.annotations)
    score_names, scores = read_scores_csv(args.scores)
    order = align_by_filename(names, score_names, reference_label=str(args.annotations),
                              other_label=str(args.scores))
    scores = scores[order]
    result = compute_metrics(scores, targets, threshold)
    print(format_report(result))
    if args.tune_thresholds is not None:
        tuned = tune_thresholds(scores, targets)
        save_thresholds(args.tune_thresholds, tuned)
        tuned_f2 = compute_metrics(scores, targets, tuned)["F2_CIW"]
        print(f"\ntuned thresholds written to {args.tune_thresholds} "
              f"(F2_CIW on these data {100 * tuned_f2:.2f}; use them on another split only)",
              file=sys.stderr)
    if args.json is not None:
        payload = {"annotations": str(args.annotations), "scores": str(args.scores), **result}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0
