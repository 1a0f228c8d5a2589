"""Sewer-ML (CSV + images, or prepared Parquet shards) and any other image source as a
`datasets.Dataset`: locating the files without opening them, and the loaders."""
from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sewer_hf.data.annotations import (
    HF_SPLIT_NAMES,
    IMAGE_SUFFIXES,
    LAYOUT_PROBE_ROWS,
    MAX_NAMES_IN_MESSAGE,
    SEWER_ML_CITATION,
    SEWER_ML_LICENSE,
    SHARD_PATTERN,
    SPLIT_DIRS,
    annotation_filename,
    features_for,
    labels_matrix,
    normalize_split,
    quoted,
    read_annotations,
)
from sewer_hf.data.labels import NUM_CLASSES
from sewer_hf.errors import DataError

if TYPE_CHECKING:  # heavy imports only for type checkers; the CLI imports this module
    import datasets
    import pyarrow as pa

logger = logging.getLogger(__name__)


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
        flat = labels_matrix(table).astype(np.int8).ravel()
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
        examples = quoted(missing_names[:MAX_NAMES_IN_MESSAGE])
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
    features = features_for(arrow.column_names)
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
        raise DataError(f"{label}: expected Parquet files, got {quoted(bad[:MAX_NAMES_IN_MESSAGE])}")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _pick_split(loaded, split: str, where: Path):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded
    for key in _DATASET_DICT_KEYS[split]:
        if key in loaded:
            return loaded[key]
    raise DataError(f"{where}: no {split} split; it has {quoted(loaded.keys())}")


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
        raise DataError(f"{label}: the dataset has no 'image' column (columns: {quoted(ds.column_names)})")
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        ds = ds.cast_column("image", datasets.Image())  # a column of file paths
    elif not isinstance(feature, datasets.Image):
        raise DataError(f"{label}: the 'image' column is {feature}, expected datasets.Image() or file paths")
    return ds


