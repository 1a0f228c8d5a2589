"""The model family: timm ViT backbones, the DINO projection head, the multi-crop wrapper,
the student/teacher pair, and the linear classifier used for fine-tuning and linear probing.

Follows the official DINO code (facebookresearch/dino, ``vision_transformer.py`` and
``utils.py``) with timm's ``VisionTransformer`` as the backbone. Paper defaults (Sewer-ML
DINO paper, Sec. 3): ViT-T/16 or ViT-S/16, projector 2048-2048-256, 32,768 prototypes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from sewer_hf.config import PretrainConfig
from sewer_hf.data.labels import NUM_CLASSES
from sewer_hf.errors import ConfigError

# Short names used on the command line -> timm model names.
ARCHS: dict[str, str] = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224"}

# Paper defaults (Sec. 3 and App. A; DINO's where the paper is silent): the configs' own, which
# hold every default once.
DEFAULT_OUT_DIM = PretrainConfig.out_dim  # prototypes
DEFAULT_HIDDEN_DIM = PretrainConfig.hidden_dim
DEFAULT_BOTTLENECK_DIM = PretrainConfig.bottleneck_dim
STUDENT_DROP_PATH = PretrainConfig.drop_path_rate
IMAGE_SIZE = PretrainConfig.image_size


def resolve_arch(arch: str) -> str:
    """Short name (``vit_tiny``) or timm name (``vit_tiny_patch16_224``) -> timm name."""
    if arch in ARCHS:
        return ARCHS[arch]
    if arch in ARCHS.values():
        return arch
    known = ", ".join([*ARCHS, *ARCHS.values()])
    raise ConfigError(f"unknown architecture {arch!r}; expected one of: {known}")


def create_backbone(arch: str = "vit_tiny", img_size: int = IMAGE_SIZE, drop_path_rate: float = 0.0):
    """A randomly initialised timm ViT whose ``forward`` returns the final-norm CLS token.

    ``dynamic_img_size=True`` lets it take any input size (the position embeddings keep the
    ``img_size // 16`` grid and are resampled bicubically for other sizes).
    """
    import timm

    if img_size % 16 != 0 or img_size <= 0:
        raise ConfigError(f"image size {img_size} must be a positive multiple of the patch size 16")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ConfigError(f"drop_path_rate {drop_path_rate} must be in [0, 1)")
    return timm.create_model(
        resolve_arch(arch),
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=img_size,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )


class DINOHead(nn.Module):
    """MLP projector, L2 normalisation, then a weight-normalised linear layer to K prototypes.

    ``norm_last_layer=True`` fixes the weight-norm magnitude g to 1 (not trained), which the
    DINO authors found to stabilise training; the official ViT-S recipe uses False.
    The last layer is ``torch.nn.utils.parametrizations.weight_norm``: its g and v are the
    parameters ``last_layer.parametrizations.weight.original0`` / ``original1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = DEFAULT_OUT_DIM,
        hidden_dim: int = DEFAULT_HIDDEN_DIM,
        bottleneck_dim: int = DEFAULT_BOTTLENECK_DIM,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # As in the official code, the prototypes keep nn.Linear's default init (created after apply).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad = not norm_last_layer

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops.

    Consecutive crops of the same resolution go through the backbone in one pass (so the
    2 global views are one batch); the CLS features of all crops then go through the head in
    one pass. Output rows are ordered crop by crop: ``[crop0 batch, crop1 batch, ...]``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone CLS features, (B, num_features)."""
        return self.backbone(x)

    def forward(self, crops, return_features: bool = False):
        """Head outputs (n_crops*B, K); with ``return_features`` also the CLS features
        (n_crops*B, D) (e.g. for the supervised loss of the hybrid mode, or RankMe)."""
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        features = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        features = torch.cat(features)
        out = self.head(features)
        return (out, features) if return_features else out


def build_student_teacher(
    arch: str,
    img_size: int = IMAGE_SIZE,
    out_dim: int = DEFAULT_OUT_DIM,
    hidden_dim: int = DEFAULT_HIDDEN_DIM,
    bottleneck_dim: int = DEFAULT_BOTTLENECK_DIM,
    norm_last_layer: bool = True,
    drop_path_rate: float = STUDENT_DROP_PATH,
    use_bn_in_head: bool = False,
) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """The DINO pair. Built separately (a weight-normed head must not be deep-copied after a
    forward); the teacher has no drop-path, starts from the student's weights, takes no grads."""

    def build(rate: float) -> MultiCropWrapper:
        backbone = create_backbone(arch, img_size=img_size, drop_path_rate=rate)
        head = DINOHead(
            backbone.num_features,
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            norm_last_layer=norm_last_layer,
            use_bn=use_bn_in_head,
        )
        return MultiCropWrapper(backbone, head)

    student = build(drop_path_rate)
    teacher = build(0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


class LinearClassifier(nn.Module):
    """Backbone + ``nn.Linear`` on the CLS token -> logits (B, num_classes).

    ``freeze_backbone=True`` is the linear probe: the backbone takes no gradients, runs under
    ``no_grad`` and stays in eval mode (no drop-path) even when the module is put in train mode.
    The backbone module is shared, not copied, so the hybrid mode can pass the DINO student's.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = NUM_CLASSES, freeze_backbone: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        # Official DINO eval_linear init.
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_classifier(
    backbone: nn.Module, num_classes: int = NUM_CLASSES, freeze_backbone: bool = False
) -> LinearClassifier:
    return LinearClassifier(backbone, num_classes=num_classes, freeze_backbone=freeze_backbone)
