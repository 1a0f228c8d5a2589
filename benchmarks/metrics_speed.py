"""Speed of sewer_hf.metrics.compute_metrics on a test-split-sized input (130,026 x 17).

Baseline, measured in the same run: the official code's structure — numpy counts per class and
a Python loop over the ranked rows for each class's average precision — on a subset of the
rows, scaled linearly to the full size. Goal: compute_metrics under 1 s.

    python benchmarks/metrics_speed.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sewer_hf.data.labels import CLASSES, ciw_vector
from sewer_hf.metrics import compute_metrics, tune_thresholds

TEST_SPLIT_ROWS = 130_026
# Val-split positive rate of each class (Sewer-ML paper counts / 130,046 images).
VAL_COUNTS = [5538, 23624, 2021, 2038, 36218, 881, 2917, 2812, 9059, 7929, 597, 6889, 3432, 765, 457, 612, 19655]


def official_style_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """Per-class numpy counts plus a Python AP loop, as the official evaluation code is written."""
    n_class = scores.shape[1]
    ng, np_, nc, ap = np.zeros(n_class + 1), np.zeros(n_class + 1), np.zeros(n_class + 1), np.zeros(n_class)
    for k in range(n_class):
        s, t = scores[:, k], targets[:, k]
        ng[k], np_[k], nc[k] = (t == 1).sum(), (s >= threshold).sum(), (t * (s >= threshold)).sum()
        ranking = np.argsort(s, kind="stable")[::-1]
        total, hits, seen, precision_sum = t.sum(), 0, 0, 0.0
        for i in ranking:
            seen += 1
            if t[i] == 1:
                hits += 1
                precision_sum += hits / seen
            if hits == total:
                break
        ap[k] = precision_sum / hits if hits else 0.0
    pred_normal, true_normal = ~(scores >= threshold).any(1), ~targets.astype(bool).any(1)
    ng[-1], np_[-1], nc[-1] = true_normal.sum(), pred_normal.sum(), (pred_normal & true_normal).sum()
    np_[np_ == 0] = 1
    p, r = nc / np_, np.nan_to_num(nc / ng)
    f2 = np.nan_to_num(5 * p * r / (4 * p + r))
    w = ciw_vector()
    return {"F2_CIW": float((w * f2[:-1]).sum() / w.sum()), "mAP": float(ap.mean())}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller baseline subset")
    args = parser.parse_args()
    repeats, subset = (1, 10_000) if args.quick else (5, 40_000)

    rng = np.random.default_rng(0)
    rates = np.array(VAL_COUNTS) / 130_046
    targets = (rng.random((TEST_SPLIT_ROWS, len(CLASSES))) < rates).astype(np.int64)
    scores = np.clip(0.3 * targets + 0.7 * rng.random(targets.shape), 0, 1)

    fast = best_of(lambda: compute_metrics(scores, targets), repeats)
    baseline_subset = best_of(lambda: official_style_metrics(scores[:subset], targets[:subset]), 1)
    baseline = baseline_subset * TEST_SPLIT_ROWS / subset
    tune = best_of(lambda: tune_thresholds(scores, targets), max(1, repeats // 2))

    ours, theirs = compute_metrics(scores[:subset], targets[:subset]), official_style_metrics(scores[:subset], targets[:subset])
    assert abs(ours["F2_CIW"] - theirs["F2_CIW"]) < 1e-12 and abs(ours["mAP"] - theirs["mAP"]) < 1e-12

    print(f"input: {TEST_SPLIT_ROWS:,} x {len(CLASSES)} scores (best of {repeats})")
    print(f"compute_metrics:           {fast:8.3f} s   (goal < 1 s: {'met' if fast < 1 else 'NOT met'})")
    print(f"official-style baseline:   {baseline:8.3f} s   (measured on {subset:,} rows: {baseline_subset:.3f} s, scaled)")
    print(f"speed-up vs baseline:      {baseline / fast:8.1f} x")
    print(f"tune_thresholds (99-grid): {tune:8.3f} s")


if __name__ == "__main__":
    main()
