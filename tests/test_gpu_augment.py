"""Batched per-sample augmentations (run here on CPU tensors): each op against torchvision's, and
the whole pipeline against the CPU reference transforms in distribution."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

import sewer_hf.feed.batched as G
from sewer_hf.data.labels import SEWER_MEAN, SEWER_STD
from sewer_hf.errors import DataError
from sewer_hf.feed.augment import FinetuneAugConfig, PretrainAugConfig, PretrainTransform

MEAN = torch.tensor(SEWER_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(SEWER_STD).view(1, 3, 1, 1)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD

# Pretraining config with every random op off: tests switch on the one they measure.
QUIET_PRETRAIN = dataclasses.replace(
    PretrainAugConfig(), flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, equalize_p=0.0, solarize_p=0.0
)
QUIET_FINETUNE = dataclasses.replace(
    FinetuneAugConfig(), color_jitter_p=0.0, flip_p=0.0, equalize_p=0.0, autocontrast_p=0.0, rotation_degrees=0.0, erase_p=0.0
)


# CUDA joins when present (the device machine); the CPU always runs every test.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
on_devices = pytest.mark.parametrize("device", DEVICES)
# The colour ops' dtype: "auto" is float32 on the CPU and float16 on CUDA; float16 also runs here.
in_dtypes = pytest.mark.parametrize("dtype", ["auto", "float16"])


def _gen(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _levels(view: torch.Tensor) -> torch.Tensor:
    """Undo normalisation: 0..255 values."""
    return (view * STD + MEAN) * 255


def _noise(n, height, width, low=0, high=256, seed=0) -> torch.Tensor:
    return torch.randint(low, high, (n, 3, height, width), dtype=torch.uint8, generator=_gen(seed))


def _identity_geometry(config: PretrainAugConfig, size: int) -> PretrainAugConfig:
    """Crop = the whole (square, size x size) image, so only photometric ops act."""
    return dataclasses.replace(config, size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0))


# ----------------------------------------------------------------------------- shapes, API
@on_devices
@in_dtypes
def test_pretrain_views_shapes_dtypes_and_range(device, dtype):
    batch = _noise(4, 40, 48).to(device)
    augment = G.GPUPretrainAugment(size=32, photometric_dtype=dtype).to(device)
    views = [v.cpu() for v in augment(batch, generator=_gen(0, device))]
    assert len(views) == 2
    for view in views:
        assert view.shape == (4, 3, 32, 32) and view.dtype == torch.float32
        assert (view >= LOW - 1e-5).all() and (view <= HIGH + 1e-5).all()
    views = G.GPUPretrainAugment(size=32, n_local_crops=2, local_size=16).to(device)(batch, generator=_gen(0, device))
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2


@on_devices
@in_dtypes
def test_finetune_shape_dtype_and_range(device, dtype):
    augment = G.GPUFinetuneAugment(size=24, photometric_dtype=dtype).to(device)
    out = augment(_noise(5, 30, 36).to(device), generator=_gen(0, device)).cpu()
    assert out.shape == (5, 3, 24, 24) and out.dtype == torch.float32
    assert (out >= LOW - 1e-5).all() and (out <= HIGH + 1e-5).all()


@on_devices
def test_generator_reproducibility_and_per_sample_parameters(device):
    batch = _noise(1, 24, 24).expand(6, -1, -1, -1).contiguous().to(device)  # six copies of one image
    augment = G.GPUPretrainAugment(size=16).to(device)
    a, b = augment(batch, generator=_gen(7, device)), augment(batch, generator=_gen(7, device))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], augment(batch, generator=_gen(8, device))[0])
    assert not torch.equal(a[0], a[1])
    # Same input, different samples -> different parameters -> different outputs.
    flat = a[0].flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i + 1, 6))
    ft = G.GPUFinetuneAugment(size=16).to(device)
    assert torch.equal(ft(batch, generator=_gen(3, device)), ft(batch, generator=_gen(3, device)))


def test_bad_batches_raise_data_error():
    with pytest.raises(DataError, match="uint8"):
        G.GPUPretrainAugment(size=8)(torch.rand(2, 3, 8, 8))
    with pytest.raises(DataError, match="uint8"):
        G.GPUFinetuneAugment(size=8)(torch.zeros(3, 8, 8, dtype=torch.uint8))


# ----------------------------------------------------------------------------- ops vs torchvision
@on_devices
def test_equalize_forced_equals_torchvision(device):
    batch = _noise(4, 32, 32, low=60, high=140, seed=1)
    batch[1] = 77  # a flat image: torchvision leaves it unchanged
    augment = G.GPUPretrainAugment(config=dataclasses.replace(_identity_geometry(QUIET_PRETRAIN, 32), equalize_p=1.0))
    out = _levels(augment.to(device)(batch.to(device), generator=_gen(0, device))[0].cpu()).round().to(torch.uint8)
    expected = torch.stack([TF.equalize(img) for img in batch])
    assert torch.equal(out, expected)


@on_devices
def test_solarize_forced_equals_torchvision(device):
    batch = _noise(3, 32, 32, seed=2)
    augment = G.GPUPretrainAugment(config=dataclasses.replace(_identity_geometry(QUIET_PRETRAIN, 32), solarize_p=1.0))
    out = _levels(augment.to(device)(batch.to(device), generator=_gen(0, device))[1].cpu()).round().to(torch.uint8)
    assert torch.equal(out, TF.solarize(batch, threshold=128))


@on_devices
def test_blur_matches_torchvision_for_the_same_sigma(device):
    x = torch.rand(3, 3, 20, 24, generator=_gen(3))
    sigma = torch.tensor([0.1, 0.5, 1.0])
    out = G.gaussian_blur(x.to(device), sigma.to(device), kernel_size=7).cpu()
    for i in range(3):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2), atol=1e-5, rtol=0)
    skipped = G.gaussian_blur(x.to(device), sigma.to(device), kernel_size=7, mask=torch.tensor([True, False, True], device=device)).cpu()
    assert torch.equal(skipped[1], x[1])


@on_devices
def test_colour_ops_match_torchvision_per_sample(device):
    x = G.quantize(torch.rand(4, 3, 16, 16, generator=_gen(4)))
    x[0, :, :4] = 0.5  # grey pixels: hue undefined
    factors = torch.tensor([0.6, 1.0, 1.3, 0.8])
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.37])
    mask = torch.tensor([True, True, False, True])
    xd, fd, sd, md = x.to(device), factors.to(device), shifts.to(device), mask.to(device)
    for ours, theirs in [
        (G.adjust_brightness(xd, fd).cpu(), TF.adjust_brightness),
        (G.adjust_contrast(xd, fd).cpu(), TF.adjust_contrast),
        (G.adjust_saturation(xd, fd).cpu(), TF.adjust_saturation),
    ]:
        expected = torch.stack([theirs(x[i], float(factors[i])) for i in range(4)])
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    expected = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(4)])
    torch.testing.assert_close(G.adjust_hue(xd, sd).cpu(), expected, atol=1e-5, rtol=0)
    expected = torch.stack([TF.autocontrast(x[i]) if mask[i] else x[i] for i in range(4)])
    torch.testing.assert_close(G.autocontrast(xd, md).cpu(), expected, atol=1e-5, rtol=0)
    expected = torch.stack([TF.rgb_to_grayscale(x[i], 3) if mask[i] else x[i] for i in range(4)])
    torch.testing.assert_close(G.random_grayscale(xd, md).cpu(), expected, atol=1e-5, rtol=0)


@on_devices
def test_rotation_matches_torchvision(device):
    x = torch.rand(3, 3, 20, 28, generator=_gen(5))
    angles = torch.tensor([5.0, -3.0, 0.0])
    out = G.rotate(x.to(device), angles.to(device)).cpu()
    for i in range(3):
        expected = TF.rotate(x[i], float(angles[i]), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- distributions
def _cpu_crop_fractions(n, height, width, seed):
    torch.manual_seed(seed)
    crop = v2.RandomResizedCrop(224, scale=(0.5, 1.0))
    image = Image.new("RGB", (width, height))
    boxes = [crop.make_params([image]) for _ in range(n)]
    return np.array([(b["height"] * b["width"]) / (height * width) for b in boxes]), np.array(
        [b["width"] / b["height"] for b in boxes]
    )


@on_devices
def test_crop_sampler_matches_torchvision_distribution(device):
    height, width, n = 576, 720, 4000
    cfg = PretrainAugConfig()
    boxes = G.sample_crop_boxes(n, height, width, cfg.scale, cfg.ratio, generator=_gen(6, device), device=device)
    top, left, h, w = (b.cpu() for b in boxes)
    fractions = (h * w / (height * width)).numpy()
    aspect = (w / h).numpy()
    cpu_fractions, cpu_aspect = _cpu_crop_fractions(n, height, width, seed=6)
    assert fractions.min() >= 0.5 * 0.995 and fractions.max() <= 1.0
    assert abs(fractions.mean() - cpu_fractions.mean()) < 0.012  # sd of the difference ~0.003
    assert aspect.min() >= 0.75 * 0.99 and aspect.max() <= 4 / 3 * 1.01
    assert abs(np.log(aspect).mean() - np.log(cpu_aspect).mean()) < 0.02
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def _ramp_image(height, width) -> torch.Tensor:
    """R encodes the column, G the row (0..255), so a view's value span reveals its crop."""
    cols = torch.linspace(0, 255, width).round().view(1, width).expand(height, width)
    rows = torch.linspace(0, 255, height).round().view(height, 1).expand(height, width)
    return torch.stack([cols, rows, torch.zeros(height, width)]).to(torch.uint8)


def _crop_fraction_from_ramp(levels: torch.Tensor, size: int) -> torch.Tensor:
    """Area fraction of the crop behind (N,3,size,size) views of the ramp image."""
    span_x = levels[:, 0].amax(dim=(1, 2)) - levels[:, 0].amin(dim=(1, 2))
    span_y = levels[:, 1].amax(dim=(1, 2)) - levels[:, 1].amin(dim=(1, 2))
    # Output pixel centres cover (1 - 1/size) of the crop's extent.
    return (span_x / 255 / (1 - 1 / size)) * (span_y / 255 / (1 - 1 / size))


def test_views_crop_like_the_cpu_reference():
    """End to end: crop area fractions seen in the views, GPU module vs CPU transform."""
    size, height, width = 32, 90, 110
    config = dataclasses.replace(QUIET_PRETRAIN, size=size)
    image = _ramp_image(height, width)
    gpu_views = G.GPUPretrainAugment(config=config)(image.expand(800, -1, -1, -1).contiguous(), generator=_gen(8))
    gpu = _crop_fraction_from_ramp(_levels(torch.cat(gpu_views)), size)
    torch.manual_seed(8)
    cpu_transform = PretrainTransform(config=config)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    cpu = _crop_fraction_from_ramp(_levels(torch.stack([v for _ in range(400) for v in cpu_transform(pil)])), size)
    for fractions in (gpu, cpu):
        assert fractions.min() > 0.45 and fractions.max() < 1.03
    assert abs(gpu.mean() - cpu.mean()) < 0.03


def _rate(values: torch.Tensor) -> float:
    return values.float().mean().item()


@on_devices
@in_dtypes
def test_pretrain_op_rates_match_configuration(device, dtype):
    n = 1500

    def run(config, batch, seed):
        augment = G.GPUPretrainAugment(config=config, photometric_dtype=dtype).to(device)
        return _levels(augment(batch.to(device), generator=_gen(seed, device))[0].cpu())

    # Grayscale: colour noise keeps unequal channels unless grayscale fires (all other ops on).
    levels = run(PretrainAugConfig(size=8), _noise(n, 12, 12, seed=9), 9)
    gray = ((levels[:, 0] - levels[:, 1]).abs().amax(dim=(1, 2)) < 1e-3) & (
        (levels[:, 1] - levels[:, 2]).abs().amax(dim=(1, 2)) < 1e-3
    )
    assert abs(_rate(gray) - 0.15) < 0.03  # binomial sd ~0.009

    # Solarize and flip: left half 200 (solarized: 55), right half 100 (never solarized).
    halves = torch.full((n, 3, 8, 8), 100, dtype=torch.uint8)
    halves[..., :4] = 200
    cfg = dataclasses.replace(_identity_geometry(PretrainAugConfig(), 8), color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, equalize_p=0.0)
    levels = run(cfg, halves, 10).round()
    left, right = levels[:, 0, 0, 0], levels[:, 0, 0, -1]
    assert (((left == 200) | (left == 55) | (left == 100)) & ((right == 200) | (right == 55) | (right == 100))).all()
    assert abs(_rate((left == 55) | (right == 55)) - 0.3) < 0.04
    assert abs(_rate(left == 100) - 0.5) < 0.05

    # Equalize: a low-contrast image gets stretched to the full range only when equalized
    # (PIL's equalize needs >= 255 pixels per channel below the maximum, hence 24x24).
    dull = _noise(n, 24, 24, low=100, high=105, seed=11)
    cfg = dataclasses.replace(_identity_geometry(QUIET_PRETRAIN, 24), equalize_p=0.3)
    levels = run(cfg, dull, 11)
    assert abs(_rate(levels.amax(dim=(1, 2, 3)) - levels.amin(dim=(1, 2, 3)) > 100) - 0.3) < 0.04

    # Colour jitter (brightness only): a grey image changes iff jitter fires; factor in [0.6, 1.4].
    grey = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    cfg = dataclasses.replace(_identity_geometry(QUIET_PRETRAIN, 8), color_jitter=(0.4, 0.0, 0.0, 0.0), color_jitter_p=0.8)
    factor = run(cfg, grey, 12)[:, 0, 0, 0] / 128
    assert abs(_rate((factor - 1).abs() > 1e-3) - 0.8) < 0.04
    assert factor.min() > 0.6 - 1e-3 and factor.max() < 1.4 + 1e-3 and abs(factor.mean() - 1) < 0.02


@on_devices
@in_dtypes
def test_finetune_op_rates_match_configuration(device, dtype):
    n, size = 1500, 16

    def run(config, batch, seed):
        augment = G.GPUFinetuneAugment(config=config, photometric_dtype=dtype).to(device)
        return augment(batch.to(device), generator=_gen(seed, device)).cpu()

    dull = _noise(n, size, size, low=100, high=105, seed=13)
    levels = _levels(run(dataclasses.replace(QUIET_FINETUNE, size=size, autocontrast_p=0.3), dull, 13))
    assert abs(_rate(levels.amax(dim=(1, 2, 3)) - levels.amin(dim=(1, 2, 3)) > 200) - 0.3) < 0.04

    halves = torch.full((n, 3, size, size), 100, dtype=torch.uint8)
    halves[..., : size // 2] = 200
    levels = _levels(run(dataclasses.replace(QUIET_FINETUNE, size=size, flip_p=0.5), halves, 14))
    assert abs(_rate(levels[:, 0, 0, 0].round() == 100) - 0.5) < 0.05

    # Erasing writes 0 (the mean) into a box of 1-5 % of the image with h/w in [0.1, 1].
    size = 64
    noise = _noise(600, size, size, seed=15)
    out = run(dataclasses.replace(QUIET_FINETUNE, size=size, erase_p=0.5), noise, 15)
    zero = (out == 0).all(dim=1)
    erased = zero.any(dim=(1, 2))
    assert abs(_rate(erased) - 0.5) < 0.07
    area = zero[erased].float().mean(dim=(1, 2))
    assert area.min() >= 0.008 and area.max() <= 0.055
    rows = zero[erased].any(dim=2).sum(dim=1).float()
    cols = zero[erased].any(dim=1).sum(dim=1).float()
    assert ((rows / cols) >= 0.1 * 0.8).all() and ((rows / cols) <= 1.0 * 1.25).all()


def test_rotation_stays_within_five_degrees():
    """A single bright column at the centre tilts by the rotation angle: |angle| <= 5 degrees."""
    size, n = 65, 400
    line = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    line[..., size // 2] = 255
    cfg = dataclasses.replace(QUIET_FINETUNE, size=size, rotation_degrees=5.0)
    levels = _levels(G.GPUFinetuneAugment(config=cfg)(line, generator=_gen(16)))[:, 0]
    cols = torch.arange(size, dtype=torch.float32)
    centre_of_mass = (levels * cols).sum(dim=2) / levels.sum(dim=2).clamp_min(1e-6)  # per row
    top, bottom = centre_of_mass[:, 5], centre_of_mass[:, -6]
    angle = torch.rad2deg(torch.atan((top - bottom) / (size - 11)))
    assert angle.abs().max() <= 5.0 + 0.3
    assert angle.abs().max() > 4.0 and angle.abs().mean() > 1.5  # spread over the range


@on_devices
@in_dtypes
def test_pixel_statistics_match_the_cpu_reference(device, dtype):
    """Per-channel mean and spread of views of one image agree between CPU and GPU pipelines."""
    height, width = 48, 60
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 * (1 - xx)]) * 255
    image = (base + 30 * torch.rand(3, height, width, generator=_gen(17))).clamp(0, 255).to(torch.uint8)
    size = 32
    batch = image.expand(600, -1, -1, -1).contiguous().to(device)
    augment = G.GPUPretrainAugment(size=size, photometric_dtype=dtype).to(device)
    gpu = torch.cat(augment(batch, generator=_gen(17, device))).cpu()
    torch.manual_seed(17)
    transform = PretrainTransform(size=size)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    cpu = torch.stack([v for _ in range(300) for v in transform(pil)])
    gpu_mean, cpu_mean = gpu.mean(dim=(0, 2, 3)), cpu.mean(dim=(0, 2, 3))
    gpu_std, cpu_std = gpu.std(dim=(0, 2, 3)), cpu.std(dim=(0, 2, 3))
    torch.testing.assert_close(gpu_mean, cpu_mean, atol=0.1, rtol=0)
    torch.testing.assert_close(gpu_std, cpu_std, atol=0.1, rtol=0.05)


@in_dtypes
def test_finetune_statistics_match_the_cpu_reference(dtype):
    from sewer_hf.feed.augment import finetune_transform

    image = _noise(1, 40, 40, low=40, high=200, seed=18)[0]
    size = 24
    augment = G.GPUFinetuneAugment(size=size, photometric_dtype=dtype)
    gpu = augment(image.expand(600, -1, -1, -1).contiguous(), generator=_gen(18))
    torch.manual_seed(18)
    transform = finetune_transform(size=size)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    cpu = torch.stack([transform(pil) for _ in range(600)])
    torch.testing.assert_close(gpu.mean(dim=(0, 2, 3)), cpu.mean(dim=(0, 2, 3)), atol=0.1, rtol=0)
    torch.testing.assert_close(gpu.std(dim=(0, 2, 3)), cpu.std(dim=(0, 2, 3)), atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------- restructured ops
def _former_color_jitter(x, strengths, p, generator=None):
    """The former color_jitter, kept as the reference: every op at all four positions, with
    identity parameters for the samples whose op sits elsewhere (16 passes)."""
    n, device = x.shape[0], x.device
    bright, contrast, saturation, hue = strengths
    apply = G._coin(n, p, generator, device)

    def factor(strength):
        drawn = G._uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator, device)
        return torch.where(apply, drawn, torch.ones_like(drawn))

    factors = [factor(bright), factor(contrast), factor(saturation)]
    drawn_hue = G._uniform(n, -hue, hue, generator, device)
    shift = torch.where(apply, drawn_hue, torch.zeros_like(drawn_hue))
    order = torch.rand(n, 4, generator=generator, device=device).argsort(dim=1)
    ops = [(op_id, op, f) for op_id, (op, f, strength) in enumerate(
        zip((G.adjust_brightness, G.adjust_contrast, G.adjust_saturation), factors, (bright, contrast, saturation))
    ) if strength > 0]
    for position in range(4):
        here = order[:, position]
        for op_id, op, f in ops:
            x = op(x, torch.where(here == op_id, f, torch.ones_like(f)))
        if hue > 0:
            x = G.adjust_hue(x, torch.where(here == 3, shift, torch.zeros_like(shift)))
    return x


JITTER_CASES = [
    ((0.4, 0.4, 0.2, 0.1), 0.8),  # DINO's
    ((0.4, 0.4, 0.2, 0.1), 1.0),
    ((0.4, 0.4, 0.2, 0.1), 0.0),
    ((0.9, 0.9, 0.9, 0.5), 1.0),  # strong: clipping and hue wrap-around
    ((0.4, 0.0, 0.0, 0.1), 0.8),  # brightness and hue only
    ((0.0, 0.0, 0.0, 0.3), 1.0),  # hue only
    ((0.0, 0.6, 0.0, 0.0), 1.0),  # contrast only
    ((0.4, 0.4, 0.2, 0.0), 0.8),  # no hue
]


def _jitter_input(device):
    x = G.quantize(torch.rand(96, 3, 10, 12, generator=_gen(20)))
    x[:5] = 0.5  # grey images: hue undefined, contrast/saturation targets equal the image
    x[5:9, 0] = 1.0  # saturated red channel: brightness > 1 clips
    return x.to(device)


@on_devices
@pytest.mark.parametrize("compiling", [False, True], ids=["eager", "compile-path"])
def test_color_jitter_equals_the_former_version_for_the_same_draws(device, compiling, monkeypatch):
    monkeypatch.setattr(G, "_compiling", lambda: compiling)
    x = _jitter_input(device)
    before = x.clone()
    for strengths, p in JITTER_CASES:
        ours = G.color_jitter(x, strengths, p, generator=_gen(21, device))
        former = _former_color_jitter(x, strengths, p, generator=_gen(21, device))
        # The blends differ only in rounding (one fused multiply-add instead of two products
        # and a sum: about one float32 ulp). With hue, the former version's shift-0 hue passes
        # at the other positions each move a value by up to about one ulp of the hue angle.
        tolerance = 1e-6 if strengths[3] == 0 else 2e-6
        torch.testing.assert_close(ours, former, atol=tolerance, rtol=0, msg=f"strengths {strengths}, p {p}")
        if p > 0 and max(strengths) > 0:
            assert not torch.equal(ours, x)  # it did something
    assert torch.equal(x, before)  # the input is left alone


def test_color_jitter_rotates_the_hue_of_each_jittered_sample_once(monkeypatch):
    monkeypatch.setattr(G, "_compiling", lambda: False)
    seen = []
    real_hue = G.adjust_hue

    def counting_hue(x, shift):
        seen.append(x.shape[0])
        return real_hue(x, shift)

    monkeypatch.setattr(G, "adjust_hue", counting_hue)
    x = _jitter_input("cpu")
    n = x.shape[0]
    G.color_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.8, generator=_gen(22))
    jittered = int(G._coin(n, 0.8, _gen(22), "cpu").sum())  # the first draw of color_jitter
    assert sum(seen) == jittered and len(seen) <= 4


def _former_blur(x, sigma, kernel_size, mask):
    kernels = G.gaussian_kernels(sigma, kernel_size)
    delta = torch.zeros_like(kernels)
    delta[:, kernel_size // 2] = 1.0
    kernels = torch.where(mask.view(-1, 1), kernels, delta)
    b, c, h, w = x.shape
    weight = kernels.repeat_interleave(c, dim=0)
    pad = kernel_size // 2
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    out = torch.nn.functional.conv2d(padded, weight.view(b * c, 1, kernel_size, 1), groups=b * c)
    return torch.nn.functional.conv2d(out, weight.view(b * c, 1, 1, kernel_size), groups=b * c).view(b, c, h, w)


@on_devices
@pytest.mark.parametrize("compiling", [False, True], ids=["eager", "compile-path"])
def test_masked_ops_leave_unselected_samples_and_match_the_whole_batch_version(device, compiling, monkeypatch):
    monkeypatch.setattr(G, "_compiling", lambda: compiling)
    x = G.quantize(torch.rand(12, 3, 24, 24, generator=_gen(23)) * 0.5 + 0.2).to(device)
    sigma = torch.linspace(0.1, 1.0, 12, device=device)
    for mask in (torch.arange(12) % 3 == 0, torch.zeros(12, dtype=torch.bool), torch.ones(12, dtype=torch.bool)):
        mask = mask.to(device)
        blurred = G.gaussian_blur(x, sigma, 7, mask=mask)
        torch.testing.assert_close(blurred, _former_blur(x, sigma, 7, mask), atol=1e-6, rtol=0)
        for ours, whole in ((G.equalize(x, mask), G._equalize_all(x)), (G.autocontrast(x, mask), G._autocontrast_all(x))):
            torch.testing.assert_close(ours, torch.where(mask.view(-1, 1, 1, 1), whole, x), atol=1e-6, rtol=0)
        assert torch.equal(blurred[~mask], x[~mask])


def test_groups_split_samples_by_label():
    labels = torch.tensor([2, 0, 4, 2, 1, 0, 4, 4])
    groups = G._groups(labels, 4)
    assert [g.tolist() for g in groups] == [[1, 5], [4], [0, 3], []]


def test_float16_colour_ops_stay_within_a_level_of_float32():
    """Same draws in both dtypes: float16 rounding moves a pixel by about 0.1 of a uint8 level on
    average (the CPU reference rounds to whole levels after every op); rare larger moves are
    level flips that equalize spreads. The outputs are float32 either way."""
    batch = _noise(16, 64, 64, seed=24)
    for module in (G.GPUPretrainAugment(size=48, photometric_dtype="float32"), G.GPUFinetuneAugment(size=48, photometric_dtype="float32")):
        half = type(module)(size=48, photometric_dtype="float16")
        full, low = module(batch, generator=_gen(24)), half(batch, generator=_gen(24))
        for a, b in zip(full if isinstance(full, list) else [full], low if isinstance(low, list) else [low]):
            assert b.dtype == torch.float32 and torch.isfinite(b).all()
            moved = (_levels(a) - _levels(b)).abs()
            assert moved.mean() < 0.3 and (moved > 1.5).float().mean() < 0.01


def test_unknown_photometric_dtype_is_a_config_error():
    from sewer_hf.errors import ConfigError

    with pytest.raises(ConfigError, match="bfloat16.*auto, float32 or float16"):
        G.GPUPretrainAugment(photometric_dtype="bfloat16")


@pytest.mark.slow  # ~70 s on 2 cores with a cold compile cache (inductor's C++ kernels), ~5 s warm
def test_compiled_module_matches_eager_for_the_same_draws():
    """torch.compile takes the static-shape path (every op on the whole batch, torch.where keeps
    the selected samples): same draws, same views up to float rounding, which equalize can
    spread over a few levels in rare pixels."""
    torch._dynamo.reset()
    # the shapes of the compiled tests that follow (below; test_pretrain: batch 8 decoded at 48 px,
    # 32-px views): on a fresh machine they then find these graphs in inductor's on-disk cache
    # instead of compiling their own (~35 s less on 2 cores)
    batch = _noise(8, 48, 48, seed=25)
    for module in (G.GPUPretrainAugment(size=32), G.GPUFinetuneAugment(size=32)):
        eager, compiled = module(batch, generator=_gen(25)), G.compile_augment(module)(batch, generator=_gen(25))
        for a, b in zip(eager if isinstance(eager, list) else [eager], compiled if isinstance(compiled, list) else [compiled]):
            moved = (_levels(a) - _levels(b)).abs()
            assert moved.mean() < 0.05 and (moved > 1.5).float().mean() < 1e-3, (moved.mean(), moved.max())


def test_compiled_module_runs_in_the_feed_thread_while_the_main_thread_traces(monkeypatch):
    """The feed thread calls the compiled augmentation while the main thread may be tracing the
    model. torch 2.11 (the device stack) keeps both the "FX tracing now" flag and dynamo's config
    for the whole process, so that call raised "Detected that you are using FX to symbolically
    trace a dynamo-optimized function"; compile_augment turns the check off. torch 2.14 keeps
    both per thread: there the cross-thread call cannot raise, and what this test can see is
    that compile_augment set the config."""
    import threading

    import torch.fx._symbolic_trace as fx_trace

    def set_tracing(value: bool) -> None:  # as a trace in this thread does (2.11: a module global)
        if hasattr(fx_trace, "_set_is_fx_tracing"):
            fx_trace._set_is_fx_tracing(value)
        else:
            monkeypatch.setattr(fx_trace, "_is_fx_tracing_flag", value)

    monkeypatch.setattr(torch._dynamo.config, "error_on_nested_fx_trace", True)
    torch._dynamo.reset()
    batch = _noise(8, 48, 48, seed=27)  # the graph of test_compiled_module_matches_eager_for_the_same_draws
    compiled = G.compile_augment(G.GPUFinetuneAugment(size=32))
    assert torch._dynamo.config.error_on_nested_fx_trace is False
    compiled(batch, generator=_gen(27))
    results, errors = [], []

    def feed():
        try:
            results.append(compiled(batch, generator=_gen(27)))
        except RuntimeError as exc:
            errors.append(exc)

    set_tracing(True)
    try:
        thread = threading.Thread(target=feed)
        thread.start()
        thread.join()
    finally:
        set_tracing(False)
    assert not errors, errors
    assert results[0].shape == (8, 3, 32, 32)


def test_draw_then_apply_is_the_forward_pass_and_apply_draws_nothing():
    batch = _noise(6, 40, 48, seed=26)
    for module in (G.GPUPretrainAugment(size=32, n_local_crops=1, local_size=16), G.GPUFinetuneAugment(size=32)):
        generator = _gen(26)
        params = module.draw(batch, generator)
        state = generator.get_state()
        first, second = module.apply(batch, params), module.apply(batch, params)
        assert torch.equal(generator.get_state(), state)  # apply used no randomness
        forward = module(batch, generator=_gen(26))
        for a, b, c in zip(*(v if isinstance(v, list) else [v] for v in (first, second, forward))):
            assert torch.equal(a, b) and torch.equal(a, c)


def test_compiled_pixel_work_breaks_only_at_the_ops_kept_eager():
    """No graph break from the draws (they happen before) or from unsupported calls: the only
    breaks are the crops/rotations, blur and equalize, kept on their eager kernels on purpose."""
    torch._dynamo.reset()
    batch = _noise(4, 40, 40, seed=27)
    for module in (G.GPUPretrainAugment(size=32), G.GPUFinetuneAugment(size=32)):
        explained = torch._dynamo.explain(module.apply)(batch, module.draw(batch, _gen(27)))
        reasons = [str(b.reason) for b in explained.break_reasons]
        assert all("torch.compiler.disable" in r for r in reasons), reasons
