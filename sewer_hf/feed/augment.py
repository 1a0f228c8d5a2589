"""Image augmentations of the paper (Appendix A), as CPU reference transforms on PIL images.

The two frozen config dataclasses below are the single place that holds the paper's values;
``sewer_hf.feed.batched`` reads the same dataclasses for its batched GPU version. Where the paper
names an operation without a number, the value comes from the DINO code (Caron et al. 2021) or
from torchvision's own default, and the comment says which.

All photometric operations run on uint8 PIL images (as torchvision does for equalize and
solarize, whose meaning is defined on 0..255 values); conversion to float and normalisation
come last, and random erasing acts on the normalised tensor (where 0 is the dataset mean).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

from sewer_hf.errors import ConfigError, DataError
from sewer_hf.data.labels import SEWER_MEAN, SEWER_STD

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

    size: int = 224  # paper App. A: crops resized to 224x224
    scale: tuple[float, float] = (0.5, 1.0)  # paper App. A: crop area fraction
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
    n_local_crops: int = 0  # paper: two global views only, no multi-crop
    local_size: int = 96  # DINO multi-crop (comparison config only)
    # DINO uses (0.05, 0.4) under global (0.4, 1); the paper's global crops start at 0.5.
    local_scale: tuple[float, float] = (0.05, 0.5)
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

    size: int = 224  # full-image resize to 224x224, no crop (paper App. A)
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


# Fine-tuning augmentation presets (the recipes' `augmentation` key). "flip": horizontal flips
# only -- on the smoke budgets (a few thousand 64-px frames, minutes of CPU) the paper's full set
# slowed learning (val mAP 9.6 vs 13.9 after 3 epochs of 2,765 frames): it regularises runs that
# are long enough to overfit, which these are not.
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


FINETUNE_AUGMENTATIONS: dict[str, FinetuneAugConfig] = {
    "paper": FinetuneAugConfig(),
    "flip": FinetuneAugConfig(color_jitter_p=0.0, equalize_p=0.0, autocontrast_p=0.0, rotation_degrees=0.0,
                              erase_p=0.0),
}


def finetune_augmentation(name: str) -> FinetuneAugConfig:
    if name not in FINETUNE_AUGMENTATIONS:
        raise ConfigError(f"augmentation={name!r}: expected one of {', '.join(FINETUNE_AUGMENTATIONS)}")
    return FINETUNE_AUGMENTATIONS[name]


def with_overrides(config: Any, **values: Any) -> Any:
    """``config`` with the values that are not None replaced (validated again)."""
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if v is not None}
    return replace(config, **given) if given else config


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def to_rgb(image: Any):
    """A 3-channel input for the transforms: PIL in any mode -> RGB PIL; HxW / HxWx3 uint8
    arrays -> RGB PIL; uint8 (3,H,W) or (1,H,W) tensors -> a (3,H,W) torchvision Image."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        from sewer_hf.data import decode_rgb  # 16-bit scaled, alpha on black: as everywhere else

        return decode_rgb(image, strict=True)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise DataError(f"image array of dtype {image.dtype} and shape {image.shape}: expected uint8 HxW or HxWx{{1,3,4}}")
        from sewer_hf.data import decode_rgb

        return decode_rgb(image, strict=True)  # HxWx4: alpha composited on black, as for files
    import torch
    from torchvision import tv_tensors

    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
            raise DataError(
                f"image tensor of dtype {image.dtype} and shape {tuple(image.shape)}: expected uint8 (3,H,W) or (1,H,W)"
            )
        return tv_tensors.Image(image.expand(3, -1, -1) if image.shape[0] == 1 else image)
    raise DataError(f"cannot augment an object of type {type(image).__name__}: expected a PIL image")


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    import torch
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _color_jitter(config: Any):
    from torchvision.transforms import v2

    b, c, s, h = config.color_jitter
    return v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=config.color_jitter_p)


def _pretrain_view(config: PretrainAugConfig, size: int, scale: tuple[float, float]):
    """One view's pipeline: geometric op, photometric ops on uint8, then normalise."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, ratio=config.ratio, interpolation=_interpolation(config.interpolation)),
            v2.RandomHorizontalFlip(p=config.flip_p),
            _color_jitter(config),
            v2.RandomGrayscale(p=config.grayscale_p),
            v2.RandomApply([v2.GaussianBlur(config.blur_kernel_size, sigma=config.blur_sigma)], p=config.blur_p),
            v2.RandomEqualize(p=config.equalize_p),
            v2.RandomSolarize(threshold=config.solarize_threshold, p=config.solarize_p),
            *_to_normalised_tensor(config.mean, config.std),
        ]
    )


class PretrainTransform:
    """PIL RGB image -> list of float (3,size,size) views: 2 global, then ``n_local_crops`` local.

    Arguments left as None take their value from ``config`` (default: ``PretrainAugConfig()``,
    the paper's values). Local views (multi-crop, for the comparison config only; the paper uses
    none) share the global views' photometric pipeline at ``local_size`` and ``local_scale``.
    """

    n_global_views = 2

    def __init__(
        self,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
        n_local_crops: int | None = None,
        local_size: int | None = None,
        local_scale: tuple[float, float] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        config: PretrainAugConfig | None = None,
    ) -> None:
        self.config = with_overrides(
            config or PretrainAugConfig(),
            size=size, scale=scale, n_local_crops=n_local_crops, local_size=local_size,
            local_scale=local_scale, mean=tuple(mean) if mean is not None else None,
            std=tuple(std) if std is not None else None,
        )
        cfg = self.config
        self.global_view = _pretrain_view(cfg, cfg.size, cfg.scale)
        self.local_view = _pretrain_view(cfg, cfg.local_size, cfg.local_scale) if cfg.n_local_crops else None

    def __call__(self, image: Any) -> list:
        image = to_rgb(image)
        views = [self.global_view(image) for _ in range(self.n_global_views)]
        views += [self.local_view(image) for _ in range(self.config.n_local_crops)]
        return views

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def finetune_transform(
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    config: FinetuneAugConfig | None = None,
) -> Callable:
    """PIL RGB image -> float (3,size,size) tensor with the paper's fine-tuning augmentations."""
    from torchvision.transforms import v2

    cfg = with_overrides(
        config or FinetuneAugConfig(),
        size=size, mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
    )
    pipeline = v2.Compose(
        [
            v2.Resize((cfg.size, cfg.size), interpolation=_interpolation(cfg.interpolation), antialias=True),
            _color_jitter(cfg),
            v2.RandomHorizontalFlip(p=cfg.flip_p),
            v2.RandomEqualize(p=cfg.equalize_p),
            v2.RandomAutocontrast(p=cfg.autocontrast_p),
            v2.RandomAffine(degrees=cfg.rotation_degrees, interpolation=_interpolation(cfg.affine_interpolation)),
            *_to_normalised_tensor(cfg.mean, cfg.std),
            v2.RandomErasing(p=cfg.erase_p, scale=cfg.erase_scale, ratio=cfg.erase_ratio, value=cfg.erase_value),
        ]
    )
    return v2.Compose([to_rgb, pipeline])


def eval_transform(
    size: int = 224,
    mean: Sequence[float] = SEWER_MEAN,
    std: Sequence[float] = SEWER_STD,
    interpolation: str = "bicubic",
) -> Callable:
    """Validation / test: plain resize to (size, size) (no aspect keeping) and normalise."""
    from torchvision.transforms import v2

    if int(size) <= 0:
        raise ConfigError(f"size={size!r}: expected a positive number of pixels")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation={interpolation!r}: expected one of {INTERPOLATIONS}")
    return v2.Compose(
        [
            to_rgb,
            v2.Resize((size, size), interpolation=_interpolation(interpolation), antialias=True),
            *_to_normalised_tensor(mean, std),
        ]
    )


def blur_kernel_size_for(sigma_max: float) -> int:
    """Odd Gaussian kernel size that covers +-3 sigma (how ``blur_kernel_size`` was chosen)."""
    return 2 * math.ceil(3 * sigma_max) + 1


class DecodeForGPU:
    """The CPU side of GPU augmentation: a decoded image, resized once (plain bicubic) to
    ``size`` x ``size``, as a (3, size, size) uint8 tensor; the random ops then run batched on
    the device (``sewer_hf.feed.batched``). Prepared shards are already at this size. For JPEG
    shards, ``sewer_hf.feed.device`` can skip this step: workers hand over the encoded bytes and
    the batch is decoded on the GPU."""

    def __init__(self, size: int = 256) -> None:
        self.size = size

    def __call__(self, image: Any):
        import numpy as np
        import torch
        from PIL import Image

        image = to_rgb(image)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        # np.array: one writable copy of the pixels; the collate's stack then writes (3, H, W).
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
