"""Feeding the training device: encoded images decoded there in batches, and a prefetcher that
prepares the next batches (in a background thread, on a side CUDA stream) while the training
step works on the current one.

Decoding PNG frames in DataLoader workers caps what a host feeds (benchmarks/README.md). With JPEG inputs
(``sewer-hf prepare --format jpeg``), workers only hand over the encoded bytes (the recipes'
``decode_on_device``; ``collate_encoded`` packs them into one block) and the main process
decodes the whole batch on the GPU with nvjpeg (``decode_batch``: ``torchvision.io.decode_jpeg``
on a list, torchvision >= 0.19); elsewhere, and for other formats, images are decoded on the
CPU in the main process. ``decode_batch_skipping`` drops unreadable images instead of failing.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from sewer_hf.errors import DataError

logger = logging.getLogger(__name__)

JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


# ----------------------------------------------------------------------------- encoded batches
def encoded_tensor(data: Any) -> Tensor:
    """The bytes of one encoded image (bytes, a ``datasets`` image dict, or a uint8 tensor) as
    a 1-d uint8 tensor."""
    if isinstance(data, dict):
        data = data.get("bytes")
    if isinstance(data, Tensor):
        if data.dtype != torch.uint8 or data.ndim != 1:
            raise DataError(f"encoded image tensor of dtype {data.dtype} and shape {tuple(data.shape)}: expected 1-d uint8")
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise DataError(f"expected the encoded bytes of an image, got {type(data).__name__}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def collate_encoded(items: list[Any]) -> dict[str, Tensor]:
    """DataLoader collate for encoded images: one flat byte tensor plus the sizes, so that the
    batch crosses from the worker (and into pinned memory) as one block."""
    tensors = [encoded_tensor(item) for item in items]
    return {"data": torch.cat(tensors), "sizes": torch.tensor([t.numel() for t in tensors], dtype=torch.int64)}


def split_encoded(batch: dict[str, Tensor]) -> list[Tensor]:
    """The per-image byte tensors of a ``collate_encoded`` batch (views, no copy)."""
    return list(batch["data"].split(batch["sizes"].tolist()))


def is_jpeg(encoded: Tensor) -> bool:
    return encoded.numel() >= 3 and tuple(encoded[:3].tolist()) == JPEG_MAGIC


# ----------------------------------------------------------------------------- decoding
def nvjpeg_supported(device: torch.device | str) -> bool:
    """Whether ``decode_batch`` may decode JPEGs on ``device`` with nvjpeg: a CUDA device and a
    torchvision whose ``decode_jpeg`` takes a list and a device (0.19 and later)."""
    return torch.device(device).type == "cuda" and _torchvision_decodes_jpeg_batches()


@functools.cache  # asked once per batch: parse the version once
def _torchvision_decodes_jpeg_batches() -> bool:
    import torchvision

    major, minor = (int(part) for part in torchvision.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (0, 19)


def _decode_on_cpu(encoded: list[Tensor]) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_image

    images = []
    for i, data in enumerate(encoded):
        try:
            image = decode_image(data, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"image {i} of the batch cannot be decoded: {exc}") from exc
        if image.dtype != torch.uint8:
            raise DataError(f"image {i} of the batch decodes to {image.dtype}: expected 8-bit images")
        images.append(image)
    return images


def _decode_on_gpu(encoded: list[Tensor], device: torch.device) -> list[Tensor] | None:
    """nvjpeg batch decode, or None when it fails (an image nvjpeg cannot read, or a
    torchvision built without nvjpeg): the caller then decodes on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision's batched nvjpeg allocates the images on our (current) stream but writes them
    # on its own stream without waiting for ours: memory our stream freed a moment ago (the last
    # batch's gathered samples) may still be read by kernels queued there. Drain it first; this
    # blocks only the thread that prepares batches.
    torch.cuda.current_stream(device).synchronize()
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        logger.warning("nvjpeg could not decode this batch, decoding it on the CPU: %s", exc)
        return None


def _resized(image: Tensor, size: int) -> Tensor:
    """Plain (no aspect keeping) bicubic resize with antialiasing, back to uint8."""
    x = image.unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).squeeze(0)


def _stacked(images: list[Tensor], size: int | None) -> Tensor:
    if size is not None:
        images = [image if tuple(image.shape[-2:]) == (size, size) else _resized(image, size) for image in images]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise DataError(f"the batch's images have different sizes {sorted(shapes)}: pass size= to resize them")
    return torch.stack(images)


def decode_batch(encoded: list[Tensor], device: torch.device | str, size: int | None = None) -> Tensor:
    """Encoded images (1-d uint8 CPU tensors) -> uint8 (B, 3, H, W) batch on ``device``.

    All-JPEG batches bound for a CUDA device are decoded there in one nvjpeg call (the hardware
    decoder on A100/H100-class GPUs); everything else is decoded on the CPU. Images whose size
    is not ``size`` x ``size`` are resized to it (bicubic, antialiased; on the GPU after nvjpeg);
    without ``size``, all images must share one size. Raises ``DataError`` for an unreadable
    image."""
    device = torch.device(device)
    if not encoded:
        raise DataError("decode_batch got an empty batch")
    if nvjpeg_supported(device) and all(is_jpeg(data) for data in encoded):
        images = _decode_on_gpu(encoded, device)
        if images is not None:
            return _stacked(images, size)
    return _stacked(_decode_on_cpu(encoded), size).to(device)


def decode_batch_skipping(encoded: list[Tensor], device: torch.device | str, size: int) -> tuple[Tensor | None, list[int]]:
    """``decode_batch`` that survives unreadable images: ``(batch, kept)`` with the positions
    of the images that decoded (each failure logged); ``(None, [])`` when none did. A batch
    with a bad image is decoded again one image at a time, on the CPU."""
    try:
        return decode_batch(encoded, device, size=size), list(range(len(encoded)))
    except DataError:
        pass
    images, kept = [], []
    for i, data in enumerate(encoded):
        try:
            images.append(decode_batch([data], "cpu", size=size)[0])
            kept.append(i)
        except DataError as exc:
            logger.warning("skipped image %d of the batch: %s", i, exc)
    if not images:
        return None, []
    return torch.stack(images).to(device), kept


# ----------------------------------------------------------------------------- prefetching
def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


FEED_MODES = ("thread", "stream", "inline")


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


class DevicePrefetcher:
    """Iterate ``prepare(batch)`` over ``batches`` with the preparation (copy to the device,
    decode, augment) ahead of the training step.

    ``mode``:
      ``thread`` (default): a background thread pulls the batches and prepares up to ``depth``
          of them ahead, on CUDA on its own side stream. Everything the feed does on the host
          (waiting for loader workers, nvjpeg's blocking batch call, the augmentation's host
          syncs and kernel launches) then overlaps the step instead of adding to it: the main
          thread only queues a wait on the batch's CUDA event. PyTorch ops release the GIL
          while they run, so the two threads do interleave.
      ``stream``: one batch ahead, issued on a side stream from the calling thread.
      ``inline``: a plain loop.
    On CUDA a handed-out result is safe to use on the current stream: that stream waits for its
    preparation, and each tensor is marked as used there (``record_stream``) so that its memory
    is not reused too early. Off CUDA, ``stream`` is a plain loop; ``thread`` still prepares
    ahead (the order, errors and early exits behave the same on every device). An exception in
    ``prepare`` or in the loader is raised again in the consuming thread; leaving the loop
    early stops the thread.
    """

    def __init__(self, batches: Iterable, prepare: Callable[[Any], Any], device: torch.device | str,
                 mode: str = "thread", depth: int = 2) -> None:
        if mode not in FEED_MODES:
            raise ValueError(f"feed mode {mode!r}: expected one of {', '.join(FEED_MODES)}")
        if depth < 1:
            raise ValueError(f"depth={depth}: expected at least 1 batch ahead")
        self.batches, self.prepare, self.device = batches, prepare, torch.device(device)
        self.mode, self.depth = mode, depth

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        cuda = self.device.type == "cuda"
        if self.mode == "thread":
            return self._threaded(torch.cuda.Stream(device=self.device) if cuda else None)
        if self.mode == "stream" and cuda:
            return self._ahead(torch.cuda.Stream(device=self.device))
        return (self.prepare(batch) for batch in self.batches)

    # --- thread: prepared in the background ------------------------------------------------------
    def _threaded(self, side: "torch.cuda.Stream | None") -> Iterator:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        # the feed thread's current device: for "cuda" without an index, the caller's current one
        # (set_device refuses an index-less device)
        index = None
        if side is not None:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                if index is not None:
                    torch.cuda.set_device(index)  # the current device is per thread
                # The loader runs on the side stream too: a loader that copies its batches to the
                # device (accelerate's) then queues the copy before the preparation that reads it.
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    for batch in self.batches:
                        if stop.is_set():
                            return
                        prepared, done = self.prepare(batch), None
                        if side is not None:
                            done = torch.cuda.Event()
                            done.record(side)
                        if not put((prepared, done)):
                            return
            except BaseException as error:  # handed to the consumer, raised there
                put(_Failure(error))
            else:
                put(_DONE)

        worker = threading.Thread(target=work, name="sewer_hf-device-feed", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                prepared, done = item
                if done is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(done)
                    self._record(prepared, current)
                yield prepared
        finally:
            stop.set()
            while worker.is_alive():  # unblock a pending put, then let the thread see `stop`
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)

    # --- stream: one ahead, from the calling thread --------------------------------------------
    def _ahead(self, side: torch.cuda.Stream) -> Iterator:
        batches = iter(self.batches)
        pending = self._issue(batches, side)
        while pending is not _DONE:
            ready = self._hand_over(pending, side)  # before the next prepare joins the side stream
            pending = self._issue(batches, side)
            yield ready

    def _issue(self, batches: Iterator, side: torch.cuda.Stream) -> Any:
        """The next batch, fetched and prepared on the side stream (a loader's own copy to the
        device is then queued before the preparation that reads it); _DONE at the end."""
        with torch.cuda.stream(side):
            batch = next(batches, _DONE)
            return batch if batch is _DONE else self.prepare(batch)

    def _hand_over(self, prepared: Any, side: torch.cuda.Stream) -> Any:
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(side)
        self._record(prepared, current)
        return prepared

    @staticmethod
    def _record(prepared: Any, stream: torch.cuda.Stream) -> None:
        for tensor in _tensors(prepared):
            if tensor.device.type == "cuda":
                tensor.record_stream(stream)
