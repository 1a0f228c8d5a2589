"""Write a synthetic Sewer-ML dataset in the official flat layout.

    DIR/00000001.png ... DIR/<n_train + n_val>.png   (train first, then val)
    DIR/SewerML_Train.csv, DIR/SewerML_Val.csv        (official header, `labels.CSV_COLUMNS`)

Frame i is a pure function of (seed, i, size option, defect_fraction): its random stream is
`SeedSequence(seed, spawn_key=(i,))`, so the bytes do not depend on `workers`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from sewer_hf.data.labels import CLASSES, CSV_COLUMNS, FRAME_SIZES
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.synth.label_sampler import check_defect_fraction, sample_labels
from sewer_hf.synth.render import check_size, render_frame

SYNTHETIC_MARKER = "synthetic.json"  # read by sewer_hf.hub.publish to label models trained on this data
PNG_COMPRESS_LEVEL = 1   # fast; noisy frames barely compress better at higher levels
MAX_FRAMES = 99_999_999  # 8-digit filenames
_FRAME_NAME = re.compile(r"^\d{8}\.png$")
ANNOTATION_FILES = {"Train": "SewerML_Train.csv", "Val": "SewerML_Val.csv"}


def frame_filename(index: int) -> str:
    return f"{index:08d}.png"


def frame_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def make_frame(seed: int, index: int, size: tuple[int, int] | None = None,
               defect_fraction: float | None = None):
    """(PNG bytes, multi-hot labels, water level) of global frame `index` (1-based)."""
    rng = frame_rng(seed, index)
    if size is None:  # the default mix: one of the real frame sizes
        size = FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]
    labels, water = sample_labels(rng, defect_fraction)
    image = render_frame(labels, water, size, rng)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue(), labels, water


def _write_frame(task) -> tuple[int, np.ndarray, int]:
    out_dir, seed, index, size, defect_fraction = task
    data, labels, water = make_frame(seed, index, size, defect_fraction)
    with open(os.path.join(out_dir, frame_filename(index)), "wb") as fh:
        fh.write(data)
    return index, labels, water


def annotation_row(index: int, labels: np.ndarray, water: int) -> list:
    defect = int(labels.any())
    # VA: the water level is always annotated here; ND (no defect) marks the normal frames.
    return [frame_filename(index), int(water), 1, *(int(v) for v in labels), 1 - defect, defect]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """"WxH" -> (W, H); None or "mix" -> None (real frame sizes, mixed)."""
    if text is None or str(text).lower() == "mix":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--size must look like 352x288 (width x height) or 'mix', got {text!r}")
    return check_size((int(m.group(1)), int(m.group(2))))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    old = [p for p in out_dir.iterdir() if _FRAME_NAME.match(p.name) or p.name in ANNOTATION_FILES.values()]
    if old and not overwrite:
        raise DataError(f"{out_dir}: already holds a dataset ({len(old)} frames/annotation files); "
                        "choose another directory or pass overwrite=True (--overwrite)")
    for p in old:
        p.unlink()


def generate_dataset(out_dir, n_train: int, n_val: int, seed: int = 0,
                     size: tuple[int, int] | str | None = None, workers: int = 1, progress: bool = True,
                     defect_fraction: float | None = None, overwrite: bool = False) -> dict:
    """Render `n_train + n_val` frames into `out_dir` and write both annotation files.

    size: (W, H) or "WxH" for one size; None = each frame picks one of `labels.FRAME_SIZES`.
    defect_fraction: share of defect frames; None = the real share (about 47 %).
    Returns a summary: paths, counts per split, normal frames, frames per class.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if int(n) != n or n < 0:
            raise ConfigError(f"{name} must be a whole number >= 0, got {n}")
    total = int(n_train) + int(n_val)
    if not 1 <= total <= MAX_FRAMES:
        raise ConfigError(f"n_train + n_val must be between 1 and {MAX_FRAMES}, got {total}")
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    size = parse_size(size) if isinstance(size, str) or size is None else check_size(size)
    check_defect_fraction(defect_fraction)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)

    tasks = [(str(out_dir), int(seed), i, size, defect_fraction) for i in range(1, total + 1)]
    results: list[tuple[int, np.ndarray, int]] = []
    bar = _progress(total, progress)
    if workers == 1:
        for task in tasks:
            results.append(_write_frame(task))
            bar.update(1)
    else:
        with ProcessPoolExecutor(int(workers), mp_context=get_context("spawn")) as pool:
            for result in pool.map(_write_frame, tasks, chunksize=max(1, min(64, total // (4 * workers)))):
                results.append(result)
                bar.update(1)
    bar.close()

    results.sort(key=lambda r: r[0])
    splits = {"Train": results[:n_train], "Val": results[n_train:]}
    summary: dict = {"out_dir": str(out_dir), "seed": int(seed), "frames": total, "splits": {}}
    for split, rows in splits.items():
        path = out_dir / ANNOTATION_FILES[split]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(annotation_row(i, labels, water) for i, labels, water in rows)
        label_sum = np.sum([r[1] for r in rows], axis=0) if rows else np.zeros(len(CLASSES), int)
        summary["splits"][split] = {
            "annotations": str(path), "frames": len(rows),
            "normal": int(sum(not r[1].any() for r in rows)),
            "per_class": {c: int(n) for c, n in zip(CLASSES, label_sum)},
        }
    # Marks the folder as generated: model cards of models trained on it say "synthetic data".
    (out_dir / SYNTHETIC_MARKER).write_text(json.dumps(
        {"generator": "sewer_hf.synth", "seed": int(seed), "defect_fraction": defect_fraction,
         "frames": total, "note": "procedurally generated frames, not Sewer-ML images"}, indent=2) + "\n")
    return summary


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc="synth", disable=not enabled)
