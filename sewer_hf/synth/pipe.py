"""The defect-free pipe: material, texture, joints, camera light, water, sensor noise.

`build_scene` paints the wall into a small (angle x depth) tile and gathers it to the
pixels (see `geometry`); `paint_water` fills the wedge below the water line;
`finish_frame` adds the CCTV look (blur, blurred text overlay, sensor noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sewer_hf.synth.geometry import (
    TILE_THETA,
    TILE_THETA_CENTRES,
    TILE_Z,
    TILE_Z_CENTRES,
    TILE_Z_EDGES,
    FrameGrids,
    canvas_for,
    tile_index,
)

# name: base RGB, texture strength, joint spacing (pipe radii; None = seamless liner),
# gloss (specular band), share of frames.
MATERIALS: dict[str, dict] = {
    "concrete": dict(rgb=(148, 140, 122), texture=0.30, joint_spacing=(1.6, 3.5), gloss=0.0, share=0.45),
    "clay": dict(rgb=(155, 98, 66), texture=0.2, joint_spacing=(2.0, 4.5), gloss=0.3, share=0.30),
    "plastic": dict(rgb=(160, 118, 84), texture=0.1, joint_spacing=(4.0, 8.0), gloss=0.45, share=0.15),
    "liner": dict(rgb=(186, 182, 170), texture=0.08, joint_spacing=None, gloss=0.25, share=0.10),
}
WATER_RGB = (74, 68, 54)
VANISHING_POINT_JITTER = 0.12  # fraction of the frame size
FOCAL_RANGE = (0.8, 1.15)      # display units per pipe radius at depth 1


@dataclass
class Scene:
    """One frame being painted: its camera, pipe and pixel buffer (H x W x 3 uint8)."""
    width: int
    height: int
    vx: int
    vy: int
    sx: float
    sy: float
    focal: float
    grids: FrameGrids
    material: str
    rgb: np.ndarray
    joints: list[float]
    light_half_depth: float
    light_gain: float
    water_level: int
    water_threshold: float  # pixels with sin(theta) above this are water
    tile: np.ndarray        # (TILE_THETA * TILE_Z,) uint32: RGBA packed, one gather per pixel
    pixels: np.ndarray

    # -- projection helpers used by the defect painters ---------------------------------
    def project(self, theta, z) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates of wall points (angle, depth in pipe radii)."""
        theta, z = np.asarray(theta, dtype=np.float64), np.asarray(z, dtype=np.float64)
        k = self.focal / z
        return self.vx + self.sx * np.cos(theta) * k, self.vy + self.sy * np.sin(theta) * k

    def px_per_radius(self, z: float) -> float:
        """How many pixels one pipe radius spans at depth z (vertical)."""
        return self.sy * self.focal / z

    def light(self, z) -> np.ndarray:
        """Camera-light fall-off with depth (1 near the camera, -> 0 in the dark centre)."""
        z = np.asarray(z, dtype=np.float64)
        return self.light_gain / (1.0 + (z / self.light_half_depth) ** 2.2)

    def shade(self, rgb, z, extra: float = 1.0) -> tuple[int, int, int]:
        """An object colour as lit at depth z."""
        f = float(self.light(z)) * extra
        return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)

    def above_water(self, theta: float, margin: float = 0.1) -> bool:
        return np.sin(theta) < self.water_threshold - margin


def _smooth_noise(rng: np.random.Generator, cells_theta: int, cells_z: int) -> np.ndarray:
    """Value noise on the tile, periodic around the pipe, bilinear between random cells."""
    cells = rng.random((cells_theta, cells_z), dtype=np.float32)
    ft = np.arange(TILE_THETA) * (cells_theta / TILE_THETA)
    t0 = ft.astype(np.int64)
    wt = (ft - t0).astype(np.float32)[:, None]
    rows = cells[t0] * (1 - wt) + cells[(t0 + 1) % cells_theta] * wt
    fz = np.arange(TILE_Z) * ((cells_z - 1) / TILE_Z)
    z0 = fz.astype(np.int64)
    wz = (fz - z0).astype(np.float32)[None, :]
    return rows[:, z0] * (1 - wz) + rows[:, np.minimum(z0 + 1, cells_z - 1)] * wz


def _joint_coverage(joints: list[float], width: float, z_lo: np.ndarray, z_hi: np.ndarray) -> np.ndarray:
    """Fraction of each depth bin covered by the joint grooves (anti-aliased rings)."""
    cover = np.zeros_like(z_lo)
    for zj in joints:
        a, b = zj - width / 2, zj + width / 2
        cover += np.clip(np.minimum(z_hi, b) - np.maximum(z_lo, a), 0, None) / (z_hi - z_lo)
    return np.minimum(cover, 1.0)


def choose_material(rng: np.random.Generator) -> str:
    names = list(MATERIALS)
    shares = np.array([MATERIALS[n]["share"] for n in names])
    return names[int(rng.choice(len(names), p=shares / shares.sum()))]


def build_scene(size: tuple[int, int], water_level: int, rng: np.random.Generator) -> Scene:
    """Camera, material, lighting and joints of one frame, with the wall painted."""
    width, height = size
    canvas = canvas_for((width, height))
    vx = int(round(width / 2 + rng.uniform(-1, 1) * VANISHING_POINT_JITTER * width))
    vy = int(round(height / 2 + rng.uniform(-1, 1) * VANISHING_POINT_JITTER * height))
    focal = float(rng.uniform(*FOCAL_RANGE))
    material = choose_material(rng)
    spec = MATERIALS[material]
    rgb = np.array(spec["rgb"], dtype=np.float32) * rng.normal(1.0, 0.035, 3).astype(np.float32)
    rgb *= rng.uniform(0.85, 1.15)

    if spec["joint_spacing"] is None:
        joints: list[float] = []
    else:
        spacing = rng.uniform(*spec["joint_spacing"])
        first = rng.uniform(0.9, 0.9 + spacing)
        joints = list(np.arange(first, 45.0, spacing))
    d = min(max(water_level, 0), 100) / 100.0
    water_threshold = 1.0 - 2.0 * d if d > 0 else 2.0  # 2.0: no pixel is water

    scene = Scene(width, height, vx, vy, canvas.px_per_unit_x, canvas.px_per_unit_y, focal,
                  canvas.view(vx, vy), material, rgb, joints,
                  light_half_depth=float(rng.uniform(1.6, 3.2)), light_gain=float(rng.uniform(0.95, 1.25)),
                  water_level=int(water_level), water_threshold=water_threshold,
                  tile=np.empty(0), pixels=np.empty(0))
    scene.tile = _paint_wall_tile(scene, spec, rng)
    scene.pixels = gather(scene.tile, scene.grids.index)
    return scene


def gather(tile: np.ndarray, index: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels (index.shape + (3,)) read from a packed tile."""
    rgba = np.take(tile, index).view(np.uint8).reshape(*index.shape, 4)
    return np.ascontiguousarray(rgba[..., :3])


def _paint_wall_tile(scene: Scene, spec: dict, rng: np.random.Generator) -> np.ndarray:
    z = TILE_Z_CENTRES * scene.focal                         # wall depth of each depth bin
    z_lo, z_hi = TILE_Z_EDGES[:-1] * scene.focal, TILE_Z_EDGES[1:] * scene.focal
    theta = TILE_THETA_CENTRES
    strength = spec["texture"]
    lum = 1.0 + strength * (1.4 * (_smooth_noise(rng, 18, 10) - 0.5)
                            + 0.9 * (_smooth_noise(rng, 72, 40) - 0.5)
                            + 0.5 * (rng.random((TILE_THETA, TILE_Z), dtype=np.float32) - 0.5))
    # Stains running along the pipe (dirt trails) at a few angles.
    for _ in range(rng.integers(0, 4)):
        centre, half = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.15)
        dist = np.abs((theta - centre + np.pi) % (2 * np.pi) - np.pi)
        lum *= (1.0 - rng.uniform(0.1, 0.3) * np.exp(-(dist / half) ** 2))[:, None]
    if spec["gloss"] > 0:  # specular band of glazed clay / plastic under the lamp
        centre = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)
        dist = np.abs((theta - centre + np.pi) % (2 * np.pi) - np.pi)
        lum *= (1.0 + spec["gloss"] * np.exp(-(dist / 0.12) ** 2))[:, None]
    if scene.joints:  # a dark groove with a bright lip on its near side
        width = rng.uniform(0.05, 0.12)
        groove = _joint_coverage(scene.joints, width, z_lo, z_hi)
        lip = _joint_coverage([j - width for j in scene.joints], width * 0.8, z_lo, z_hi)
        lum *= ((1.0 - rng.uniform(0.55, 0.8) * groove) * (1.0 + 0.35 * lip))[None, :]
    # The flow line: the wall is wet and stained just above the water surface.
    s = np.sin(theta)
    if scene.water_threshold <= 1.0:
        wet = np.clip((s - (scene.water_threshold - 0.25)) / 0.25, 0, 1)
        lum *= (1.0 - 0.35 * wet)[:, None]
    lamp = 1.0 + 0.12 * np.cos(theta - rng.uniform(0, 2 * np.pi))
    lum *= lamp[:, None] * scene.light(z)[None, :].astype(np.float32)
    rgba = np.zeros((TILE_THETA, TILE_Z, 4), dtype=np.uint8)
    rgba[..., :3] = np.clip(lum[:, :, None] * scene.rgb[None, None, :], 0, 255)
    return rgba.view(np.uint32).reshape(-1)


def regather(scene: Scene, rows: slice, cols: slice, mask: np.ndarray, theta: np.ndarray,
             z_img: np.ndarray) -> None:
    """Repaint the masked pixels of a box from the wall tile at new wall coordinates
    (used by defects that bend the pipe: deformation, displaced joints)."""
    box = scene.pixels[rows, cols]
    box[mask] = gather(scene.tile, tile_index(theta, z_img))


def paint_water(scene: Scene, rng: np.random.Generator) -> None:
    """Water in the pipe bottom: the pixels below the water line form a wedge whose opening
    grows with the level (the water plane meets the round wall at sin(theta) = 1 - 2 d)."""
    if scene.water_threshold > 1.0:
        return
    g = scene.grids
    mask = g.sin_theta > scene.water_threshold
    if not mask.any():
        return
    v = np.abs(g.v[mask]).astype(np.float32)
    y_plane = max(abs(1.0 - scene.water_level / 50.0), 0.05)
    depth = np.clip(y_plane * scene.focal / np.maximum(v, 1e-3), 0.3, 40.0)
    # Ripples: irregular bands across the flow (noise stretched around the pipe, read through
    # the wall tile index), with lamp glints on the near crests.
    ripple = _smooth_noise(rng, 6, 70).ravel()[g.index[mask]]
    lum = (0.2 + 0.7 * scene.light(depth).astype(np.float32)) * (0.8 + 0.4 * ripple)
    glint = (ripple > 0.85) & (depth < 2.5)
    lum = lum + glint * 0.35
    colour = np.array(WATER_RGB, dtype=np.float32) * rng.normal(1.0, 0.04, 3).astype(np.float32)
    colour *= rng.uniform(0.8, 1.3)
    scene.pixels[mask] = np.clip(lum[:, None] * colour[None, :], 0, 255).astype(np.uint8)
    if scene.water_level >= 50:  # camera at or under the surface: murky haze over everything
        haze = min((scene.water_level - 40) / 60.0, 0.85)
        scene.pixels[:] = (scene.pixels * (1 - haze) + colour * 0.6 * haze).astype(np.uint8)


def finish_frame(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera look: lens blur, a blurred text overlay (as in the released frames) and noise."""
    width, height = image.size
    scale = height / 288
    if rng.random() < 0.5:
        draw = ImageDraw.Draw(image)
        x0, y0 = int(rng.uniform(0.03, 0.1) * width), int(rng.uniform(0.03, 0.1) * height)
        text = f"{rng.uniform(0, 80):05.2f} m  {int(rng.integers(100, 999))}"
        draw.text((x0, y0), text, fill=(235, 235, 225))
        box = (max(x0 - 4, 0), max(y0 - 4, 0), min(x0 + int(110 * scale) + 8, width), min(y0 + 18, height))
        image.paste(image.crop(box).filter(ImageFilter.GaussianBlur(3)), box[:2])
    image = image.filter(ImageFilter.BoxBlur(rng.uniform(0.6, 1.0) * scale))
    # Luminance noise: a random window of a fixed noise field (drawing fresh normals for
    # every pixel costs more than the rest of the camera model).
    noise_field = _noise_field((width, height))
    oy, ox = int(rng.integers(0, height)), int(rng.integers(0, width))
    gain = int(rng.integers(4, 13))  # sigma = gain / 2 grey levels
    noise = (noise_field[oy:oy + height, ox:ox + width] * gain) >> 4
    out = np.asarray(image, dtype=np.int16) + noise[:, :, None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


@lru_cache(maxsize=8)
def _noise_field(size: tuple[int, int]) -> np.ndarray:
    """Standard normal noise x 8 (int16) on a (2H, 2W) field; fixed seed, so frames stay
    a function of their own seed."""
    width, height = size
    field = np.random.default_rng(20210611).standard_normal((2 * height, 2 * width)) * 8
    return np.round(field).astype(np.int16)
