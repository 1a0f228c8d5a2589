"""Derive the synthetic generator's label table from real Sewer-ML annotation rows.

Run once by hand (it reads ../shared, which the package never does at run time):

    .venv/bin/python tools/derive_label_table.py \
        [--csv ../shared/data/sewer-ml-labels/SewerML_Train_sub_0.0625.csv] \
        [--out sewer_hf/resources/label_combos.json] [--top 300]

The output is a compact *table* of counts, not the rows: the most frequent defect label
combinations (a combination is written as its class codes joined by "+", e.g. "OB+FS"),
per-class rates of the remaining rare combinations, and the WaterLevel histogram for normal
and defect rows. The share of normal frames is taken from the paper's full training split
(552,820 of 1,040,129), because the 1/16 subset under-represents normals (47.6 % vs 53.1 %).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "sewer-ml-labels" / "SewerML_Train_sub_0.0625.csv"
DEFAULT_OUT = REPO / "sewer_hf" / "resources" / "label_combos.json"

CLASSES = ("RB", "OB", "PF", "DE", "FS", "IS", "RO", "IN", "AF",
           "BE", "FO", "GR", "PH", "PB", "OS", "OP", "OK")
# Haurum & Moeslund (CVPR 2021), Table 2: normal frames in the full training split.
OFFICIAL_TRAIN_NORMAL, OFFICIAL_TRAIN_ROWS = 552_820, 1_040_129


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot uint8 [n, 17], water level int [n]) from an official annotation file."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("WaterLevel", *CLASSES) if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing columns {missing}")
        labels, water = [], []
        for row in reader:
            labels.append([int(row[c]) for c in CLASSES])
            water.append(int(row["WaterLevel"]))
    return np.array(labels, dtype=np.uint8), np.array(water, dtype=np.int64)


def combo_key(row: np.ndarray) -> str:
    return "+".join(c for c, v in zip(CLASSES, row) if v)


def derive(labels: np.ndarray, water: np.ndarray, top: int, source_name: str) -> dict:
    normal = labels.sum(axis=1) == 0
    defect_rows = labels[~normal]
    counts = Counter(combo_key(r) for r in defect_rows)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept, rest = ranked[:top], ranked[top:]
    rest_keys = {k for k, _ in rest}
    rest_rows = np.array([r for r in defect_rows if combo_key(r) in rest_keys], dtype=np.uint8)
    rest_rates = rest_rows.mean(axis=0) if len(rest_rows) else np.zeros(len(CLASSES))
    levels = sorted(int(v) for v in np.unique(water))
    return {
        "description": "Label-combination and WaterLevel frequencies of real Sewer-ML training "
                       "annotations, for the synthetic frame generator (sewer_hf.synth).",
        "source": f"{source_name}: {len(labels)} rows (1/16 of the official SewerML_Train.csv), "
                  "published by a third party alongside their Sewer-ML experiments",
        "license": "CC BY-NC-SA 4.0",
        "attribution": "Haurum & Moeslund, 'Sewer-ML: A Multi-Label Sewer Defect Classification "
                       "Dataset and Benchmark', CVPR 2021",
        "derived_by": "tools/derive_label_table.py",
        "classes": list(CLASSES),
        "rows": int(len(labels)),
        "normal_rows": int(normal.sum()),
        "normal_fraction_source": round(float(normal.mean()), 4),
        "normal_fraction": round(OFFICIAL_TRAIN_NORMAL / OFFICIAL_TRAIN_ROWS, 4),
        "normal_fraction_note": "official full training split, 552,820 / 1,040,129 (paper)",
        "combos": [[k, int(n)] for k, n in kept],
        "other_combos": {
            "count": int(sum(n for _, n in rest)),
            "distinct": len(rest),
            "class_rates": [round(float(x), 4) for x in rest_rates],
        },
        "water_level": {
            "values": levels,
            "counts_normal": [int(((water == v) & normal).sum()) for v in levels],
            "counts_defect": [int(((water == v) & ~normal).sum()) for v in levels],
        },
    }


def compact_json(obj: dict) -> str:
    """Indented JSON with every innermost list on one line (one combination per line)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()).replace("[ ", "[").replace(" ]", "]"), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--top", type=int, default=300, help="defect combinations kept with their counts")
    args = ap.parse_args()
    labels, water = read_rows(args.csv)
    table = derive(labels, water, args.top, args.csv.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = compact_json(table)
    args.out.write_text(text + "\n")
    covered = sum(n for _, n in table["combos"]) / max(1, len(labels) - table["normal_rows"])
    print(f"wrote {args.out} ({len(text) / 1024:.1f} KB): {len(table['combos'])} combos cover "
          f"{covered:.1%} of defect rows; normal fraction {table['normal_fraction_source']} in source, "
          f"{table['normal_fraction']} used")


if __name__ == "__main__":
    main()
