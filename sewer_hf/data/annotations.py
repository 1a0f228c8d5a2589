"""The official Sewer-ML annotation CSVs: split names, the file layout, the `datasets` features,
and a fast typed parse whose every problem is re-found and named (file, line, column, value)."""
from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sewer_hf.data.labels import CLASSES, CSV_COLUMNS, NUM_CLASSES, SPLITS
from sewer_hf.errors import ConfigError, DataError

if TYPE_CHECKING:  # heavy imports only for type checkers; the CLI imports this module
    import datasets
    import pyarrow as pa

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Names and layout
# ----------------------------------------------------------------------------------------

SPLIT_ALIASES: dict[str, str] = {
    "train": "Train", "training": "Train",
    "val": "Val", "valid": "Val", "validation": "Val",
    "test": "Test", "testing": "Test",
}
# Image sub-folders tried under the data root, in order, besides the root itself (flat layout).
SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "Train": ("Train", "train"),
    "Val": ("Val", "val", "Validation", "validation", "valid"),
    "Test": ("Test", "test"),
}
# The `datasets` split name given to each Sewer-ML split.
HF_SPLIT_NAMES: dict[str, str] = {"Train": "train", "Val": "validation", "Test": "test"}

WATER_LEVEL_RANGE = (0, 100)  # percent
MAX_NAMES_IN_MESSAGE = 5  # how many offending names an error message lists
LAYOUT_PROBE_ROWS = 16  # rows looked at to pick the image folder when files are not checked

# Prepared shards (sewer_hf.data.prepare): "<Split>-00000-of-00004.parquet".
SHARD_PATTERN = re.compile(r"^(?P<split>Train|Val|Test)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

SEWER_ML_LICENSE = "CC BY-NC-SA 4.0"
SEWER_ML_CITATION = (
    "@inproceedings{haurum2021sewer,\n"
    "  title={Sewer-ML: A Multi-Label Sewer Defect Classification Dataset and Benchmark},\n"
    "  author={Haurum, Joakim Bruslund and Moeslund, Thomas B.},\n"
    "  booktitle={CVPR},\n  year={2021}\n}"
)


def normalize_split(split: str) -> str:
    """'train' / 'Train' -> 'Train', 'val' / 'validation' -> 'Val', 'test' -> 'Test'."""
    canonical = SPLIT_ALIASES.get(str(split).strip().lower())
    if canonical is None:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (any case, or 'validation')")
    return canonical


def annotation_filename(split: str) -> str:
    return f"SewerML_{normalize_split(split)}.csv"


def features_for(columns: Sequence[str]) -> "datasets.Features":
    from datasets import Features, Image, List, Value

    every = {
        "image": Image(),
        "labels": List(Value("int8"), length=NUM_CLASSES),
        "filename": Value("string"),
        "water_level": Value("int32"),
        "defect": Value("int8"),
    }
    return Features({name: every[name] for name in columns})


def sewer_features(with_labels: bool = True, with_water_level: bool = True, with_defect: bool = True):
    """The ``datasets.Features`` of a loaded Sewer-ML split (column order as loaded)."""
    cols = ["image"] + (["labels"] if with_labels else []) + ["filename"]
    cols += (["water_level"] if with_water_level else []) + (["defect"] if with_defect else [])
    return features_for(cols)


# ----------------------------------------------------------------------------------------
# Annotation CSV: header, fast typed parse, slow exact explanation of problems
# ----------------------------------------------------------------------------------------


@dataclass
class _Header:
    columns: list[str]  # as in the file (stripped), in file order
    has_labels: bool
    has_water_level: bool
    has_defect: bool


def _read_header(csv_path: Path, split: str) -> _Header:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read the annotation file: {exc}") from exc
    if not first:
        raise DataError(f"{csv_path}, line 1: empty file; expected the header {','.join(CSV_COLUMNS)}")
    columns = [c.strip() for c in first]
    where = f"{csv_path}, line 1 (header)"
    official = ",".join(CSV_COLUMNS)
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise DataError(f"{where}: column(s) {quoted(doubled)} appear more than once; expected the header {official}")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise DataError(f"{where}: unknown column(s) {quoted(unknown)}; expected the official Sewer-ML header {official}")
    class_cols = [c for c in CLASSES if c in columns]
    # Train/Val need every column; a Test file may hold just Filename (labels are withheld),
    # but labels, when present, must be complete.
    if split == "Test":
        required = ["Filename"] + (list(CLASSES) if class_cols else [])
    else:
        required = list(CSV_COLUMNS)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {quoted(missing)}; expected the official Sewer-ML header {official}")
    return _Header(columns, bool(class_cols), "WaterLevel" in columns, "Defect" in columns)


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _read_csv_fast(csv_path: Path, header: _Header) -> "pa.Table | None":
    """Typed parse with pyarrow; ``None`` when pyarrow rejects the file (the slow pass explains)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wanted = ["Filename"]
    wanted += list(CLASSES) if header.has_labels else []
    wanted += ["WaterLevel"] if header.has_water_level else []
    wanted += ["Defect"] if header.has_defect else []
    # Everything as text: pyarrow's integer parser would take " 1", "+1" or "01" as 1, while a
    # label is exactly 0 or 1 (the checks below compare the text, then the columns become ints).
    types = {c: pa.string() for c in wanted}
    try:
        return pacsv.read_csv(
            csv_path,
            # Our own (stripped, BOM-free) header names; the file's header line is skipped.
            read_options=pacsv.ReadOptions(column_names=header.columns, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=wanted),
        )
    except pa.ArrowInvalid as exc:
        logger.debug("pyarrow rejected %s: %s", csv_path, exc)
        return None


def _is_int(text: str) -> bool:
    body = text[1:] if text.startswith("-") else text
    return body.isascii() and body.isdigit()


def _explain_csv_problem(csv_path: Path, header: _Header) -> DataError | None:
    """Slow, exact pass with the csv module: a DataError for the first offending row, or None.

    Row numbers are physical line numbers (the header is line 1); blank lines are skipped,
    as pyarrow skips them.
    """
    cols = header.columns
    index = {c: i for i, c in enumerate(cols)}
    seen: dict[str, int] = {}

    def bad(line: int, column: str | None, message: str) -> DataError:
        where = f"{csv_path}, line {line}" + (f", column '{column}'" if column else "")
        return DataError(f"{where}: {message}")

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            return _explain_rows(reader, cols, index, seen, header, bad)
        except (UnicodeDecodeError, csv.Error) as exc:
            return bad(reader.line_num + 1, None, f"not readable as UTF-8 CSV ({exc})")


def _explain_rows(reader, cols, index, seen, header: _Header, bad) -> DataError | None:
    """The row loop of ``_explain_csv_problem`` (reading may raise: the caller names the line)."""
    next(reader, None)
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(cols):
            return bad(line, None, f"expected {len(cols)} fields (as in the header), got {len(row)}: {','.join(row)!r}")
        name = row[index["Filename"]]
        if not name:
            return bad(line, "Filename", "expected an image file name, got an empty value")
        if header.has_water_level:
            value = row[index["WaterLevel"]]
            lo, hi = WATER_LEVEL_RANGE
            if not _is_int(value) or not lo <= int(value) <= hi:
                return bad(line, "WaterLevel", f"expected an integer percentage {lo}-{hi}, got {value!r}")
        positives = []
        if header.has_labels:
            for cls in CLASSES:
                value = row[index[cls]]
                if value not in ("0", "1"):
                    return bad(line, cls, f"expected a label 0 or 1, got {value!r}")
                if value == "1":
                    positives.append(cls)
        if header.has_defect:
            value = row[index["Defect"]]
            if value not in ("0", "1"):
                return bad(line, "Defect", f"expected 0 or 1, got {value!r}")
            if header.has_labels and (value == "1") != bool(positives):
                what = f"defect label(s) {', '.join(positives)}" if positives else "none of the 17 defect labels"
                return bad(line, "Defect", f"got {value!r} but the row has {what}; expected Defect = 1 exactly when any class label is 1")
        if name in seen:
            return bad(line, "Filename", f"duplicate filename {name!r} (first at line {seen[name]})")
        seen[name] = line
    return None


def _as_ints(table: "pa.Table") -> tuple["pa.Table", bool]:
    """The label, WaterLevel and Defect columns (read as text) as int32, and whether any cell is
    not exactly a plain integer: labels and Defect "0"/"1", WaterLevel digits (no spaces, no
    sign other than "-", no decimals)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = False
    for name in table.column_names:
        if name == "Filename":
            continue
        column = table.column(name)
        if name == "WaterLevel":
            ok = pc.match_substring_regex(column, r"^-?[0-9]{1,9}$")
        else:
            ok = pc.is_in(column, value_set=pa.array(["0", "1"]))
        if not pc.all(pc.fill_null(ok, False)).as_py():
            bad = True
            continue
        table = table.set_column(table.column_names.index(name), name, pc.cast(column, pa.int32()))
    return table, bad


def _check_table(csv_path: Path, header: _Header, table: "pa.Table") -> "pa.Table":
    """Vectorised checks; on failure the slow pass names the first offending row. Returns the
    table with its number columns as int32."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        raise DataError(f"{csv_path}: the header is there but no rows follow; expected one row per image")
    problem = any(table.column(c).null_count for c in table.column_names)
    table, not_plain = _as_ints(table)
    if not_plain:
        error = _explain_csv_problem(csv_path, header)
        raise error or DataError(f"{csv_path}: invalid annotation values (could not locate the row)")
    problem = problem or pc.any(pc.equal(table.column("Filename"), "")).as_py()
    if header.has_labels:
        labels = labels_matrix(table)  # int32, so that values like 2 or -1 survive to be seen
        problem = problem or bool(((labels != 0) & (labels != 1)).any())
    if header.has_water_level:
        lo, hi = WATER_LEVEL_RANGE
        level = table.column("WaterLevel").to_numpy()
        problem = problem or bool(((level < lo) | (level > hi)).any())
    if header.has_defect:
        defect = table.column("Defect").to_numpy()
        problem = problem or bool(((defect != 0) & (defect != 1)).any())
        if header.has_labels and not problem:
            problem = bool((defect.astype(bool) != labels.any(axis=1)).any())
    duplicates: list[str] = []
    if not problem:
        names = table.column("Filename")
        if pc.count_distinct(names).as_py() != len(names):
            counts = pc.value_counts(names)
            duplicates = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
            problem = True
    if not problem:
        return table
    error = _explain_csv_problem(csv_path, header)
    if error is None:  # should not happen: the two passes check the same rules
        error = DataError(f"{csv_path}: invalid annotation values (could not locate the row)")
    if duplicates:
        error = DataError(f"{error}; {len(duplicates)} filename(s) occur more than once, e.g. {quoted(duplicates[:MAX_NAMES_IN_MESSAGE])}")
    raise error


def labels_matrix(table: "pa.Table") -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in CLASSES], axis=1)


def read_annotations(csv_path: str | os.PathLike, split: str) -> "pa.Table":
    """Parse and validate one annotation CSV; a table with ``Filename`` and those of the class
    columns, ``WaterLevel`` and ``Defect`` the file has. Raises DataError on any bad row."""
    csv_path = Path(csv_path)
    split = normalize_split(split)
    header = _read_header(csv_path, split)
    table = _read_csv_fast(csv_path, header)
    if table is None:
        error = _explain_csv_problem(csv_path, header)
        raise error or DataError(f"{csv_path}: cannot parse the annotation file as CSV")
    return _check_table(csv_path, header, table)


