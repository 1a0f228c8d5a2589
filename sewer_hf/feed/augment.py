"""Image augmentations of the paper (Appendix A), as CPU reference transforms on PIL images,
drawn per image (in the loader workers with ``feed: per_image``), and the evaluation transform.

The values are the spec's (``sewer_hf.feed.spec``); ``sewer_hf.feed.batched`` draws the same
spec batched.

All photometric operations run on uint8 PIL images (as torchvision does for equalize and
solarize, whose meaning is defined on 0..255 values); conversion to float and normalisation
come last, and random erasing acts on the normalised tensor (where 0 is the dataset mean).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from sewer_hf.config import RunConfig
from sewer_hf.data import decode_rgb
from sewer_hf.data.labels import SEWER_MEAN, SEWER_STD
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.spec import INTERPOLATIONS, FinetuneAugConfig, PretrainAugConfig, spec_with


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

        return decode_rgb(image, strict=True)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise DataError(f"image array of dtype {image.dtype} and shape {image.shape}: expected uint8 HxW or HxWx{{1,3,4}}")

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

    The spec is ``config`` (default: ``PretrainAugConfig()``, the paper's values) with any of its
    fields given as keywords put in (``spec_with``, as ``GPUPretrainAugment`` builds it). Local
    views (multi-crop, for the comparison config only; the paper uses none) share the global
    views' photometric pipeline at ``local_size`` and ``local_scale``.
    """

    n_global_views = 2

    def __init__(self, config: PretrainAugConfig | None = None, **spec_values: Any) -> None:
        self.config = spec_with(config or PretrainAugConfig(), **spec_values)
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


def finetune_transform(size: int | None = None, *, config: FinetuneAugConfig | None = None,
                       **spec_values: Any) -> Callable:
    """PIL RGB image -> float (3,size,size) tensor with the paper's fine-tuning augmentations:
    ``config`` (default ``FinetuneAugConfig()``) with ``size`` and any other field put in."""
    from torchvision.transforms import v2

    cfg = spec_with(config or FinetuneAugConfig(), size=size, **spec_values)
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
    size: int = RunConfig.image_size,
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
