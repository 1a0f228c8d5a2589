"""The Sewer-ML benchmark metrics (Haurum & Moeslund, CVPR 2021), vectorised with numpy.

The numbers are those of the official Sewer-ML evaluation code:

- a score at or above the threshold is a positive prediction (inclusive);
- an implicit 18th "normal" slot: an image is predicted normal when no class score reaches its
  threshold, and is normal when all 17 targets are 0;
- a predicted-positive count Np of 0 is replaced by 1 before dividing, every NaN becomes 0,
  and a class without positives scores 0 but keeps its weight in F2_CIW;
- mAP is the mean over the 17 classes of non-interpolated average precision.

Ties in average precision are ranked as the official ``np.argsort(scores)[::-1]`` ranks them
with a stable sort: among equal scores the later row comes first. (The official code uses
numpy's default, unstable sort, so its result on ties can depend on the platform.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sewer_hf.data.labels import CLASSES, NUM_CLASSES, ciw_vector
from sewer_hf.errors import DataError

DEFAULT_THRESHOLD = 0.5
NORMAL = "Normal"  # name of the implicit 18th slot in reports


def as_threshold_vector(threshold: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """A float or a 17-vector of per-class thresholds, as a float64 vector in ``CLASSES`` order."""
    if isinstance(threshold, dict):
        unknown = sorted(set(threshold) - set(CLASSES))
        missing = [c for c in CLASSES if c not in threshold]
        if unknown or missing:
            raise DataError(
                f"per-class thresholds must name exactly the 17 classes {' '.join(CLASSES)}; "
                f"missing: {missing or 'none'}, unknown: {unknown or 'none'}"
            )
        threshold = [threshold[c] for c in CLASSES]
    try:
        vec = np.asarray(threshold, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"threshold must be a number or 17 numbers, got {threshold!r}") from exc
    if vec.ndim == 0:
        vec = np.full(NUM_CLASSES, float(vec))
    if vec.shape != (NUM_CLASSES,):
        raise DataError(f"threshold must be a number or a vector of {NUM_CLASSES}, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise DataError(f"threshold must be finite, got {vec.tolist()}")
    return vec


def validate_inputs(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert scores (N, 17 finite floats) and targets (N, 17 of 0/1)."""
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"scores must be numbers: {exc}") from exc
    targets_in = np.asarray(targets)
    if scores.ndim != 2 or scores.shape[1] != NUM_CLASSES:
        raise DataError(f"scores must have shape (N, {NUM_CLASSES}), got {scores.shape}")
    if targets_in.shape != scores.shape:
        raise DataError(f"targets must have the shape of scores {scores.shape}, got {targets_in.shape}")
    if scores.shape[0] == 0:
        raise DataError("no images to evaluate (0 rows)")
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"scores must be finite: {int(bad.sum())} value(s) are not, first at row {row}, "
            f"class {CLASSES[col]} ({scores[row, col]})"
        )
    if targets_in.dtype == bool:
        return scores, targets_in
    if not (np.issubdtype(targets_in.dtype, np.number)):
        raise DataError(f"targets must be 0/1 numbers, got dtype {targets_in.dtype}")
    bad = (targets_in != 0) & (targets_in != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"targets must be 0 or 1: {int(bad.sum())} value(s) are not, first at row {row}, "
            f"class {CLASSES[col]} ({targets_in[row, col]})"
        )
    return scores, targets_in.astype(bool)


def _divide(numerator, denominator) -> np.ndarray:
    """numerator / denominator with NaN (0/0) and inf turned into 0, as the official code does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(numerator, dtype=np.float64) / np.asarray(denominator, dtype=np.float64)
    return np.where(np.isfinite(out), out, 0.0)


def f_beta(precision, recall, beta: float) -> np.ndarray:
    """F-beta = (1 + b^2) P R / (b^2 P + R); 0 where P = R = 0."""
    b2 = beta * beta
    return _divide((1.0 + b2) * np.asarray(precision) * recall, b2 * np.asarray(precision) + recall)


def slot_counts(scores: np.ndarray, targets: np.ndarray, threshold: np.ndarray):
    """Ng, Np, Nc for the 17 classes and the normal slot (18 entries each), and the predictions."""
    predicted = scores >= threshold  # inclusive, per class
    n_true = targets.sum(axis=0)
    n_pred = predicted.sum(axis=0)
    n_correct = (predicted & targets).sum(axis=0)
    predicted_normal = ~predicted.any(axis=1)
    true_normal = ~targets.any(axis=1)
    n_true = np.append(n_true, true_normal.sum())
    n_pred = np.append(n_pred, predicted_normal.sum())
    n_correct = np.append(n_correct, (predicted_normal & true_normal).sum())
    return n_true, n_pred, n_correct, predicted


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per column: the mean of the precision at the rank of each positive.

    Ranks by score descending (ties: later row first, see module docstring); a column without
    positives gets 0.
    """
    order = np.argsort(scores, axis=0, kind="stable")[::-1]
    hits = np.take_along_axis(targets, order, axis=0)
    hits_so_far = np.cumsum(hits, axis=0, dtype=np.float64)
    rank = np.arange(1, scores.shape[0] + 1, dtype=np.float64)[:, None]
    precision_sum = np.where(hits, hits_so_far / rank, 0.0).sum(axis=0)
    return _divide(precision_sum, hits.sum(axis=0))


def f2_ciw_from_per_class(f2_by_class, weights=None) -> float:
    """Sum_k CIW_k F2_k / Sum_k CIW_k; ``f2_by_class`` is a 17-vector or a dict code -> F2.

    Works in whatever unit F2 is given (fractions or percent). A class that scored 0 (for
    example one without positives) still counts in the denominator.
    """
    if isinstance(f2_by_class, dict):
        missing = [c for c in CLASSES if c not in f2_by_class]
        if missing:
            raise DataError(f"F2 values missing for class(es) {missing}")
        f2_by_class = [f2_by_class[c] for c in CLASSES]
    f2 = np.asarray(f2_by_class, dtype=np.float64)
    if f2.shape != (NUM_CLASSES,):
        raise DataError(f"expected {NUM_CLASSES} per-class F2 values, got shape {f2.shape}")
    w = ciw_vector() if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.dot(w, f2) / w.sum())


def compute_metrics(scores, targets, threshold: float | Sequence[float] = DEFAULT_THRESHOLD) -> dict:
    """All Sewer-ML benchmark metrics, as fractions in [0, 1].

    Args:
        scores: (N, 17) sigmoid scores in ``CLASSES`` order.
        targets: (N, 17) 0/1 labels in the same order.
        threshold: one threshold, or 17 per-class thresholds (a score >= threshold is positive).

    Returns a dict with the headline metrics ``F2_CIW``, ``F1_Normal``, ``mAP``, ``macro_F1``,
    ``micro_F1``, ``micro_precision``, ``micro_recall``, ``CP``, ``CR``, ``CF1``,
    ``exact_match``, plus ``per_class`` (code -> precision, recall, F1, F2, AP, support),
    ``normal`` (precision, recall, F1, F2, support), ``threshold`` (code -> value) and
    ``num_images``.
    """
    thresholds = as_threshold_vector(threshold)
    scores, targets = validate_inputs(scores, targets)
    n_true, n_pred, n_correct, predicted = slot_counts(scores, targets, thresholds)

    # Per slot (17 classes + normal). Np = 0 -> 1 keeps precision at 0 rather than NaN.
    precision = _divide(n_correct, np.maximum(n_pred, 1))
    recall = _divide(n_correct, n_true)
    f1 = f_beta(precision, recall, 1.0)
    f2 = f_beta(precision, recall, 2.0)
    ap = average_precision(scores, targets)

    micro_precision = float(_divide(n_correct.sum(), np.maximum(n_pred, 1).sum()))
    micro_recall = float(_divide(n_correct.sum(), n_true.sum()))
    cp, cr = float(precision.mean()), float(recall.mean())

    per_class = {
        code: {
            "precision": float(precision[k]), "recall": float(recall[k]),
            "F1": float(f1[k]), "F2": float(f2[k]), "AP": float(ap[k]), "support": int(n_true[k]),
        }
        for k, code in enumerate(CLASSES)
    }
    return {
        "F2_CIW": f2_ciw_from_per_class(f2[:NUM_CLASSES]),
        "F1_Normal": float(f1[-1]),
        "mAP": float(ap.mean()),
        "macro_F1": float(f1.mean()),
        "micro_F1": float(f_beta(micro_precision, micro_recall, 1.0)),
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "CP": cp,
        "CR": cr,
        "CF1": float(f_beta(cp, cr, 1.0)),
        "exact_match": float((predicted == targets).all(axis=1).mean()),
        "per_class": per_class,
        "normal": {
            "precision": float(precision[-1]), "recall": float(recall[-1]),
            "F1": float(f1[-1]), "F2": float(f2[-1]), "support": int(n_true[-1]),
        },
        "threshold": {code: float(t) for code, t in zip(CLASSES, thresholds)},
        "num_images": int(scores.shape[0]),
    }
