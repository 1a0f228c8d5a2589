"""Encoded-image batches decoded on the device, and the device prefetcher (thread, side stream, in line; CPU always;
CUDA too where present: nvjpeg decode and the side stream)."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf.errors import DataError
from sewer_hf.feed.device import (
    DevicePrefetcher,
    collate_encoded,
    decode_batch,
    decode_batch_skipping,
    encoded_tensor,
    is_jpeg,
    nvjpeg_supported,
    split_encoded,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
on_devices = pytest.mark.parametrize("device", DEVICES)


def _picture(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    """Smooth colour gradients plus mild noise: JPEG-friendly, every pixel different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height) + 60], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


# ----------------------------------------------------------------------------- encoded batches
def test_encoded_tensor_accepts_bytes_dicts_and_tensors():
    data = _encode(_picture(0), "PNG")
    as_tensor = encoded_tensor(data)
    assert as_tensor.dtype == torch.uint8 and as_tensor.ndim == 1 and bytes(as_tensor.numpy()) == data
    assert torch.equal(encoded_tensor({"bytes": data, "path": "x.png"}), as_tensor)
    assert encoded_tensor(as_tensor) is as_tensor
    for bad in (b"", None, {"path": "x.png"}, torch.zeros(2, 3, dtype=torch.uint8), "x.png"):
        with pytest.raises(DataError):
            encoded_tensor(bad)


def test_collate_and_split_round_trip():
    blobs = [_encode(_picture(i), "JPEG", quality=90) for i in range(3)] + [_encode(_picture(3), "PNG")]
    batch = collate_encoded(blobs)
    assert batch["data"].ndim == 1 and batch["sizes"].tolist() == [len(b) for b in blobs]
    parts = split_encoded(batch)
    assert [bytes(p.numpy()) for p in parts] == blobs
    assert [is_jpeg(p) for p in parts] == [True, True, True, False]


# ----------------------------------------------------------------------------- decoding
@on_devices
def test_decode_batch_of_jpegs_matches_the_cpu_decoder(device):
    from torchvision.io import decode_jpeg

    encoded = [encoded_tensor(_encode(_picture(i), "JPEG", quality=95)) for i in range(4)]
    batch = decode_batch(encoded, device)
    assert batch.shape == (4, 3, 40, 48) and batch.dtype == torch.uint8 and batch.device.type == device
    reference = torch.stack([decode_jpeg(e) for e in encoded])
    difference = (batch.cpu().int() - reference.int()).abs()
    if device == "cpu":
        assert difference.max() == 0
    else:  # nvjpeg's IDCT and chroma upsampling differ a little from libjpeg-turbo's
        assert difference.float().mean() < 2.0 and difference.max() <= 48
    # ... and stays close to the source pixels (the fine noise is partly lost to JPEG)
    source = torch.stack([_pixels(_picture(i)) for i in range(4)])
    assert (batch.cpu().float() - source.float()).abs().mean() < 6.0


@on_devices
def test_decode_batch_handles_png_mixed_grey_and_resizing(device):
    pictures = [_picture(5), _picture(6)]
    grey = _picture(7)[..., 0]
    encoded = [encoded_tensor(_encode(pictures[0], "PNG")), encoded_tensor(_encode(pictures[1], "JPEG", quality=95)),
               encoded_tensor(_encode(grey, "JPEG", quality=95))]
    batch = decode_batch(encoded, device)  # not all JPEG: decoded on the CPU
    assert batch.shape == (3, 3, 40, 48) and batch.device.type == device
    assert torch.equal(batch[0].cpu(), _pixels(pictures[0]))  # PNG is lossless
    assert torch.equal(batch[2, 0], batch[2, 1]) and torch.equal(batch[2, 1], batch[2, 2])  # grey -> RGB

    other_size = encoded_tensor(_encode(_picture(8, height=64, width=80), "PNG"))
    with pytest.raises(DataError, match="different sizes"):
        decode_batch([encoded[0], other_size], device)
    resized = decode_batch([encoded[0], other_size], device, size=32)
    assert resized.shape == (2, 3, 32, 32)
    # The smooth gradient survives the resize: mean colour stays put.
    assert (resized[1].float().mean() - _pixels(_picture(8, 64, 80)).float().mean()).abs() < 2.0


@on_devices
def test_decode_batch_rejects_unreadable_images(device):
    good = encoded_tensor(_encode(_picture(9), "JPEG", quality=95))
    truncated = good[: good.numel() // 3].clone()
    junk = torch.randint(0, 256, (500,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fake_jpeg = torch.cat([torch.tensor([0xFF, 0xD8, 0xFF], dtype=torch.uint8), junk])  # nvjpeg fails, then the CPU
    bad_ones = [junk, fake_jpeg] + ([truncated] if device == "cpu" else [])  # nvjpeg may fill in a cut-off stream
    for bad in bad_ones:
        with pytest.raises(DataError, match="image 1 of the batch"):
            decode_batch([good, bad], device)
    with pytest.raises(DataError, match="empty"):
        decode_batch([], device)


@on_devices
def test_decode_batch_skipping_drops_only_the_unreadable_images(device):
    good = [encoded_tensor(_encode(_picture(i), "JPEG", quality=95)) for i in range(3)]
    junk = torch.randint(0, 256, (500,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batch, kept = decode_batch_skipping([good[0], junk, good[1], good[2]], device, size=32)
    assert kept == [0, 2, 3] and batch.shape == (3, 3, 32, 32) and batch.device.type == device
    assert torch.equal(batch[1].cpu(), decode_batch([good[1]], "cpu", size=32)[0])
    batch, kept = decode_batch_skipping(good, device, size=32)  # nothing bad: one batch call
    assert kept == [0, 1, 2] and batch.shape == (3, 3, 32, 32)
    assert decode_batch_skipping([junk, junk], device, size=32) == (None, [])


def test_nvjpeg_only_on_cuda():
    assert not nvjpeg_supported("cpu")


def test_encoded_batches_through_dataloader_workers():
    blobs = [_encode(_picture(i), "JPEG", quality=95) for i in range(6)]
    loader = torch.utils.data.DataLoader(blobs, batch_size=3, num_workers=1, collate_fn=collate_encoded)
    batches = [decode_batch(split_encoded(batch), "cpu") for batch in loader]
    assert [tuple(b.shape) for b in batches] == [(3, 3, 40, 48)] * 2
    assert torch.equal(batches[1][0], decode_batch([encoded_tensor(blobs[3])], "cpu")[0])


# ----------------------------------------------------------------------------- prefetching
MODES = pytest.mark.parametrize("mode", ["thread", "stream", "inline"])


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sewer_hf-device-feed"]


@on_devices
@MODES
def test_prefetcher_yields_prepared_batches_in_order(device, mode):
    batches = [torch.full((4, 3), float(i)) for i in range(5)]

    def prepare(batch):  # nested output: a tensor and a list, both on the device
        on_device = batch.to(device, non_blocking=True)
        return {"double": on_device * 2, "views": [on_device + 1, on_device.sum(dim=1)]}

    prefetcher = DevicePrefetcher(batches, prepare, device, mode=mode)
    assert len(prefetcher) == 5
    outputs = list(prefetcher)
    assert len(outputs) == 5
    for i, out in enumerate(outputs):
        assert torch.equal(out["double"].cpu(), batches[i] * 2)
        assert torch.equal(out["views"][0].cpu(), batches[i] + 1)
        assert torch.equal(out["views"][1].cpu(), batches[i].sum(dim=1))
    assert list(DevicePrefetcher([], prepare, device, mode=mode)) == []
    assert len(list(DevicePrefetcher(batches[:1], prepare, device, mode=mode))) == 1
    assert not _feed_threads()


@pytest.mark.parametrize("mode", ["stream", "inline"])
def test_prefetcher_on_cpu_prepares_lazily_in_line(mode):
    prepared = []

    def prepare(batch):
        prepared.append(batch)
        return batch

    iterator = iter(DevicePrefetcher(range(3), prepare, "cpu", mode=mode))
    assert prepared == []
    assert next(iterator) == 0 and prepared == [0]  # nothing ahead in line on the CPU


def test_threaded_feed_prepares_at_most_depth_ahead_and_stops_when_left():
    prepared, calls = [], threading.Semaphore(0)

    def prepare(batch):
        prepared.append(batch)
        calls.release()
        return batch * 10

    iterator = iter(DevicePrefetcher(range(100), prepare, "cpu", depth=2))
    assert next(iterator) == 0
    for _ in range(3):  # batches 1 and 2 wait in the queue, batch 3 waits to join it
        assert calls.acquire(timeout=5)
    time.sleep(0.2)
    assert prepared == [0, 1, 2, 3]  # and no further: the queue is full
    assert next(iterator) == 10
    iterator.close()  # the loop was left: the thread stops instead of preparing the rest
    assert not _feed_threads() and len(prepared) <= 6


class _Broken(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["prepare", "loader"])
def test_threaded_feed_raises_errors_in_the_consuming_thread(where):
    def batches():
        for i in range(5):
            if where == "loader" and i == 2:
                raise _Broken("loader broke at batch 2")
            yield i

    def prepare(batch):
        if where == "prepare" and batch == 2:
            raise _Broken("prepare broke at batch 2")
        return batch

    got = []
    with pytest.raises(_Broken, match=f"{where} broke at batch 2"):
        for out in DevicePrefetcher(batches(), prepare, "cpu"):
            got.append(out)
    assert got == [0, 1] and not _feed_threads()


def test_unknown_feed_mode_is_an_error():
    with pytest.raises(ValueError, match="thread, stream, inline"):
        DevicePrefetcher([], lambda b: b, "cpu", mode="async")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_threaded_feed_on_cuda_prepares_on_its_own_stream():
    main = torch.cuda.current_stream()
    streams = []

    def prepare(batch):
        streams.append(torch.cuda.current_stream())
        x = torch.full((512, 512), float(batch), device="cuda")
        return (x @ x.T / 512).sqrt()  # some work on the feed's stream: the value is |batch|

    big = torch.randn(2048, 2048, device="cuda")
    checks = []
    for out in DevicePrefetcher(range(6), prepare, "cuda", mode="thread"):
        big = big @ big.T / 2048  # work on the main stream meanwhile
        checks.append(round(float(out.mean()), 3))
    assert checks == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and torch.isfinite(big).all()
    assert all(s != main for s in streams) and len({s.cuda_stream for s in streams}) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stream_feed_on_cuda_prepares_one_ahead_on_a_side_stream():
    main = torch.cuda.current_stream()
    streams = []

    def prepare(batch):
        streams.append(torch.cuda.current_stream())
        return torch.full((256, 256), float(batch), device="cuda")

    iterator = iter(DevicePrefetcher(range(4), prepare, "cuda", mode="stream"))
    first = next(iterator)
    assert len(streams) == 2 and all(s != main for s in streams)  # batch 1 already issued
    big = torch.randn(2048, 2048, device="cuda")
    checks = [float(first[0, 0])]
    for out in iterator:
        big = big @ big.T / 2048  # work on the main stream while the next batch is prepared
        checks.append(float(out.mean()))
    assert checks == [0.0, 1.0, 2.0, 3.0] and torch.isfinite(big).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["thread", "stream"])
def test_feed_on_cuda_waits_for_a_loader_that_copies_its_batches_to_the_device(mode):
    """accelerate's prepared loaders copy each batch to the device themselves (non_blocking,
    from pinned memory): the preparation must see the copied values, not the buffer before."""
    main = torch.cuda.current_stream()

    def loader():
        for i in range(8):
            yield torch.full((4096, 4096), float(i)).pin_memory().to("cuda", non_blocking=True)

    big = torch.randn(4096, 4096, device="cuda")
    got = []
    for out in DevicePrefetcher(loader(), lambda x: x * 2, "cuda", mode=mode):
        for _ in range(4):
            big = big @ big.T / 4096  # keep the main stream busy
        got.append((float(out.min()), float(out.max())))
    assert got == [(2.0 * i, 2.0 * i) for i in range(8)] and torch.isfinite(big).all()
    assert torch.cuda.current_stream() == main


@pytest.mark.parametrize("feed, device, accumulation, expected", [
    ("auto", "cpu", 1, (True, False)),
    ("auto", "cuda", 1, (True, True)),  # the feed thread where it overlaps a GPU step
    ("auto", "cuda", 2, (True, False)),  # never with accumulation: it would read the loader ahead
    ("batched", "cuda", 1, (True, False)),
    ("batched_thread", "cpu", 1, (True, True)),
    ("per_image", "cuda", 1, (False, False)),
])
def test_one_place_resolves_the_feed(feed, device, accumulation, expected):
    from types import SimpleNamespace

    from sewer_hf.feed.pipeline import resolve_feed

    cfg = SimpleNamespace(feed=feed, gradient_accumulation_steps=accumulation, decode_on_device=False)
    layout = resolve_feed(cfg, torch.device(device))
    assert (layout.batched, layout.thread) == expected and not layout.decode_on_device
    assert resolve_feed(SimpleNamespace(**{**vars(cfg), "decode_on_device": feed != "per_image"}),
                        torch.device(device)).decode_on_device == (feed != "per_image")


def test_the_feed_refuses_what_cannot_work_together():
    from types import SimpleNamespace

    from sewer_hf.errors import ConfigError
    from sewer_hf.feed.pipeline import resolve_feed

    with pytest.raises(ConfigError, match="decode_on_device .* needs feed=auto, batched or batched_thread"):
        resolve_feed(SimpleNamespace(feed="per_image", gradient_accumulation_steps=1, decode_on_device=True),
                     torch.device("cpu"))
    with pytest.raises(ConfigError, match="feed=batched_thread with gradient_accumulation_steps=4"):
        resolve_feed(SimpleNamespace(feed="batched_thread", gradient_accumulation_steps=4, decode_on_device=False),
                     torch.device("cuda"))
