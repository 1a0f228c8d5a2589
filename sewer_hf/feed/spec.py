"""The augmentation spec: the paper's App. A values in two frozen dataclasses, the named presets
of the configs' ``augmentation`` key, and the one constructor both implementations build their
spec with. ``sewer_hf.feed.augment`` draws it per image with PIL/torchvision on the CPU;
``sewer_hf.feed.batched`` draws it batched, per sample, on any device.

Where the paper names an operation without a number, the value comes from the DINO code (Caron
et al. 2021) or from torchvision's own default, and the comment says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from sewer_hf.config import PretrainConfig
from sewer_hf.data.labels import SEWER_MEAN, SEWER_STD
from sewer_hf.errors import ConfigError

# DINO's colour jitter (brightness, contrast, saturation, hue) and its probability: the paper
# lists the four jitter components but gives no strengths, so DINO's values are used.
DINO_COLOR_JITTER: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)


DINO_COLOR_JITTER_P = 0.8


# torchvision's RandomResizedCrop aspect-ratio range (also DINO's); the paper gives none.
DEFAULT_CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)


INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def _check_range(name: str, value: Sequence[float], low: float, high: float | None = None) -> None:
    ok = len(value) == 2 and low <= value[0] <= value[1] and (high is None or value[1] <= high)
    if not ok:
        upper = "" if high is None else f" <= {high}"
        raise ConfigError(f"{name}={tuple(value)!r}: expected (min, max) with {low} <= min <= max{upper}")


def _check_probabilities(config: Any) -> None:
    for f in fields(config):
        if f.name.endswith("_p"):
            p = getattr(config, f.name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{f.name}={p!r}: a probability must be in [0, 1]")


def _check_common(config: Any) -> None:
    if int(config.size) <= 0:
        raise ConfigError(f"size={config.size!r}: expected a positive number of pixels")
    if config.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation={config.interpolation!r}: expected one of {INTERPOLATIONS}")
    b, c, s, h = config.color_jitter
    if min(b, c, s) < 0 or not 0 <= h <= 0.5:
        raise ConfigError(
            f"color_jitter={config.color_jitter!r}: expected (brightness, contrast, saturation >= 0, 0 <= hue <= 0.5)"
        )
    if len(config.mean) != 3 or len(config.std) != 3 or min(config.std) <= 0:
        raise ConfigError(f"mean={config.mean!r}, std={config.std!r}: expected 3 values each, std > 0")
    _check_probabilities(config)


@dataclass(frozen=True)
class PretrainAugConfig:
    """DINO pretraining views (paper App. A). Change a value with ``dataclasses.replace``."""

    # The view geometry a pretraining config sets has its one default there (PretrainConfig).
    size: int = PretrainConfig.image_size  # paper App. A: crops resized to 224x224
    scale: tuple[float, float] = PretrainConfig.global_crop_scale  # paper App. A: crop area fraction
    ratio: tuple[float, float] = DEFAULT_CROP_RATIO  # torchvision/DINO default (paper: none)
    interpolation: str = "bicubic"  # paper App. A
    flip_p: float = 0.5  # paper: "horizontal flipping was performed randomly"; usual 0.5
    color_jitter: tuple[float, float, float, float] = DINO_COLOR_JITTER  # DINO (paper: no values)
    color_jitter_p: float = DINO_COLOR_JITTER_P  # DINO (paper: no value)
    grayscale_p: float = 0.15  # paper App. A
    blur_p: float = 0.3  # paper App. A
    blur_sigma: tuple[float, float] = (0.1, 1.0)  # paper App. A
    # 2*ceil(3*sigma_max)+1: the kernel covers +-3 sigma for the largest sigma.
    blur_kernel_size: int = 7
    equalize_p: float = 0.3  # paper App. A
    solarize_p: float = 0.3  # paper App. A
    solarize_threshold: int = 128  # DINO / PIL default, on 0..255 values
    n_local_crops: int = PretrainConfig.n_local_crops  # paper: two global views only, no multi-crop
    local_size: int = PretrainConfig.local_crop_size  # DINO multi-crop (comparison config only)
    local_scale: tuple[float, float] = PretrainConfig.local_crop_scale  # DINO's (0.05, 0.4)
    mean: tuple[float, float, float] = SEWER_MEAN  # Sewer-ML benchmark normalisation
    std: tuple[float, float, float] = SEWER_STD

    def __post_init__(self) -> None:
        _check_common(self)
        _check_range("scale", self.scale, 0.0, 1.0)
        if self.scale[1] <= 0:
            raise ConfigError(f"scale={self.scale!r}: the largest crop must have a positive area")
        _check_range("ratio", self.ratio, 1e-6)
        _check_range("blur_sigma", self.blur_sigma, 1e-6)
        if self.blur_kernel_size <= 0 or self.blur_kernel_size % 2 == 0:
            raise ConfigError(f"blur_kernel_size={self.blur_kernel_size!r}: expected a positive odd integer")
        if not 0 <= self.solarize_threshold <= 255:
            raise ConfigError(f"solarize_threshold={self.solarize_threshold!r}: expected 0..255")
        if self.n_local_crops < 0 or self.local_size <= 0:
            raise ConfigError(
                f"n_local_crops={self.n_local_crops!r}, local_size={self.local_size!r}: expected >= 0 and > 0"
            )
        _check_range("local_scale", self.local_scale, 0.0, 1.0)


@dataclass(frozen=True)
class FinetuneAugConfig:
    """Fine-tuning augmentations (paper App. A). Change a value with ``dataclasses.replace``."""

    size: int = PretrainConfig.image_size  # full-image resize to 224x224, no crop (paper App. A)
    interpolation: str = "bicubic"  # as for pretraining (paper: bicubic resizes)
    color_jitter: tuple[float, float, float, float] = DINO_COLOR_JITTER  # "consistent with pretraining"
    color_jitter_p: float = DINO_COLOR_JITTER_P  # DINO (paper: no value)
    flip_p: float = 0.5  # paper: random horizontal flip; usual 0.5
    equalize_p: float = 0.3  # paper: no value; the pretraining probability of equalize
    autocontrast_p: float = 0.3  # paper: no value; same as equalize
    rotation_degrees: float = 5.0  # paper App. A: rotation limit of 5 degrees
    affine_interpolation: str = "bilinear"  # paper: none; bilinear avoids nearest's jagged edges
    erase_p: float = 0.5  # torchvision RandomErasing default (paper: no value)
    erase_scale: tuple[float, float] = (0.01, 0.05)  # paper App. A
    erase_ratio: tuple[float, float] = (0.1, 1.0)  # paper App. A
    erase_value: float = 0.0  # on the normalised tensor: 0 is the dataset mean colour
    mean: tuple[float, float, float] = SEWER_MEAN
    std: tuple[float, float, float] = SEWER_STD

    def __post_init__(self) -> None:
        _check_common(self)
        if not 0 <= self.rotation_degrees <= 180:
            raise ConfigError(f"rotation_degrees={self.rotation_degrees!r}: expected 0..180")
        if self.affine_interpolation not in ("bilinear", "nearest"):
            raise ConfigError(f"affine_interpolation={self.affine_interpolation!r}: expected bilinear or nearest")
        _check_range("erase_scale", self.erase_scale, 0.0, 1.0)
        _check_range("erase_ratio", self.erase_ratio, 1e-6)


# DINO's views by name (PretrainConfig.augmentation). "crops": the crops and flips alone, no
# colour, blur, solarize or equalize: on small synthetic frames the paper's colour invariances
# also discard the colour cues that tell several defect classes apart (see the README's
# label-efficiency section for what each gave).
PRETRAIN_AUGMENTATIONS: dict[str, PretrainAugConfig] = {
    "paper": PretrainAugConfig(),
    "crops": PretrainAugConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, equalize_p=0.0, solarize_p=0.0),
}


def pretrain_augmentation(name: str) -> PretrainAugConfig:
    if name not in PRETRAIN_AUGMENTATIONS:
        raise ConfigError(f"augmentation={name!r}: expected one of {', '.join(PRETRAIN_AUGMENTATIONS)}")
    return PRETRAIN_AUGMENTATIONS[name]


# Fine-tuning augmentation presets (the recipes' `augmentation` key). "flip": horizontal flips
# only -- on the smoke budgets (a few thousand 64-px frames, minutes of CPU) the paper's full set
# slowed learning (val mAP 9.6 vs 13.9 after 3 epochs of 2,765 frames): it regularises runs that
# are long enough to overfit, which these are not.
FINETUNE_AUGMENTATIONS: dict[str, FinetuneAugConfig] = {
    "paper": FinetuneAugConfig(),
    "flip": FinetuneAugConfig(color_jitter_p=0.0, equalize_p=0.0, autocontrast_p=0.0, rotation_degrees=0.0,
                              erase_p=0.0),
}


def finetune_augmentation(name: str) -> FinetuneAugConfig:
    if name not in FINETUNE_AUGMENTATIONS:
        raise ConfigError(f"augmentation={name!r}: expected one of {', '.join(FINETUNE_AUGMENTATIONS)}")
    return FINETUNE_AUGMENTATIONS[name]


def blur_kernel_size_for(sigma_max: float) -> int:
    """Odd Gaussian kernel size that covers +-3 sigma (how ``blur_kernel_size`` was chosen)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def spec_with(config: Any, **values: Any) -> Any:
    """The spec an augmentation is built from: ``config`` with the fields given as keywords (and
    not None) put in, checked again. The one constructor of both implementations, so the CPU
    transform and the batched module read the same values from the same arguments."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{type(config).__name__} has no field {', '.join(map(repr, unknown))}; "
                          f"its fields: {', '.join(sorted(known))}")
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if v is not None}
    return replace(config, **given) if given else config
