"""Score files and annotation files for evaluation, and matching their rows by filename.

A scores file is a CSV with a ``Filename`` column and one column per class code (any order);
an annotation file is the official ``SewerML_{Train,Val}.csv`` (header ``labels.CSV_COLUMNS``).
Both must hold exactly the same set of filenames: unlike the official code, which sorts both
and aligns them by position, any mismatch is an error.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from sewer_hf.data.labels import CLASSES, NUM_CLASSES
from sewer_hf.errors import DataError

FILENAME_COLUMN = "Filename"
_SHOWN = 5  # how many offending filenames an error message lists


def _open_rows(path: Path):
    """(header, rows iterator, file handle) of a CSV, with a clear error if it is missing/empty."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    handle = path.open(newline="", encoding="utf-8-sig")  # a BOM (spreadsheet exports) is not part of the header
    reader = csv.reader(handle)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        handle.close()
        raise DataError(f"{path} line 1: not readable as UTF-8 CSV ({exc}); expected a header with "
                        f"{FILENAME_COLUMN} and the class codes") from None
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
        lines: list[int] = []  # the physical line of each row (blank lines and quoted newlines counted)
        try:
            for row in reader:
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(row)} fields, expected {len(header)}")
                filenames.append(row[name_col].strip())
                rows.append([row[c] for c in class_cols])
                lines.append(reader.line_num)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path} line {reader.line_num + 1}: not readable as UTF-8 CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    if any(not name for name in filenames):
        raise DataError(f"{path} line {lines[filenames.index('')]}, column {FILENAME_COLUMN}: empty; expected an image "
                        f"file name")
    _check_unique(path, filenames)
    values = _parse_values(path, rows, value_type, filenames, lines)
    return filenames, values


def _parse_values(path: Path, rows: list[list[str]], value_type: str, filenames: Sequence[str] = (),
                  lines: Sequence[int] = ()) -> np.ndarray:
    """The cells as numbers: labels exactly "0" or "1" (as the official files write them: no
    " 1", "1.0" or "+1"); scores finite numbers in [0, 1] (sigmoid probabilities: a file of
    logits would be scored silently wrong). A bad cell is named by line, column, filename, value."""
    if value_type == "label":
        cells = np.array(rows, dtype=object) if rows else np.zeros((0, NUM_CLASSES), dtype=object)
        ok = (cells == "0") | (cells == "1")
        values = None if not ok.all() else (cells == "1").astype(np.int8)
    else:
        try:
            values = np.array(rows, dtype=np.float64)
        except ValueError:
            values = None
        if values is not None and not (np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))):
            values = None
    if values is not None:
        return values
    # slow path only to name the first bad cell
    for i, row in enumerate(rows):
        for k, cell in enumerate(row):
            if value_type == "label":
                ok, expected = cell in ("0", "1"), "0 or 1 (a label)"
            else:
                try:
                    v = float(cell)
                except ValueError:
                    v = None
                ok = v is not None and math.isfinite(v) and 0.0 <= v <= 1.0
                expected = ("a score in [0, 1] (a sigmoid probability; logits must go through a sigmoid first)"
                            if v is not None and math.isfinite(v) else "a finite number in [0, 1]")
            if not ok:
                name = f" (the row of {filenames[i]!r})" if i < len(filenames) else ""
                line = lines[i] if i < len(lines) else i + 2
                raise DataError(f"{path} line {line}, column {CLASSES[k]}: {cell!r} is not {expected}{name}")
    raise DataError(f"{path}: invalid values (could not locate the cell)")  # not reached: same rules


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
