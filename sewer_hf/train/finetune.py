"""Fine-tuning, linear probe and the fully supervised baseline (the paper's downstream stage).

    data  -> the labelled train split (a stratified `fraction` of it), fine-tuning augmentations
    model -> pretrained backbone (or random init) + new linear head on the CLS token
    loss  -> BCE with logits, pos_weight = 2 (1 + CIW_c / mean CIW)
    step  -> AdamW, lr = base_lr * global_batch / 256, MultiStep x0.1 at epochs 15 and 35
             (optionally after a linear warm-up: small budgets need one, the paper has none;
             optionally the new head at head_lr_scale x that lr, and a moving average of the
             weights, ema_decay, scored and shipped instead of the last step's)
    eval  -> every epoch: thresholds fitted on a held-out part of train (F2_CIW with an
             F1_Normal floor) and the epoch chosen there; the best epoch kept as classifier/
             (native ViTForImageClassification + its thresholds); at the end val scored once on
             that classifier, at 0.5 and at its thresholds, next to the constant-predictor
             baseline: eval.json

Checkpoints, resume, precision and logging are shared with pretraining (sewer_hf.train.run).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sewer_hf.atomic import write_json_atomically
from sewer_hf.config import FinetuneConfig
from sewer_hf.data import labels as L
from sewer_hf.data.sampling import RepeatFactorSampler, repeat_factors, stratified_fraction
from sewer_hf.data.sources import load_split
from sewer_hf.data.torch_dataset import SewerTorchDataset, collate_skip_bad
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.augment import eval_transform, finetune_transform
from sewer_hf.feed.batched import GPUFinetuneAugment
from sewer_hf.feed.pipeline import make_train_feed, make_train_loader
from sewer_hf.feed.spec import finetune_augmentation
from sewer_hf.metrics import constant_baseline
from sewer_hf.models.hf_export import load_timm_backbone
from sewer_hf.models.losses import WeightedBCE, prior_logits
from sewer_hf.models.vit import build_classifier, create_backbone
from sewer_hf.train.evaluation import Evaluation, report_val, validate
from sewer_hf.train.optim import (
    WeightAverage,
    make_adamw,
    mark_weight_decay_groups,
    multistep_lr,
    param_groups,
    scaled_lr,
    set_lr_wd,
)
from sewer_hf.train.run import Run, TrainState


class FinetuneState(TrainState):
    def __init__(self) -> None:
        super().__init__()
        self.best_f2_ciw = -1.0
        self.best_epoch = -1


def build_model(cfg: FinetuneConfig, labels: np.ndarray | None = None):
    """The pretrained backbone (or a random one) + a new linear head, its bias at the prior
    logits of ``labels`` with ``head_bias_from_prior``."""
    if cfg.backbone:
        backbone = load_timm_backbone(cfg.backbone, drop_path_rate=0.0 if cfg.linear_probe else cfg.drop_path_rate)
    else:
        backbone = create_backbone(cfg.arch, img_size=cfg.image_size, drop_path_rate=cfg.drop_path_rate)
    model = build_classifier(backbone, num_classes=L.NUM_CLASSES, freeze_backbone=cfg.linear_probe)
    if cfg.head_bias_from_prior and labels is not None:
        with torch.no_grad():
            model.head.bias.copy_(prior_logits(labels))
    return model


def finetune_optimizer(cfg: FinetuneConfig, model, device) -> torch.optim.AdamW:
    """AdamW over the backbone (not for a linear probe) and the head at ``head_lr_scale`` x the lr."""
    head_groups = [{**group, "lr_scale": cfg.head_lr_scale} for group in param_groups(model.head)]
    optimizer = make_adamw(head_groups if cfg.linear_probe else param_groups(model.backbone) + head_groups, device)
    mark_weight_decay_groups(optimizer, cfg.weight_decay)
    return optimizer


def labelled_splits(run):
    """(train, hold-out or None, val, rows in the split): the stratified ``fraction`` of the
    labelled split, less the hold-out the thresholds are fitted on; ``train_rows.json`` says
    which files went where."""
    cfg = run.cfg
    train_hf = load_split(run.data, cfg.split, labelled=True)
    val_hf = load_split(run.data, cfg.val_split, labelled=True, required=False)
    if val_hf is None:
        raise DataError(f"{run.data}: no {cfg.val_split} split to validate on")
    n_full = len(train_hf)
    if cfg.fraction < 1.0:
        train_hf = train_hf.select(stratified_fraction(np.asarray(train_hf["labels"]), cfg.fraction, seed=cfg.seed))
    train_hf, holdout_hf = split_holdout(train_hf, cfg)
    if run.accelerator.is_main_process:
        write_train_rows(run.out, cfg, n_full, train_hf, holdout_hf)
    return train_hf, holdout_hf, val_hf, n_full


def finetune_feed(cfg: FinetuneConfig, accelerator, train_hf, labels: np.ndarray | None = None):
    """(feed, loader) of the fine-tuning augmentation; batched, the workers decode and resize
    (the reference's first step): decode_size = image_size. With ``repeat_factor_threshold`` the
    loader draws the frames of rare classes more often (``labels``: the split's, when already read)."""
    aug = finetune_augmentation(cfg.augmentation)
    feed = make_train_feed(
        cfg, accelerator, train_hf, cpu_transform=lambda: finetune_transform(cfg.image_size, config=aug),
        batched_augment=lambda dtype: GPUFinetuneAugment(size=cfg.image_size, photometric_dtype=dtype, config=aug),
        decode_size=cfg.image_size)
    sampler = None
    if cfg.repeat_factor_threshold > 0:
        labels = np.asarray(train_hf["labels"]) if labels is None else labels
        sampler = RepeatFactorSampler(repeat_factors(labels, cfg.repeat_factor_threshold),
                                      seed=cfg.seed)  # the same draws on every process and after a resume
    loader = make_train_loader(feed, cfg, collate_skip_bad, sampler)
    if len(loader) == 0:
        raise ConfigError(f"{len(train_hf)} training images < batch_size={cfg.batch_size}: lower batch_size")
    return feed, loader


def sampling_note(cfg: FinetuneConfig, sampler) -> str:
    """How the frames are drawn, for the run's opening line (nothing when uniformly shuffled)."""
    if not isinstance(sampler, RepeatFactorSampler):
        return ""
    return (f"; repeat-factor sampling (threshold {cfg.repeat_factor_threshold:g}): the rarest classes' frames "
            f"drawn up to {float(sampler.weights.max()):.1f}x as often")


def eval_loader(cfg: FinetuneConfig, hf, workers: int):
    return torch.utils.data.DataLoader(SewerTorchDataset(hf, eval_transform(cfg.image_size)),
                                       batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate_skip_bad)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    run = Run(cfg, FinetuneState())
    accelerator, state = run.accelerator, run.state

    # --- data: a stratified fraction of the labelled split, a hold-out for the thresholds, val ----
    train_hf, holdout_hf, val_hf, n_full = labelled_splits(run)
    train_labels = np.asarray(train_hf["labels"])
    feed, loader = finetune_feed(cfg, accelerator, train_hf, train_labels)
    sampling = sampling_note(cfg, loader.sampler)  # before accelerate re-wraps the loader
    val_loader = eval_loader(cfg, val_hf, feed.workers)
    holdout_loader = eval_loader(cfg, holdout_hf, feed.workers) if holdout_hf is not None else None

    # --- model, loss, optimizer -------------------------------------------------------------------
    model = build_model(cfg, train_labels)
    optimizer = finetune_optimizer(cfg, model, accelerator.device)
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader, val_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    evaluation = Evaluation(val_loader, holdout_loader, constant_baseline(np.asarray(val_hf["labels"])))
    model_fwd = torch.compile(model) if cfg.compile else model  # checkpoints use the plain module
    unwrapped = accelerator.unwrap_model(model)  # once: each unwrap walks the modules (~1 ms a step on CPU)
    ema = WeightAverage(unwrapped, cfg.ema_decay) if cfg.ema_decay else None
    scored = ema.module if ema is not None else model  # what is validated and exported
    criterion = WeightedBCE().to(accelerator.device)
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # --- the lr per optimizer step: scaled, optional linear warm-up, then the paper's MultiStep ----
    iters = run.steps_per_epoch(loader)
    peak_lr = scaled_lr(cfg.base_lr, run.global_batch)
    lr_sched = multistep_lr(peak_lr, cfg.lr_milestones, cfg.lr_gamma, cfg.epochs, iters, cfg.warmup_epochs)
    total_steps = run.total_steps(iters)

    mode = "linear probe" if cfg.linear_probe else ("fine-tune" if cfg.backbone else "supervised from scratch")
    run.start(total_steps, project="finetune", desc=mode)
    accelerator.print(
        f"{mode} {cfg.arch}: {len(train_hf)}/{n_full} train images (fraction {cfg.fraction}), "
        f"{len(holdout_hf) if holdout_hf is not None else 0} held out for thresholds, {len(val_hf)} val, "
        f"global batch {run.global_batch}, {iters} steps/epoch, {total_steps} steps, peak lr {peak_lr:.2e}"
        f"{f' after {cfg.warmup_epochs:g} warm-up epoch(s)' if cfg.warmup_epochs else ''}, "
        f"augmentation {feed.describe()}{sampling}")

    model.train()
    for _, batches in run.epochs(loader, feed):
        for batch in batches:
            it = state.step
            pixels = batch["pixel_values"]  # augmented on the device already when batched
            set_lr_wd(optimizer, float(lr_sched[it]))
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model_fwd(pixels)
                loss = criterion(logits, batch["labels"])
                run.optimizer_step(loss, model, optimizer)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(unwrapped)
            if run.step_done(pixels.shape[0] * accelerator.num_processes, loss, {"lr": float(lr_sched[it])}):
                break
        if run.epoch_ended(loader):
            if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs:
                validate(run, scored, evaluation)
            run.save()
    if state.best_epoch < 0 or state.step != run.progress.last_saved:  # stopped mid-epoch by max_steps
        validate(run, scored, evaluation)
    run.close()
    if evaluation.holdout is not None and state.best_epoch >= 0:
        report_val(run, evaluation)
    result = {"steps": state.step, "best_epoch": state.best_epoch, "best_selection_F2_CIW": state.best_f2_ciw,
              "skipped_images": state.skipped_images, "classifier": str(run.out / "classifier")}
    if accelerator.is_main_process and (run.out / "eval.json").is_file():  # what ships, scored on val
        report = json.loads((run.out / "eval.json").read_text())
        result.update({key: report[key] for key in ("F2_CIW", "F1_Normal", "mAP")},
                      at_shipped_thresholds=report["at_shipped_thresholds"],
                      constant_baseline=report["constant_baseline"])
    return run.end(result, run.out / "classifier")


def split_holdout(train_hf, cfg: FinetuneConfig):
    """(train, holdout): a stratified ``threshold_holdout`` share of the labelled rows, never
    trained on, on which the thresholds are fitted and the best epoch is chosen; (train, None)
    when the thresholds are fitted on val instead."""

    if not cfg.tune_thresholds or cfg.threshold_holdout <= 0:
        return train_hf, None
    labels = np.asarray(train_hf["labels"]).astype(bool)
    # "normal" as an 18th column: the hold-out needs normal frames, or the F1_Normal floor of the
    # thresholds has nothing to hold on to (a 10 % run's hold-out of defect frames only shipped
    # thresholds that flagged every frame)
    with_normal = np.column_stack([labels, ~labels.any(axis=1)])
    held = stratified_fraction(with_normal, cfg.threshold_holdout, seed=cfg.seed + 1)
    kept = np.setdiff1d(np.arange(len(train_hf)), held)
    if len(held) == 0 or len(kept) == 0:
        raise DataError(f"threshold_holdout={cfg.threshold_holdout} of {len(train_hf)} labelled images leaves "
                        f"{len(kept)} to train on and {len(held)} to fit thresholds on; change threshold_holdout")
    return train_hf.select(kept), train_hf.select(held)


def write_train_rows(out: Path, cfg: FinetuneConfig, n_full: int, train_hf, holdout_hf) -> None:
    """`train_rows.json`: the files trained on and held out (for thresholds), so a run can be
    audited and compared with another (e.g. the same labelled subset across arms)."""
    def names(hf) -> list[str]:
        return list(hf["filename"]) if hf is not None else []

    write_json_atomically({"split": cfg.split, "rows_in_split": n_full, "fraction": cfg.fraction, "seed": cfg.seed,
                           "trained_on": names(train_hf), "held_out": names(holdout_hf)},
                          out / "train_rows.json", indent=None)


