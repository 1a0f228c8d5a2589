"""DINO pretraining with Accelerate (the paper's self-supervised stage), one screen per idea:

    data  -> two augmented global views (+ optional local crops) per image
    model -> student / teacher ViT + DINO head (sewer_hf.models.vit)
    loss  -> DINO cross-entropy with centering and teacher-temperature schedule (sewer_hf.models.dino)
    step  -> AdamW with per-iteration lr / wd schedules, grad clipping, frozen last layer in
             epoch 0, EMA teacher update with cosine momentum
    logs  -> metrics.jsonl, TensorBoard, per-epoch RankMe + teacher entropy (collapse warning)
    end   -> backbone/ (native transformers ViTModel), dino/ (full state), knn.json

The same function runs on a CPU, one GPU, many GPUs or nodes (`accelerate launch`).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from sewer_hf.data import labels as L
from sewer_hf.config import PretrainConfig, save_config
from sewer_hf.models.dino import unwrap as _unwrap
from sewer_hf.models.losses import WeightedBCE
from sewer_hf.data.sources import fixed_subset, load_split
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


# ------------------------------------------------------------------------------------------------
# Evaluation helpers (main process)
# ------------------------------------------------------------------------------------------------

def embed(backbone, hf_dataset, image_size: int, device, batch_size: int = 64, desc: str = "embed"):
    """CLS embeddings (and labels, if any) of a dataset, evaluation transform, skipping bad images."""
    from sewer_hf.feed.augment import eval_transform
    from sewer_hf.data.torch_dataset import SewerTorchDataset, collate_skip_bad
    from sewer_hf.models.knn import extract_features

    with_labels = "labels" in hf_dataset.column_names
    loader = torch.utils.data.DataLoader(
        SewerTorchDataset(hf_dataset, eval_transform(image_size), with_labels=with_labels),
        batch_size=batch_size, num_workers=0, collate_fn=collate_skip_bad)
    was_training = backbone.training
    backbone.eval()
    try:
        return extract_features(backbone, loader, device=device, progress=len(loader) >= 4)
    finally:
        backbone.train(was_training)


def teacher_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> float:
    """Mean entropy of the centred, sharpened teacher distribution (ln K = collapsed to uniform)."""
    p = F.softmax((teacher_logits.float() - center) / temp, dim=-1)
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    from sewer_hf.feed.augment import PretrainTransform, pretrain_augmentation
    from sewer_hf.feed.batched import GPUPretrainAugment
    from sewer_hf.data.torch_dataset import collate_skip_bad
    from sewer_hf.models.dino import DINOLoss, cancel_last_layer_gradients, cosine_schedule, ema_update, param_groups
    from sewer_hf.models.vit import build_student_teacher
    from sewer_hf.hub.publish import check_push_config, push_after_run

    check_push_config(cfg)  # --push_to_hub: no id or no token fails now, not after training
    accelerator, data = start_run(cfg)
    out = Path(cfg.output_dir)

    # --- data: each process reads its own share through the prepared DataLoader -------------
    train_hf = load_split(data, cfg.split, labelled=cfg.hybrid)
    aug_kwargs = dict(config=pretrain_augmentation(cfg.augmentation), size=cfg.image_size, scale=cfg.global_crop_scale,
                      n_local_crops=cfg.n_local_crops, local_size=cfg.local_crop_size, local_scale=cfg.local_crop_scale)
    train = train_data(
        cfg, accelerator, train_hf, cpu_transform=lambda: PretrainTransform(**aug_kwargs),
        device_augment=lambda dtype: GPUPretrainAugment(**aug_kwargs, photometric_dtype=dtype),
        decode_size=cfg.resolved_decode_size, with_labels=cfg.hybrid)
    loader = make_train_loader(train, cfg, collate_skip_bad)
    if len(loader) == 0:
        from sewer_hf.errors import ConfigError
        raise ConfigError(f"{len(train_hf)} training images < batch_size={cfg.batch_size}: lower batch_size")

    # --- models, loss, optimizer ---------------------------------------------------------------
    student, teacher = build_student_teacher(
        cfg.arch, img_size=cfg.image_size, out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim,
        bottleneck_dim=cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer,
        drop_path_rate=cfg.drop_path_rate)
    embed_dim = student.backbone.num_features
    hybrid_head = torch.nn.Linear(embed_dim, L.NUM_CLASSES) if cfg.hybrid else None
    dino_loss = DINOLoss(cfg.out_dim, n_global_crops=2, warmup_teacher_temp=cfg.warmup_teacher_temp,
                         teacher_temp=cfg.teacher_temp, warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
                         n_epochs=cfg.epochs, student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
    groups = param_groups(student) + (param_groups(hybrid_head) if hybrid_head is not None else [])
    optimizer = make_adamw(groups, accelerator.device)
    mark_weight_decay_groups(optimizer, cfg.weight_decay)

    modules = [student, optimizer, loader] + ([hybrid_head] if hybrid_head is not None else [])
    prepared = accelerator.prepare(*modules)
    student, optimizer, loader = prepared[:3]
    if hybrid_head is not None:
        hybrid_head = prepared[3]
    teacher.to(accelerator.device)
    dino_loss.to(accelerator.device)
    # Compiled callables for the forward passes only; checkpoints and EMA use the plain modules.
    student_fwd = torch.compile(student) if cfg.compile else student
    teacher_fwd = torch.compile(teacher) if cfg.compile else teacher
    criterion = WeightedBCE().to(accelerator.device)

    state = TrainState()
    # The EMA teacher and the DINO center are not seen by `prepare`: register them for save_state.
    accelerator.register_for_checkpointing(teacher, dino_loss, state)
    ckpt = CheckpointManager(accelerator, out, keep_last=cfg.keep_last)
    log = MetricsLog(accelerator, out)

    # --- schedules, per optimizer step (lightly/DINO style: every value explicit) ---------------
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    iters = steps_per_epoch(len(loader), cfg.gradient_accumulation_steps)
    peak_lr = scaled_lr(cfg.base_lr, global_batch)
    lr_sched = cosine_schedule(peak_lr, cfg.min_lr, cfg.epochs, iters, warmup_epochs=cfg.warmup_epochs,
                               start_warmup_value=min(cfg.start_warmup_lr, peak_lr))
    wd_sched = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, iters)
    mom_sched = cosine_schedule(cfg.momentum_teacher, cfg.momentum_teacher_end, cfg.epochs, iters)
    total_steps = cfg.epochs * iters if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * iters)

    resume_and_track(accelerator, cfg, state, ckpt, log, "pretrain_dino")

    # Held-out frames for RankMe: the val split if there is one, else a fixed slice of train.
    probe = None
    if accelerator.is_main_process and cfg.rankme_samples > 0:
        probe = fixed_subset(load_split(data, cfg.val_split, labelled=False, required=False) or train_hf, cfg.rankme_samples, cfg.seed)
    knn_curve = KnnCurve(cfg, data, train_hf) if accelerator.is_main_process and cfg.knn_every_epochs else None

    accelerator.print(
        f"DINO {cfg.arch}: {len(train_hf)} images, {accelerator.num_processes} process(es), global batch "
        f"{global_batch}, {iters} steps/epoch, {total_steps} steps, peak lr {peak_lr:.2e}, "
        f"precision {cfg.mixed_precision}, augmentation {train.describe()}")

    progress = Progress(accelerator, cfg, state, ckpt, log, total_steps, desc="pretrain")
    student.train()
    while state.step < total_steps and state.epoch < cfg.epochs:
        epoch = state.epoch
        for batch in state.epoch_batches(loader, train, accelerator):
            it = state.step
            views = batch["pixel_values"]  # on the device already when augmented there
            if train.augment is None:
                views = [v.to(accelerator.device, non_blocking=True) for v in views]
            set_lr_wd(optimizer, float(lr_sched[it]), float(wd_sched[it]))

            with accelerator.accumulate(student):
                with accelerator.autocast():
                    with torch.no_grad():
                        teacher_out = teacher_fwd(views[:2])  # teacher sees only the global views
                    if hybrid_head is not None:
                        student_out, feats = student_fwd(views, return_features=True)
                    else:
                        student_out = student_fwd(views)
                    loss = dino_loss(student_out, teacher_out, epoch)
                    if hybrid_head is not None:
                        n = views[0].shape[0]
                        targets = batch["labels"].to(accelerator.device).repeat(2, 1)
                        bce = criterion(hybrid_head(feats[: 2 * n]), targets)
                        loss = loss + cfg.hybrid_weight * bce
                check_finite(accelerator, loss, it, ckpt)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if cfg.clip_grad:
                        accelerator.clip_grad_norm_(student.parameters(), cfg.clip_grad)  # unscales fp16 first
                    cancel_last_layer_gradients(accelerator.unwrap_model(student), epoch, cfg.freeze_last_layer)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            ema_update(teacher, accelerator.unwrap_model(student), float(mom_sched[it]))
            record = {"lr": float(lr_sched[it]), "wd": float(wd_sched[it]), "teacher_momentum": float(mom_sched[it]),
                      "teacher_temp": dino_loss.teacher_temp_at(epoch)}
            if hybrid_head is not None:
                record["bce"] = bce.item()
            progress.step_done(views[0].shape[0] * accelerator.num_processes, loss, record)
            if progress.finished:
                break
        if state.batches_in_epoch >= len(loader):  # the epoch ran to its end
            state.end_epoch()
            epoch_end_metrics(cfg, accelerator, teacher, dino_loss, probe, state, log, epoch)
            if knn_curve is not None and (state.epoch % cfg.knn_every_epochs == 0 or state.epoch == cfg.epochs):
                knn_curve.log(_unwrap(teacher).backbone, accelerator.device, state, log, epoch)
            progress.save()
    progress.close()

    if cfg.save_rank_states:  # lets a test compare the teacher and center of every process
        from safetensors.torch import save_file

        rank_dir = out / "rank_states"
        rank_dir.mkdir(exist_ok=True)
        tensors = {f"teacher.{k}": v.detach().float().cpu().contiguous() for k, v in _unwrap(teacher).state_dict().items()}
        tensors["center"] = dino_loss.center.detach().float().cpu().contiguous()
        save_file(tensors, str(rank_dir / f"rank{accelerator.process_index}.safetensors"))

    result: dict[str, Any] = {"steps": state.step, "images_seen": state.images_seen,
                              "skipped_images": state.skipped_images}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.update(finish(cfg, accelerator, student, teacher, dino_loss, data, train_hf))
    accelerator.wait_for_everyone()
    end_training(accelerator)
    if cfg.push_to_hub and accelerator.is_main_process:
        result["hub_url"] = push_after_run(cfg, out / "backbone")
    return result


def collapse_warning(entropy: float, rank: float, out_dim: int) -> Optional[str]:
    """DINO's two collapse modes: a uniform teacher (entropy near ln K) or one dominant
    dimension (RankMe near 1)."""
    if entropy > 0.95 * math.log(out_dim) or rank < 1.5:
        return (f"looks collapsed: teacher entropy {entropy:.3f} (ln K = {math.log(out_dim):.3f}), RankMe {rank:.2f}. "
                "Check teacher_temp, the center momentum and the lr.")
    return None


def epoch_end_metrics(cfg, accelerator, teacher, dino_loss, probe, state, log, epoch) -> None:
    """RankMe of the teacher's backbone embeddings on the fixed held-out frames, teacher entropy."""
    from sewer_hf.models.dino import rankme

    if not accelerator.is_main_process or probe is None:
        return
    backbone = _unwrap(teacher).backbone
    feats, _ = embed(backbone, probe, cfg.image_size, accelerator.device, desc="rankme")
    with torch.no_grad():
        logits = _unwrap(teacher).head(feats.to(accelerator.device))
    entropy = teacher_entropy(logits, dino_loss.center, float(dino_loss.teacher_temp_at(epoch)))
    rank = rankme(feats)
    log.write({"step": state.step, "epoch": epoch, "rankme": rank, "teacher_entropy": entropy,
               "teacher_entropy_max": math.log(cfg.out_dim)})
    message = collapse_warning(entropy, rank, cfg.out_dim)
    if message:
        logger.warning("epoch %d %s", epoch, message)


def knn_frames(cfg, data, train_hf):
    """(memory bank, eval frames) of the kNN check: a fixed `knn_max_train` slice of train and the
    val split; None when either has no labels."""
    val = load_split(data, cfg.val_split, labelled=False, required=False)
    if "labels" not in train_hf.column_names or val is None or "labels" not in val.column_names:
        return None
    return fixed_subset(train_hf, cfg.knn_max_train, cfg.seed), val


def knn_metrics(cfg, backbone, frames, device, name: str) -> dict[str, float]:
    """kNN F2_CIW / F1_Normal / mAP of `backbone`'s CLS features on `knn_frames`."""
    from sewer_hf.models.knn import knn_evaluate

    bank, val = frames
    tr_f, tr_y = embed(backbone, bank, cfg.image_size, device, desc=f"knn {name} train")
    va_f, va_y = embed(backbone, val, cfg.image_size, device, desc=f"knn {name} eval")
    metrics = knn_evaluate(tr_f, tr_y, va_f, va_y, k=cfg.knn_k, temperature=cfg.knn_temperature)
    return {k: float(metrics[k]) for k in ("F2_CIW", "F1_Normal", "mAP")}


class KnnCurve:
    """kNN of the teacher every `knn_every_epochs` epochs, on the same fixed frames as the final
    report: does pretraining still improve the features? Silent when the data has no labels."""

    def __init__(self, cfg, data, train_hf) -> None:
        self.cfg, self.frames = cfg, knn_frames(cfg, data, train_hf)

    def log(self, backbone, device, state, log, epoch: int) -> None:
        if self.frames is None:
            return
        metrics = knn_metrics(self.cfg, backbone, self.frames, device, "curve")
        log.write({"step": state.step, "epoch": epoch, **{f"knn_{k}": v for k, v in metrics.items()}})


def finish(cfg, accelerator, student, teacher, dino_loss, data, train_hf) -> dict[str, Any]:
    """Write backbone/ (transformers ViTModel), dino/ (full state) and knn.json."""
    from safetensors.torch import save_file

    from sewer_hf.models.hf_export import save_backbone

    out = Path(cfg.output_dir)
    teacher = _unwrap(teacher)
    save_backbone(teacher.backbone, out / "backbone", image_size=cfg.image_size,
                  extra_config={"sewer_hf": {"stage": "dino_pretrain", "arch": cfg.arch}})
    full = out / "dino"
    full.mkdir(exist_ok=True)
    student_sd = _unwrap(accelerator.unwrap_model(student)).state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in student_sd.items()}, str(full / "student.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in teacher.state_dict().items()},
              str(full / "teacher.safetensors"))
    save_file({"center": dino_loss.center.detach().cpu().contiguous()}, str(full / "dino_loss.safetensors"))
    save_config(cfg, full / "config.yaml")
    result: dict[str, Any] = {"backbone": str(out / "backbone"), "dino_state": str(full)}
    if cfg.knn_eval:
        knn = knn_report(cfg, teacher.backbone, data, train_hf, accelerator.device)
        if knn:
            (out / "knn.json").write_text(json.dumps(knn, indent=2))
            result["knn"] = knn
            print(f"kNN (k={cfg.knn_k}, T={cfg.knn_temperature}) on {knn['eval_split']}: "
                  f"pretrained F2_CIW {100 * knn['pretrained']['F2_CIW']:.2f} mAP {100 * knn['pretrained']['mAP']:.2f} | "
                  f"random init F2_CIW {100 * knn['random_init']['F2_CIW']:.2f} mAP {100 * knn['random_init']['mAP']:.2f}")
    return result


def knn_report(cfg, backbone, data, train_hf, device) -> Optional[dict[str, Any]]:
    """kNN of the pretrained teacher backbone vs the same architecture at random init."""
    from sewer_hf.models.vit import create_backbone

    frames = knn_frames(cfg, data, train_hf)
    if frames is None:
        return None
    torch.manual_seed(cfg.seed)
    random_backbone = create_backbone(cfg.arch, img_size=cfg.image_size).to(device)
    report: dict[str, Any] = {"eval_split": cfg.val_split, "k": cfg.knn_k, "temperature": cfg.knn_temperature,
                              "n_train": len(frames[0]), "n_eval": len(frames[1])}
    for name, net in (("pretrained", backbone), ("random_init", random_backbone)):
        report[name] = knn_metrics(cfg, net, frames, device, name)
    return report