"""What every training recipe shares: Accelerate set-up, atomic checkpoints with resume,
the metrics.jsonl log, a progress bar with img/s, and the stop on a non-finite loss.

Used by DINO pretraining and fine-tuning alike, so behaviour (precision, checkpoints, resume,
logging) is the same in both.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from sewer_hf.errors import ConfigError, SewerHFError
from sewer_hf.feed.machine import MachinePlan, plan_for_machine

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d{8})$")


class NonFiniteLossError(SewerHFError, FloatingPointError):
    """Raised when the loss is NaN/inf; the last good checkpoint is left untouched."""


def make_accelerator(cfg: Any):
    """An Accelerator from the common config keys (mixed precision, accumulation, tracker)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    report_to = None if (cfg.report_to in (None, "none", "")) else cfg.report_to
    cfg.mixed_precision = effective_precision(cfg.mixed_precision)  # config.yaml and the log say what runs
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        # A seedable sampler gives the same shuffled order on every process count and on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


_SHARED_LAUNCH = {"runs": False}


@contextlib.contextmanager
def runs_share_the_launch():
    """Several training runs one after another in one `accelerate launch` (an experiment driver):
    each run's end leaves the process group up for the next one, instead of destroying it."""
    _SHARED_LAUNCH["runs"] = True
    try:
        yield
    finally:
        _SHARED_LAUNCH["runs"] = False


def end_training(accelerator) -> None:
    """`accelerator.end_training()` (trackers finished, process group destroyed), except inside
    `runs_share_the_launch()`, where only the trackers finish."""
    if not _SHARED_LAUNCH["runs"]:
        accelerator.end_training()
        return
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()


def effective_precision(mixed_precision: str) -> str:
    """The precision a run really gets. fp16 autocast needs an accelerator: on the CPU accelerate
    silently runs fp32, so say so and run "no" (fp32) openly; bf16 autocasts on the CPU too."""
    from accelerate import PartialState

    if mixed_precision == "fp16" and PartialState().device.type == "cpu":
        message = ("mixed_precision=fp16 has no effect on the CPU (fp16 autocast needs a GPU): this run trains in "
                   "fp32 (mixed_precision=no); use mixed_precision=bf16 for mixed precision on a CPU")
        logger.warning(message)
        if PartialState().is_main_process:
            print(f"warning: {message}", flush=True)
        return "no"
    return mixed_precision


class TrainState:
    """Loop counters saved with every checkpoint (registered with `register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.batches_in_epoch = 0  # batches of `epoch` already consumed (for skip_first_batches)
        self.images_seen = 0
        self.skipped_images = 0  # unreadable images skipped so far (reported at the end)

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def epoch_batches(self, loader, data: "TrainData", accelerator):
        """The batches of the current epoch: same shuffled order on every process count (seedable
        sampler + per-sample seeded augmentation) and, after a resume, the batches already
        consumed in this epoch are skipped.

        With ``data.augment`` (the device-side augmentation) each batch's "pixel_values" are
        moved to the device and replaced by its output, drawn from ``augment_generator`` (keyed
        by seed, epoch, batch and process). A batch of encoded images (``"encoded"``, from a
        dataset with ``encoded=True``) is first decoded on the device to ``data.decode_size``
        squares; unreadable ones are dropped with their rows and counted as skipped.
        ``data.feed == "thread"`` prepares the next batches in a background thread
        (``DevicePrefetcher``); the counters still advance only as batches are handed out, so a
        checkpoint never counts a batch that was prepared but not trained."""
        from sewer_hf.feed.device import DevicePrefetcher, decode_batch_skipping

        loader.set_epoch(self.epoch)
        if hasattr(data.dataset, "set_epoch"):
            data.dataset.set_epoch(self.epoch)
        start, epoch = self.batches_in_epoch, self.epoch
        batches = accelerator.skip_first_batches(loader, start) if start else loader

        def prepare(numbered):
            index, batch = numbered
            if batch is not None and "encoded" in batch:
                batch = decoded(batch)
            if batch is None or data.augment is None or "pixel_values" not in batch:
                return index, batch
            pixels = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            generator = augment_generator(data.seed, epoch, index, accelerator)
            with torch.no_grad():  # grad mode is per thread: say it here too
                return index, {**batch, "pixel_values": data.augment(pixels, generator=generator)}

        def decoded(batch):
            """The encoded images decoded on the device; unreadable ones leave with their rows."""
            encoded = [torch.from_numpy(data) for data in batch.pop("encoded")]
            pixels, kept = decode_batch_skipping(encoded, accelerator.device, data.decode_size)
            skipped = batch.get("n_skipped", 0) + len(encoded) - len(kept)
            if pixels is None:  # nothing left to train on: only the count goes on
                return {"n_skipped": skipped}
            if len(kept) < len(encoded):
                rows = torch.tensor(kept)
                batch = {key: value[rows.to(value.device)] if key in ("labels", "index") else value
                         for key, value in batch.items()}
            return {**batch, "pixel_values": pixels, "n_skipped": skipped}

        numbered = enumerate(batches, start=start + 1)
        for index, batch in DevicePrefetcher(numbered, prepare, accelerator.device, mode=data.feed):
            self.batches_in_epoch = index
            if batch is None:  # every image of this batch was unreadable
                continue
            self.skipped_images += int(batch.get("n_skipped", 0))
            if "pixel_values" not in batch:  # every image failed to decode on the device
                continue
            yield batch

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batches_in_epoch = 0


def augment_generator(seed: int, epoch: int, batch: int, accelerator) -> torch.Generator:
    """The generator of the device-side augmentation of batch ``batch`` (1-based) of ``epoch``:
    keyed by (seed, epoch, batch, process), so each micro-batch draws its own views and a
    resumed run draws the same ones."""
    key = ((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + accelerator.process_index
    return torch.Generator(device=accelerator.device).manual_seed(key % 2**63)


@dataclass
class TrainData:
    """The training split as ``TrainState.epoch_batches`` reads it."""

    dataset: Any  # what the DataLoader reads
    augment: Any = None  # the device-side augmentation; None: the CPU workers augment
    decode_size: Optional[int] = None  # the square that encoded images are decoded to on the device
    feed: str = "inline"  # DevicePrefetcher mode of the device-side preparation
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
                     + (", images decoded there" if getattr(self.dataset, "encoded", False) else "")
                     + (", the next batches prepared in a background thread" if self.feed == "thread" else ""))
        return where + (f"; {self.plan.describe()}" if self.plan is not None else "")


def train_data(cfg: Any, accelerator, hf_dataset, cpu_transform: Callable[[], Any],
               device_augment: Callable[[str], torch.nn.Module], decode_size: int, with_labels: bool = True) -> TrainData:
    """The training split with the augmentation where ``cfg`` puts it.

    ``gpu_augment`` (None: on, the CPU included): the workers only decode and resize to ``decode_size``
    (or, with ``decode_on_device``, hand over the encoded bytes) and ``device_augment(dtype)``
    draws the views batched on the device, compiled with ``compile_augment``. ``device_feed``
    auto prepares those batches in a background thread on CUDA when every batch is its own
    optimizer step: accelerate learns that an epoch ends from the loader (it syncs the last
    accumulation there), so with gradient accumulation the loader must not be read ahead.
    Otherwise ``cpu_transform()`` augments in the workers, each image seeded."""
    from sewer_hf.feed.augment import DecodeForGPU
    from sewer_hf.data.torch_dataset import SewerTorchDataset
    from sewer_hf.feed.batched import compile_augment

    device = accelerator.device
    if cfg.gpu_augment is False:  # None (auto) = batched, on any device
        if cfg.decode_on_device:
            raise ConfigError("decode_on_device hands the encoded images to the device-side augmentation: it needs "
                              "gpu_augment (on by default)")
        if cfg.device_feed == "thread":
            raise ConfigError("device_feed=thread prepares batches for the device-side augmentation: it needs "
                              "gpu_augment (on by default); with per-image augmentation use device_feed=inline or auto")
        # the workers draw the augmentation: seed each image (decoding alone draws nothing)
        dataset = SeededAugmentation(SewerTorchDataset(hf_dataset, cpu_transform(), with_labels=with_labels), cfg.seed)
        return TrainData(dataset, seed=cfg.seed, plan=plan_for_machine(cfg, accelerator, dataset))
    augment = device_augment(cfg.gpu_augment_dtype).to(device)
    if cfg.compile_augment:
        augment = compile_augment(augment)
    transform = None if cfg.decode_on_device else DecodeForGPU(decode_size)
    dataset = SewerTorchDataset(hf_dataset, transform, with_labels=with_labels, encoded=cfg.decode_on_device)
    feed = cfg.device_feed  # thread with accumulation: refused by the config's validate()
    if feed == "auto":
        feed = "thread" if device.type == "cuda" and cfg.gradient_accumulation_steps == 1 else "inline"
    return TrainData(dataset, augment, decode_size, feed, cfg.seed, plan_for_machine(cfg, accelerator, dataset))


class CheckpointManager:
    """`save_state` into `<output_dir>/checkpoints/step_XXXXXXXX`, atomically, keeping the last K.

    Every process calls `save`; each writes its own RNG file into a temporary folder, then the
    main process renames it into place (a rename is atomic), so a run killed mid-save never
    leaves a half checkpoint that `latest` would pick.
    """

    def __init__(self, accelerator, output_dir: str | Path, keep_last: int = 3) -> None:
        self.accelerator = accelerator
        self.root = Path(output_dir) / CHECKPOINT_DIR
        self.keep_last = keep_last

    def all(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _CKPT_RE.match(p.name))

    def latest(self) -> Optional[Path]:
        found = self.all()
        return found[-1] if found else None

    def resolve(self, resume: Optional[str]) -> Optional[Path]:
        """`latest` (None when there is no checkpoint yet, so a fresh run starts) or a path."""
        if not resume:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"resume_from_checkpoint={resume!r}: no such checkpoint folder "
                              f"(existing: {[p.name for p in self.all()] or 'none'})")
        return path

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(output_dir=str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.all()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final


class MetricsLog:
    """Append-only `<output_dir>/metrics.jsonl` (main process); a resumed run drops the lines
    written after its checkpoint so the log reads as one uninterrupted run."""

    def __init__(self, accelerator, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"

    def truncate_after(self, step: int) -> None:
        if not self.accelerator.is_main_process or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            clean = {k: (float(v) if isinstance(v, (float, torch.Tensor)) else v) for k, v in record.items()}
            with self.path.open("a") as fh:
                fh.write(json.dumps(clean) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                             step=record.get("step"))


def check_finite(accelerator, loss: torch.Tensor, step: int, ckpt: CheckpointManager) -> None:
    """Stop every process when any process sees a non-finite loss (no checkpoint is written)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() > 0:
        last = ckpt.latest()
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (value {loss.item()!r}); stopping. The last good checkpoint "
            f"is {last if last else 'none (none was written yet)'}. Try mixed_precision=bf16 or no, a lower "
            f"base_lr, or a smaller teacher_temp; resume with --resume_from_checkpoint latest."
        )


# What runs write into their output_dir (and what the drivers put next to it): an output_dir that
# holds anything else and no config.yaml is not a run folder, and overwrite_output_dir will not
# clear it.
RUN_OUTPUTS = frozenset({"config.yaml", "metrics.jsonl", CHECKPOINT_DIR, "logs", "backbone", "dino", "knn.json",
                         "rank_states", "classifier", "eval.json", "stage.json", "val_scores.csv",
                         "val_metrics.json"})
_SHOWN_ENTRIES = 6


def check_output_dir(cfg: Any) -> list[Path]:
    """What ``output_dir`` holds that a new run must clear first (``[]``: nothing), or a
    ConfigError. The transformers convention: a non-empty ``output_dir`` is refused unless
    ``overwrite_output_dir`` (its contents are then cleared, so no old checkpoint, ``knn.json`` or
    log survives to be resumed or read as this run's) or ``resume_from_checkpoint`` is given.
    Called by every process before anything is written; only reads."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir!r} is a file; expected a folder for the run's outputs")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries or cfg.resume_from_checkpoint:
        return []
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    shown = ", ".join(names[:_SHOWN_ENTRIES]) + (f", ... ({len(names) - _SHOWN_ENTRIES} more)"
                                                 if len(names) > _SHOWN_ENTRIES else "")
    if not cfg.overwrite_output_dir:
        finished = any((out / name).exists() for name in ("backbone", "classifier", "eval.json", "knn.json"))
        raise ConfigError(
            f"output_dir {out} is not empty ({'a finished run' if finished else 'it holds'}: {shown}); a new run "
            f"would replace its outputs and leave its checkpoints to be resumed later. Pass "
            f"--resume_from_checkpoint latest to continue that run, --overwrite_output_dir to delete what it "
            f"holds and start afresh, or choose another --output_dir")
    foreign = [p.name for p in entries if p.name not in RUN_OUTPUTS]
    if foreign and not (out / "config.yaml").is_file():
        raise ConfigError(
            f"overwrite_output_dir: {out} does not look like a run folder (no config.yaml; it holds "
            f"{', '.join(foreign[:_SHOWN_ENTRIES])}); refusing to delete it. Choose a new or empty --output_dir")
    return entries


def start_run(cfg: Any):
    """Validate the config, check ``output_dir`` (see ``check_output_dir``; cleared with
    ``overwrite_output_dir``), build the Accelerator, seed, write `<output_dir>/config.yaml`, and
    resolve the data (a synthetic set is generated once when `data` is None)."""
    from accelerate.utils import set_seed

    from sewer_hf.config import save_config
    from sewer_hf.data.sources import ensure_synthetic_data

    cfg.validate()
    stale = check_output_dir(cfg)  # every process, before any of them writes there
    accelerator = make_accelerator(cfg)
    accelerator.wait_for_everyone()  # all have looked before the main process clears or writes config.yaml
    if stale:
        if accelerator.is_main_process:
            for path in stale:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            accelerator.print(f"overwrite_output_dir: cleared {cfg.output_dir} ({len(stale)} entries)")
        accelerator.wait_for_everyone()
    set_seed(cfg.seed)
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if accelerator.is_main_process:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    return accelerator, cfg.data or ensure_synthetic_data(cfg, accelerator)


def resume_and_track(accelerator, cfg: Any, state: TrainState, ckpt: CheckpointManager, log: "MetricsLog",
                     project: str) -> None:
    """Load `resume_from_checkpoint` (if any) and start the trackers (TensorBoard, ...)."""
    from sewer_hf.config import to_dict

    resume = ckpt.resolve(cfg.resume_from_checkpoint)
    if resume is not None:
        accelerator.load_state(str(resume))
        log.truncate_after(state.step)
        accelerator.print(f"resumed from {resume} at step {state.step} (epoch {state.epoch})")
    elif cfg.resume_from_checkpoint:  # "latest" with no checkpoint yet: a fresh start, so a fresh log
        log.truncate_after(-1)
    if accelerator.is_main_process:
        accelerator.init_trackers(project, config={k: v for k, v in to_dict(cfg).items()
                                                   if isinstance(v, (int, float, str, bool))})


class Progress:
    """What happens after every optimizer step, the same in every loop: counters, the progress
    bar with img/s, a metrics.jsonl line every `log_every` steps, a checkpoint every
    `save_every_steps` steps and at each epoch end, and a last one when the run stops."""

    def __init__(self, accelerator, cfg: Any, state: TrainState, ckpt: CheckpointManager, log: "MetricsLog",
                 total_steps: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.accelerator, self.cfg, self.state, self.ckpt, self.log = accelerator, cfg, state, ckpt, log
        self.total_steps = total_steps
        self.last_saved = state.step
        self.speed = Throughput()
        self.bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step",
                        disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total_steps

    def step_done(self, n_images: int, loss: torch.Tensor, record: dict[str, Any]) -> None:
        """`record`: this step's scalars (lr, ...) for metrics.jsonl, computed lazily only when logged."""
        state = self.state
        state.step += 1
        state.images_seen += n_images
        ips = self.speed.update(n_images)
        self.bar.update(1)
        if state.step % self.cfg.log_every == 0 or self.finished:
            value = loss.item()
            self.bar.set_postfix(loss=f"{value:.3f}", lr=f"{record.get('lr', float('nan')):.1e}", img_s=f"{ips:.1f}")
            self.log.write({"step": state.step, "epoch": state.epoch, "loss": value, **record, "img_per_s": ips,
                            "skipped_images": state.skipped_images})
        if state.step % self.cfg.save_every_steps == 0:
            self.save()

    def save(self) -> None:
        self.ckpt.save(self.state.step)
        self.last_saved = self.state.step

    def close(self) -> None:
        self.bar.close()
        if self.last_saved != self.state.step:
            self.save()
        if self.state.skipped_images:
            self.accelerator.print(f"warning: {self.state.skipped_images} unreadable images were skipped")


def make_adamw(param_groups, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel wherever torch has one (CUDA and the CPU): on a 2-core CPU it
    cut the fine-tuning step by ~5 % (the optimizer step 21 -> 7.5 ms for ViT-T)."""
    return torch.optim.AdamW(param_groups, fused=torch.device(device).type in ("cuda", "cpu"))


def mark_weight_decay_groups(optimizer, weight_decay: float) -> None:
    """Tag the groups that take weight decay (param_groups() gives no-decay groups wd=0)."""
    for group in optimizer.param_groups:
        group["apply_wd"] = group.get("weight_decay", 0.0) != 0.0 and not group.get("no_decay", False)
        group["weight_decay"] = weight_decay if group["apply_wd"] else 0.0


def set_lr_wd(optimizer, lr: float, weight_decay: Optional[float] = None) -> None:
    """The scheduled lr (times a group's ``lr_scale``, e.g. a new head's) and weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_wd"):
            group["weight_decay"] = weight_decay


class Throughput:
    """Images per second over a sliding window of recent steps (what the progress bar shows)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.events: list[tuple[float, int]] = []

    def update(self, n_images: int) -> float:
        self.events.append((time.perf_counter(), n_images))
        self.events = self.events[-self.window:]
        if len(self.events) < 2:
            return float("nan")
        elapsed = self.events[-1][0] - self.events[0][0]
        return sum(n for _, n in self.events[1:]) / elapsed if elapsed > 0 else float("nan")


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


def make_train_loader(train: TrainData, cfg: Any, collate_fn):
    """Shuffled, drop-last DataLoader over the training split (prepare() shards it), with the
    machine plan's workers."""
    return torch.utils.data.DataLoader(
        train.dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=train.workers,
        collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers must see the new epoch set on the dataset
        generator=torch.Generator().manual_seed(cfg.seed))


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The paper's linear scaling rule: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256.0


def steps_per_epoch(n_batches: int, grad_accum: int) -> int:
    return max(1, math.floor(n_batches / grad_accum))
