"""Sewer-ML as a Hugging Face ``datasets.Dataset``: loading, validation, safe decoding.

Sections:

* ``load_sewer_ml`` — the official ``SewerML_{Train,Val,Test}.csv`` (or a folder of prepared
  Parquet shards, see ``sewer_hf.prepare``) as a ``Dataset`` with columns

  ===============  ===================================  =========================================
  ``image``        ``datasets.Image()``                 stores the file path; decoded lazily
  ``labels``       ``List(Value("int8"), length=17)``   0/1 multi-hot in ``labels.CLASSES`` order
  ``filename``     ``Value("string")``                  the CSV ``Filename`` (matches score files)
  ``water_level``  ``Value("int32")``                   ``WaterLevel``, integer percent 0-100
  ``defect``       ``Value("int8")``                    ``Defect``, 1 exactly when any label is 1
  ===============  ===================================  =========================================

  A fixed-length int8 list keeps 1 M rows at 17 bytes each and converts straight to a
  ``(N, 17)`` array (``ds.with_format("numpy")["labels"]``); cast to float32 for the loss.
  A test CSV without class columns gives no ``labels`` column (likewise ``water_level`` /
  ``defect`` when those columns are absent). ``VA`` and ``ND`` are annotation flags, not
  classes: they are neither loaded nor checked.

  The index is built without opening a single image: ``pyarrow.csv`` parses the CSV, vectorised
  checks validate it, and one directory listing per candidate folder replaces a million
  ``os.path.exists`` calls. Any problem is then re-found by a slow ``csv``-module pass that
  names the exact line, column and value.
* ``decode_rgb`` — THE decoder: anything image-like (path, bytes, PIL in any mode, 16-bit PNG,
  RGBA, palette, numpy) to an 8-bit RGB PIL image, or ``None`` (logged) when it is unreadable, so
  one broken frame never kills a long run (``strict=True``: a DataError instead). Every entry
  point decodes through it.
* ``SewerTorchDataset`` / ``collate_skip_bad`` / ``SkipCounter`` — the torch side of that promise.
* ``load_image_dataset`` — any image source (Sewer-ML root, shards, ``save_to_disk`` folder,
  Parquet, image folder) as a ``Dataset`` with an ``image`` column, for pretraining.
* ``sewer-hf check-data`` — decode every image of a split and list the broken ones.
"""
from __future__ import annotations

import hashlib

import csv
import glob
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sewer_hf.errors import ConfigError, DataError
from sewer_hf.labels import CLASSES, CSV_COLUMNS, NUM_CLASSES, SPLITS

if TYPE_CHECKING:  # heavy imports only for type checkers; the CLI imports this module
    import datasets
    import pyarrow as pa
    from PIL import Image as PILImage

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

# Prepared shards (sewer_hf.prepare): "<Split>-00000-of-00004.parquet".
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


def _features(columns: Sequence[str]) -> "datasets.Features":
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
    return _features(cols)


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
        raise DataError(f"{where}: column(s) {_quoted(doubled)} appear more than once; expected the header {official}")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise DataError(f"{where}: unknown column(s) {_quoted(unknown)}; expected the official Sewer-ML header {official}")
    class_cols = [c for c in CLASSES if c in columns]
    # Train/Val need every column; a Test file may hold just Filename (labels are withheld),
    # but labels, when present, must be complete.
    if split == "Test":
        required = ["Filename"] + (list(CLASSES) if class_cols else [])
    else:
        required = list(CSV_COLUMNS)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {_quoted(missing)}; expected the official Sewer-ML header {official}")
    return _Header(columns, bool(class_cols), "WaterLevel" in columns, "Defect" in columns)


def _quoted(names: Iterable[str]) -> str:
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
        labels = _labels_matrix(table)  # int32, so that values like 2 or -1 survive to be seen
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
        error = DataError(f"{error}; {len(duplicates)} filename(s) occur more than once, e.g. {_quoted(duplicates[:MAX_NAMES_IN_MESSAGE])}")
    raise error


def _labels_matrix(table: "pa.Table") -> np.ndarray:
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


# ----------------------------------------------------------------------------------------
# Locating the files
# ----------------------------------------------------------------------------------------


def find_annotation_csv(data_root: str | os.PathLike, split: str, annotations_dir: str | os.PathLike | None = None) -> Path | None:
    """``SewerML_<Split>.csv`` in ``annotations_dir`` if given, else in ``data_root``."""
    name = annotation_filename(split)
    for folder in ([annotations_dir] if annotations_dir is not None else []) + [data_root]:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def find_prepared_shards(root: str | os.PathLike, split: str) -> list[Path]:
    """Prepared Parquet shards of ``split`` in ``root`` or ``root/<split>/`` (sorted); raises
    DataError when a set is incomplete (a prepare run that has not finished)."""
    split = normalize_split(split)
    root = Path(root)
    for folder in [root] + [root / d for d in SPLIT_DIRS[split]]:
        if not folder.is_dir():
            continue
        # glob, not a listing of the folder: a flat Sewer-ML root holds a million files.
        matches = [p for p in folder.glob(f"{split}-*-of-*.parquet") if SHARD_PATTERN.match(p.name)]
        if not matches:
            continue
        totals = {SHARD_PATTERN.match(p.name)["total"] for p in matches}
        if len(totals) > 1:
            raise DataError(f"{folder}: prepared shards of {split} from different runs (-of-{', -of-'.join(sorted(totals))}); keep one set")
        total = int(totals.pop())
        present = {int(SHARD_PATTERN.match(p.name)["index"]) for p in matches}
        absent = [i for i in range(total) if i not in present]
        if absent:
            raise DataError(
                f"{folder}: prepared shards of {split} are incomplete: {len(absent)} of {total} missing "
                f"(e.g. {split}-{absent[0]:05d}-of-{total:05d}.parquet); re-run `sewer-hf prepare` to finish them"
            )
        return sorted(matches)
    return []


def _list_names(folder: Path) -> list[str]:
    # One listing instead of one stat per image (1 M of them on the full dataset).
    with os.scandir(folder) as entries:
        return [e.name for e in entries]


def _image_folders(data_root: Path, split: str) -> list[Path]:
    """Existing candidate folders, split folder(s) first, the root (flat layout) last."""
    folders = [data_root / d for d in SPLIT_DIRS[split] if (data_root / d).is_dir()]
    unique: list[Path] = []
    for f in folders:  # "Train" and "train" are the same folder on case-insensitive disks
        if not any(os.path.samefile(f, u) for u in unique):
            unique.append(f)
    return unique + [data_root]


def _resolve_image_paths(data_root: Path, split: str, filenames: "pa.Array", check_files: bool) -> tuple["pa.Array", np.ndarray]:
    """Full image path per row, and a bool mask of rows whose file does not exist.

    With ``check_files``, every candidate folder is listed once and each image is taken from
    the first folder that has it (a mixed layout works). Otherwise the first rows decide one
    folder for all.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    folders = _image_folders(data_root, split)
    n = len(filenames)
    if check_files:
        found = np.zeros(n, dtype=bool)
        chosen = np.full(n, -1, dtype=np.int64)
        for k, folder in enumerate(folders):
            listed = pa.array(_list_names(folder), type=pa.string())
            here = pc.is_in(filenames, value_set=listed).to_numpy(zero_copy_only=False)
            chosen[here & ~found] = k
            found |= here
        missing = ~found
        # Missing files get the folder most of the others are in (for the error message).
        counts = np.bincount(chosen[found], minlength=len(folders)) if found.any() else np.zeros(len(folders), int)
        default = int(counts.argmax()) if found.any() else 0
        chosen[missing] = default
    else:
        probe = filenames.slice(0, LAYOUT_PROBE_ROWS).to_pylist()
        hits = [sum(os.path.isfile(folder / name) for name in probe) for folder in folders]
        default = int(np.argmax(hits)) if max(hits, default=0) > 0 else 0
        chosen = np.full(n, default, dtype=np.int64)
        missing = np.zeros(n, dtype=bool)
    paths = pc.binary_join_element_wise(str(folders[default]) + os.sep, filenames, "")
    for k, folder in enumerate(folders):
        if k != default and (chosen == k).any():
            joined = pc.binary_join_element_wise(str(folder) + os.sep, filenames, "")
            paths = pc.if_else(pa.array(chosen == k), joined, paths)
    return paths, missing


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


class MissingImagesError(DataError):
    """Rows whose image file is missing (``drop_missing=False``). ``hint`` says how to skip them
    where the caller is: a Python argument by default; a command swaps in its own option."""

    def __init__(self, problem: str, missing: list[str],
                 hint: str = "pass drop_missing=True to skip them; `sewer-hf check-data` lists them all") -> None:
        self.problem, self.missing, self.hint = problem, missing, hint
        super().__init__(f"{problem}; {hint}")

    def with_hint(self, hint: str) -> "MissingImagesError":
        return MissingImagesError(self.problem, self.missing, hint)


def load_sewer_ml(
    data_root: str | os.PathLike,
    split: str,
    annotations_dir: str | os.PathLike | None = None,
    drop_missing: bool = False,
    check_files: bool = True,
) -> "datasets.Dataset":
    """One Sewer-ML split as a ``datasets.Dataset`` (columns in the module docstring).

    ``data_root`` holds the images, flat (``<root>/<Filename>``, as the official code reads them)
    or per split (``<root>/Train/<Filename>``, any case; a mix works with ``check_files``).
    The CSV ``SewerML_<Split>.csv`` is read from ``annotations_dir`` if it has it, else from
    ``data_root``. A ``data_root`` holding prepared shards (``sewer-hf prepare``) and no CSV loads
    those shards instead (``annotations_dir`` is then not needed: the shards carry the labels).

    ``check_files`` lists the image folders once and raises DataError for missing images;
    ``drop_missing=True`` drops those rows instead, logs a warning, and records the count in the
    returned dataset's ``info.description`` ("... dropped N row(s) whose image file is missing").
    """
    ds, _ = load_sewer_ml_with_missing(data_root, split, annotations_dir, drop_missing, check_files)
    return ds


def load_sewer_ml_with_missing(
    data_root: str | os.PathLike,
    split: str,
    annotations_dir: str | os.PathLike | None = None,
    drop_missing: bool = False,
    check_files: bool = True,
) -> tuple["datasets.Dataset", list[str]]:
    """``load_sewer_ml`` plus the list of filenames whose image is missing (dropped when
    ``drop_missing``; empty unless ``check_files``)."""
    split = normalize_split(split)
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    # A folder of prepared shards wins over an annotations_dir (the shards carry the labels);
    # a CSV in the data root itself marks a Sewer-ML image root.
    if not (root / annotation_filename(split)).is_file():
        shards = find_prepared_shards(root, split)
        if shards:
            return _load_shards(shards, split), []
    csv_path = find_annotation_csv(root, split, annotations_dir)
    if csv_path is None:
        looked = [str(Path(d) / annotation_filename(split)) for d in ([annotations_dir] if annotations_dir else []) + [root]]
        raise DataError(
            f"no annotation file {' or '.join(looked)} and no prepared shards "
            f"({split}-00000-of-NNNNN.parquet) in {root}"
        )
    return _load_from_csv(root.resolve(), split, csv_path, drop_missing, check_files)


def _load_from_csv(root: Path, split: str, csv_path: Path, drop_missing: bool, check_files: bool):
    import datasets
    import pyarrow as pa

    table = read_annotations(csv_path, split)
    filenames = table.column("Filename").combine_chunks()
    paths, missing = _resolve_image_paths(root, split, filenames, check_files)

    columns: dict[str, Any] = {"image": paths}
    if "RB" in table.column_names:
        flat = _labels_matrix(table).astype(np.int8).ravel()
        columns["labels"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), NUM_CLASSES)
    columns["filename"] = filenames
    if "WaterLevel" in table.column_names:
        columns["water_level"] = table.column("WaterLevel").combine_chunks()
    if "Defect" in table.column_names:
        columns["defect"] = table.column("Defect").combine_chunks().cast(pa.int8())
    arrow = pa.table(columns)

    missing_names: list[str] = []
    description = f"Sewer-ML {split} split: annotations {csv_path}, images under {root}."
    if missing.any():
        missing_names = filenames.filter(pa.array(missing)).to_pylist()
        where = ", ".join(str(f) for f in _image_folders(root, split))
        examples = _quoted(missing_names[:MAX_NAMES_IN_MESSAGE])
        if missing.all():
            raise DataError(f"{csv_path}: none of the {len(missing)} images found in {where} (e.g. {examples}); wrong data root?")
        if not drop_missing:
            raise MissingImagesError(
                f"{csv_path}: {len(missing_names)} of {len(missing)} image files are missing from {where}, "
                f"e.g. {examples}", missing_names)
        logger.warning("%s: dropped %d row(s) whose image file is missing, e.g. %s", csv_path, len(missing_names), examples)
        arrow = arrow.filter(pa.array(~missing))
        description += f" dropped {len(missing_names)} row(s) whose image file is missing."

    # Paths as strings first, then the Image feature (decoded lazily, when rows are read).
    features = _features(arrow.column_names)
    features["image"] = datasets.Value("string")
    info = datasets.DatasetInfo(description=description, features=features, license=SEWER_ML_LICENSE, citation=SEWER_ML_CITATION)
    # An explicit fingerprint (the CSV's identity and the options): `datasets` would otherwise
    # pickle the whole table to hash it, which is slow for 1 M rows and fails on some
    # Python / pyarrow / dill combinations (seen on Python 3.12).
    stat = Path(csv_path).stat()
    fingerprint = hashlib.sha256(repr((str(Path(csv_path).resolve()), stat.st_size, stat.st_mtime_ns, split,
                                       drop_missing, check_files, str(root))).encode()).hexdigest()[:32]
    ds = datasets.Dataset(datasets.table.InMemoryTable(arrow), info=info, split=datasets.NamedSplit(HF_SPLIT_NAMES[split]),
                          fingerprint=fingerprint)
    return ds.cast_column("image", datasets.Image()), missing_names


def _load_shards(shards: list[Path], split: str) -> "datasets.Dataset":
    import datasets

    # The Parquet files carry the features (Image, labels, ...) in their schema metadata.
    # `datasets` converts them once into its cache (memory-mapped Arrow), then reuses that.
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    ds.info.description = f"Sewer-ML {split} split: {len(shards)} prepared shard(s) in {shards[0].parent}."
    ds.info.license = SEWER_ML_LICENSE
    ds.info.citation = SEWER_ML_CITATION
    return ds


# ----------------------------------------------------------------------------------------
# Generic image sources (pretraining on a user's own frames)
# ----------------------------------------------------------------------------------------

_SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_DATASET_DICT_KEYS = {
    "Train": ("train", "Train", "training"),
    "Val": ("validation", "val", "valid", "Val"),
    "Test": ("test", "Test"),
}


def load_image_dataset(data: str | os.PathLike, split: str = "Train") -> "datasets.Dataset":
    """A ``Dataset`` with an ``image`` column from whatever ``data`` is, tried in this order:

    1. a Sewer-ML root with ``SewerML_<split>.csv`` -> ``load_sewer_ml``
    2. a folder of prepared shards (``<Split>-*-of-*.parquet``) -> ``load_sewer_ml``
    3. a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder -> ``load_from_disk``
    4. a Parquet file, a glob of them, or a folder holding ``*.parquet`` (or ``*/*.parquet``)
    5. a folder of image files -> ``load_dataset("imagefolder", data_dir=...)`` (offline)
    """
    import datasets

    split = normalize_split(split)
    text = os.fspath(data)
    path = Path(text)
    source = None
    if glob.has_magic(text):
        files = sorted(glob.glob(text))
        if not files:
            raise DataError(f"no file matches {text!r}")
        ds, source = _load_parquet(files, text), "parquet"
    elif path.is_file():
        if path.suffix.lower() != ".parquet":
            raise DataError(f"{path}: expected a Parquet file, a folder, or a glob of Parquet files")
        ds, source = _load_parquet([str(path)], text), "parquet"
    elif path.is_dir():
        if find_annotation_csv(path, split) is not None or find_prepared_shards(path, split):
            ds, source = load_sewer_ml(path, split), "sewer-ml"
        elif any((path / m).is_file() for m in _SAVED_DATASET_MARKERS):
            ds, source = _pick_split(datasets.load_from_disk(str(path)), split, path), "save_to_disk"
        elif parquet := sorted(map(str, [*path.glob("*.parquet"), *path.glob("*/*.parquet")])):
            ds, source = _load_parquet(parquet, text), "parquet"
        elif _has_images(path):
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
            ds, source = _pick_split(loaded, split, path), "imagefolder"
    else:
        raise DataError(f"{path} does not exist")
    if source is None:
        raise DataError(
            f"{path}: not an image source: expected a Sewer-ML root ({annotation_filename(split)}), prepared shards, "
            "a save_to_disk folder, Parquet files, or a folder of images"
        )
    return _require_image_column(ds, text)


def _load_parquet(files: list[str], label: str):
    import datasets

    bad = [f for f in files if not f.lower().endswith(".parquet")]
    if bad:
        raise DataError(f"{label}: expected Parquet files, got {_quoted(bad[:MAX_NAMES_IN_MESSAGE])}")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _pick_split(loaded, split: str, where: Path):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded
    for key in _DATASET_DICT_KEYS[split]:
        if key in loaded:
            return loaded[key]
    raise DataError(f"{where}: no {split} split; it has {_quoted(loaded.keys())}")


def _has_images(folder: Path, depth: int = 2) -> bool:
    """Whether the folder (or a sub-folder, up to ``depth`` levels) holds an image file."""
    with os.scandir(folder) as entries:
        subfolders = []
        for e in entries:
            if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES):
                return True
            if e.is_dir() and not e.name.startswith("."):
                subfolders.append(Path(e.path))
    return depth > 0 and any(_has_images(s, depth - 1) for s in subfolders)


def _require_image_column(ds, label: str):
    import datasets

    feature = ds.features.get("image")
    if feature is None:
        raise DataError(f"{label}: the dataset has no 'image' column (columns: {_quoted(ds.column_names)})")
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        ds = ds.cast_column("image", datasets.Image())  # a column of file paths
    elif not isinstance(feature, datasets.Image):
        raise DataError(f"{label}: the 'image' column is {feature}, expected datasets.Image() or file paths")
    return ds


# ----------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_rgb(image: Any, strict: bool = False) -> "PILImage.Image | None":
    """THE image decoder of the package: every entry point (training, ``prepare``,
    ``check-data``, ``predict``, ``scan``, ``SewerClassifier.predict``, the attention overlay,
    the Space) turns its input into pixels here, so one file gives the same scores everywhere.

    Fully decodes ``image`` to an 8-bit RGB PIL image. Accepts a ``datasets`` image dict
    ``{"bytes", "path"}`` (bytes win), a PIL image (in any mode; a lazily opened one is decoded
    now), raw bytes, a path, or a uint8/uint16 numpy array (HxW, HxWx1, HxWx3, HxWx4).
    Conversions: grayscale and palette -> RGB; any alpha channel (RGBA, LA, PA, a palette or
    grayscale with a transparent colour) is composited on black (transparent pixels show as
    black, as a viewer on a black screen would; Sewer-ML frames are opaque, so this only matters
    for foreign images); 16-bit grayscale is scaled to 8 bits (``round(v * 255 / 65535)``, not
    clipped to white); a 16-bit RGB(A) PNG keeps the high byte of each sample (Pillow's reader).

    When it cannot be read: ``None`` and a logged warning (one broken frame never stops a long
    run), or with ``strict=True`` a ``DataError`` that names the image and the reason.
    """
    rgb, error = decode_rgb_or_error(image)
    if rgb is None:
        if strict:
            raise DataError(f"{_describe(image)}: not an image that can be decoded ({error}); expected a PNG, "
                            f"JPEG, BMP, TIFF or WebP file")
        logger.warning("unreadable image %s: %s", _describe(image), error)
    return rgb


def decode_rgb_or_error(image: Any) -> tuple["PILImage.Image | None", str | None]:
    """Like ``decode_rgb`` but silent: ``(rgb, None)`` or ``(None, reason)``."""
    from PIL import Image

    opened = None
    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            img = _array_image(image)
        else:
            opened = img = Image.open(_as_file(image))
        img.load()  # decodes everything now: truncated files fail here, not in a worker later
        return _to_rgb(img), None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        if opened is not None:
            opened.close()
        return None, f"{type(exc).__name__}: {exc}"


def _array_image(array: np.ndarray) -> "PILImage.Image":
    """A numpy image (uint8 or uint16; HxW, HxWx1, HxWx3 or HxWx4) as a PIL image."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise ValueError(f"image array of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if array.dtype == np.uint16:
        if array.ndim == 2:
            return Image.fromarray(array)  # mode I;16: scaled by _to_rgb
        array = ((array.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"image array of dtype {array.dtype}: expected uint8 or uint16")
    return Image.fromarray(np.ascontiguousarray(array))


def encoded_bytes(image: Any) -> bytes | None:
    """The encoded bytes of an image (a ``datasets`` dict: its bytes, else its file; raw bytes;
    a path), or ``None`` (and a warning) when there are none to read."""
    try:
        source = _as_file(image)
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        if not data:
            raise ValueError("empty file")
        return data
    except (OSError, TypeError, ValueError) as exc:
        logger.warning("unreadable image %s: %s: %s", _describe(image), type(exc).__name__, exc)
        return None


def _as_file(image: Any):
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return io.BytesIO(image["bytes"])
        if image.get("path"):
            return image["path"]
        raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return image
    raise TypeError(f"expected an image dict, PIL image, bytes or path, got {type(image).__name__}")


def _describe(image: Any) -> str:
    if isinstance(image, dict):
        return str(image.get("path") or "<bytes>")
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"<{type(image).__name__}>"


def _to_rgb(img: "PILImage.Image") -> "PILImage.Image":
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        # PNG stores at most 16 bits: map 0..65535 onto 0..255 with rounding.
        eight = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(eight.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


# ----------------------------------------------------------------------------------------
# Torch side: a Dataset that tolerates broken images, and a collate that drops them
# ----------------------------------------------------------------------------------------


def _make_torch_dataset_class():
    import torch

    class SewerTorchDataset(torch.utils.data.Dataset):
        """Training view of a ``datasets.Dataset`` with our own, failure-tolerant decoding.

        ``__getitem__(i)`` returns ``{"pixel_values": transform(rgb), "labels": float32[17],
        "index": i}`` (no ``labels`` when ``with_labels=False``), or ``None`` when the image is
        unreadable; use ``collate_skip_bad`` as the DataLoader's ``collate_fn``. ``transform``
        may return a list of tensors (several views); it is passed through unchanged.
        ``encoded=True``: ``"encoded"`` (the file's bytes, a 1-d uint8 numpy array; the collate
        keeps them as a list) instead of ``"pixel_values"``; nothing is decoded here
        (``TrainState.epoch_batches`` decodes the batch on the training device).
        """

        def __init__(self, hf_dataset, transform=None, with_labels: bool = True, encoded: bool = False):
            import datasets

            if "image" not in hf_dataset.column_names:
                raise DataError(f"the dataset has no 'image' column (columns: {_quoted(hf_dataset.column_names)})")
            if with_labels and "labels" not in hf_dataset.column_names:
                raise DataError("the dataset has no 'labels' column (a test split?); pass with_labels=False")
            keep = ["image", "labels"] if with_labels else ["image"]
            # decode=False: rows give {"bytes", "path"}; decode_rgb decodes and survives failures.
            self.dataset = hf_dataset.select_columns(keep).cast_column("image", datasets.Image(decode=False))
            self.transform = transform
            self.with_labels = with_labels
            self.encoded = encoded

        def __len__(self) -> int:
            return len(self.dataset)

        def __getitem__(self, index: int):
            row = self.dataset[int(index)]
            if self.encoded:  # the bytes, undecoded: the batch is decoded on the training device
                data = encoded_bytes(row["image"])
                if data is None:
                    return None
                # a numpy array, not a tensor: accelerate moves the batch's tensors to the device,
                # and the decoders read the bytes on the CPU (nvjpeg included)
                item = {"encoded": np.frombuffer(bytearray(data), dtype=np.uint8), "index": int(index)}
            else:
                img = decode_rgb(row["image"])
                if img is None:
                    return None
                item = {"pixel_values": self.transform(img) if self.transform else img, "index": int(index)}
            if self.with_labels:
                item["labels"] = torch.tensor(row["labels"], dtype=torch.float32)
            return item

    # Importable (hence picklable for DataLoader workers) as sewer_hf.data.SewerTorchDataset.
    SewerTorchDataset.__module__ = __name__
    SewerTorchDataset.__qualname__ = "SewerTorchDataset"
    return SewerTorchDataset


def __getattr__(name: str):
    # The torch Dataset class is built on first use, so that `import sewer_hf.data` (the CLI)
    # does not import torch. It is cached as a module global, which keeps it picklable.
    if name == "SewerTorchDataset":
        cls = globals()["SewerTorchDataset"] = _make_torch_dataset_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def collate_skip_bad(batch: list[dict | None]) -> dict | None:
    """Collate ``SewerTorchDataset`` items, dropping ``None`` (unreadable) ones.

    Tensors are stacked; a list of tensors per item (multi-view) becomes a list of stacked
    tensors, one per view; numbers become a tensor; anything else stays a list.
    ``"n_skipped"`` counts the dropped items. Returns ``None`` when every item was unreadable
    (the loop skips it; ``SkipCounter`` counts such batches).
    """
    import torch

    good = [item for item in batch if item is not None]
    n_skipped = len(batch) - len(good)
    if not good:
        logger.warning("skipped a whole batch: all %d images unreadable", n_skipped)
        return None
    out: dict[str, Any] = {}
    for key, first in good[0].items():
        values = [item[key] for item in good]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, (list, tuple)) and first and all(isinstance(v, torch.Tensor) for v in first):
            out[key] = [torch.stack([v[view] for v in values]) for view in range(len(first))]
        elif isinstance(first, (int, float, bool)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    out["n_skipped"] = n_skipped
    return out


class SkipCounter:
    """Totals of unreadable images seen by a training loop::

        skips = SkipCounter()
        for batch in loader:
            if not skips.add(batch):
                continue  # every image of this batch was unreadable
            ...
        log(skips.images, skips.empty_batches)
    """

    def __init__(self) -> None:
        self.images = 0  # unreadable images dropped from batches that still had good ones
        self.empty_batches = 0  # batches where every image was unreadable

    def add(self, batch: dict | None) -> bool:
        """Count the batch's skips; False when the batch is empty (``None``)."""
        if batch is None:
            self.empty_batches += 1
            return False
        self.images += int(batch.get("n_skipped", 0))
        return True


# ----------------------------------------------------------------------------------------
# sewer-hf check-data
# ----------------------------------------------------------------------------------------

DEFAULT_CHECK_WORKERS = min(8, os.cpu_count() or 1)


def add_check_data_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="folder with the images (flat or per split) or prepared shards")
    parser.add_argument("--split", required=True, help="Train, Val or Test (any case)")
    parser.add_argument("--annotations-dir", default=None, help="folder with SewerML_<Split>.csv (default: the data root)")
    parser.add_argument("--workers", type=int, default=DEFAULT_CHECK_WORKERS, help="decoding processes (default: %(default)s)")
    parser.set_defaults(func=run_check_data)


def _check_one(image: dict) -> str | None:
    _, error = decode_rgb_or_error(image)
    return error


def iter_decode_errors(hf_dataset, workers: int = 1, progress: bool = True, desc: str = "decoding"):
    """Yield ``(index, image_description, reason)`` for every image of ``hf_dataset`` that
    does not decode, decoding in ``workers`` processes."""
    import datasets
    from tqdm.auto import tqdm

    raw = hf_dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))

    def images():
        for start in range(0, len(raw), 256):
            yield from raw[start:start + 256]["image"]

    bar = tqdm(total=len(raw), desc=desc, unit="img", disable=not progress)
    pool = None
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers)
            errors = pool.imap(_check_one, images(), chunksize=16)
        else:
            errors = map(_check_one, images())
        for index, error in enumerate(errors):
            bar.update(1)
            if error is not None:
                yield index, _describe(raw[index]["image"]), error
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def run_check_data(args) -> int:
    ds, missing = load_sewer_ml_with_missing(
        args.data_root, args.split, args.annotations_dir, drop_missing=True, check_files=True
    )
    split = normalize_split(args.split)
    for name in missing:
        print(f"missing: {name}")
    unreadable = 0
    for _, where, error in iter_decode_errors(ds, workers=args.workers, desc=f"check-data {split}"):
        unreadable += 1
        print(f"unreadable: {where}: {error}")
    total = len(ds) + len(missing)
    print(f"{split}: {total} images checked, {len(missing)} missing, {unreadable} unreadable")
    return 1 if missing or unreadable else 0
