"""Render one synthetic CCTV frame for a label set: pipe, bent shape, water, defects, camera."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

from sewer_hf.data.labels import CLASSES, NUM_CLASSES
from sewer_hf.errors import ConfigError
from sewer_hf.synth.defects import IMAGE_PAINTERS, NUMPY_PAINTERS
from sewer_hf.synth.pipe import build_scene, finish_frame, paint_water

DEFAULT_SIZE = (352, 288)
MIN_SIDE = 32
MAX_SIDE = 4096  # 4K frames; real Sewer-ML frames are at most 1040 pixels wide
# Independent random streams, so adding a label changes only that label's pixels.
_STREAM_SCENE, _STREAM_WATER, _STREAM_CAMERA, _FIRST_CLASS_STREAM = 0, 1, 2, 3


def as_multi_hot(labels) -> np.ndarray:
    """Accept a 17-long 0/1 vector or class codes ("RB", "FS", ...)."""
    if isinstance(labels, str):
        labels = [labels]
    if isinstance(labels, np.ndarray) or (isinstance(labels, (list, tuple)) and labels
                                          and not isinstance(labels[0], str)):
        arr = np.asarray(labels)
        if arr.shape != (NUM_CLASSES,):
            raise ConfigError(f"labels must have {NUM_CLASSES} entries in order {CLASSES}, got shape {arr.shape}")
        return (arr != 0).astype(np.uint8)
    out = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for code in labels if isinstance(labels, Iterable) else []:
        if code not in CLASSES:
            raise ConfigError(f"unknown class code {code!r}; expected one of {', '.join(CLASSES)}")
        out[CLASSES.index(code)] = 1
    return out


def check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (width, height), got {size!r}") from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ConfigError(f"size must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:  # a 100000x100000 frame would need ~150 GB to draw
        raise ConfigError(f"size must be at most {MAX_SIDE}x{MAX_SIDE} pixels, got {width}x{height}")
    return width, height


def render_frame(labels, water_level: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
                 rng: np.random.Generator | int | None = None) -> Image.Image:
    """A synthetic RGB frame showing the given defects (multi-hot or class codes) and water
    at `water_level` percent of the pipe diameter."""
    multi_hot = as_multi_hot(labels)
    width, height = check_size(size)
    if not 0 <= int(water_level) <= 100:
        raise ConfigError(f"water_level is a percentage 0..100, got {water_level}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    streams = [np.random.default_rng(s) for s in
               np.random.SeedSequence(rng.integers(0, 2**63, size=4)).spawn(_FIRST_CLASS_STREAM + NUM_CLASSES)]

    def stream(code: str) -> np.random.Generator:
        return streams[_FIRST_CLASS_STREAM + CLASSES.index(code)]

    present = {c for c, v in zip(CLASSES, multi_hot) if v}
    scene = build_scene((width, height), int(water_level), streams[_STREAM_SCENE])
    for code, paint in NUMPY_PAINTERS.items():
        if code in present:
            paint(scene, stream(code))
    paint_water(scene, streams[_STREAM_WATER])
    image = Image.fromarray(scene.pixels)
    draw = ImageDraw.Draw(image)
    for code, paint in IMAGE_PAINTERS.items():
        if code in present:
            paint(scene, image, draw, stream(code))
    return finish_frame(image, streams[_STREAM_CAMERA])
