"""The torch side of the decoder's promise: a Dataset that tolerates broken images, a collate
that drops them, and the counter of what was skipped."""
from __future__ import annotations

import logging
from typing import Any, Optional

import datasets
import numpy as np
import torch

from sewer_hf.data.annotations import quoted
from sewer_hf.data.decode import decode_rgb, encoded_bytes
from sewer_hf.errors import DataError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Torch side: a Dataset that tolerates broken images, and a collate that drops them
# ----------------------------------------------------------------------------------------


class SewerTorchDataset(torch.utils.data.Dataset):
    """Training view of a ``datasets.Dataset`` with our own, failure-tolerant decoding.

    ``__getitem__(i)`` returns ``{"pixel_values": transform(rgb), "labels": float32[17],
    "index": i}`` (no ``labels`` when ``with_labels=False``), or ``None`` when the image is
    unreadable; use ``collate_skip_bad`` as the DataLoader's ``collate_fn``. ``transform``
    may return a list of tensors (several views); it is passed through unchanged.
    ``encoded=True``: ``"encoded"`` (the file's bytes, a 1-d uint8 numpy array; the collate
    keeps them as a list) instead of ``"pixel_values"``; nothing is decoded here
    (``sewer_hf.feed.pipeline.train_batches`` decodes the batch on the training device).
    """

    def __init__(self, hf_dataset, transform=None, with_labels: bool = True, encoded: bool = False):
        if "image" not in hf_dataset.column_names:
            raise DataError(f"the dataset has no 'image' column (columns: {quoted(hf_dataset.column_names)})")
        if with_labels and "labels" not in hf_dataset.column_names:
            raise DataError("the dataset has no 'labels' column (a test split?); pass with_labels=False")
        keep = ["image", "labels"] if with_labels else ["image"]
        # decode=False: rows give {"bytes", "path"}; decode_rgb decodes and survives failures.
        self.dataset = hf_dataset.select_columns(keep).cast_column("image", datasets.Image(decode=False))
        self.transform = transform
        self.with_labels = with_labels
        self.encoded = encoded
        self.kept: Optional[_KeptFrames] = None  # see keep_decoded

    def __len__(self) -> int:
        return len(self.dataset)

    def keep_decoded(self, max_bytes: int) -> bool:
        """Keep every item's decoded pixels (and labels) in memory once read, so later epochs
        skip the table, the PNG and PIL: the 64-px frames of a CPU run cost ~0.2-0.4 ms each to
        read, 3-7 % of a fine-tuning step, and a quickstart split holds 37.7 MB of them. Only
        for a fixed-size, deterministic transform (``DecodeForGPU``: the batched feed decodes
        and resizes, the augmentation comes later) and a split whose pixels fit ``max_bytes``;
        returns whether it keeps them. An unreadable image stays ``None`` in every epoch (and
        is counted each time), without being decoded again. For a dataset read in this process:
        a loader worker's copy would be lost at the end of each epoch."""
        from sewer_hf.feed.augment import DecodeForGPU

        if self.encoded or not isinstance(self.transform, DecodeForGPU):
            return False
        size = self.transform.size
        if len(self) * 3 * size * size > max_bytes:
            return False
        self.kept = _KeptFrames(len(self), size, self.with_labels)
        return True

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list:
        """A batch's items from one read of the table (the DataLoader calls this when it is
        there): rows read one at a time cost ~0.06 ms each, a quarter of reading a 64-px frame.
        Items kept in memory (``keep_decoded``) are not read again."""
        indices = [int(i) for i in indices]
        to_read = indices if self.kept is None else [i for i in indices if not self.kept.has(i)]
        items = {}
        if to_read:
            rows = self.dataset[to_read]
            labels = rows["labels"] if self.with_labels else [None] * len(to_read)
            for i, image, row_labels in zip(to_read, rows["image"], labels):
                items[i] = self._item(i, image, row_labels)
                if self.kept is not None:
                    self.kept.put(i, items[i])
        return [items[i] if i in items else self.kept.get(i) for i in indices]

    def _item(self, index: int, image: dict, labels):
        if self.encoded:  # the bytes, undecoded: the batch is decoded on the training device
            data = encoded_bytes(image)
            if data is None:
                return None
            # a numpy array, not a tensor: accelerate moves the batch's tensors to the device,
            # and the decoders read the bytes on the CPU (nvjpeg included)
            item = {"encoded": np.frombuffer(bytearray(data), dtype=np.uint8), "index": index}
        else:
            img = decode_rgb(image)
            if img is None:
                return None
            item = {"pixel_values": self.transform(img) if self.transform else img, "index": index}
        if self.with_labels:
            item["labels"] = torch.tensor(labels, dtype=torch.float32)
        return item


class _KeptFrames:
    """The decoded items of a split, filled as they are first read (``keep_decoded``)."""

    UNREAD, KEPT, UNREADABLE = 0, 1, 2

    def __init__(self, n: int, size: int, with_labels: bool) -> None:
        self.pixels = torch.empty((n, 3, size, size), dtype=torch.uint8)
        self.with_labels = with_labels
        self.labels: Optional[torch.Tensor] = None  # (n, classes), made at the first item
        self.state = np.zeros(n, dtype=np.uint8)

    def has(self, index: int) -> bool:
        return self.state[index] != self.UNREAD

    def put(self, index: int, item: Optional[dict]) -> None:
        if item is None:
            self.state[index] = self.UNREADABLE
            return
        self.pixels[index] = item["pixel_values"]
        if self.with_labels:
            if self.labels is None:
                self.labels = torch.empty((len(self.state), len(item["labels"])), dtype=torch.float32)
            self.labels[index] = item["labels"]
        self.state[index] = self.KEPT

    def get(self, index: int) -> Optional[dict]:
        if self.state[index] == self.UNREADABLE:
            return None
        item = {"pixel_values": self.pixels[index], "index": index}  # a view: the collate's stack copies it
        if self.with_labels:
            item["labels"] = self.labels[index]
        return item


def collate_skip_bad(batch: list[dict | None]) -> dict | None:
    """Collate ``SewerTorchDataset`` items, dropping ``None`` (unreadable) ones.

    Tensors are stacked; a list of tensors per item (multi-view) becomes a list of stacked
    tensors, one per view; numbers become a tensor; anything else stays a list.
    ``"n_skipped"`` counts the dropped items. Returns ``None`` when every item was unreadable
    (the loop skips it; ``SkipCounter`` counts such batches).
    """
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


