"""Per-class decision thresholds: tuning them for F2_CIW, and reading/writing them as JSON.

The JSON form is an object mapping each of the 17 class codes to its threshold, e.g.
``{"RB": 0.35, "OB": 0.5, ...}``; a plain list of 17 numbers in ``CLASSES`` order is read too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sewer_hf.errors import DataError
from sewer_hf.labels import CLASSES
from sewer_hf.metrics.core import DEFAULT_THRESHOLD, as_threshold_vector, f_beta, validate_inputs

# 0.01, 0.02, ..., 0.99; contains the default 0.5, so tuning never does worse than it.
DEFAULT_GRID = np.round(np.linspace(0.01, 0.99, 99), 2)


def f2_over_grid(scores: np.ndarray, targets: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F2 of every class at every threshold of ``grid``, shape (len(grid), 17).

    Counts come from one sort per class: the number of scores >= t is a binary search in the
    sorted column and the hits among them a prefix sum, so the grid costs O(G log N).
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ascending = np.take_along_axis(scores, order[::-1], axis=0)
    hits = np.cumsum(np.take_along_axis(targets, order, axis=0), axis=0)
    hits = np.vstack([np.zeros((1, scores.shape[1]), dtype=hits.dtype), hits])  # hits[i] = in top i
    n_true = targets.sum(axis=0)
    f2 = np.empty((len(grid), scores.shape[1]))
    for k in range(scores.shape[1]):
        # scores >= t: all but those left of t in the ascending column
        n_pred = n - np.searchsorted(ascending[:, k], grid, side="left")
        n_correct = hits[n_pred, k]
        precision = n_correct / np.maximum(n_pred, 1)
        recall = n_correct / max(n_true[k], 1)  # no positives: 0, as in compute_metrics
        f2[:, k] = f_beta(precision, recall, 2.0)
    return f2


def tune_thresholds(scores, targets, grid=None) -> np.ndarray:
    """Per-class thresholds (17-vector, ``CLASSES`` order) that maximise F2_CIW on these data.

    F2_CIW is a weighted sum of per-class F2, and each class's F2 depends only on its own
    threshold, so each class is maximised on its own over ``grid`` (default 0.01 ... 0.99).
    Among equally good thresholds the one nearest the default 0.5 wins (a class without
    positives keeps 0.5).

    Fit these on a validation split only and never on the split you report: thresholds tuned
    on the evaluation data inflate its score.
    """
    scores, targets = validate_inputs(scores, targets)
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise DataError(f"threshold grid must be a non-empty list of finite numbers, got {grid!r}")
    grid = np.unique(grid)
    f2 = f2_over_grid(scores, targets, grid)
    best = f2.max(axis=0)
    # tie-break towards the default threshold: mask non-best, pick the smallest |t - 0.5|
    distance = np.where(f2 >= best, np.abs(grid - DEFAULT_THRESHOLD)[:, None], np.inf)
    return grid[np.argmin(distance, axis=0)]


def save_thresholds(path, thresholds) -> Path:
    """Write per-class thresholds as a JSON object code -> threshold."""
    vec = as_threshold_vector(thresholds)
    path = Path(path)
    path.write_text(json.dumps({c: float(t) for c, t in zip(CLASSES, vec)}, indent=2) + "\n")
    return path


def load_thresholds(path) -> np.ndarray:
    """Read per-class thresholds written by :func:`save_thresholds` (or a list of 17 numbers)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"threshold file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"threshold file {path} is not valid JSON: {exc}") from exc
    try:
        return as_threshold_vector(data)
    except DataError as exc:
        raise DataError(f"threshold file {path}: {exc}") from exc
