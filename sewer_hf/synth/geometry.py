"""Camera geometry of a CCTV frame looking along a round pipe.

The camera sits near the pipe axis and looks along it. A point of the pipe wall at angle
``theta`` (0 = 3 o'clock, pi/2 = 6 o'clock: image y points down) and depth ``z`` (in pipe
radii) appears at display coordinates ``(cos theta, sin theta) * focal / z`` around the
vanishing point, so every pixel at display radius ``rho`` sees the wall at depth
``focal / rho``. Frames are stored without aspect correction (the real set is shown at 4:3),
so one display unit is ``H/2`` pixels vertically and ``3W/8`` pixels horizontally.

Per frame size we precompute, once, coordinate grids on a canvas twice the frame size with
the vanishing point at its centre; a frame whose vanishing point sits elsewhere is a slice
of that canvas (no per-frame trigonometry). Everything that depends only on wall
coordinates (texture, joints, lighting) is painted into a small (angle x log-depth) *tile*
and copied to the pixels with one gather through the precomputed tile index.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DISPLAY_ASPECT = 4 / 3
# Tile resolution: angle bins around the pipe, log-spaced depth bins between the nearest
# wall a frame corner can show and a depth where the camera light has died out.
TILE_THETA, TILE_Z = 360, 192
Z_IMG_NEAR, Z_IMG_FAR = 0.42, 40.0
_LOG_NEAR, _LOG_SPAN = np.log(Z_IMG_NEAR), np.log(Z_IMG_FAR / Z_IMG_NEAR)
TILE_Z_EDGES = Z_IMG_NEAR * (Z_IMG_FAR / Z_IMG_NEAR) ** (np.arange(TILE_Z + 1) / TILE_Z)
TILE_Z_CENTRES = np.sqrt(TILE_Z_EDGES[:-1] * TILE_Z_EDGES[1:])
TILE_THETA_CENTRES = (np.arange(TILE_THETA) + 0.5) * (2 * np.pi / TILE_THETA)


def tile_index(theta: np.ndarray, z_img: np.ndarray) -> np.ndarray:
    """Flat index into a (TILE_THETA, TILE_Z) tile for wall angle and image depth (1/rho)."""
    ti = (np.mod(theta, 2 * np.pi) * (TILE_THETA / (2 * np.pi))).astype(np.int32) % TILE_THETA
    zi = ((np.log(np.maximum(z_img, 1e-6)) - _LOG_NEAR) * (TILE_Z / _LOG_SPAN)).astype(np.int32)
    np.clip(zi, 0, TILE_Z - 1, out=zi)
    return ti * TILE_Z + zi


@dataclass(frozen=True)
class Canvas:
    """Grids on a (2H, 2W) canvas whose centre is the vanishing point."""
    width: int
    height: int
    px_per_unit_x: float
    px_per_unit_y: float
    u: np.ndarray          # display x, float32
    v: np.ndarray          # display y (down), float32
    sin_theta: np.ndarray  # v / rho: where the water plane is (a wedge from the vanishing point)
    index: np.ndarray      # int32 flat tile index

    def view(self, vx: int, vy: int) -> "FrameGrids":
        """The grids of a frame whose vanishing point is at pixel (vx, vy)."""
        r0, c0 = self.height - vy, self.width - vx
        sl = (slice(r0, r0 + self.height), slice(c0, c0 + self.width))
        return FrameGrids(self.u[sl], self.v[sl], self.sin_theta[sl], self.index[sl])


@dataclass(frozen=True)
class FrameGrids:
    u: np.ndarray
    v: np.ndarray
    sin_theta: np.ndarray
    index: np.ndarray


@lru_cache(maxsize=8)
def canvas_for(size: tuple[int, int]) -> Canvas:
    width, height = size
    sx, sy = width * 3 / 8, height / 2  # pixels per display unit (4:3 display)
    ys = (np.arange(2 * height, dtype=np.float32) - height + 0.5) / sy
    xs = (np.arange(2 * width, dtype=np.float32) - width + 0.5) / sx
    u = np.broadcast_to(xs[None, :], (2 * height, 2 * width))
    v = np.broadcast_to(ys[:, None], (2 * height, 2 * width))
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    index = tile_index(theta, 1.0 / rho)
    sin_theta = (v / rho).astype(np.float32)
    for arr in (sin_theta, index):
        arr.setflags(write=False)
    return Canvas(width, height, sx, sy, np.ascontiguousarray(u), np.ascontiguousarray(v),
                  sin_theta, index)
