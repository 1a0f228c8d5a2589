"""Sewer-ML benchmark metrics: F2_CIW, F1_Normal, mAP and the rest, exactly as the official code.

Importable without torch. ``load_metric()`` returns the same metric as a Hugging Face
``evaluate`` module (the ``sewer_ml`` folder next to this file).
"""
from __future__ import annotations

from pathlib import Path

from sewer_hf.metrics.baseline import LEARNED_BAR, beats_baseline, constant_baseline, expected_random_ap, learned
from sewer_hf.metrics.core import (
    DEFAULT_THRESHOLD,
    as_threshold_vector,
    average_precision,
    compute_metrics,
    f2_ciw_from_per_class,
)
from sewer_hf.metrics.files import align_by_filename, read_annotation_targets, read_scores_csv, write_scores_csv
from sewer_hf.metrics.report import format_report
from sewer_hf.metrics.thresholds import DEFAULT_GRID, load_thresholds, save_thresholds, tune_thresholds

METRIC_DIR = Path(__file__).resolve().parent / "sewer_ml"


def load_metric(**kwargs):
    """The ``evaluate`` module of this package (works offline); kwargs go to ``evaluate.load``."""
    import evaluate  # heavy (pulls in datasets); only when asked for

    return evaluate.load(str(METRIC_DIR), **kwargs)


__all__ = [
    "DEFAULT_GRID", "DEFAULT_THRESHOLD", "METRIC_DIR", "align_by_filename", "as_threshold_vector",
    "LEARNED_BAR", "learned", "average_precision", "beats_baseline", "constant_baseline", "expected_random_ap", "compute_metrics", "f2_ciw_from_per_class", "format_report", "load_metric",
    "load_thresholds", "read_annotation_targets", "read_scores_csv", "save_thresholds",
    "tune_thresholds", "write_scores_csv",
]
