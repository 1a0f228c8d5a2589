"""Where a recipe's images come from: the user's `data`, or (with none) a synthetic Sewer-ML
set generated once into a cache folder; plus the held-out subsets used for monitoring."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from sewer_hf import synth
from sewer_hf.data import find_annotation_csv, find_prepared_shards, load_image_dataset
from sewer_hf.errors import DataError

logger = logging.getLogger(__name__)


def synthetic_data_dir(cfg) -> Path:
    """Where the auto-generated synthetic Sewer-ML set for `data: null` lives (generated once)."""
    cache = Path(os.environ.get("SEWER_HF_CACHE", Path.home() / ".cache" / "sewer_hf"))
    size = cfg.synthetic_size or "mixed"
    defects = "" if cfg.synthetic_defect_fraction is None else f"_defects{cfg.synthetic_defect_fraction}"
    return cache / "synthetic" / f"train{cfg.synthetic_train}_val{cfg.synthetic_val}_{size}{defects}_seed{cfg.seed}"


def ensure_synthetic_data(cfg, accelerator) -> str:
    root = synthetic_data_dir(cfg)
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (root / ".complete").exists():
            logger.info("no `data` given: generating a synthetic Sewer-ML set into %s", root)
            size = tuple(int(v) for v in cfg.synthetic_size.split("x")) if cfg.synthetic_size else None
            synth.generate_dataset(root, cfg.synthetic_train, cfg.synthetic_val, seed=cfg.seed, size=size,
                                   defect_fraction=cfg.synthetic_defect_fraction, progress=True, overwrite=True)
            (root / ".complete").write_text("ok\n")
    return str(root)


def has_split(data: str, split: str) -> bool:
    """Whether `data` is a Sewer-ML root or prepared-shards folder that holds `split`. Other
    sources (image folders, Parquet files, saved datasets) have no separate held-out split."""

    root = Path(data)
    return root.is_dir() and (find_annotation_csv(root, split) is not None or bool(find_prepared_shards(root, split)))


def load_split(data: str, split: str, labelled: bool, required: bool = True):
    """An HF dataset with an `image` column (and `labels` when `labelled`). With
    `required=False` a split that `data` does not have gives None (callers then fall back,
    e.g. to a slice of train); a split that exists but is malformed is still an error."""

    if not required and not has_split(data, split):
        return None
    ds = load_image_dataset(data, split=split)
    if labelled and "labels" not in ds.column_names:
        raise DataError(f"{data} ({split}): this run needs labels (a `labels` column, i.e. Sewer-ML annotations), "
                        f"found columns {ds.column_names}")
    return ds


def fixed_subset(ds, n: int, seed: int):
    if ds is None or len(ds) <= n:
        return ds
    idx = np.random.default_rng(seed).choice(len(ds), size=n, replace=False)
    return ds.select(np.sort(idx))
