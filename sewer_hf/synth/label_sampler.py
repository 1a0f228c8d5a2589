"""Draw Sewer-ML-like label sets from the shipped table of real label frequencies.

The table (`sewer_hf/resources/label_combos.json`, made by `tools/derive_label_table.py`)
holds the most frequent defect label combinations of real training rows with their counts,
per-class rates for the rare rest, and the WaterLevel histogram of normal and defect rows.
A frame is normal with the real probability (53 %, the paper's training split) unless
`defect_fraction` asks for more (or fewer) defect frames; defect frames draw a whole
combination, so the real co-occurrence (e.g. OB with FS) is kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from sewer_hf.data.labels import CLASSES, NUM_CLASSES
from sewer_hf.errors import ConfigError, DataError

TABLE_RESOURCE = "label_combos.json"


@dataclass(frozen=True)
class LabelTable:
    normal_fraction: float
    combos: np.ndarray        # (n, 17) uint8, the listed combinations
    combo_cdf: np.ndarray     # cumulative probabilities over combos + the "other" bucket
    other_rates: np.ndarray   # per-class rates inside the "other" bucket
    water_values: np.ndarray
    water_cdf_normal: np.ndarray
    water_cdf_defect: np.ndarray

    def combo_probabilities(self) -> dict[str, float]:
        """Probability of each listed combination among *defect* frames ("" = other)."""
        p = np.diff(np.r_[0.0, self.combo_cdf])
        keys = ["+".join(c for c, v in zip(CLASSES, row) if v) for row in self.combos]
        return dict(zip(keys + [""], p.tolist()))


def _cdf(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.cumsum(counts) / counts.sum()


def parse_table(table: dict, origin: str = TABLE_RESOURCE) -> LabelTable:
    if list(table.get("classes", [])) != list(CLASSES):
        raise DataError(f"{origin}: 'classes' must be {list(CLASSES)}, got {table.get('classes')}")
    index = {c: i for i, c in enumerate(CLASSES)}
    combos = np.zeros((len(table["combos"]), NUM_CLASSES), dtype=np.uint8)
    counts = []
    for row, (key, count) in enumerate(table["combos"]):
        for code in key.split("+"):
            if code not in index:
                raise DataError(f"{origin}: combination {key!r} names unknown class {code!r}")
            combos[row, index[code]] = 1
        counts.append(count)
    counts.append(table["other_combos"]["count"])
    water = table["water_level"]
    return LabelTable(
        normal_fraction=float(table["normal_fraction"]),
        combos=combos,
        combo_cdf=_cdf(counts),
        other_rates=np.asarray(table["other_combos"]["class_rates"], dtype=np.float64),
        water_values=np.asarray(water["values"], dtype=np.int64),
        water_cdf_normal=_cdf(water["counts_normal"]),
        water_cdf_defect=_cdf(water["counts_defect"]),
    )


@lru_cache(maxsize=1)
def load_label_table() -> LabelTable:
    """The shipped table (read once per process)."""
    text = resources.files("sewer_hf").joinpath("resources", TABLE_RESOURCE).read_text()
    return parse_table(json.loads(text))


def check_defect_fraction(defect_fraction: float | None) -> None:
    if defect_fraction is not None and not 0.0 <= float(defect_fraction) <= 1.0:
        raise ConfigError(f"defect_fraction must be between 0 and 1 (or None for the real "
                          f"distribution), got {defect_fraction}")


def sample_labels(rng: np.random.Generator, defect_fraction: float | None = None,
                  table: LabelTable | None = None) -> tuple[np.ndarray, int]:
    """One frame's (multi-hot uint8[17] in `CLASSES` order, WaterLevel percent).

    defect_fraction: share of frames with at least one defect; None = the real share
    (1 - 0.53). Raising it oversamples defects without changing how they co-occur.
    """
    check_defect_fraction(defect_fraction)
    table = table or load_label_table()
    p_defect = 1.0 - table.normal_fraction if defect_fraction is None else float(defect_fraction)
    u_normal, u_combo, u_water = rng.random(3)
    labels = np.zeros(NUM_CLASSES, dtype=np.uint8)
    if u_normal < p_defect:
        k = int(np.searchsorted(table.combo_cdf, u_combo, side="right"))
        if k < len(table.combos):
            labels[:] = table.combos[k]
        else:  # a rare combination: classes drawn independently at the rates of the rare rest
            while not labels.any():
                labels[:] = rng.random(NUM_CLASSES) < table.other_rates
        cdf = table.water_cdf_defect
    else:
        cdf = table.water_cdf_normal
    water = int(table.water_values[min(int(np.searchsorted(cdf, u_water, side="right")), len(cdf) - 1)])
    return labels, water
