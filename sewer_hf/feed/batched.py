"""The paper's augmentations (App. A) on whole batches of uint8 images on the training device.

The CPU reference (``sewer_hf.feed.augment``, PIL per image) feeds only ~10-25 img/s per core, far
below what one GPU trains at (benchmarks/README.md). Here every sample of a (B,3,H,W) uint8 batch gets its
own random parameters, drawn as tensors, and each operation is one vectorised torch call over
the batch: crops, flips and rotations are one ``affine_grid``/``grid_sample`` each, per-sample
blur is a grouped convolution, equalize/autocontrast use per-image histograms / extrema. There
is no per-sample Python loop. An op that acts on a random part of the batch (blur, equalize,
autocontrast, grayscale, solarize, the hue step of the jitter) runs, eager, only on those
samples: they are gathered, at the price of one host-device sync per op. Under torch.compile
(``compile_augment``) shapes stay static and there is no sync: the op runs on the whole batch
and ``torch.where`` keeps it where it applies; crops, blur and equalize stay eager there.

Each module draws all its random parameters first (``draw``: small tensors, from the
generator) and then does the pixel work (``apply``: no randomness), so the pixel work can be
compiled as whole graphs and the parameters of a batch can be inspected.

Both modules read the same config dataclasses as the CPU transforms (one source of the paper's
values). Pass a ``torch.Generator`` on the batch's device for reproducible draws.

Differences from the CPU reference, by design: bicubic sampling uses torch's kernel (a=-0.75,
PIL's is a=-0.5), and large inputs are first shrunk with antialiasing to the resolution the
smallest crop needs (grid_sample itself does not antialias); photometric ops work on floats,
with values rounded to the 256 uint8 levels before equalize/solarize, whose meaning needs them.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.spec import FinetuneAugConfig, PretrainAugConfig, spec_with

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision
HUE_PROFILES = ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0))  # per channel: centre, slope, offset
CROP_TRIES = 10  # torchvision's RandomResizedCrop / RandomErasing redraw up to 10 times


# ----------------------------------------------------------------------------- random draws
def _uniform(shape, low: float, high: float, generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _coin(n: int, p: float, generator, device) -> Tensor:
    """Per-sample Bernoulli(p) as a bool tensor (always draws, so streams stay aligned)."""
    return torch.rand(n, generator=generator, device=device) < p


def _first_valid(values: Tensor, ok: Tensor) -> Tensor:
    """values[:, first try where ok] per row (row 0's value when no try is valid)."""
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    return values.gather(1, first).squeeze(1)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` RandomResizedCrop boxes (top, left, h, w) in pixels, drawn as torchvision does:
    area fraction ~ U(scale), log aspect ~ U(log ratio), up to 10 tries, else a centre crop."""
    area = height * width
    target = area * _uniform((n, CROP_TRIES), scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform((n, CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), generator, device))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = ok.any(dim=1)
    w, h = _first_valid(w, ok), _first_valid(h, ok)

    # torchvision's fallback: the largest centred crop with an allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))

    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
    top = torch.where(found, top, (height - h).div(2, rounding_mode="floor"))
    left = torch.where(found, left, (width - w).div(2, rounding_mode="floor"))
    return top, left, h, w


def sample_erase_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``n`` RandomErasing boxes (top, left, h, w, found), drawn as torchvision does (note: its
    aspect ratio is h/w, and a box must be strictly smaller than the image)."""
    area = height * width
    target = area * _uniform((n, CROP_TRIES), scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform((n, CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), generator, device))
    h = torch.sqrt(target * aspect).round()
    w = torch.sqrt(target / aspect).round()
    ok = (h < height) & (w < width)
    found = ok.any(dim=1)
    h, w = _first_valid(h, ok), _first_valid(w, ok)
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1).clamp_min(1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1).clamp_min(1))
    return top, left, h, w, found


# ----------------------------------------------------------------------------- sample selection
def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _take(values: Tensor, index: Tensor | None) -> Tensor:
    """Per-sample parameters of the selected samples (all of them for index None)."""
    return values if index is None else values.index_select(0, index)


def _groups(labels: Tensor, n_groups: int) -> list[Tensor]:
    """Indices of the samples with label 0, 1, ..., n_groups - 1 (one host sync for all)."""
    counts = torch.bincount(labels, minlength=n_groups + 1).tolist()
    order = torch.argsort(labels, stable=True)
    return list(order.split(counts))[:n_groups]


def _on_samples(x: Tensor, mask: Tensor, fn, index: Tensor | None = None, inplace: bool = False) -> Tensor:
    """``fn(part, index)`` on the samples in ``mask`` (``index``: their positions, which ``fn``
    uses to pick their parameters with ``_take``), x unchanged elsewhere; ``fn`` must treat
    every sample on its own.

    Eager, the op runs only on those samples (gathered; finding them is a host sync unless the
    caller passes ``index``). Under torch.compile, shapes stay static: ``fn`` runs on every
    sample and ``torch.where`` keeps the selected ones (inductor fuses both into few kernels)."""
    if _compiling():
        return torch.where(_per_sample(mask), fn(x, None), x)
    if index is None:
        index = mask.nonzero().squeeze(1)
    count = index.numel()
    if count == 0:
        return x
    if count == x.shape[0]:
        return fn(x, None)
    part = fn(x.index_select(0, index), index)
    return x.index_copy_(0, index, part) if inplace else x.index_copy(0, index, part)


# ----------------------------------------------------------------------------- geometry
@torch.compiler.disable
def _grid_sample(x: Tensor, grid: Tensor, mode: str, padding_mode: str) -> Tensor:
    """The native grid_sample kernel, also under torch.compile: inductor's decomposition of the
    bicubic mode ran 12x slower (CPU, torch 2.14)."""
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, flip: Tensor, size: int, mode="bicubic") -> Tensor:
    """Per-sample crop (pixel boxes) + optional horizontal flip + resize to (size, size), in one
    ``grid_sample``. With align_corners=False, output pixel centres land on the crop's grid."""
    b, c, height, width = x.shape
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return _grid_sample(x, grid, mode=mode, padding_mode="border").clamp_(0.0, 1.0)


def rotate(x: Tensor, degrees: Tensor, mode: str = "bilinear", fill: float = 0.0) -> Tensor:
    """Per-sample rotation about the centre, counter-clockwise for positive angles (as
    torchvision's ``rotate``); outside pixels become ``fill``."""
    b, c, height, width = x.shape
    rad = torch.deg2rad(degrees.to(x.dtype))
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    # Output -> input map in pixels is R(+angle); normalised coords scale x by W/2 and y by H/2.
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * height / width
    theta[:, 1, 0] = sin * width / height
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    out = _grid_sample(x - fill, grid, mode=mode, padding_mode="zeros")
    return out.add_(fill)


def horizontal_flip(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


# ----------------------------------------------------------------------------- colour
def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale_of(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma. Accumulated in place (3 kernels, no temporaries): the photometric ops
    are bound by memory traffic on a GPU, not by arithmetic."""
    r, g, b = x.unbind(dim=1)
    grey = torch.mul(r, GRAY_WEIGHTS[0])
    return grey.add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale_of(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale_of(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` (fraction of the circle, in [-0.5, 0.5]) per sample.

    Same result as an RGB -> HSV -> RGB round trip (PIL / torchvision), in closed form: a hue
    rotation keeps each pixel's max (V) and min channel, and each output channel is
    min + (max - min) * profile_c(hue), with the piecewise-linear hue profiles of HSV."""
    r, g, b = x.unbind(dim=1)
    # amin and amax, not aminmax: on a CPU aminmax over the channels took 118 us for 7 frames
    # of 64 px, amin + amax 15
    minc, maxc = x.amin(dim=1), x.amax(dim=1)
    spread = maxc - minc
    inverse = spread.clamp_min(torch.finfo(x.dtype).tiny).reciprocal_()  # grey pixels: numerator 0, any hue
    # Hue in sixths of the circle: (g - b) / spread in the red sector, (b - r) / spread + 2 in
    # the green one, (r - g) / spread + 4 in the blue one; the shift is added before one wrap.
    red_max, green_max = maxc == r, maxc == g
    numerator = torch.where(red_max, g - b, torch.where(green_max, b - r, r - g))
    sector = torch.where(red_max, 0.0, torch.where(green_max, 2.0, 4.0)).to(x.dtype) + 6.0 * shift.to(x.dtype).view(-1, 1, 1)
    hue6 = torch.addcmul(sector, numerator, inverse).remainder_(6.0)
    # the HSV profiles, all three channels in one pass: red |h - 3| - 1, green 2 - |h - 2|,
    # blue 2 - |h - 4|, each clamped to [0, 1]
    centre, slope, offset = x.new_tensor(HUE_PROFILES).view(3, 1, 3, 1, 1).unbind(0)  # one small copy
    # multiply, then add: an addcmul with two per-channel operands misses ATen's vectorised CPU
    # loop (which takes one operand constant along the row), ~5x slower at 64 px
    profile = (hue6.unsqueeze(1) - centre).abs_().mul_(slope).add_(offset).clamp_(0.0, 1.0)
    return profile.mul_(spread.unsqueeze(1)).add_(minc.unsqueeze(1))


def _hue_positions(order: Tensor, apply: Tensor) -> Tensor:
    """Per sample, the position (0..3) of the hue op in its random order; 4 when jitter is off."""
    at = (order == 3).to(torch.uint8).argmax(dim=1)
    return torch.where(apply, at, torch.full_like(at, 4))


def _blend_step(x: Tensor, op: Tensor, factors: Sequence[Tensor], need_grey: bool) -> Tensor:
    """One position of the jitter for brightness (op 0), contrast (1) and saturation (2) at
    once: each is ``f * x + (1 - f) * other`` with other = 0, the mean grey level or the grey
    image, so a per-sample choice of ``other`` makes it one pass. op 3 (hue) gets factor 1,
    which leaves x unchanged exactly, as does a zero strength (its factor is drawn as 1)."""
    # a where-chain, not a gather: compiled for CUDA (torch 2.11), indexing by the random
    # order tripped inductor's device-side bounds assert
    brightness, contrast, saturation = factors
    chosen = torch.where(op == 2, saturation, torch.ones_like(saturation))
    chosen = torch.where(op == 1, contrast, chosen)
    f = torch.where(op == 0, brightness, chosen)
    if not need_grey:  # brightness only: other is 0
        return (x * _per_sample(f)).clamp_(0.0, 1.0)
    grey = grayscale_of(x)
    keep = 1.0 - f
    # (1 - f) * other, on one channel: (1 - f) * grey for saturation, (1 - f) * mean grey for
    # contrast, 0 for the rest; then f * x is added on in the same kernel (addcmul)
    grey_weight = _per_sample(torch.where(op == 2, keep, torch.zeros_like(keep)))
    offset = _per_sample(torch.where(op == 1, keep, torch.zeros_like(keep))) * grey.mean(dim=(1, 2, 3), keepdim=True)
    other = grey.mul_(grey_weight).add_(offset)  # not addcmul: see adjust_hue
    return torch.addcmul(other, _per_sample(f), x).clamp_(0.0, 1.0)


def draw_color_jitter(n: int, strengths: Sequence[float], p: float, generator=None, device=None) -> dict[str, Tensor]:
    """The random parameters of ``color_jitter`` for ``n`` samples: whether it applies, the
    brightness/contrast/saturation factors (1 where it does not), the hue shift (0 there) and
    each sample's random order of the four adjustments."""
    bright, contrast, saturation, hue = strengths
    apply = _coin(n, p, generator, device)

    def factor(strength: float) -> Tensor:
        drawn = _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator, device)
        return torch.where(apply, drawn, torch.ones_like(drawn))

    factors = torch.stack((factor(bright), factor(contrast), factor(saturation)))
    drawn_hue = _uniform(n, -hue, hue, generator, device)
    shift = torch.where(apply, drawn_hue, torch.zeros_like(drawn_hue))
    order = torch.rand(n, 4, generator=generator, device=device).argsort(dim=1)
    return {"apply": apply, "factors": factors, "shift": shift, "order": order}


def apply_color_jitter(x: Tensor, params: dict[str, Tensor], strengths: Sequence[float]) -> Tensor:
    """``color_jitter`` with drawn parameters (``draw_color_jitter``); no randomness here.

    Each sample gets each adjustment once: per position, one blend pass serves the three
    blend ops (``_blend_step``), and hue runs only on the samples whose hue sits at that
    position (eager: those samples are gathered, one host sync for all four positions)."""
    bright, contrast, saturation, hue = strengths
    factors = tuple(params["factors"].to(x.dtype).unbind(0))
    shift, order = params["shift"], params["order"]
    any_blend, need_grey = max(bright, contrast, saturation) > 0, max(contrast, saturation) > 0
    hue_at = _hue_positions(order, params["apply"]) if hue > 0 else None
    groups = _groups(hue_at, 4) if hue_at is not None and not _compiling() else [None] * 4

    def rotate_hue(part: Tensor, index: Tensor | None) -> Tensor:
        return adjust_hue(part, _take(shift, index))

    for position in range(4):
        if any_blend:  # a fresh tensor: the hue step below may then write into it
            x = _blend_step(x, order[:, position], factors, need_grey)
        if hue_at is not None:
            x = _on_samples(x, hue_at == position, rotate_hue, index=groups[position], inplace=any_blend)
    return x


def color_jitter(x: Tensor, strengths: Sequence[float], p: float, generator=None) -> Tensor:
    """torchvision's ColorJitter inside RandomApply(p), with per-sample factors and a
    per-sample random order of the four adjustments."""
    return apply_color_jitter(x, draw_color_jitter(x.shape[0], strengths, p, generator, x.device), strengths)


def random_grayscale(x: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
    """Grey (3 equal channels) for the samples in ``mask``; ``inplace``: write them into x."""
    return _on_samples(x, mask, lambda part, index: grayscale_of(part).expand_as(part).contiguous(), inplace=inplace)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B, K) normalised 1-d Gaussian kernels, one per sample (torchvision's formula)."""
    offsets = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2
    logits = -(offsets.pow(2)) / (2.0 * sigma.view(-1, 1).pow(2))
    return torch.softmax(logits, dim=1)


def _blur_all(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    b, c, height, width = x.shape
    kernels = gaussian_kernels(sigma.float(), kernel_size).to(x.dtype)
    weight = kernels.repeat_interleave(c, dim=0)  # (B*C, K): one filter per image channel
    pad = kernel_size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, height + 2 * pad, width + 2 * pad)
    out = F.conv2d(padded, weight.view(b * c, 1, kernel_size, 1), groups=b * c)
    out = F.conv2d(out, weight.view(b * c, 1, 1, kernel_size), groups=b * c)
    # clamped: TF32 convolutions (GPUs) can land a hair outside [0, 1]
    return out.view(b, c, height, width).clamp_(0.0, 1.0)


@torch.compiler.disable  # eager under torch.compile too: only the selected samples are convolved
def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor | None = None) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (reflect padding, like torchvision), as
    two grouped convolutions. Samples outside ``mask`` stay unchanged (eager: not convolved)."""
    if mask is None:
        return _blur_all(x, sigma, kernel_size)
    return _on_samples(x, mask, lambda part, index: _blur_all(part, _take(sigma, index), kernel_size))


def quantize(x: Tensor) -> Tensor:
    """Round x in [0, 1] to the 256 uint8 levels (what a uint8 pipeline holds between
    operations)."""
    return x.mul(255.0).round_().div_(255.0)


def _equalize_all(x: Tensor) -> Tensor:
    from torchvision.transforms.v2.functional import equalize as tv_equalize

    # clamped: compiled, the uint8 cast can fuse into the histogram index without wrapping
    levels = x.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    # torchvision's kernel already works per (image, channel): histograms via scatter_add.
    return tv_equalize(levels).to(x.dtype).div_(255.0)


@torch.compiler.disable  # eager under torch.compile too: only the selected samples get histograms
def equalize(x: Tensor, mask: Tensor) -> Tensor:
    """PIL/torchvision histogram equalisation per image and channel (x holds uint8 levels)."""
    return _on_samples(x, mask, lambda part, index: _equalize_all(part))


def _autocontrast_all(x: Tensor) -> Tensor:
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low).clamp_min(torch.finfo(x.dtype).tiny))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) * scale).clamp_(0.0, 1.0)


def autocontrast(x: Tensor, mask: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1] (torchvision's autocontrast)."""
    return _on_samples(x, mask, lambda part, index: _autocontrast_all(part))


def solarize(x: Tensor, mask: Tensor, threshold: int = 128, inplace: bool = False) -> Tensor:
    """Invert values >= threshold (on the 0..255 scale); x holds uint8 levels, so the
    comparison sits half a level below the threshold to be immune to float rounding."""
    level = (threshold - 0.5) / 255.0
    return _on_samples(x, mask, lambda part, index: torch.where(part >= level, 1.0 - part, part), inplace=inplace)


def random_erase(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, mask: Tensor, value: float = 0.0) -> Tensor:
    rows = torch.arange(x.shape[-2], device=x.device, dtype=top.dtype).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device, dtype=top.dtype).view(1, 1, -1)
    inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
    inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))
    inside = inside & mask.view(-1, 1, 1)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, value), x)


# ----------------------------------------------------------------------------- modules
def compile_augment(module: nn.Module) -> nn.Module:
    """A copy of a batched augmentation module whose pixel work (``apply``) is
    ``torch.compile``d: inductor fuses the colour ops into few kernels (every op runs on the
    whole batch, ``torch.where`` keeps it where it applies). The random draws stay eager, ahead
    of it: a ``torch.Generator`` argument would break the graph at every draw. Static shapes:
    a training run's batch never changes shape, and a dynamic-shape trace of this module is
    deep enough to hit Python's recursion limit."""
    # The recipes call this from the feed thread while the main thread runs (and may recompile)
    # the compiled model. torch 2.11 keeps its "FX tracing now" flag for the whole process, so
    # a compiled call in one thread during a trace in the other raised "Detected that you are
    # using FX to symbolically trace a dynamo-optimized function" (reproduced with the 2.11
    # wheel; 2.14 keeps the flag, and this config, per thread). Without the check, that call
    # runs uncompiled once.
    torch._dynamo.config.error_on_nested_fx_trace = False
    compiled = copy.copy(module)
    compiled._apply_fn = torch.compile(module.apply, dynamic=False)
    return compiled


def _check_batch(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"augment batch is {got}: expected a uint8 tensor (B, 3, H, W)")


def _as_float_batch(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    _check_batch(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.to(dtype).div_(255.0)


PHOTOMETRIC_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def resolve_photometric_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The dtype of the colour ops: ``auto`` is float16 on CUDA, where they are bound by memory
    traffic (half the bytes; about 0.1 of a uint8 level of rounding, far below the reference's
    own rounding to uint8 after every op), and float32 elsewhere (CPU half arithmetic is slow).
    Crops and rotations always sample in float32: their grid coordinates need it."""
    if choice == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if choice not in PHOTOMETRIC_DTYPES:
        raise ConfigError(f"photometric dtype {choice!r}: expected auto, float32 or float16")
    return PHOTOMETRIC_DTYPES[choice]


def _check_generator(generator, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ConfigError(
            f"generator is on {generator.device}, the batch on {device}: create it with torch.Generator(device='{device.type}')"
        )


class _Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # (x - mean) / std as x * (1 / std) + (-mean / std); a multiply and an in-place add, not
        # addcmul: with two per-channel operands addcmul misses ATen's vectorised CPU loop
        scale, shift = 1.0 / self.std.to(x.device), -self.mean.to(x.device) / self.std.to(x.device)
        return x.mul(scale).add_(shift)


class GPUPretrainAugment(nn.Module):
    """uint8 (B,3,H,W) batch -> list of float (B,3,size,size) views: 2 global, then
    ``n_local_crops`` local, each sample with its own random parameters (paper App. A).

    The spec is ``config`` (default ``PretrainAugConfig()``) with any of its fields given as
    keywords put in (``spec_with``, as ``PretrainTransform`` builds it).
    ``antialias_prescale``: shrink a large batch once (antialiased) so the smallest crop maps
    about 1:1 to the output; crops are drawn on the shrunk image (same fractions)."""

    n_global_views = 2

    def __init__(self, config: PretrainAugConfig | None = None, *, antialias_prescale: bool = True,
                 photometric_dtype: str = "auto", **spec_values: Any) -> None:
        super().__init__()
        self.config = spec_with(config or PretrainAugConfig(), **spec_values)
        self.antialias_prescale = antialias_prescale
        resolve_photometric_dtype(photometric_dtype, torch.device("cpu"))  # a bad choice fails here, not mid-run
        self.photometric_dtype = photometric_dtype
        self.normalize = _Normalize(self.config.mean, self.config.std)
        self._apply_fn = self.apply  # compile_augment swaps in a compiled one

    def _needed_short_side(self) -> float:
        cfg = self.config
        kinds = [(cfg.size, cfg.scale[0])] + ([(cfg.local_size, cfg.local_scale[0])] if cfg.n_local_crops else [])
        return max(size / math.sqrt(max(low, 1e-6)) for size, low in kinds)

    def _prescaled_size(self, height: int, width: int) -> tuple[int, int]:
        needed = self._needed_short_side()
        if not self.antialias_prescale or min(height, width) <= needed:
            return height, width
        factor = needed / min(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))

    def _prescale(self, x: Tensor) -> Tensor:
        target = self._prescaled_size(*x.shape[-2:])
        if target == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False).clamp_(0.0, 1.0)

    def _views(self) -> list[tuple[int, tuple[float, float]]]:
        cfg = self.config
        return [(cfg.size, cfg.scale)] * self.n_global_views + [(cfg.local_size, cfg.local_scale)] * cfg.n_local_crops

    def draw_view(self, n: int, height: int, width: int, scale: Sequence[float], generator=None, device=None) -> dict:
        """The random parameters of one view of ``n`` samples cropped from (height, width)."""
        cfg = self.config
        top, left, h, w = sample_crop_boxes(n, height, width, scale, cfg.ratio, generator, device)
        return {
            "top": top, "left": left, "h": h, "w": w,
            "flip": _coin(n, cfg.flip_p, generator, device),
            "jitter": draw_color_jitter(n, cfg.color_jitter, cfg.color_jitter_p, generator, device),
            "grayscale": _coin(n, cfg.grayscale_p, generator, device),
            "sigma": _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, device),
            "blur": _coin(n, cfg.blur_p, generator, device),
            "equalize": _coin(n, cfg.equalize_p, generator, device),
            "solarize": _coin(n, cfg.solarize_p, generator, device),
        }

    def apply_view(self, x: Tensor, params: dict, size: int) -> Tensor:
        """One augmented view of a float [0, 1] batch (already prescaled), with drawn parameters."""
        cfg = self.config
        x = resized_crop(x, params["top"], params["left"], params["h"], params["w"], params["flip"], size,
                         mode=cfg.interpolation)
        x = x.to(resolve_photometric_dtype(self.photometric_dtype, x.device))
        x = apply_color_jitter(x, params["jitter"], cfg.color_jitter)
        x = random_grayscale(x, params["grayscale"], inplace=True)  # x is our own from here on
        x = gaussian_blur(x, params["sigma"], cfg.blur_kernel_size, mask=params["blur"])
        x = quantize(x)
        x = equalize(x, params["equalize"])
        x = solarize(x, params["solarize"], cfg.solarize_threshold, inplace=True)
        return self.normalize(x)

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> list[dict]:
        """The random parameters of every view of a uint8 (B,3,H,W) batch, in the draw order of
        the generator stream."""
        _check_batch(images)
        _check_generator(generator, images.device)
        height, width = self._prescaled_size(*images.shape[-2:])
        n, device = images.shape[0], images.device
        return [self.draw_view(n, height, width, scale, generator, device) for _, scale in self._views()]

    def apply(self, images: Tensor, params: list[dict]) -> list[Tensor]:
        """The views of a uint8 batch for drawn parameters (``draw``): the pixel work, no
        randomness (what ``compile_augment`` compiles)."""
        x = self._prescale(_as_float_batch(images))
        return [self.apply_view(x, view, size) for view, (size, _) in zip(params, self._views())]

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        return self._apply_fn(images, self.draw(images, generator))


class GPUFinetuneAugment(nn.Module):
    """uint8 (B,3,H,W) batch -> float (B,3,size,size): the paper's fine-tuning augmentations
    (full-image resize, jitter, flip, equalize, autocontrast, rotation, normalise, erasing)."""

    def __init__(self, size: int | None = None, *, config: FinetuneAugConfig | None = None,
                 photometric_dtype: str = "auto", **spec_values: Any) -> None:
        super().__init__()
        self.config = spec_with(config or FinetuneAugConfig(), size=size, **spec_values)
        resolve_photometric_dtype(photometric_dtype, torch.device("cpu"))  # a bad choice fails here, not mid-run
        self.photometric_dtype = photometric_dtype
        self.normalize = _Normalize(self.config.mean, self.config.std)
        self._apply_fn = self.apply  # compile_augment swaps in a compiled one

    def draw(self, images: Tensor, generator: torch.Generator | None = None) -> dict:
        """The random parameters of a uint8 (B,3,H,W) batch, in the draw order of the generator
        stream."""
        _check_batch(images)
        _check_generator(generator, images.device)
        cfg = self.config
        n, device = images.shape[0], images.device
        params = {
            "jitter": draw_color_jitter(n, cfg.color_jitter, cfg.color_jitter_p, generator, device),
            "flip": _coin(n, cfg.flip_p, generator, device),
            "equalize": _coin(n, cfg.equalize_p, generator, device),
            "autocontrast": _coin(n, cfg.autocontrast_p, generator, device),
            "angle": _uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, generator, device),
        }
        top, left, h, w, found = sample_erase_boxes(n, cfg.size, cfg.size, cfg.erase_scale, cfg.erase_ratio, generator, device)
        params.update(erase_top=top, erase_left=left, erase_h=h, erase_w=w)
        params["erase"] = _coin(n, cfg.erase_p, generator, device) & found
        return params

    def apply(self, images: Tensor, params: dict) -> Tensor:
        """The augmented batch for drawn parameters (``draw``): the pixel work, no randomness."""
        cfg = self.config
        dtype = resolve_photometric_dtype(self.photometric_dtype, images.device)
        resize = tuple(images.shape[-2:]) != (cfg.size, cfg.size)
        x = _as_float_batch(images, torch.float32 if resize else dtype)  # resizing samples in float32
        if resize:
            x = F.interpolate(x, size=(cfg.size, cfg.size), mode=cfg.interpolation, antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0).to(dtype)
        # an op whose probability (or range) is 0 in the config is skipped, not applied as identity:
        # the draws stay the same, and the "flip" preset costs a flip and a normalise on a CPU
        if cfg.color_jitter_p > 0:
            x = apply_color_jitter(x, params["jitter"], cfg.color_jitter)
        x = horizontal_flip(x, params["flip"])
        if cfg.color_jitter_p > 0 or resize:
            x = quantize(x)
        if cfg.equalize_p > 0:
            x = equalize(x, params["equalize"])
        if cfg.autocontrast_p > 0:
            x = autocontrast(x, params["autocontrast"])
        x = rotate(x.float(), params["angle"], mode=cfg.affine_interpolation) if cfg.rotation_degrees > 0 else x.float()
        x = self.normalize(x)
        if cfg.erase_p == 0:
            return x
        return random_erase(x, params["erase_top"], params["erase_left"], params["erase_h"], params["erase_w"],
                            params["erase"], cfg.erase_value)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._apply_fn(images, self.draw(images, generator))
