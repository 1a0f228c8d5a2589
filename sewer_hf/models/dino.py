"""DINO self-distillation (Caron et al. 2021): the loss with its centre and teacher-temperature
schedule, the frozen last layer, and the collapse signals (RankMe, the teacher's entropy); and
DINOv2's KoLeo regulariser (off by default: the paper's DINO has none).
Mirrors the official ``main_dino.py`` / ``utils.py``; the lr / weight-decay / momentum schedules
and the EMA teacher update are in ``sewer_hf.train.optim``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sewer_hf.config import PretrainConfig
from sewer_hf.errors import ConfigError

# DINO's defaults (Caron et al. 2021, the official main_dino.py), as the config holds them.
STUDENT_TEMP = PretrainConfig.student_temp
CENTER_MOMENTUM = PretrainConfig.center_momentum
RANKME_EPS = 1e-7


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over all
    (teacher view, student view) pairs except same-view pairs, averaged.

    ``student_output``: (n_crops*B, K), crops in order, the first ``n_global_crops`` being the
    global views the teacher saw; ``teacher_output``: (n_global_crops*B, K). ``forward`` also
    updates the centre (as the official code does) unless ``center_update=False``, and leaves
    collapse-monitoring values (detached float tensors) in ``last_teacher_entropy`` (mean
    entropy of the teacher distributions; 0 = one-hot collapse, ln K = uniform collapse) and
    ``last_kl`` (mean KL(teacher || student) over the pairs = loss - mean teacher entropy).
    """

    def __init__(
        self,
        out_dim: int,
        n_global_crops: int = 2,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        n_epochs: int = 100,
        student_temp: float = STUDENT_TEMP,
        center_momentum: float = CENTER_MOMENTUM,
    ):
        super().__init__()
        if n_epochs < 1 or warmup_teacher_temp_epochs < 0:
            raise ConfigError(f"need n_epochs >= 1 and warmup epochs >= 0, got {n_epochs}, {warmup_teacher_temp_epochs}")
        self.n_global_crops = n_global_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        # Per epoch: linear warm-up (endpoints included, like np.linspace), then constant.
        warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
        rest = np.full(max(n_epochs - warmup_teacher_temp_epochs, 0), teacher_temp)
        self.teacher_temp_schedule = np.concatenate((warmup, rest))[:n_epochs]
        self.last_teacher_entropy = torch.tensor(float("nan"))
        self.last_kl = torch.tensor(float("nan"))

    def teacher_temp_at(self, epoch: int) -> float:
        """Teacher temperature of an epoch (epochs past the schedule keep its last value)."""
        index = min(max(int(epoch), 0), len(self.teacher_temp_schedule) - 1)
        return float(self.teacher_temp_schedule[index])

    def forward(self, student_output, teacher_output, epoch: int, center_update: bool = True):
        # fp32: the softmaxes over 32k prototypes are unsafe in fp16.
        student_output, teacher_output = student_output.float(), teacher_output.float()
        batch = teacher_output.shape[0] // self.n_global_crops
        if batch < 1 or batch * self.n_global_crops != teacher_output.shape[0] or student_output.shape[0] % batch:
            raise ValueError(
                f"teacher output has {teacher_output.shape[0]} rows for {self.n_global_crops} global crops "
                f"and student output {student_output.shape[0]} rows; both must be multiples of the batch size"
            )
        student_logp = F.log_softmax(student_output / self.student_temp, dim=-1).chunk(student_output.shape[0] // batch)
        teacher_logp = F.log_softmax((teacher_output - self.center) / self.teacher_temp_at(epoch), dim=-1).detach()
        teacher_p = teacher_logp.exp().chunk(self.n_global_crops)
        teacher_entropy = [-(q * lq).sum(-1).mean() for q, lq in zip(teacher_p, teacher_logp.chunk(self.n_global_crops))]

        total, n_terms, entropy_sum = 0.0, 0, 0.0
        for iq, q in enumerate(teacher_p):
            for v, logp in enumerate(student_logp):
                if v == iq:  # same view: skip
                    continue
                total = total + torch.sum(-q * logp, dim=-1).mean()
                entropy_sum = entropy_sum + teacher_entropy[iq]
                n_terms += 1
        loss = total / n_terms
        self.last_teacher_entropy = torch.stack(teacher_entropy).mean().detach()
        self.last_kl = (loss - entropy_sum / n_terms).detach()
        if center_update:
            self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the batch mean of the teacher outputs, averaged over all processes."""
        batch_center = teacher_output.float().mean(dim=0, keepdim=True)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)  # sum of per-process means
            batch_center = batch_center / dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019), as DINOv2 (Oquab et al. 2023) adds it to DINO: minus the
    mean log distance from each L2-normalised row of ``features`` (B, D) to its nearest other row.
    Low when the batch is spread over the sphere, large when rows bunch up: it pushes against
    the uniform collapse a short DINO run drifts into (see quickstart.DINO_KOLEO_WEIGHT)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"KoLeo needs a (B, D) batch of at least 2 rows, got shape {tuple(features.shape)}")
    with torch.autocast(features.device.type, enabled=False):  # a log of small distances: fp32
        x = F.normalize(features.float(), dim=-1, eps=eps)
        with torch.no_grad():  # which row is nearest is not differentiated (DINOv2 neither)
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
            nearest = dots.argmax(dim=1)
        return -torch.log((x - x[nearest]).norm(dim=-1) + eps).mean()


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer_epochs: int = 1) -> None:
    """Drop the prototype layer's gradients during the first epochs (official DINO trick)."""
    if epoch >= freeze_last_layer_epochs:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values
    of the (N, D) embedding matrix; between 1 and min(N, D)."""
    if embeddings.ndim != 2 or min(embeddings.shape) == 0:
        raise ValueError(f"rankme needs a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    p = sigma / sigma.sum() + eps
    value = torch.exp(-(p * torch.log(p)).sum()).item()
    return value if math.isfinite(value) else float("nan")


def teacher_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> float:
    """Mean entropy of the centred, sharpened teacher distribution (ln K = collapsed to uniform)."""
    p = F.softmax((teacher_logits.float() - center) / temp, dim=-1)
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())


def collapse_warning(entropy: float, rank: float, out_dim: int) -> Optional[str]:
    """DINO's two collapse modes: a uniform teacher (entropy near ln K) or one dominant
    dimension (RankMe near 1)."""
    if entropy > 0.95 * math.log(out_dim) or rank < 1.5:
        return (f"looks collapsed: teacher entropy {entropy:.3f} (ln K = {math.log(out_dim):.3f}), RankMe {rank:.2f}. "
                "Check teacher_temp, the center momentum and the lr.")
    return None
