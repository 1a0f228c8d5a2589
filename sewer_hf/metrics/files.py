"""Score files and annotation files for evaluation, and matching their rows by filename.

A scores file is a CSV with a ``Filename`` column and one column per class code (any order);
an annotation file is the official ``SewerML_{Train,Val}.csv`` (header ``labels.CSV_COLUMNS``).
Both must hold exactly the same set of filenames: unlike the official code, which sorts both
and aligns them by position, any mismatch is an error.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from sewer_hf.errors import DataError
from sewer_hf.labels import CLASSES, NUM_CLASSES

FILENAME_COLUMN = "Filename"
_SHOWN = 5  # how many offending filenames an error message lists


def _open_rows(path: Path):
    """(header, rows iterator, file handle) of a CSV, with a clear error if it is missing/empty."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    handle = path.open(newline="", encoding="utf-8")
    reader = csv.reader(handle)
    header = next(reader, None)
    if not header:
        handle.close()
        raise DataError(f"{path} is empty; expected a header with {FILENAME_COLUMN} and the class codes")
    return [h.strip() for h in header], reader, handle


def _column_index(path: Path, header: list[str], required: Sequence[str]) -> list[int]:
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{path}: duplicated column(s) {', '.join(duplicated)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
    return [header.index(c) for c in required]


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(list(names)[:_SHOWN])
    return shown + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _check_unique(path: Path, filenames: list[str]) -> None:
    unique = sorted(n for n, c in _counts(filenames).items() if c > 1)
    if unique:
        raise DataError(f"{path}: {len(unique)} filename(s) appear more than once: {_examples(unique)}")


def _read_table(path, value_type: str) -> tuple[list[str], np.ndarray]:
    """Filenames and the 17 class columns of a CSV, as float64 ('score') or 0/1 int8 ('label')."""
    path = Path(path)
    header, reader, handle = _open_rows(path)
    with handle:
        if value_type == "score":
            unknown = [h for h in header if h != FILENAME_COLUMN and h not in CLASSES]
            if unknown:
                raise DataError(
                    f"{path}: unexpected column(s) {', '.join(unknown)}; a scores file has "
                    f"{FILENAME_COLUMN} and the 17 class codes {' '.join(CLASSES)}"
                )
        name_col, *class_cols = _column_index(path, header, (FILENAME_COLUMN, *CLASSES))
        filenames: list[str] = []
        rows: list[list[str]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise DataError(f"{path} line {line_no}: {len(row)} fields, expected {len(header)}")
            filenames.append(row[name_col].strip())
            rows.append([row[c] for c in class_cols])
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    _check_unique(path, filenames)
    values = _parse_values(path, rows, value_type)
    return filenames, values


def _parse_values(path: Path, rows: list[list[str]], value_type: str) -> np.ndarray:
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        values = None
    if values is None or not np.all(np.isfinite(values)) or (
        value_type == "label" and not np.all((values == 0) | (values == 1))
    ):
        # slow path only to name the first bad cell
        for i, row in enumerate(rows):
            for k, cell in enumerate(row):
                try:
                    v = float(cell)
                except ValueError:
                    v = None
                ok = v is not None and np.isfinite(v) and (value_type != "label" or v in (0.0, 1.0))
                if not ok:
                    expected = "0 or 1" if value_type == "label" else "a finite number"
                    raise DataError(
                        f"{path} line {i + 2}, column {CLASSES[k]}: {cell!r} is not {expected}"
                    )
    if value_type == "label":
        return values.astype(np.int8)
    return values


def read_scores_csv(path) -> tuple[list[str], np.ndarray]:
    """Read a scores file: (filenames, float64 scores of shape (N, 17) in ``CLASSES`` order)."""
    return _read_table(path, "score")


def read_annotation_targets(path) -> tuple[list[str], np.ndarray]:
    """Read an official annotation file: (filenames, 0/1 int8 targets of shape (N, 17))."""
    return _read_table(path, "label")


def write_scores_csv(path, filenames: Sequence[str], scores) -> Path:
    """Write ``Filename`` + the 17 class columns. Values round-trip exactly (shortest repr)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != NUM_CLASSES:
        raise DataError(f"scores must have shape (N, {NUM_CLASSES}), got {scores.shape}")
    if len(filenames) != scores.shape[0]:
        raise DataError(f"{len(filenames)} filenames for {scores.shape[0]} rows of scores")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    # numpy's str() of a float is the shortest text that reads back to the same value (for
    # float32 too), so a score just under a threshold stays under it after the round trip.
    text = scores.astype(str)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow((FILENAME_COLUMN, *CLASSES))
        for name, row in zip(filenames, text.tolist()):
            writer.writerow((name, *row))
    return path


def align_by_filename(
    reference_names: Sequence[str], other_names: Sequence[str],
    reference_label: str = "annotations", other_label: str = "scores",
) -> np.ndarray:
    """Indices into ``other_names`` that put its rows in the order of ``reference_names``.

    Both lists must hold the same filenames exactly once; otherwise a DataError names the
    missing, extra and duplicated ones (the first few and how many).
    """
    problems = []
    for label, names in ((reference_label, reference_names), (other_label, other_names)):
        duplicates = sorted({n for n, c in _counts(names).items() if c > 1})
        if duplicates:
            problems.append(f"{len(duplicates)} duplicated filename(s) in {label}: {_examples(duplicates)}")
    position = {name: i for i, name in enumerate(other_names)}
    missing = [n for n in reference_names if n not in position]
    reference_set = set(reference_names)
    extra = [n for n in other_names if n not in reference_set]
    if missing:
        problems.append(f"{len(missing)} filename(s) of {reference_label} missing from {other_label}: {_examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} filename(s) of {other_label} not in {reference_label}: {_examples(extra)}")
    if problems:
        raise DataError("filenames do not match; " + "; ".join(problems))
    return np.fromiter((position[n] for n in reference_names), dtype=np.int64, count=len(reference_names))


def _counts(names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return counts
