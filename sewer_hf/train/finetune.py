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
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sewer_hf.data import labels as L
from sewer_hf.atomic import write_json_atomically
from sewer_hf.config import FinetuneConfig, save_config
from sewer_hf.errors import DataError
from sewer_hf.models.losses import WeightedBCE, prior_logits
from sewer_hf.metrics import beats_baseline, constant_baseline, learned
from sewer_hf.data.sampling import stratified_fraction
from sewer_hf.data.sources import load_split
from sewer_hf.train.run import (
    CheckpointManager,
    MetricsLog,
    Progress,
    TrainState,
    check_finite,
    end_training,
    make_adamw,
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


def multistep_lr(peak: float, milestones: tuple[int, ...], gamma: float, epochs: int, iters: int,
                 warmup_epochs: float = 0.0) -> np.ndarray:
    """Per-iteration lr of MultiStepLR, `peak * gamma ** (number of milestones <= epoch)`, after
    a linear warm-up from peak / warmup_iters to peak over the first `warmup_epochs` (0: none,
    the paper's exact schedule)."""
    epoch_of_iter = np.arange(epochs * iters) // iters
    drops = (epoch_of_iter[:, None] >= np.asarray(milestones)[None, :]).sum(1)
    lr = peak * gamma ** drops.astype(np.float64)
    warmup = min(int(round(warmup_epochs * iters)), len(lr))
    if warmup:
        lr[:warmup] *= np.arange(1, warmup + 1) / warmup
    return lr


def build_model(cfg: FinetuneConfig):
    from sewer_hf.models.hf_export import load_timm_backbone
    from sewer_hf.models.vit import build_classifier, create_backbone

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
    from sewer_hf.feed.augment import eval_transform, finetune_augmentation, finetune_transform
    from sewer_hf.feed.batched import GPUFinetuneAugment
    from sewer_hf.data.torch_dataset import SewerTorchDataset, collate_skip_bad
    from sewer_hf.models.dino import param_groups
    from sewer_hf.hub.publish import check_push_config, push_after_run

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
    train_hf, holdout_hf = split_holdout(train_hf, cfg)
    if accelerator.is_main_process:
        write_train_rows(out, cfg, n_full, train_hf, holdout_hf)
    # on the device, the workers decode and resize (the reference's first step): decode_size = image_size
    aug = finetune_augmentation(cfg.augmentation)
    train = train_data(
        cfg, accelerator, train_hf, cpu_transform=lambda: finetune_transform(cfg.image_size, config=aug),
        device_augment=lambda dtype: GPUFinetuneAugment(size=cfg.image_size, photometric_dtype=dtype, config=aug),
        decode_size=cfg.image_size)
    loader = make_train_loader(train, cfg, collate_skip_bad)

    def eval_loader(hf):
        return torch.utils.data.DataLoader(SewerTorchDataset(hf, eval_transform(cfg.image_size)),
                                           batch_size=cfg.batch_size, num_workers=train.workers,
                                           collate_fn=collate_skip_bad)

    val_loader = eval_loader(val_hf)
    holdout_loader = eval_loader(holdout_hf) if holdout_hf is not None else None
    if len(loader) == 0:
        from sewer_hf.errors import ConfigError
        raise ConfigError(f"{len(train_hf)} training images < batch_size={cfg.batch_size}: lower batch_size")

    # --- model, loss, optimizer -------------------------------------------------------------------
    model = build_model(cfg)
    if cfg.head_bias_from_prior:
        with torch.no_grad():
            model.head.bias.copy_(prior_logits(np.asarray(train_hf["labels"])))
    head_groups = [{**group, "lr_scale": cfg.head_lr_scale} for group in param_groups(model.head)]
    optimizer = make_adamw(head_groups if cfg.linear_probe else param_groups(model.backbone) + head_groups,
                           accelerator.device)
    mark_weight_decay_groups(optimizer, cfg.weight_decay)
    model, optimizer, loader, val_loader = accelerator.prepare(model, optimizer, loader, val_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    evaluation = Evaluation(val_loader, holdout_loader, constant_baseline(np.asarray(val_hf["labels"])))
    model_fwd = torch.compile(model) if cfg.compile else model  # checkpoints use the plain module
    ema = WeightAverage(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    scored = ema.module if ema is not None else model  # what is validated and exported
    criterion = WeightedBCE().to(accelerator.device)

    state = FinetuneState()
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    ckpt = CheckpointManager(accelerator, out, keep_last=cfg.keep_last)
    log = MetricsLog(accelerator, out)

    global_batch = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    iters = steps_per_epoch(len(loader), cfg.gradient_accumulation_steps)
    peak_lr = scaled_lr(cfg.base_lr, global_batch)
    lr_sched = multistep_lr(peak_lr, cfg.lr_milestones, cfg.lr_gamma, cfg.epochs, iters, cfg.warmup_epochs)
    total_steps = cfg.epochs * iters if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * iters)

    resume_and_track(accelerator, cfg, state, ckpt, log, "finetune")
    mode = "linear probe" if cfg.linear_probe else ("fine-tune" if cfg.backbone else "supervised from scratch")
    accelerator.print(
        f"{mode} {cfg.arch}: {len(train_hf)}/{n_full} train images (fraction {cfg.fraction}), "
        f"{len(holdout_hf) if holdout_hf is not None else 0} held out for thresholds, {len(val_hf)} val, "
        f"global batch {global_batch}, {iters} steps/epoch, {total_steps} steps, peak lr {peak_lr:.2e}"
        f"{f' after {cfg.warmup_epochs:g} warm-up epoch(s)' if cfg.warmup_epochs else ''}, "
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
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            progress.step_done(pixels.shape[0] * accelerator.num_processes, loss,
                               {"lr": float(lr_sched[it])})
            if progress.finished:
                break
        if state.batches_in_epoch >= len(loader):  # the epoch ran to its end
            state.end_epoch()
            if state.epoch % cfg.eval_every_epochs == 0 or state.epoch == cfg.epochs:
                validate(cfg, accelerator, scored, evaluation, state, log)
            progress.save()
    if state.best_epoch < 0 or state.step != progress.last_saved:  # stopped mid-epoch by max_steps
        validate(cfg, accelerator, scored, evaluation, state, log)
    progress.close()
    if evaluation.holdout is not None and state.best_epoch >= 0:
        report_val(cfg, accelerator, evaluation, state)
    result = {"steps": state.step, "best_epoch": state.best_epoch, "best_selection_F2_CIW": state.best_f2_ciw,
              "skipped_images": state.skipped_images, "classifier": str(out / "classifier")}
    if accelerator.is_main_process and (out / "eval.json").is_file():
        report = json.loads((out / "eval.json").read_text())
        result.update({key: report[key] for key in ("F2_CIW", "F1_Normal", "mAP")},
                      at_shipped_thresholds=report["at_shipped_thresholds"],
                      constant_baseline=report["constant_baseline"])
    accelerator.wait_for_everyone()
    end_training(accelerator)
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub_url"] = push_after_run(cfg, out / "classifier")
    return result


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


class WeightAverage(torch.nn.Module):
    """An exponential moving average of the model's weights (buffers copied), its decay ramped
    up as timm's ModelEma does, ``min(decay, (1 + n) / (10 + n))`` after n updates, so the
    random init is forgotten fast. A state_dict, so checkpoints carry it and resume exactly.
    On a short CPU budget the noisy last steps of a small-batch run are smoothed out."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        import copy

        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        n = float(self.updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        mine, theirs = list(self.module.parameters()), list(model.parameters())
        torch._foreach_lerp_(mine, [p.detach() for p in theirs], 1.0 - decay)
        for b_mine, b_theirs in zip(self.module.buffers(), model.buffers()):
            b_mine.copy_(b_theirs)


@dataclass
class Evaluation:
    """What every epoch is scored on: val (reported), the held-out part of train (thresholds and
    the choice of epoch; None = val plays that part) and val's constant-predictor baseline."""

    val: Any
    holdout: Any
    baseline: dict


def validate(cfg, accelerator, model, evaluation: Evaluation, state, log) -> None:
    """Score the selection split (the hold-out, or val when there is none) and fit the
    thresholds there; when the selection score improves, export the classifier with them.
    With a hold-out, val is not looked at here: `report_val` scores the chosen classifier once
    at the end (val is a report, and scoring it every epoch cost ~2 s of a ~30-s CPU epoch)."""
    from sewer_hf.metrics import compute_metrics, tune_thresholds

    # Every process holds the gathered scores, so all agree on the best epoch; only main writes.
    on_holdout = evaluation.holdout is not None
    split = "hold-out" if on_holdout else cfg.val_split
    scores, targets = predict_scores(model, evaluation.holdout if on_holdout else evaluation.val, accelerator,
                                     desc=f"{split} epoch {state.epoch}")
    at_half = compute_metrics(scores, targets)
    thresholds = tune_thresholds(scores, targets) if cfg.tune_thresholds else np.full(L.NUM_CLASSES, 0.5)
    fitted = compute_metrics(scores, targets, thresholds)
    # the epoch is chosen where the thresholds were fitted, at those thresholds; without a
    # hold-out, val at 0.5 (choosing on val at thresholds fitted on val would be doubly optimistic)
    selection = fitted["F2_CIW"] if on_holdout else at_half["F2_CIW"]
    prefix = "holdout" if on_holdout else "val"
    headline = ("F2_CIW", "F1_Normal", "mAP")
    log.write({"step": state.step, "epoch": state.epoch, "selection_F2_CIW": selection,
               **{f"{prefix}_{k}": v for k, v in at_half.items() if isinstance(v, float)},
               **{f"{prefix}_shipped_{k}": fitted[k] for k in headline}})
    improved = selection > state.best_f2_ciw
    accelerator.print(
        f"epoch {state.epoch}: {split} at 0.5 F2_CIW {100 * at_half['F2_CIW']:.2f} F1_Normal "
        f"{100 * at_half['F1_Normal']:.2f} mAP {100 * at_half['mAP']:.2f} | at fitted thresholds F2_CIW "
        f"{100 * fitted['F2_CIW']:.2f} F1_Normal {100 * fitted['F1_Normal']:.2f}" + ("  (best so far)" if improved else ""))
    if improved:
        state.best_f2_ciw, state.best_epoch = float(selection), state.epoch
    if improved and accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        export_classifier(cfg, getattr(net, "_orig_mod", net), thresholds, state.epoch, len(targets), on_holdout)
        if not on_holdout:
            write_eval_report(cfg, state.epoch, at_half, fitted, thresholds, evaluation.baseline,
                              fitted_on(cfg, len(targets), False))
    accelerator.wait_for_everyone()


def report_val(cfg, accelerator, evaluation: Evaluation, state) -> None:
    """Val, scored once on the exported classifier (the epoch chosen on the hold-out, with its
    thresholds), at 0.5 and at the shipped thresholds, next to the constant-predictor baseline:
    eval.json. Read back from disk, so a resumed run reports what it ships too."""
    from sewer_hf.models.hf_export import load_classifier_module, load_classifier_thresholds
    from sewer_hf.metrics import compute_metrics
    from transformers import ViTConfig

    accelerator.wait_for_everyone()
    folder = Path(cfg.output_dir) / "classifier"
    model = load_classifier_module(folder, accelerator.device)
    config = ViTConfig.from_pretrained(folder)
    thresholds = load_classifier_thresholds(config)
    scores, targets = predict_scores(model, evaluation.val, accelerator, desc=f"{cfg.val_split} (epoch {state.best_epoch})")
    metrics, shipped = compute_metrics(scores, targets), compute_metrics(scores, targets, thresholds)
    base = evaluation.baseline
    accelerator.print(
        f"{cfg.val_split}, epoch {state.best_epoch} (chosen on the hold-out): at 0.5 F2_CIW {100 * metrics['F2_CIW']:.2f} "
        f"F1_Normal {100 * metrics['F1_Normal']:.2f} mAP {100 * metrics['mAP']:.2f} | at the shipped thresholds F2_CIW "
        f"{100 * shipped['F2_CIW']:.2f} F1_Normal {100 * shipped['F1_Normal']:.2f} | constant predictor F2_CIW "
        f"{100 * base['F2_CIW']:.2f} F1_Normal {100 * base['F1_Normal']:.2f} mAP {100 * base['mAP']:.2f}")
    if accelerator.is_main_process:
        write_eval_report(cfg, state.best_epoch, metrics, shipped, thresholds, base,
                          getattr(config, "sewer_hf", {}).get("thresholds_fitted_on", fitted_on(cfg, None, True)))
    accelerator.wait_for_everyone()


def fitted_on(cfg, n_images: int | None, on_holdout: bool) -> str:
    if on_holdout:
        size = f" ({n_images} images)" if n_images is not None else ""
        return f"a held-out {cfg.threshold_holdout:g} of the labelled train split{size}"
    return f"{cfg.val_split} (the reported split: optimistic)"


def export_classifier(cfg, net, thresholds, epoch: int, n_fit: int, on_holdout: bool) -> None:
    """classifier/ (native ViTForImageClassification + its thresholds) and its training config."""
    from sewer_hf.models.hf_export import save_classifier

    out = Path(cfg.output_dir)
    save_classifier(net.backbone, net.head, out / "classifier", image_size=cfg.image_size,
                    thresholds=dict(zip(L.CLASSES, map(float, thresholds))),
                    extra_config={"sewer_hf": {"stage": "finetune", "arch": cfg.arch,
                                               "linear_probe": cfg.linear_probe, "fraction": cfg.fraction,
                                               "backbone": cfg.backbone, "best_epoch": epoch,
                                               "thresholds_fitted_on": fitted_on(cfg, n_fit, on_holdout)}})
    save_config(cfg, out / "classifier" / "training_config.yaml")


def write_eval_report(cfg, epoch: int, metrics: dict, shipped: dict, thresholds, base: dict, fitted: str) -> None:
    report = {"split": cfg.val_split, "epoch": epoch, "threshold": 0.5, **metrics,
              "shipped_thresholds": dict(zip(L.CLASSES, map(float, thresholds))),
              "thresholds_fitted_on": fitted,
              "at_shipped_thresholds": {k: v for k, v in shipped.items() if isinstance(v, float)},
              "constant_baseline": base, "beats_constant_baseline": beats_baseline(shipped, base),
              "learned": learned(shipped, base)}
    (Path(cfg.output_dir) / "eval.json").write_text(json.dumps(report, indent=2))
