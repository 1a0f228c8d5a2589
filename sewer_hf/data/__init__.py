"""Sewer-ML as a Hugging Face ``datasets.Dataset``: annotations, loading, safe decoding, checks.

* ``labels`` — the 17 classes, their CIW weights, ``pos_weight()``.
* ``annotations`` — the official ``SewerML_{Train,Val,Test}.csv``: header, a fast typed parse,
  and an exact explanation (file, line, column, value) of any problem.
* ``loading`` — ``load_sewer_ml`` (CSV + images, or prepared Parquet shards) as a ``Dataset``
  with columns ``image`` (path, decoded lazily), ``labels`` (``List(int8, 17)`` multi-hot in
  ``labels.CLASSES`` order), ``filename``, ``water_level``, ``defect``; ``load_image_dataset``
  for any other image source (pretraining on a user's own frames). The index is built without
  opening an image: one directory listing per candidate folder.
* ``decode`` — ``decode_rgb``: anything image-like to 8-bit RGB, or ``None`` (logged) when it is
  unreadable, so one broken frame never kills a long run. Every entry point decodes through it.
* ``torch_dataset`` — ``SewerTorchDataset`` / ``collate_skip_bad`` / ``SkipCounter``: the torch
  side of that promise (imported from there: this package itself does not import torch, so
  ``sewer-hf`` commands that only read data start without it).
* ``check`` — ``sewer-hf check-data``. ``prepare`` — resized Parquet shards (``sewer-hf prepare``).
* ``sources`` — what a training config's ``data`` names (a folder, shards, or the synthetic set),
  split by split. ``sampling`` — stratified label fractions.
"""
from sewer_hf.data.annotations import (
    HF_SPLIT_NAMES,
    SPLIT_ALIASES,
    SPLIT_DIRS,
    annotation_filename,
    normalize_split,
    read_annotations,
    sewer_features,
)
from sewer_hf.data.decode import decode_rgb, decode_rgb_or_error, encoded_bytes
from sewer_hf.data.loading import (
    MissingImagesError,
    find_annotation_csv,
    find_prepared_shards,
    load_image_dataset,
    load_sewer_ml,
    load_sewer_ml_with_missing,
)

__all__ = [
    "HF_SPLIT_NAMES", "SPLIT_ALIASES", "SPLIT_DIRS", "MissingImagesError", "annotation_filename", "decode_rgb",
    "decode_rgb_or_error", "encoded_bytes", "find_annotation_csv", "find_prepared_shards", "load_image_dataset",
    "load_sewer_ml", "load_sewer_ml_with_missing", "normalize_split", "read_annotations", "sewer_features",
]
