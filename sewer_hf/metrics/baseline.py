"""What a model that ignores the image scores: the constant-predictor baseline of a split.

A trained classifier is only worth reporting next to these numbers, on the same split:

- ``F2_CIW``: the best constant predictor flags a class on every frame whenever the class has
  positives (recall 1, precision = its prevalence p, F2 = 5p / (4p + 1)), else never;
- ``F1_Normal``: the best constant predictor for the normal slot calls every frame normal;
- ``mAP``: a constant scorer ranks the frames in an arbitrary order; its expected AP over
  random orders, per class with m positives among n frames, is
  (H_n + (m - 1) / (n - 1) * (n - H_n)) / n, with H_n the n-th harmonic number (about p).

Each is the best any image-blind model reaches on that metric, so a model must beat each.
"""
from __future__ import annotations

import numpy as np

from sewer_hf.data.labels import ciw_vector
from sewer_hf.metrics.core import f_beta, validate_inputs


def expected_random_ap(n: int, m: np.ndarray) -> np.ndarray:
    """Expected non-interpolated AP of a uniformly random ranking of n items with m positives."""
    m = np.asarray(m, dtype=np.float64)
    if n <= 1:
        return np.where(m > 0, 1.0, 0.0)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    ap = (harmonic + (m - 1) / (n - 1) * (n - harmonic)) / n
    return np.where(m > 0, ap, 0.0)  # a class without positives scores AP 0


def constant_baseline(targets) -> dict[str, float]:
    """F2_CIW, F1_Normal and mAP of the best constant predictors on (N, 17) 0/1 ``targets``."""
    _, targets = validate_inputs(np.zeros(np.shape(targets)), targets)
    n = targets.shape[0]
    positives = targets.sum(axis=0).astype(np.float64)
    prevalence = positives / max(n, 1)
    f2_all_flagged = f_beta(prevalence, np.where(positives > 0, 1.0, 0.0), 2.0)
    weights = ciw_vector()
    normal_share = float((~targets.any(axis=1)).mean()) if n else 0.0
    return {
        "F2_CIW": float(np.dot(weights, f2_all_flagged) / weights.sum()),
        "F1_Normal": float(f_beta(normal_share, 1.0 if normal_share > 0 else 0.0, 1.0)),
        "mAP": float(expected_random_ap(n, positives).mean()),
    }


def beats_baseline(metrics: dict, baseline: dict) -> dict[str, bool]:
    """Per headline metric, whether ``metrics`` is above the constant baseline."""
    return {key: float(metrics[key]) > float(baseline[key]) for key in ("F2_CIW", "F1_Normal", "mAP")}


# The bar a classifier must clear before we call it learned (issue 14). F1_Normal is not asked to
# beat the all-normal predictor's (a classifier that flags any defect gives up some normal
# recall): it is asked to stay a usable normal/defect split.
LEARNED_BAR = "F2_CIW above the best constant predictor's, F1_Normal >= 50, mAP >= 2x the constant scorer's"


def learned(metrics: dict, baseline: dict) -> dict[str, bool]:
    """Per headline metric, whether ``metrics`` (at the thresholds a classifier ships) clears
    ``LEARNED_BAR`` against the constant baseline of the same split."""
    return {"F2_CIW": float(metrics["F2_CIW"]) > float(baseline["F2_CIW"]),
            "F1_Normal": float(metrics["F1_Normal"]) >= 0.5,
            "mAP": float(metrics["mAP"]) >= 2 * float(baseline["mAP"])}
