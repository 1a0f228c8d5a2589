"""`sewer-hf check-data`: decode every image of a split and list the missing and broken ones."""
from __future__ import annotations

import logging
import os

from sewer_hf.data.annotations import normalize_split
from sewer_hf.data.decode import decode_rgb_or_error, describe_image
from sewer_hf.data.loading import load_sewer_ml_with_missing
from sewer_hf.feed.machine import available_cores

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# sewer-hf check-data
# ----------------------------------------------------------------------------------------

# the cores this process may use (its affinity and its container's CPU limit), not the host's
DEFAULT_CHECK_WORKERS = min(8, available_cores())


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
                yield index, describe_image(raw[index]["image"]), error
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
