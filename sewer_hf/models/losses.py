"""The paper's supervised loss: BCE with logits and per-class positive weights
pos_weight_c = 2 (1 + CIW_c / mean CIW), so important, rare defects count more."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sewer_hf.data.labels import pos_weight


class WeightedBCE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.as_tensor(pos_weight()), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # fp32 even under autocast: the weighted log-sigmoid is sensitive in half precision
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)


def prior_logits(targets, eps: float = 1e-3) -> torch.Tensor:
    """The logits of the best constant predictor under this loss: sigmoid(b_c) = w p / (w p + 1 - p)
    for prevalence p and positive weight w, i.e. b_c = log(w p / (1 - p)). Starting a new head
    there skips the many steps a zero-initialised head spends learning the class frequencies."""
    p = torch.as_tensor(targets, dtype=torch.float64).mean(0).clamp(eps, 1 - eps)
    w = torch.as_tensor(pos_weight(), dtype=torch.float64)
    return torch.log(w * p / (1 - p)).float()
