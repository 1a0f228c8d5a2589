"""A training run, as both loops share it: the ``Run`` object (Accelerate set-up, seeding,
``output_dir`` checks, the checkpointed counters, atomic checkpoints with resume, the
metrics.jsonl log, a progress bar with img/s, the stop on a non-finite loss, the push at the end).

Used by DINO pretraining and fine-tuning alike, so behaviour (precision, checkpoints, resume,
logging) is the same in both. How a batch is made is ``sewer_hf.feed.pipeline``'s business;
schedules and optimiser pieces are ``sewer_hf.train.optim``'s.
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
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from sewer_hf.config import save_config, to_dict
from sewer_hf.data.sources import ensure_synthetic_data
from sewer_hf.errors import ConfigError, SewerHFError
from sewer_hf.feed.pipeline import train_batches
from sewer_hf.hub.publish import check_push_config, push_after_run

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d{8})$")


class NonFiniteLossError(SewerHFError, FloatingPointError):
    """Raised when the loss is NaN/inf; the last good checkpoint is left untouched."""


class Run:
    """One training run: what every part of a training loop needs, in one object.

    ``Run(cfg, state)`` checks the Hub settings and ``output_dir``, builds the Accelerator, seeds,
    writes ``config.yaml`` and resolves the data (``run.data``); it owns the checkpointed
    counters (``state``), the checkpoints, the metrics log and the progress bar (opened with the
    first epoch, after the run's opening line). The loops read as::

        run = Run(cfg, TrainState())
        ...  # data, model, optimizer, accelerator.prepare, register_for_checkpointing
        run.start(total_steps, project="pretrain_dino", desc="pretrain")  # resume, trackers, bar
        for epoch, batches in run.epochs(loader, feed):
            for batch in batches:
                ...  # forward, run.optimizer_step(...)
                if run.step_done(n_images, loss, record):
                    break
            if run.epoch_ended(loader):
                ...  # epoch-end metrics
                run.save()
        run.close()
        ...
        run.end(result, export_dir)  # trackers finished, process group down, --push_to_hub
    """

    def __init__(self, cfg: Any, state: TrainState) -> None:
        check_push_config(cfg)  # --push_to_hub: no id or no token fails now, not after training
        self.cfg, self.state = cfg, state
        self.accelerator, self.data = start_run(cfg)
        self.out = Path(cfg.output_dir)
        self.ckpt = CheckpointManager(self.accelerator, self.out, keep_last=cfg.keep_last)
        self.log = MetricsLog(self.accelerator, self.out)
        self.progress: Optional[Progress] = None
        self.bar_steps, self.bar_desc = 0, ""  # the progress bar's, set by start()

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.accelerator.num_processes * self.cfg.gradient_accumulation_steps

    def steps_per_epoch(self, loader) -> int:
        """Optimizer steps in an epoch of ``loader`` (its batches over the accumulation)."""
        return max(1, math.floor(len(loader) / self.cfg.gradient_accumulation_steps))

    def total_steps(self, steps_per_epoch: int) -> int:
        """``epochs`` of steps, or ``max_steps`` when that stops the run earlier."""
        full = self.cfg.epochs * steps_per_epoch
        return full if self.cfg.max_steps is None else min(self.cfg.max_steps, full)

    def start(self, total_steps: int, project: str, desc: str) -> None:
        """Load ``resume_from_checkpoint`` (if any) and start the trackers; the progress bar
        (``desc``, ``total_steps``) opens with the first epoch, after the run's opening line."""
        resume_and_track(self.accelerator, self.cfg, self.state, self.ckpt, self.log, project)
        self.bar_steps, self.bar_desc = total_steps, desc

    def epochs(self, loader, feed):
        """``(epoch, its batches)`` while steps and epochs are left (``train_batches``)."""
        if self.progress is None:
            self.progress = Progress(self.accelerator, self.cfg, self.state, self.ckpt, self.log, self.bar_steps,
                                     self.bar_desc)
        while not self.progress.finished and self.state.epoch < self.cfg.epochs:
            yield self.state.epoch, train_batches(feed, loader, self.state, self.accelerator)

    def optimizer_step(self, loss: torch.Tensor, model, optimizer, before_step: Optional[Callable[[], None]] = None) -> None:
        """Inside ``accelerator.accumulate``: stop on a non-finite loss, backward, and when the
        gradients sync, clip them (``clip_grad``) and call ``before_step``; then step."""
        accelerator = self.accelerator
        check_finite(accelerator, loss, self.state.step, self.ckpt)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            if self.cfg.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), self.cfg.clip_grad)  # unscales fp16 first
            if before_step is not None:
                before_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_done(self, n_images: int, loss: torch.Tensor, record: dict[str, Any]) -> bool:
        """Count an optimizer step (``Progress.step_done``); True when the run has all its steps."""
        self.progress.step_done(n_images, loss, record)
        return self.progress.finished

    def epoch_ended(self, loader) -> bool:
        """True, with the epoch counter moved on, when the epoch ran to its end (not when
        ``max_steps`` stopped it mid-way)."""
        if self.state.batches_in_epoch < len(loader):
            return False
        self.state.end_epoch()
        return True

    def save(self) -> None:
        self.progress.save()

    def close(self) -> None:
        """The progress bar closed, a last checkpoint, the skipped images reported."""
        self.progress.close()

    def end(self, result: dict[str, Any], export_dir: Path) -> dict[str, Any]:
        """Trackers finished and the process group down (``end_training``); with
        ``push_to_hub``, ``export_dir`` uploaded (its URL in ``result``)."""
        self.accelerator.wait_for_everyone()
        end_training(self.accelerator)
        if self.cfg.push_to_hub and self.accelerator.is_main_process:
            result["hub_url"] = push_after_run(self.cfg, export_dir)
        return result


def make_accelerator(cfg: Any):
    """An Accelerator from the common config keys (mixed precision, accumulation, tracker)."""
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

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batches_in_epoch = 0


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


METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only `<output_dir>/metrics.jsonl` (main process); a resumed run drops the lines
    written after its checkpoint so the log reads as one uninterrupted run."""

    def __init__(self, accelerator, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / METRICS_FILE

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


def training_progress(output_dir: str | Path, epochs: int) -> tuple[int, int, str]:
    """(epochs done, epochs, "step N") of a run, possibly in another process, from the tail of its
    ``metrics.jsonl`` (log_every 1): its last record's epoch counter is the epochs finished."""
    try:
        with open(Path(output_dir) / METRICS_FILE, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            last = json.loads(fh.read().splitlines()[-1])
    except (OSError, IndexError, ValueError):  # not started yet, or a line half-written
        return 0, epochs, "starting"
    return min(int(last.get("epoch", 0)), epochs), epochs, f"step {last.get('step', 0)}"


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
