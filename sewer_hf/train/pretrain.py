"""DINO pretraining with Accelerate (the paper's self-supervised stage), one screen per idea:

    data  -> two augmented global views (+ optional local crops) per image
    model -> student / teacher ViT + DINO head (sewer_hf.models.vit)
    loss  -> DINO cross-entropy with centering and teacher-temperature schedule (sewer_hf.models.dino),
             + koleo_weight x KoLeo on the student's global-view features (DINOv2; 0 in the paper)
    step  -> AdamW with per-iteration lr / wd schedules, grad clipping, frozen last layer in
             epoch 0, EMA teacher update with cosine momentum (sewer_hf.train.optim)
    logs  -> metrics.jsonl, TensorBoard, per-epoch RankMe + teacher entropy (collapse warning),
             a kNN curve (sewer_hf.train.dino_monitor)
    end   -> backbone/ (native transformers ViTModel), dino/ (full state), knn.json

The same function runs on a CPU, one GPU, many GPUs or nodes (`accelerate launch`). The run's
set-up, checkpoints, log and progress are ``sewer_hf.train.run.Run``'s; how a batch is made is
``sewer_hf.feed.pipeline``'s.
"""
from __future__ import annotations

import json
from pathlib import Path
import logging
from typing import Any

import torch
from safetensors.torch import save_file

from sewer_hf.config import PretrainConfig, save_config
from sewer_hf.data import labels as L
from sewer_hf.data.sources import fixed_subset, load_split
from sewer_hf.data.torch_dataset import collate_skip_bad
from sewer_hf.errors import ConfigError
from sewer_hf.feed.augment import PretrainTransform
from sewer_hf.feed.batched import GPUPretrainAugment
from sewer_hf.feed.pipeline import make_train_feed, make_train_loader
from sewer_hf.feed.spec import pretrain_augmentation
from sewer_hf.models.dino import DINOLoss, cancel_last_layer_gradients, koleo_loss
from sewer_hf.models.hf_export import save_backbone
from sewer_hf.models.losses import WeightedBCE
from sewer_hf.models.vit import build_student_teacher
from sewer_hf.train.dino_monitor import KnnCurve, epoch_end_metrics, knn_report, untrained_teacher_warning
from sewer_hf.train.optim import (
    cosine_schedule,
    ema_init_share,
    ema_update,
    make_adamw,
    mark_weight_decay_groups,
    param_groups,
    scaled_lr,
    set_lr_wd,
    unwrap,
)
from sewer_hf.train.run import Run, TrainState

logger = logging.getLogger(__name__)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    run = Run(cfg, TrainState())
    accelerator, state = run.accelerator, run.state

    # --- data: each process reads its own share through the prepared DataLoader -------------
    train_hf = load_split(run.data, cfg.split, labelled=cfg.hybrid)
    feed, loader = dino_feed(cfg, accelerator, train_hf)

    # --- models, loss, optimizer ---------------------------------------------------------------
    student, teacher, dino_loss, hybrid_head = build_dino(cfg)
    optimizer = make_adamw(param_groups(student) + (param_groups(hybrid_head) if cfg.hybrid else []), accelerator.device)
    mark_weight_decay_groups(optimizer, cfg.weight_decay)
    student, optimizer, loader, *hybrid = accelerator.prepare(student, optimizer, loader,
                                                              *([hybrid_head] if cfg.hybrid else []))
    hybrid_head = hybrid[0] if hybrid else None
    teacher.to(accelerator.device)
    dino_loss.to(accelerator.device)
    # Compiled callables for the forward passes only; checkpoints and EMA use the plain modules.
    student_fwd = torch.compile(student) if cfg.compile else student
    teacher_fwd = torch.compile(teacher) if cfg.compile else teacher
    bce = WeightedBCE().to(accelerator.device)
    # The EMA teacher and the DINO center are not seen by `prepare`: register them for save_state.
    accelerator.register_for_checkpointing(teacher, dino_loss, state)

    # --- schedules, per optimizer step (lightly/DINO style: every value explicit) ---------------
    iters = run.steps_per_epoch(loader)
    peak_lr = scaled_lr(cfg.base_lr, run.global_batch)
    lr_sched = cosine_schedule(peak_lr, cfg.min_lr, cfg.epochs, iters, warmup_epochs=cfg.warmup_epochs,
                               start_warmup_value=min(cfg.start_warmup_lr, peak_lr))
    wd_sched = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, iters)
    mom_sched = cosine_schedule(cfg.momentum_teacher, cfg.momentum_teacher_end, cfg.epochs, iters)
    total_steps = run.total_steps(iters)

    run.start(total_steps, project="pretrain_dino", desc="pretrain")
    probe, knn_curve = monitors(cfg, run, train_hf)
    accelerator.print(
        f"DINO {cfg.arch}: {len(train_hf)} images, {accelerator.num_processes} process(es), global batch "
        f"{run.global_batch}, {iters} steps/epoch, {total_steps} steps, peak lr {peak_lr:.2e}, "
        f"precision {cfg.mixed_precision}, augmentation {feed.describe()}")

    student.train()
    for epoch, batches in run.epochs(loader, feed):
        for batch in batches:
            it = state.step
            views = batch["pixel_values"]  # on the device already when augmented there
            if not feed.layout.batched:
                views = [v.to(accelerator.device, non_blocking=True) for v in views]
            set_lr_wd(optimizer, float(lr_sched[it]), float(wd_sched[it]))
            with accelerator.accumulate(student):
                with accelerator.autocast():
                    with torch.no_grad():
                        teacher_out = teacher_fwd(views[:2])  # teacher sees only the global views
                    student_out, feats = student_fwd(views, return_features=True)  # features: no extra cost
                    global_feats = feats[: 2 * views[0].shape[0]]  # KoLeo's and the hybrid head's input
                    loss = dino_loss(student_out, teacher_out, epoch)
                    if cfg.koleo_weight:  # per global view, as DINOv2 does
                        koleo = sum(koleo_loss(f) for f in global_feats.chunk(2))
                        loss = loss + cfg.koleo_weight * koleo
                    if hybrid_head is not None:
                        targets = batch["labels"].to(accelerator.device).repeat(2, 1)
                        bce_loss = bce(hybrid_head(global_feats), targets)
                        loss = loss + cfg.hybrid_weight * bce_loss
                run.optimizer_step(loss, student, optimizer, before_step=lambda: cancel_last_layer_gradients(
                    accelerator.unwrap_model(student), epoch, cfg.freeze_last_layer))
            if not accelerator.sync_gradients:
                continue
            ema_update(teacher, accelerator.unwrap_model(student), float(mom_sched[it]))
            record = {"lr": float(lr_sched[it]), "wd": float(wd_sched[it]), "teacher_momentum": float(mom_sched[it]),
                      "teacher_temp": dino_loss.teacher_temp_at(epoch)}
            if hybrid_head is not None:
                record["bce"] = bce_loss.item()
            if cfg.koleo_weight:
                record["koleo"] = koleo.item()
            if run.step_done(views[0].shape[0] * accelerator.num_processes, loss, record):
                break
        if run.epoch_ended(loader):
            epoch_end_metrics(run, teacher, dino_loss, probe, epoch)
            if knn_curve is not None and (state.epoch % cfg.knn_every_epochs == 0 or state.epoch == cfg.epochs):
                knn_curve.log(run, unwrap(teacher).backbone, epoch)
            run.save()
    run.close()

    if cfg.save_rank_states:  # lets a test compare the teacher and center of every process
        save_rank_state(run, teacher, dino_loss)
    result: dict[str, Any] = {"steps": state.step, "images_seen": state.images_seen,
                              "skipped_images": state.skipped_images}
    momenta = mom_sched[:state.step]  # the EMA updates made (one per optimizer step)
    result["teacher_init_share"] = round(ema_init_share(momenta), 4)
    message = untrained_teacher_warning(result["teacher_init_share"], momenta)
    if message and accelerator.is_main_process:
        logger.warning(message)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result.update(finish(cfg, accelerator, student, teacher, dino_loss, run.data, train_hf))
    return run.end(result, run.out / "backbone")


def dino_feed(cfg: PretrainConfig, accelerator, train_hf):
    """(feed, loader): the DINO views (2 global + ``n_local_crops`` local) where the feed puts them."""
    views = dict(config=pretrain_augmentation(cfg.augmentation), size=cfg.image_size, scale=cfg.global_crop_scale,
                 n_local_crops=cfg.n_local_crops, local_size=cfg.local_crop_size, local_scale=cfg.local_crop_scale)
    feed = make_train_feed(cfg, accelerator, train_hf, cpu_transform=lambda: PretrainTransform(**views),
                           batched_augment=lambda dtype: GPUPretrainAugment(**views, photometric_dtype=dtype),
                           decode_size=cfg.resolved_decode_size, with_labels=cfg.hybrid)
    loader = make_train_loader(feed, cfg, collate_skip_bad)
    if len(loader) == 0:
        raise ConfigError(f"{len(train_hf)} training images < batch_size={cfg.batch_size}: lower batch_size")
    return feed, loader


def build_dino(cfg: PretrainConfig):
    """(student, teacher, DINO loss, hybrid head or None). The teacher starts as a copy of the
    student; hybrid (paper Table 2) adds hybrid_weight x the class-weighted BCE of a linear head
    on the student's global views."""
    student, teacher = build_student_teacher(
        cfg.arch, img_size=cfg.image_size, out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim,
        bottleneck_dim=cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer, drop_path_rate=cfg.drop_path_rate)
    hybrid_head = torch.nn.Linear(student.backbone.num_features, L.NUM_CLASSES) if cfg.hybrid else None
    dino_loss = DINOLoss(cfg.out_dim, n_global_crops=2, warmup_teacher_temp=cfg.warmup_teacher_temp,
                         teacher_temp=cfg.teacher_temp, warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
                         n_epochs=cfg.epochs, student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
    return student, teacher, dino_loss, hybrid_head


def monitors(cfg: PretrainConfig, run, train_hf):
    """(RankMe probe frames, kNN curve), main process only: the probe is the val split if there
    is one, else a fixed slice of train."""
    if not run.accelerator.is_main_process:
        return None, None
    probe = None
    if cfg.rankme_samples > 0:
        probe = fixed_subset(load_split(run.data, cfg.val_split, labelled=False, required=False) or train_hf,
                             cfg.rankme_samples, cfg.seed)
    return probe, (KnnCurve(cfg, run.data, train_hf) if cfg.knn_every_epochs else None)


def save_rank_state(run, teacher, dino_loss) -> None:
    """rank_states/rank<i>.safetensors: this process's teacher and centre."""
    rank_dir = run.out / "rank_states"
    rank_dir.mkdir(exist_ok=True)
    tensors = {f"teacher.{k}": v.detach().float().cpu().contiguous() for k, v in unwrap(teacher).state_dict().items()}
    tensors["center"] = dino_loss.center.detach().float().cpu().contiguous()
    save_file(tensors, str(rank_dir / f"rank{run.accelerator.process_index}.safetensors"))


def finish(cfg, accelerator, student, teacher, dino_loss, data, train_hf) -> dict[str, Any]:
    """Write backbone/ (transformers ViTModel), dino/ (full state) and knn.json."""
    out = Path(cfg.output_dir)
    teacher = unwrap(teacher)
    save_backbone(teacher.backbone, out / "backbone", image_size=cfg.image_size,
                  extra_config={"sewer_hf": {"stage": "dino_pretrain", "arch": cfg.arch}})
    full = out / "dino"
    full.mkdir(exist_ok=True)
    student_sd = unwrap(accelerator.unwrap_model(student)).state_dict()
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


