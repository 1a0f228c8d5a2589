"""Drawing helpers shared by the defect painters: shapes on the pipe wall, textured fills."""
from __future__ import annotations

import numpy as np
from PIL import Image

from sewer_hf.synth.pipe import Scene

DARK_HOLE = (14, 13, 12)


def pick_theta(scene: Scene, rng: np.random.Generator, lo: float = -np.pi, hi: float = np.pi,
               margin: float = 0.15) -> float:
    """A wall angle in [lo, hi] that is above the water line (top of the pipe as fallback)."""
    for _ in range(12):
        theta = float(rng.uniform(lo, hi))
        if scene.above_water(theta, margin):
            return theta
    return float(-np.pi / 2 + rng.uniform(-0.4, 0.4))


def upper_theta(scene: Scene, rng: np.random.Generator) -> float:
    """An angle on the sides or crown, where connections and leaks usually are."""
    return pick_theta(scene, rng, -np.pi - 0.35, 0.35)


def nearest_joint(scene: Scene, rng: np.random.Generator, lo: float, hi: float) -> float:
    """A joint depth in [lo, hi] if the pipe has one there, otherwise a fresh depth."""
    candidates = [z for z in scene.joints if lo <= z <= hi]
    if candidates:
        return float(candidates[int(rng.integers(len(candidates)))])
    return float(rng.uniform(lo, hi))


def wall_blob(scene: Scene, rng: np.random.Generator | None, theta0: float, z0: float, radius: float,
              n: int = 24, jitter: float = 0.0, squash: float = 1.0, min_z: float = 0.5) -> list[tuple[float, float]]:
    """Pixel polygon of a (jagged) circle of `radius` pipe radii drawn on the wall."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.full(n, radius)
    if jitter and rng is not None:
        r = r * (1 + jitter * (rng.random(n) - 0.5))
    theta = theta0 + r * np.cos(a)
    z = np.maximum(z0 + r * squash * np.sin(a), min_z)
    x, y = scene.project(theta, z)
    return list(zip(x.tolist(), y.tolist()))


def scale_about(points, cx: float, cy: float, k: float, dx: float = 0.0, dy: float = 0.0):
    return [(cx + (x - cx) * k + dx, cy + (y - cy) * k + dy) for x, y in points]


def centroid(points) -> tuple[float, float]:
    arr = np.asarray(points)
    return float(arr[:, 0].mean()), float(arr[:, 1].mean())


def textured_fill(image: Image.Image, points, rgb, rng: np.random.Generator, contrast: float,
                  cell_px: float, speckle: float = 0.0, gradient: tuple[float, float] = (1.0, 1.0)) -> None:
    """Fill a polygon with a mottled colour: blotches of about `cell_px` pixels, optional
    bright/dark speckles, and a vertical brightness gradient (top, bottom)."""
    from PIL import ImageDraw

    arr = np.asarray(points)
    x0, y0 = int(max(np.floor(arr[:, 0].min()), 0)), int(max(np.floor(arr[:, 1].min()), 0))
    x1, y1 = int(min(np.ceil(arr[:, 0].max()), image.width)), int(min(np.ceil(arr[:, 1].max()), image.height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    w, h = x1 - x0, y1 - y0
    cell = max(cell_px, 1.0)
    small = rng.random((max(int(h / cell), 1) + 1, max(int(w / cell), 1) + 1), dtype=np.float32)
    blotch = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    lum = 1.0 + contrast * (blotch - 0.5) * 2
    if speckle:
        grain = rng.random((max(h // 2, 1), max(w // 2, 1)), dtype=np.float32)
        fine = np.asarray(Image.fromarray(grain).resize((w, h), Image.NEAREST))
        lum = lum + speckle * ((fine > 0.9).astype(np.float32) - (fine < 0.1).astype(np.float32))
    lum = lum * np.linspace(gradient[0], gradient[1], h, dtype=np.float32)[:, None]
    patch = np.clip(lum[:, :, None] * np.asarray(rgb, dtype=np.float32)[None, None, :], 0, 255).astype(np.uint8)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in points], fill=255)
    image.paste(Image.fromarray(patch), (x0, y0), mask)
