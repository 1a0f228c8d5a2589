"""What DINO pretraining watches, on the main process: RankMe and the teacher's entropy every
epoch (the two collapse modes), a kNN learning curve of the teacher, and the final kNN report
(pretrained teacher vs the same architecture at random init)."""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch

from sewer_hf.data.sources import fixed_subset, load_split
from sewer_hf.data.torch_dataset import SewerTorchDataset, collate_skip_bad
from sewer_hf.feed.augment import eval_transform
from sewer_hf.models.dino import collapse_warning, rankme, teacher_entropy
from sewer_hf.models.knn import extract_features, knn_evaluate
from sewer_hf.models.vit import create_backbone
from sewer_hf.train.optim import unwrap

logger = logging.getLogger(__name__)


def embed(backbone, hf_dataset, image_size: int, device, batch_size: int = 64, desc: str = "embed"):
    """CLS embeddings (and labels, if any) of a dataset, evaluation transform, skipping bad images."""

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


def epoch_end_metrics(run, teacher, dino_loss, probe, epoch: int) -> None:
    """RankMe of the teacher's backbone embeddings on the fixed held-out frames, teacher entropy."""
    cfg, device = run.cfg, run.accelerator.device
    if not run.accelerator.is_main_process or probe is None:
        return
    backbone = unwrap(teacher).backbone
    feats, _ = embed(backbone, probe, cfg.image_size, device, desc="rankme")
    with torch.no_grad():
        logits = unwrap(teacher).head(feats.to(device))
    entropy = teacher_entropy(logits, dino_loss.center, float(dino_loss.teacher_temp_at(epoch)))
    rank = rankme(feats)
    run.log.write({"step": run.state.step, "epoch": epoch, "rankme": rank, "teacher_entropy": entropy,
               "teacher_entropy_max": math.log(cfg.out_dim)})
    message = collapse_warning(entropy, rank, cfg.out_dim)
    if message:
        logger.warning("epoch %d %s", epoch, message)


# Above this share of its random init, the exported teacher has barely been trained.
UNTRAINED_TEACHER_SHARE = 0.5


def untrained_teacher_warning(share: float, momenta) -> Optional[str]:
    """A run too short for its teacher momentum: after EMA updates at ``momenta``, the teacher
    (the exported backbone) is still mostly its random init (``share``, ``optim.ema_init_share``)."""
    if share <= UNTRAINED_TEACHER_SHARE or len(momenta) == 0:
        return None
    return (f"the teacher (the exported backbone) is still {100 * share:.0f} % its random init after {len(momenta)} EMA "
            f"updates at momentum {min(momenta):.4g}-{max(momenta):.4g} (time constant 1/(1 - m) = "
            f"{1 / (1 - min(momenta)):.0f}+ steps): it has barely been trained. Train for more steps, or lower "
            f"momentum_teacher for a run this short.")


def knn_frames(cfg, data, train_hf):
    """(memory bank, eval frames) of the kNN check: a fixed `knn_max_train` slice of train and the
    val split; None when either has no labels."""
    val = load_split(data, cfg.val_split, labelled=False, required=False)
    if "labels" not in train_hf.column_names or val is None or "labels" not in val.column_names:
        return None
    return fixed_subset(train_hf, cfg.knn_max_train, cfg.seed), val


def knn_metrics(cfg, backbone, frames, device, name: str) -> dict[str, float]:
    """kNN F2_CIW / F1_Normal / mAP of `backbone`'s CLS features on `knn_frames`."""

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

    def log(self, run, backbone, epoch: int) -> None:
        if self.frames is None:
            return
        metrics = knn_metrics(self.cfg, backbone, self.frames, run.accelerator.device, "curve")
        run.log.write({"step": run.state.step, "epoch": epoch, **{f"knn_{k}": v for k, v in metrics.items()}})


def knn_report(cfg, backbone, data, train_hf, device) -> Optional[dict[str, Any]]:
    """kNN of the pretrained teacher backbone vs the same architecture at random init."""

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
