"""Fine-tuning, linear probe and the fully supervised baseline (the paper's downstream stage).

    data  -> the labelled train split (a stratified `fraction` of it), fine-tuning augmentations
    model -> pretrained backbone (or random init) + new linear head on the CLS token
    loss  -> BCE with logits, pos_weight = 2 (1 + CIW_c / mean CIW)
    step  -> AdamW, lr = base_lr * global_batch / 256, MultiStep x0.1 at epochs 15 and 35
    eval  -> every epoch on val with the benchmark metric; best F2_CIW epoch kept as classifier/
             (native ViTForImageClassification + tuned per-class thresholds) and eval.json

Checkpoints, resume, precision and logging are shared with pretraining (sewer_hf.training).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sewer_hf import labels as L
from sewer_hf.config import FinetuneConfig, save_config
from sewer_hf.errors import DataError
from sewer_hf.losses import WeightedBCE, prior_logits
from sewer_hf.sources import load_split
from sewer_hf.training import (
    CheckpointManager,
    MetricsLog,
    Progress,
    TrainState,
    check_finite,
    make_train_loader,
    mark_weight_decay_groups,
    resume_and_track,
    scaled_lr,
    set_lr_wd,
    start_run,
    steps_per_epoch,
    train_data,
)

logger = logging.getLogger(__name__)


class FinetuneState(TrainState):
    def __init__(self) -> None:
        super().__init__()
        self.best_f2_ciw = -1.0
        self.best_epoch = -1


def multistep_lr(peak: float, milestones: tuple[int, ...], gamma: float, epochs: int, iters: int) -> np.ndarray:
    """Per-iteration lr of MultiStepLR: `peak * gamma ** (number of milestones <= epoch)`."""
    epoch_of_iter = np.arange(epochs * iters) // iters
    drops = (epoch_of_iter[:, None] >= np.asarray(milestones)[None, :]).sum(1)
    return peak * gamma ** drops


def build_model(cfg: FinetuneConfig):
    from sewer_hf.export import load_timm_backbone
    from sewer_hf.model import build_classifier, create_backbone

    if cfg.backbone:
        backbone = load_timm_backbone(cfg.backbone, drop_path_rate=0.0 if cfg.linear_probe else cfg.drop_path_rate)
    else:
        backbone = create_backbone(cfg.arch, img_size=cfg.image_size, drop_path_rate=cfg.drop_path_rate)
    return build_classifier(backbone, num_classes=L.NUM_CLASSES, freeze_backbone=cfg.linear_probe)


@torch.no_grad()
def predict_scores(model, loader, accelerator, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores and targets of a (prepared) loader, gathered over processes. Rows are
    matched by dataset index, so neither the padding that evens out the last batch nor skipped
    unreadable images can duplicate or shift a row."""
    model.eval()
    scores, targets, indices = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        if batch is None:
            batch = {"pixel_values": torch.zeros(0, 3, 1, 1), "labels": torch.zeros(0, L.NUM_CLASSES),
                     "index": torch.zeros(0, dtype=torch.long)}
        with accelerator.autocast():
            logits = model(batch["pixel_values"].to(accelerator.device)) if len(batch["index"]) else \
                torch.zeros(0, L.NUM_CLASSES, device=accelerator.device)
        idx = torch.as_tensor(batch["index"], device=accelerator.device)
        prob = torch.sigmoid(logits.float())
        lab = batch["labels"].to(accelerator.device).float()
        # Pad to a common size so uneven batches (skipped images) can be gathered; -1 marks padding.
        idx = accelerator.pad_across_processes(idx, dim=0, pad_index=-1)
        prob = accelerator.pad_across_processes(prob, dim=0)
        lab = accelerator.pad_across_processes(lab, dim=0)
        indices.append(accelerator.gather(idx).cpu())
        scores.append(accelerator.gather(prob).cpu())
        targets.append(accelerator.gather(lab).cpu())
    model.train()
    idx = torch.cat(indices).numpy()
    keep = idx >= 0
    idx, s, t = idx[keep], torch.cat(scores).numpy()[keep], torch.cat(targets).numpy()[keep]
    _, first = np.unique(idx, return_index=True)
    return s[first], t[first].astype(np.int64)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    from sewer_hf.augment import eval_transform, finetune_transform
    from sewer_hf.gpu_augment import GPUFinetuneAugment
    from sewer_hf.data import SewerTorchDataset, collate_skip_bad
    from sewer_hf.dino import param_groups
    from sewer_hf.metrics import compute_metrics
    from sewer_hf.sampling import stratified_fraction
    from sewer_hf.hub import check_push_config, push_after_run

    check_push_config(cfg)  # --push_to_hub: no id or no token fails now, not after training
    accelerator, data = start_run(cfg)
    out = Path(cfg.output_dir)

    # --- data -----------------------------------------------------------------------------------
    train_hf = load_split(data, cfg.split, labelled=True)
    val_hf = load_split(data, cfg.val_split, labelled=True, required=False)
    if val_hf is None:
        raise DataError(f"{data}: no {cfg.val_split} split to validate on")
    n_full = len(train_hf)
    if cfg.fraction < 1.0:
        chosen = stratified_fraction(np.asarray(train_hf["labels"]), cfg.fraction, seed=cfg.seed)
        train_hf = train_hf.select(chosen)
    # on the device, the workers decode and resize (the reference's first step): decode_size = image_size
    train = train_data(
        cfg, accelerator, train_hf, cpu_transform=lambda: finetune_transform(cfg.image_size),
        device_augment=lambda dtype: GPUFinetuneAugment(size=cfg.image_size, photometric_dtype=dtype),
        decode_size=cfg.image_size)
    loader = make_train_loader(train.dataset, cfg, collate_skip_bad)
    val_loader = torch.utils.data.DataLoader(
        SewerTorchDataset(val_hf, eval_transform(cfg.image_size)), batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, collate_fn=collate_skip_bad)
    if len(loader) == 0:
        from sewer_hf.errors import ConfigError
        raise ConfigError(f"{len(train_hf)} training images < batch_size={cfg.batch_size}: lower batch_size")

    # --- model, loss, optimizer -------------------------------------------------------------------
    model = build_model(cfg)
    if cfg.head_bias_from_prior:
        with torch.no_grad():
            model.head.bias.copy_(prior_logits(np.asarray(train_hf["labels"])))
    trainable = model.head if cfg.linear_probe else model
    optimizer = torch.optim.AdamW(param_groups(trainable), fused=torch.cuda.is_available())
    mark_weight_decay_groups(optimizer, cfg.weight_decay)
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader, val_loader)
    model_fwd = torch.compile(model) if cfg.compile else model  # checkpoints use the plain module
    criterion = WeightedBCE().to(accelerator.device)

    state = FinetuneState()
    accelerator.register_for_checkpointing(state)
    ckpt = CheckpointManager(accelerator, out, keep_last=cfg.keep_last)
    log = MetricsLog(accelerator, out)

    global_batch = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    iters = steps_per_epoch(len(loader), cfg.gradient_accumulation_steps)
    peak_lr = scaled_lr(cfg.base_lr, global_batch)
    lr_sched = multistep_lr(peak_lr, cfg.lr_milestones, cfg.lr_gamma, cfg.epochs, iters)
    total_steps = cfg.epochs * iters if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * iters)

    resume_and_track(accelerator, cfg, state, ckpt, log, "finetune")
    mode = "linear probe" if cfg.linear_probe else ("fine-tune" if cfg.backbone else "supervised from scratch")
    accelerator.print(
        f"{mode} {cfg.arch}: {len(train_hf)}/{n_full} train images (fraction {cfg.fraction}), {len(val_hf)} val, "
        f"global batch {global_batch}, {iters} steps/epoch, {total_steps} steps, peak lr {peak_lr:.2e}, "
        f"augmentation {train.describe()}")

    progress = Progress(accelerator, cfg, state, ckpt, log, total_steps, desc=mode)
    model.train()
    while state.step < total_steps and state.epoch < cfg.epochs:
        for batch in state.epoch_batches(loader, train, accelerator):
            it = state.step
            pixels = batch["pixel_values"]  # augmented on the device already with gpu_augment
            set_lr_wd(optimizer, float(lr_sched[it]))
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model_fwd(pixels)
                loss = criterion(logits, batch["labels"])
                check_finite(accelerator, loss, it, ckpt)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            progress.step_done(pixels.shape[0] * accelerator.num_processes, loss,
                               {"lr": float(lr_sched[it])})
            if progress.finished:
                break
        if state.batches_in_epoch >= len(loader):  # the epoch ran to its end
            state.end_epoch()
            if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs:
                validate(cfg, accelerator, model, val_loader, state, log, compute_metrics)
            progress.save()
    if state.best_epoch < 0 or state.step != progress.last_saved:  # stopped mid-epoch by max_steps
        validate(cfg, accelerator, model, val_loader, state, log, compute_metrics)
    progress.close()
    result = {"steps": state.step, "best_epoch": state.best_epoch, "best_F2_CIW": state.best_f2_ciw,
              "skipped_images": state.skipped_images, "classifier": str(out / "classifier")}
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub_url"] = push_after_run(cfg, out / "classifier")
    return result


def validate(cfg, accelerator, model, val_loader, state, log, compute_metrics) -> None:
    """Score val; when F2_CIW improves, export the classifier (with tuned thresholds) + eval.json."""
    from sewer_hf.export import save_classifier
    from sewer_hf.metrics import tune_thresholds

    # Every process holds the gathered scores, so all agree on the best epoch; only main writes.
    scores, targets = predict_scores(model, val_loader, accelerator, desc=f"val epoch {state.epoch}")
    metrics = compute_metrics(scores, targets)
    log.write({"step": state.step, "epoch": state.epoch, **{f"val_{k}": v for k, v in metrics.items()
                                                            if isinstance(v, float)}})
    improved = metrics["F2_CIW"] > state.best_f2_ciw
    accelerator.print(f"epoch {state.epoch}: val F2_CIW {100 * metrics['F2_CIW']:.2f} "
                      f"F1_Normal {100 * metrics['F1_Normal']:.2f} mAP {100 * metrics['mAP']:.2f}"
                      + ("  (best so far)" if improved else ""))
    if improved:
        state.best_f2_ciw, state.best_epoch = float(metrics["F2_CIW"]), state.epoch
    if improved and accelerator.is_main_process:
        thresholds = tune_thresholds(scores, targets) if cfg.tune_thresholds else np.full(L.NUM_CLASSES, 0.5)
        tuned = compute_metrics(scores, targets, threshold=thresholds)
        net = accelerator.unwrap_model(model)
        net = getattr(net, "_orig_mod", net)
        out = Path(cfg.output_dir)
        save_classifier(net.backbone, net.head, out / "classifier", image_size=cfg.image_size,
                        thresholds=dict(zip(L.CLASSES, map(float, thresholds))),
                        extra_config={"sewer_hf": {"stage": "finetune", "arch": cfg.arch,
                                                   "linear_probe": cfg.linear_probe, "fraction": cfg.fraction,
                                                   "backbone": cfg.backbone, "best_epoch": state.epoch}})
        save_config(cfg, out / "classifier" / "training_config.yaml")
        report = {"split": cfg.val_split, "epoch": state.epoch, "threshold": 0.5, **metrics,
                  "tuned_thresholds": dict(zip(L.CLASSES, map(float, thresholds))),
                  "with_tuned_thresholds_on_same_split": {k: v for k, v in tuned.items() if isinstance(v, float)}}
        (out / "eval.json").write_text(json.dumps(report, indent=2))
    accelerator.wait_for_everyone()
