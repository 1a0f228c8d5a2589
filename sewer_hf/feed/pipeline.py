"""The one place a training batch is made, and the one place its throughput settings are resolved.

    feed (config)  -> resolve_feed: where the augmentation runs (per image in the loader workers,
                      or batched in the training process), whether a thread prepares the next
                      batch, whether files are decoded on the device
    the machine    -> plan_for_machine: loader workers and torch threads for these cores; with
                      no workers, the decoded frames kept in memory after their first read
                      (keep_frames_mb: later epochs read no file)
    the split      -> TrainFeed: the torch Dataset the DataLoader reads, and the batched
                      augmentation (feed.batched, from the same spec as feed.augment's CPU one)
    every epoch    -> train_batches: the loader's batches, decoded (decode_on_device) and
                      augmented on the device (per-batch generators keyed by seed, epoch, batch
                      and process), optionally a batch ahead in a thread (feed.device); counters
                      advance only as batches are handed to the loop, so a checkpoint never
                      counts a batch that was prepared but not trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from sewer_hf.data.torch_dataset import SewerTorchDataset
from sewer_hf.errors import ConfigError
from sewer_hf.feed.augment import DecodeForGPU
from sewer_hf.feed.batched import compile_augment
from sewer_hf.feed.device import DevicePrefetcher, decode_batch_skipping
from sewer_hf.feed.machine import MachinePlan, kept_frames_budget, plan_for_machine


@dataclass(frozen=True)
class FeedLayout:
    """What ``feed`` and ``decode_on_device`` resolve to on this device."""

    batched: bool  # augmentation drawn batched in the training process; False: per image in the workers
    thread: bool  # the next batches prepared in a background thread while the step runs
    decode_on_device: bool  # the workers hand over encoded bytes; each batch is decoded on the device


def resolve_feed(cfg: Any, device: torch.device) -> FeedLayout:
    """The throughput settings, resolved and checked together. ``feed``: ``auto`` = batched, with
    the feed thread on CUDA when every batch is its own optimizer step (accelerate learns that an
    epoch ends from the loader and syncs the last accumulation there, so with gradient
    accumulation the loader must not be read ahead); ``batched``: batched, inline;
    ``batched_thread``: batched, a batch ahead in a thread; ``per_image``: PIL/torchvision per
    image in the loader workers (the paper's layout)."""
    if cfg.feed == "per_image":
        if cfg.decode_on_device:
            raise ConfigError("decode_on_device hands the encoded images to the batched augmentation: it needs "
                              "feed=auto, batched or batched_thread, not feed=per_image")
        return FeedLayout(batched=False, thread=False, decode_on_device=False)
    if cfg.feed == "batched_thread" and cfg.gradient_accumulation_steps > 1:
        raise ConfigError(f"feed=batched_thread with gradient_accumulation_steps={cfg.gradient_accumulation_steps}: "
                          "the feed thread reads the loader ahead, which would end accelerate's accumulation "
                          "early; use feed=batched (or auto)")
    thread = cfg.feed == "batched_thread" or (
        cfg.feed == "auto" and device.type == "cuda" and cfg.gradient_accumulation_steps == 1)
    return FeedLayout(batched=True, thread=thread, decode_on_device=cfg.decode_on_device)


def augment_generator(seed: int, epoch: int, batch: int, accelerator) -> torch.Generator:
    """The generator of the device-side augmentation of batch ``batch`` (1-based) of ``epoch``:
    keyed by (seed, epoch, batch, process), so each micro-batch draws its own views and a
    resumed run draws the same ones."""
    key = ((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + accelerator.process_index
    return torch.Generator(device=accelerator.device).manual_seed(key % 2**63)


class SeededAugmentation(torch.utils.data.Dataset):
    """Seeds the augmentation of item i from (seed, epoch, i): the views of an image do not depend
    on the number of processes or workers, so 1-process and N-process runs see the same batches
    and a resumed run re-creates exactly the views it would have drawn. It seeds torch's global
    generator (in a fork), so it is only for loaders read in the training thread or in worker
    processes (the feed thread only serves the device-side augmentation, which needs no seeding
    here)."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + int(index)) % (2**63))
            return self.dataset[index]


@dataclass
class TrainFeed:
    """The training split as ``train_batches`` reads it."""

    dataset: Any  # what the DataLoader reads
    layout: FeedLayout
    augment: Any = None  # the batched augmentation; None: the loader workers augment per image
    decode_size: Optional[int] = None  # the square that encoded images are decoded to on the device
    seed: int = 0
    plan: Optional[MachinePlan] = None  # loader workers and torch threads for this machine

    @property
    def workers(self) -> int:
        return self.plan.workers if self.plan is not None else 0

    def describe(self) -> str:
        """Where the augmentation runs and how the cores are used, for the run's opening line."""
        if self.augment is None:
            where = "per image in the loader" + (" workers" if self.workers else " (main process)")
        else:
            where = ("batched on the " + ("CPU" if self.plan is not None and self.plan.threads is not None else "device")
                     + (", images decoded there" if self.layout.decode_on_device else "")
                     + (", the next batches prepared in a background thread" if self.layout.thread else ""))
        kept_frames = getattr(self.dataset, "kept", None)  # SewerTorchDataset.keep_decoded
        kept = (f"; decoded frames kept in memory after their first read ({kept_frames.pixels.numel() / 2**20:.1f} MB)"
                if kept_frames is not None else "")
        return where + (f"; {self.plan.describe()}" if self.plan is not None else "") + kept


def make_train_feed(cfg: Any, accelerator, hf_dataset, cpu_transform: Callable[[], Any],
                    batched_augment: Callable[[str], torch.nn.Module], decode_size: int,
                    with_labels: bool = True) -> TrainFeed:
    """The training split with the augmentation where ``resolve_feed`` puts it: batched, the
    workers only decode and resize to ``decode_size`` (or hand over the encoded bytes) and
    ``batched_augment(dtype)`` draws the views on the device (compiled with ``compile_augment``);
    per image, ``cpu_transform()`` augments in the workers, each image seeded."""
    layout = resolve_feed(cfg, accelerator.device)
    if not layout.batched:  # the workers draw the augmentation: seed each image (decoding alone draws nothing)
        dataset = SeededAugmentation(SewerTorchDataset(hf_dataset, cpu_transform(), with_labels=with_labels), cfg.seed)
        return TrainFeed(dataset, layout, seed=cfg.seed, plan=plan_for_machine(cfg, accelerator, dataset))
    augment = batched_augment(cfg.augment_dtype).to(accelerator.device)
    if cfg.compile_augment:
        augment = compile_augment(augment)
    transform = None if layout.decode_on_device else DecodeForGPU(decode_size)
    dataset = SewerTorchDataset(hf_dataset, transform, with_labels=with_labels, encoded=layout.decode_on_device)
    plan = plan_for_machine(cfg, accelerator, dataset)
    if plan.workers == 0:  # read in this process: every later epoch can come from memory
        dataset.keep_decoded(kept_frames_budget(cfg, accelerator))
    return TrainFeed(dataset, layout, augment, decode_size, cfg.seed, plan)


def make_train_loader(feed: TrainFeed, cfg: Any, collate_fn, sampler: Optional[torch.utils.data.Sampler] = None):
    """Shuffled (or drawn by ``sampler``, e.g. repeat-factor sampling), drop-last DataLoader over
    the training split (prepare() shards it), with the machine plan's workers."""
    return torch.utils.data.DataLoader(
        feed.dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=feed.workers, collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers must see the new epoch set on the dataset
        generator=torch.Generator().manual_seed(cfg.seed))


def train_batches(feed: TrainFeed, loader, state, accelerator):
    """The batches of ``state.epoch``: the same shuffled order on every process count (seedable
    sampler + per-sample seeded augmentation); after a resume, the batches already consumed in
    this epoch are skipped.

    Batched, each batch's "pixel_values" are moved to the device and replaced by the
    augmentation's output, drawn from ``augment_generator``. A batch of encoded images
    (``"encoded"``) is first decoded on the device to ``feed.decode_size`` squares; unreadable
    ones are dropped with their rows and counted as skipped. With the feed thread the next
    batches are prepared in the background (``DevicePrefetcher``); ``state``'s counters still
    advance only as batches are handed out."""
    loader.set_epoch(state.epoch)
    if hasattr(feed.dataset, "set_epoch"):
        feed.dataset.set_epoch(state.epoch)
    start, epoch = state.batches_in_epoch, state.epoch
    batches = accelerator.skip_first_batches(loader, start) if start else loader

    def prepare(numbered):
        index, batch = numbered
        if batch is not None and "encoded" in batch:
            batch = decoded(batch)
        if batch is None or feed.augment is None or "pixel_values" not in batch:
            return index, batch
        pixels = batch["pixel_values"].to(accelerator.device, non_blocking=True)
        generator = augment_generator(feed.seed, epoch, index, accelerator)
        with torch.no_grad():  # grad mode is per thread: say it here too
            return index, {**batch, "pixel_values": feed.augment(pixels, generator=generator)}

    def decoded(batch):
        """The encoded images decoded on the device; unreadable ones leave with their rows."""
        encoded = [torch.from_numpy(data) for data in batch.pop("encoded")]
        pixels, kept = decode_batch_skipping(encoded, accelerator.device, feed.decode_size)
        skipped = batch.get("n_skipped", 0) + len(encoded) - len(kept)
        if pixels is None:  # nothing left to train on: only the count goes on
            return {"n_skipped": skipped}
        if len(kept) < len(encoded):
            rows = torch.tensor(kept)
            batch = {key: value[rows.to(value.device)] if key in ("labels", "index") else value
                     for key, value in batch.items()}
        return {**batch, "pixel_values": pixels, "n_skipped": skipped}

    numbered = enumerate(batches, start=start + 1)
    mode = "thread" if feed.layout.thread else "inline"
    for index, batch in DevicePrefetcher(numbered, prepare, accelerator.device, mode=mode):
        state.batches_in_epoch = index
        if batch is None:  # every image of this batch was unreadable
            continue
        state.skipped_images += int(batch.get("n_skipped", 0))
        if "pixel_values" not in batch:  # every image failed to decode on the device
            continue
        yield batch
