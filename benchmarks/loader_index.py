"""How long `load_sewer_ml` takes to index a full-size Sewer-ML split (no image is opened).

Writes a CSV with the official header and as many rows as the real training split
(1,040,129; class frequencies as in Sewer-ML), creates one empty file per row in a flat image
folder (the directory listing is part of the real cost; ``--no-files`` skips it and loads with
``check_files=False``), then times ``load_sewer_ml`` against baselines measured in the same run:
a plain ``csv.reader`` pass over the file and one ``os.scandir`` pass over the folder.

    python benchmarks/loader_index.py            # full size (about 1-2 min incl. creating files)
    python benchmarks/loader_index.py --quick    # 50,000 rows
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sewer_hf.data import load_sewer_ml  # noqa: E402
from sewer_hf.data.labels import CLASSES, CSV_COLUMNS  # noqa: E402

TRAIN_ROWS = 1_040_129
QUICK_ROWS = 50_000
NORMAL_FRACTION = 552_820 / TRAIN_ROWS
# Training-split class counts (the real Sewer-ML annotations), for realistic label frequencies among defect rows.
CLASS_COUNTS = {
    "RB": 45_821, "OB": 184_379, "PF": 16_254, "DE": 19_084, "FS": 283_983, "IS": 6_271, "RO": 22_637,
    "IN": 23_782, "AF": 74_856, "BE": 66_499, "FO": 5_010, "GR": 53_986, "PH": 23_685, "PB": 6_746,
    "OS": 4_625, "OP": 5_325, "OK": 154_624,
}
WATER_LEVELS = np.array([0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
WATER_LEVEL_P = np.array([29598, 2350, 6368, 21964, 3160, 873, 296, 227, 59, 44, 24, 17, 24], dtype=float)


def write_csv(path: Path, rows: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    n_defect = TRAIN_ROWS - 552_820
    p = np.array([CLASS_COUNTS[c] / n_defect for c in CLASSES])
    labels = (rng.random((rows, len(CLASSES))) < np.minimum(p, 1.0)).astype(np.int8)
    labels[rng.random(rows) < NORMAL_FRACTION] = 0
    labels[(labels.sum(1) == 0) & (rng.random(rows) < 0.05), CLASSES.index("FS")] = 1
    defect = labels.any(1).astype(np.int8)
    water = rng.choice(WATER_LEVELS, size=rows, p=WATER_LEVEL_P / WATER_LEVEL_P.sum())
    va = rng.integers(0, 2, rows)
    names = [f"{i:08d}.png" for i in rng.choice(1_300_201, size=rows, replace=False) + 1]
    with open(path, "w", newline="") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for i in range(rows):
            cells = ",".join(map(str, labels[i].tolist()))
            f.write(f"{names[i]},{water[i]},{va[i]},{cells},{int(not defect[i] and not va[i])},{defect[i]}\n")
    return names


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows instead of {TRAIN_ROWS:,}")
    parser.add_argument("--rows", type=int, default=None, help="number of CSV rows (overrides --quick)")
    parser.add_argument("--no-files", action="store_true", help="no empty image files; load with check_files=False")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: the system temp dir)")
    args = parser.parse_args()
    rows = args.rows or (QUICK_ROWS if args.quick else TRAIN_ROWS)
    check_files = not args.no_files

    root = Path(tempfile.mkdtemp(prefix="sewer_loader_bench_", dir=args.tmp))
    try:
        csv_path = root / "SewerML_Train.csv"
        t_write, names = timed(lambda: write_csv(csv_path, rows))
        print(f"wrote {rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB) in {t_write:.1f} s")
        if check_files:
            def touch_all():
                for name in names:
                    os.close(os.open(root / name, os.O_CREAT | os.O_WRONLY, 0o644))
            t_touch, _ = timed(touch_all)
            print(f"created {rows:,} empty image files in {t_touch:.1f} s")

        def csv_pass():
            with open(csv_path, newline="") as f:
                return sum(1 for _ in csv.reader(f))

        def heavy_imports():
            import datasets  # noqa: F401  (paid once per process, not per load)
            import pyarrow.compute  # noqa: F401
            import pyarrow.csv  # noqa: F401

        t_import, _ = timed(heavy_imports)
        print(f"imported datasets + pyarrow in {t_import:.2f} s (not counted below)")
        t_csv, n = timed(csv_pass)
        assert n == rows + 1
        t_scan = 0.0
        if check_files:
            t_scan, listed = timed(lambda: sum(1 for _ in os.scandir(root)))
            assert listed == rows + 1
        t_load, ds = timed(lambda: load_sewer_ml(root, "Train", check_files=check_files))
        assert len(ds) == rows and ds.select_columns(["filename"])[rows - 1]["filename"] == names[-1]
        t_load2, _ = timed(lambda: load_sewer_ml(root, "Train", check_files=check_files))

        baseline = t_csv + t_scan
        print(f"baseline: csv.reader pass {t_csv:.2f} s" + (f" + os.scandir pass {t_scan:.2f} s" if check_files else ""))
        print(f"load_sewer_ml(check_files={check_files}): {t_load:.2f} s first, {t_load2:.2f} s again "
              f"= {t_load / baseline:.2f}x / {t_load2 / baseline:.2f}x the baseline ({baseline:.2f} s); "
              f"{rows / t_load:,.0f} rows/s")
        print(f"target for {TRAIN_ROWS:,} rows: < 60 s -> {'met' if t_load * TRAIN_ROWS / rows < 60 else 'MISSED'} "
              f"(extrapolated {t_load * TRAIN_ROWS / rows:.1f} s)")
    finally:
        t_clean, _ = timed(lambda: shutil.rmtree(root, ignore_errors=True))
        print(f"cleaned up in {t_clean:.1f} s")


if __name__ == "__main__":
    main()
