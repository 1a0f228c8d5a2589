"""The Sewer-ML label schema: the 17 benchmark classes, their weights, and dataset constants.

Facts from Haurum & Moeslund, "Sewer-ML" (CVPR 2021). "Normal" means all 17 labels are 0
(it is *not* the ``ND`` column of the annotation files).
"""
from __future__ import annotations

import numpy as np

# The 17 benchmark classes, in the benchmark's order (columns of scores and multi-hot labels).
CLASSES: tuple[str, ...] = (
    "RB", "OB", "PF", "DE", "FS", "IS", "RO", "IN", "AF",
    "BE", "FO", "GR", "PH", "PB", "OS", "OP", "OK",
)
NUM_CLASSES = len(CLASSES)

CLASS_NAMES: dict[str, str] = {
    "RB": "Cracks, breaks and collapses",
    "OB": "Surface damage",
    "PF": "Production error",
    "DE": "Deformation",
    "FS": "Displaced joint",
    "IS": "Intruding sealing material",
    "RO": "Roots",
    "IN": "Infiltration",
    "AF": "Settled deposits",
    "BE": "Attached deposits",
    "FO": "Obstacle",
    "GR": "Branch pipe",
    "PH": "Chiseled connection",
    "PB": "Drilled connection",
    "OS": "Lateral reinstatement cuts",
    "OP": "Connection with transition profile",
    "OK": "Connection with construction changes",
}

# What each code means, in an inspector's words (one line each; for legends and reports).
CLASS_DESCRIPTIONS: dict[str, str] = {
    "RB": "cracks, fractures, broken pieces or a collapsed section of the pipe wall",
    "OB": "worn, corroded or spalled wall surface (e.g. exposed aggregate)",
    "PF": "a fault from manufacture or laying: irregular wall, bad lining or seam",
    "DE": "the pipe's cross-section is squeezed out of round",
    "FS": "neighbouring pipe lengths offset, angled or pulled apart at a joint",
    "IS": "a sealing ring or joint material hanging into the flow",
    "RO": "roots growing in through joints, cracks or connections",
    "IN": "groundwater seeping, dripping or running into the pipe",
    "AF": "sand, gravel or sediment settled on the pipe floor",
    "BE": "grease, encrustation or scale stuck to the wall",
    "FO": "an object or debris blocking part of the pipe",
    "GR": "a branch (lateral) pipe joining the main pipe",
    "PH": "a lateral connected through a chiselled (hand-broken) hole",
    "PB": "a lateral connected through a drilled (cored) hole",
    "OS": "openings cut in a liner to reopen the laterals",
    "OP": "a connection made with a transition (adapter) piece",
    "OK": "a connection where material, size or construction changes",
}

# Class-importance weights of the benchmark's F2_CIW (sum 6.7024).
CIW: dict[str, float] = {
    "RB": 1.0000, "OB": 0.5518, "PF": 0.2896, "DE": 0.1622, "FS": 0.6419, "IS": 0.1847,
    "RO": 0.3559, "IN": 0.3131, "AF": 0.0811, "BE": 0.2275, "FO": 0.2477, "GR": 0.0901,
    "PH": 0.4167, "PB": 0.4167, "OS": 0.9009, "OP": 0.3829, "OK": 0.4396,
}

# Official annotation-file header (SewerML_{Train,Val}.csv). VA and ND are annotation flags.
CSV_COLUMNS: tuple[str, ...] = ("Filename", "WaterLevel", "VA", *CLASSES, "ND", "Defect")
SPLITS: tuple[str, ...] = ("Train", "Val", "Test")

# Normalisation used by the benchmark's own baselines (RGB, 0-1 scale).
SEWER_MEAN: tuple[float, float, float] = (0.523, 0.453, 0.345)
SEWER_STD: tuple[float, float, float] = (0.210, 0.199, 0.154)

# Frame sizes (width, height) that occur in Sewer-ML.
FRAME_SIZES: tuple[tuple[int, int], ...] = (
    (350, 284), (352, 288), (466, 568), (480, 576), (720, 576), (768, 576),
)


def ciw_vector() -> np.ndarray:
    """CIW as a float64 vector in ``CLASSES`` order."""
    return np.array([CIW[c] for c in CLASSES], dtype=np.float64)


def pos_weight() -> np.ndarray:
    """The paper's BCE positive weights, 2 * (1 + CIW_c / mean(CIW)), in ``CLASSES`` order."""
    w = ciw_vector()
    return (2.0 * (1.0 + w / w.mean())).astype(np.float32)


def is_normal(labels) -> np.ndarray:
    """True where a multi-hot row (or rows) has none of the 17 defects."""
    arr = np.asarray(labels)
    return ~(arr.astype(bool).any(axis=-1))


def id2label() -> dict[int, str]:
    return {i: c for i, c in enumerate(CLASSES)}


def label2id() -> dict[str, int]:
    return {c: i for i, c in enumerate(CLASSES)}
