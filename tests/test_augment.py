"""CPU reference augmentations (paper App. A): shapes, configured values, and measured rates."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sewer_hf.data.labels import SEWER_MEAN, SEWER_STD
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.feed.augment import (
    FinetuneAugConfig,
    PretrainAugConfig,
    PretrainTransform,
    eval_transform,
    finetune_transform,
)
from sewer_hf.feed.spec import blur_kernel_size_for

MEAN = torch.tensor(SEWER_MEAN).view(3, 1, 1)
STD = torch.tensor(SEWER_STD).view(3, 1, 1)


def _noise_image(width=80, height=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _to_uint8_scale(view: torch.Tensor) -> torch.Tensor:
    """Undo normalisation: back to 0..255 values."""
    return (view * STD + MEAN) * 255


def _transforms_of(compose) -> list:
    """Flatten a v2.Compose (and RandomApply wrappers) to its leaf transforms."""
    out = []
    for t in getattr(compose, "transforms", [compose]):
        if isinstance(t, v2.Compose):
            out += _transforms_of(t)
        else:
            out.append(t)
    return out


def _only(compose, kind):
    found = [t for t in _transforms_of(compose) if isinstance(t, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}, found {len(found)}"
    return found[0]


def _blur_apply(compose) -> v2.RandomApply:
    return next(t for t in _transforms_of(compose) if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianBlur))


def test_pretrain_views_shapes_dtypes_and_count():
    torch.manual_seed(0)
    views = PretrainTransform(size=32)(_noise_image())
    assert len(views) == 2
    for view in views:
        assert view.shape == (3, 32, 32) and view.dtype == torch.float32
    views = PretrainTransform(size=32, n_local_crops=3, local_size=16)(_noise_image())
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3


def test_pretrain_views_differ_and_stay_in_normalised_range():
    torch.manual_seed(1)
    a, b = PretrainTransform(size=32)(_noise_image())
    assert not torch.allclose(a, b)
    for view in (a, b):
        raw = _to_uint8_scale(view)
        assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3


def test_paper_values_are_wired_into_the_pipeline():
    cfg = PretrainAugConfig()
    assert (cfg.size, cfg.scale, cfg.grayscale_p, cfg.blur_p, cfg.blur_sigma) == (224, (0.5, 1.0), 0.15, 0.3, (0.1, 1.0))
    assert (cfg.equalize_p, cfg.solarize_p, cfg.n_local_crops) == (0.3, 0.3, 0)
    assert cfg.blur_kernel_size == blur_kernel_size_for(cfg.blur_sigma[1])
    view = PretrainTransform().global_view
    crop = _only(view, v2.RandomResizedCrop)
    assert tuple(crop.scale) == (0.5, 1.0) and crop.interpolation.value == "bicubic"
    assert _only(view, v2.RandomGrayscale).p == 0.15
    assert _only(view, v2.RandomEqualize).p == 0.3
    solarize = _only(view, v2.RandomSolarize)
    assert solarize.p == 0.3 and solarize.threshold == 128
    blur = _blur_apply(view)
    assert blur.p == 0.3 and tuple(blur.transforms[0].sigma) == (0.1, 1.0)
    jitter = next(t for t in _transforms_of(view) if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.ColorJitter))
    assert jitter.p == 0.8 and jitter.transforms[0].hue == (-0.1, 0.1)
    normalize = _only(view, v2.Normalize)
    assert tuple(normalize.mean) == SEWER_MEAN and tuple(normalize.std) == SEWER_STD


def test_crop_area_fraction_within_configured_scale():
    torch.manual_seed(2)
    crop = _only(PretrainTransform().global_view, v2.RandomResizedCrop)
    image = _noise_image(720, 576)
    fractions = []
    for _ in range(2000):
        p = crop.make_params([image])
        fractions.append(p["height"] * p["width"] / (720 * 576))
    fractions = np.array(fractions)
    # Rounding the crop side to whole pixels moves the fraction by well under 1 %.
    assert fractions.min() >= 0.5 * 0.99 and fractions.max() <= 1.0
    # Crops that do not fit (large area at an extreme aspect ratio) are redrawn, so the
    # distribution is uniform(0.5, 1) thinned at the top: spread over the range, mean below 0.75.
    assert (fractions < 0.55).mean() > 0.05 and (fractions > 0.9).mean() > 0.02
    assert 0.6 < fractions.mean() < 0.75


def test_grayscale_rate_matches_configuration():
    """A colourful input keeps unequal channels unless grayscale fires (jitter saturation >= 0.8)."""
    torch.manual_seed(3)
    transform = PretrainTransform(size=16)
    image = _noise_image(24, 24)
    n, gray = 1500, 0
    for _ in range(n // 2):
        for view in transform(image):
            raw = _to_uint8_scale(view)
            gray += int((raw[0] - raw[1]).abs().max() < 1e-3 and (raw[1] - raw[2]).abs().max() < 1e-3)
    # Binomial(1500, 0.15): sd ~ 0.009.
    assert abs(gray / n - 0.15) < 0.04


def test_solarize_and_flip_rates_with_other_ops_off():
    cfg = dataclasses.replace(
        PretrainAugConfig(), size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter_p=0.0, grayscale_p=0.0,
        blur_p=0.0, equalize_p=0.0,
    )
    transform = PretrainTransform(config=cfg)
    # Left half 200 (solarized to 55), right half 100 (never solarized): both rates are visible.
    array = np.full((8, 8, 3), 100, dtype=np.uint8)
    array[:, :4] = 200
    image = Image.fromarray(array)
    torch.manual_seed(4)
    solarized = flipped = 0
    n = 1000
    for _ in range(n // 2):
        for view in transform(image):
            raw = _to_uint8_scale(view).round()
            left, right = raw[0, 0, 0].item(), raw[0, 0, -1].item()
            assert {left, right} in ({200.0, 100.0}, {55.0, 100.0})
            solarized += int(55.0 in (left, right))
            flipped += int(left == 100.0)
    assert abs(solarized / n - 0.3) < 0.05
    assert abs(flipped / n - 0.5) < 0.06


def test_eval_transform_is_deterministic_resize_and_normalise():
    image = _noise_image(72, 56)
    transform = eval_transform(size=32)
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, transform(image))
    manual = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    manual = (torch.from_numpy(manual).permute(2, 0, 1) - MEAN) / STD
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=0)


def test_non_rgb_inputs_are_converted():
    gray = _noise_image(40, 30).convert("L")
    assert PretrainTransform(size=16)(gray)[0].shape == (3, 16, 16)
    assert finetune_transform(size=16)(gray.convert("RGBA")).shape == (3, 16, 16)
    assert eval_transform(size=16)(np.asarray(gray)).shape == (3, 16, 16)
    assert eval_transform(size=16)(torch.zeros(1, 20, 20, dtype=torch.uint8)).shape == (3, 16, 16)
    with pytest.raises(DataError, match="expected a PIL image"):
        eval_transform(size=16)("frame.png")


def test_finetune_transform_values_and_erasing_rate():
    cfg = FinetuneAugConfig()
    assert (cfg.size, cfg.rotation_degrees, cfg.erase_scale, cfg.erase_ratio) == (224, 5.0, (0.01, 0.05), (0.1, 1.0))
    pipeline = finetune_transform()
    assert list(_only(pipeline, v2.RandomAffine).degrees) == [-5.0, 5.0]
    assert _only(pipeline, v2.RandomEqualize).p == cfg.equalize_p
    assert _only(pipeline, v2.RandomAutocontrast).p == cfg.autocontrast_p
    assert not any(isinstance(t, v2.RandomResizedCrop) for t in _transforms_of(pipeline))
    assert _only(pipeline, v2.Resize).size == [224, 224]

    # Erasing writes value 0 (the mean) into a 1-5 % rectangle; other pixels are never exactly 0.
    transform = finetune_transform(size=32, config=dataclasses.replace(cfg, rotation_degrees=0.0))
    torch.manual_seed(5)
    image = _noise_image(48, 40)
    n, erased, areas = 600, 0, []
    for _ in range(n):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        zero = (out == 0).all(dim=0)
        if zero.any():
            erased += 1
            areas.append(zero.float().mean().item())
    assert abs(erased / n - cfg.erase_p) < 0.07
    assert 0.005 <= min(areas) and max(areas) <= 0.06


@pytest.mark.parametrize(
    "bad",
    [dict(grayscale_p=1.5), dict(scale=(0.9, 0.5)), dict(scale=(0.5, 1.2)), dict(blur_kernel_size=6), dict(size=0)],
)
def test_bad_config_values_raise_config_error(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        dataclasses.replace(PretrainAugConfig(), **bad)


def test_bad_finetune_values_raise_config_error():
    with pytest.raises(ConfigError, match="erase_scale"):
        FinetuneAugConfig(erase_scale=(0.2, 0.1))
    with pytest.raises(ConfigError, match="size"):
        finetune_transform(size=-3)


def test_pretrain_augmentation_by_name_crops_keeps_colours():
    """`augmentation: crops` (PretrainConfig): crops and flips only, so a flat-coloured frame keeps
    its colour in every view; the paper's views jitter, grey, blur and solarize it."""
    from sewer_hf.config import PretrainConfig
    from sewer_hf.feed.spec import PRETRAIN_AUGMENTATIONS, pretrain_augmentation

    flat = Image.new("RGB", (48, 48), (180, 60, 20))
    torch.manual_seed(0)
    crops = [v for _ in range(8) for v in PretrainTransform(size=32, config=pretrain_augmentation("crops"))(flat)]
    assert all(torch.allclose(v, crops[0], atol=1e-5) for v in crops)
    torch.manual_seed(0)
    paper = [v for _ in range(8) for v in PretrainTransform(size=32, config=pretrain_augmentation("paper"))(flat)]
    assert not all(torch.allclose(v, paper[0], atol=1e-3) for v in paper)
    assert set(PRETRAIN_AUGMENTATIONS) == {"paper", "crops"}
    with pytest.raises(ConfigError, match="augmentation='colour'"):
        PretrainConfig(augmentation="colour").validate()


def test_both_implementations_build_the_same_spec_from_the_same_arguments():
    from sewer_hf.errors import ConfigError
    from sewer_hf.feed.batched import GPUFinetuneAugment, GPUPretrainAugment
    from sewer_hf.feed.spec import pretrain_augmentation

    given = dict(config=pretrain_augmentation("crops"), size=32, n_local_crops=2, local_size=16,
                 local_scale=[0.1, 0.3], mean=[0.5, 0.5, 0.5])
    cpu, batched = PretrainTransform(**given), GPUPretrainAugment(**given)
    assert cpu.config == batched.config
    assert cpu.config.local_scale == (0.1, 0.3) and cpu.config.mean == (0.5, 0.5, 0.5) and cpu.config.blur_p == 0.0
    assert GPUFinetuneAugment(24, erase_p=0.0).config == FinetuneAugConfig(size=24, erase_p=0.0)
    for build in (PretrainTransform, GPUPretrainAugment):
        with pytest.raises(ConfigError, match="PretrainAugConfig has no field 'local_crops'"):
            build(local_crops=2)
