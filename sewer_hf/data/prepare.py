"""``sewer-hf prepare``: write a split once as resized, re-encoded Parquet shards.

Decoding 720x576 PNGs dominates the data loading cost of training; resizing every frame once
to ``size x size`` (bicubic, no aspect keeping: the benchmark's plain resize) and re-encoding
it makes every later epoch cheap. Layout, flat in ``OUT`` so one folder can hold all splits::

    OUT/Train-00000-of-00004.parquet ... OUT/Train-00003-of-00004.parquet
    OUT/Train-prepare.json      settings, source fingerprint, per-shard counts and skipped images

The shards keep the loader's features (``image`` with the bytes embedded, ``labels``,
``filename``, ``water_level``, ``defect``), so they load with
``datasets.load_dataset("parquet", data_files="OUT/Train-*.parquet")`` or with
``sewer_hf.data.load_sewer_ml(OUT, "train")``.

Shard ``i`` holds source rows ``[i * shard_size, (i + 1) * shard_size)`` minus unreadable images
(skipped, counted and listed in the manifest). Each shard is written to a temporary file and
renamed into place, so a killed run leaves no half shard; a re-run with the same settings skips
finished shards. Missing image files are dropped by the loader and reported the same way.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sewer_hf.atomic import write_json_atomically
from sewer_hf.data import decode_rgb_or_error, load_sewer_ml_with_missing, normalize_split
from sewer_hf.data.check import DEFAULT_CHECK_WORKERS
from sewer_hf.data.decode import describe_image
from sewer_hf.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 256  # px; leaves room for 224-px crops
DEFAULT_SHARD_SIZE = 1000  # images per shard: ~100 MB of 256-px PNG, ~15 MB of JPEG
FORMATS = ("png", "jpeg")
JPEG_QUALITY = 95
IMAGES_PER_ROW_GROUP = 100  # small row groups keep random access to one image cheap
MANIFEST_VERSION = 1
# Settings that must match for a re-run to reuse finished shards.
_SETTING_KEYS = ("version", "split", "size", "format", "shard_size", "n_rows", "n_shards", "filenames_sha1")


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


def manifest_path(out: Path, split: str) -> Path:
    return out / f"{split}-prepare.json"


@dataclass
class PrepareReport:
    shards_written: int = 0
    shards_reused: int = 0
    rows_written: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {"filename", "error"}


def encode_resized(image: Any, size: int, fmt: str) -> tuple[bytes | None, str | None]:
    """Decode ``image`` (see ``decode_rgb``), resize to ``size x size`` bicubic, encode;
    ``(bytes, None)`` or ``(None, reason)`` when it cannot be read."""
    from PIL import Image

    rgb, error = decode_rgb_or_error(image)
    if rgb is None:
        return None, error
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        resized.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        resized.save(buffer, format="PNG")
    return buffer.getvalue(), None


def _encode_task(task: tuple[Any, int, str]) -> tuple[bytes | None, str | None]:
    return encode_resized(*task)


def prepare_split(
    data_root: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    size: int = DEFAULT_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    fmt: str = "png",
    annotations_dir: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
) -> PrepareReport:
    """Write the shards of one split into ``out`` (see the module docstring)."""
    import datasets
    from tqdm.auto import tqdm

    split = normalize_split(split)
    if size < 1:
        raise ConfigError(f"--size must be a positive number of pixels, got {size}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    source, missing = load_sewer_ml_with_missing(data_root, split, annotations_dir, drop_missing=True)
    if len(source) == 0:
        raise DataError(f"{data_root}: the {split} split has no images to prepare")
    n_shards = math.ceil(len(source) / shard_size)
    settings = {
        "version": MANIFEST_VERSION, "split": split, "size": size, "format": fmt,
        "shard_size": shard_size, "n_rows": len(source), "n_shards": n_shards,
        "filenames_sha1": _fingerprint(source),
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, split, settings, str(Path(data_root).resolve()), missing)
    _remove_stale_temporaries(out, split)

    raw = source.cast_column("image", datasets.Image(decode=False))
    features = source.features  # same columns and types as the loader's
    report = PrepareReport(missing=list(missing))
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(workers)
    bar = tqdm(total=len(source), desc=f"prepare {split}", unit="img", disable=not progress)
    try:
        for index in range(n_shards):
            name = shard_name(split, index, n_shards)
            start, stop = index * shard_size, min((index + 1) * shard_size, len(source))
            if (out / name).is_file() and name in manifest["shards"]:
                report.shards_reused += 1
                _add_shard_counts(report, manifest["shards"][name])
                bar.update(stop - start)
                continue
            rows = raw[start:stop]
            tasks = [(image, size, fmt) for image in rows["image"]]
            encoded = pool.imap(_encode_task, tasks, chunksize=4) if pool else map(_encode_task, tasks)
            columns: dict[str, list] = {key: [] for key in rows}
            skipped = []
            for row_index, (data, error) in enumerate(encoded):
                bar.update(1)
                filename = rows["filename"][row_index]
                if data is None:
                    logger.warning("unreadable image %s: %s", describe_image(rows["image"][row_index]), error)
                    skipped.append({"filename": filename, "error": error})
                    continue
                stem = os.path.splitext(filename)[0]
                for key in rows:
                    if key == "image":
                        columns[key].append({"bytes": data, "path": f"{stem}.{'jpg' if fmt == 'jpeg' else 'png'}"})
                    else:
                        columns[key].append(rows[key][row_index])
            _write_atomically(datasets.Dataset.from_dict(columns, features=features), out / name)
            manifest["shards"][name] = {"rows": len(columns["image"]), "skipped": skipped}
            write_json_atomically(manifest, manifest_path(out, split))
            report.shards_written += 1
            _add_shard_counts(report, manifest["shards"][name])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return report


def _add_shard_counts(report: PrepareReport, shard: dict) -> None:
    report.rows_written += shard["rows"]
    report.unreadable.extend(shard["skipped"])


def _fingerprint(source) -> str:
    digest = hashlib.sha1()
    names = source.data.column("filename")
    for chunk in names.chunks:
        for name in chunk.to_pylist():
            digest.update(name.encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _open_manifest(out: Path, split: str, settings: dict, source: str, missing: list[str]) -> dict:
    path = manifest_path(out, split)
    existing_shards = sorted(p.name for p in out.glob(f"{split}-*-of-*.parquet"))
    if path.is_file():
        manifest = json.loads(path.read_text())
        differs = [k for k in _SETTING_KEYS if manifest.get(k) != settings[k]]
        if differs:
            changes = ", ".join(f"{k}: {manifest.get(k)!r} -> {settings[k]!r}" for k in differs)
            raise DataError(
                f"{out} holds {split} shards prepared with other settings or source images ({changes}); "
                "use another --out or delete those shards and the manifest"
            )
        return manifest
    if existing_shards:
        raise DataError(f"{out} holds {split} shards ({existing_shards[0]}, ...) but no {path.name}; use another --out or delete them")
    manifest = {**settings, "source": source, "missing": missing, "shards": {}}
    write_json_atomically(manifest, path)
    return manifest


def _remove_stale_temporaries(out: Path, split: str) -> None:
    # Left by a run killed mid-write; only our own naming pattern is touched.
    for stale in out.glob(f".{split}-*-of-*.parquet.tmp-*"):
        stale.unlink(missing_ok=True)


def _write_atomically(dataset, final: Path) -> None:
    import pyarrow.parquet as pq

    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        # The table's schema metadata carries the `datasets` features (Image, labels, ...).
        pq.write_table(dataset.data.table, tmp, row_group_size=IMAGES_PER_ROW_GROUP)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def add_prepare_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="Sewer-ML image folder (flat or per split)")
    parser.add_argument("--split", required=True, help="Train, Val or Test (any case)")
    parser.add_argument("--out", required=True, help="output folder for <Split>-NNNNN-of-NNNNN.parquet shards")
    parser.add_argument("--annotations-dir", default=None, help="folder with SewerML_<Split>.csv (default: the data root)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="output side in px, size x size bicubic (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="re-encoding format (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_CHECK_WORKERS, help="decoding processes (default: %(default)s)")
    parser.set_defaults(func=run_prepare)


def run_prepare(args) -> int:
    report = prepare_split(
        args.data_root, args.split, args.out, size=args.size, shard_size=args.shard_size,
        fmt=args.format, annotations_dir=args.annotations_dir, workers=args.workers,
    )
    for name in report.missing:
        print(f"missing: {name}")
    for item in report.unreadable:
        print(f"unreadable: {item['filename']}: {item['error']}")
    print(
        f"{normalize_split(args.split)}: {report.rows_written} images in "
        f"{report.shards_written + report.shards_reused} shards under {args.out} "
        f"({report.shards_written} written, {report.shards_reused} already done); "
        f"skipped {len(report.missing)} missing and {len(report.unreadable)} unreadable"
    )
    return 0
