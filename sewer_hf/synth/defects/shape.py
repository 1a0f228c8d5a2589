"""Defects that bend the pipe itself: DE (deformation) and FS (displaced joint).

Both re-trace the rays of the pixels inside a joint ring against a changed wall and repaint
them from the wall tile, so rings, texture and light stay consistent with the new shape.
"""
from __future__ import annotations

import numpy as np

from sewer_hf.synth.defects._draw import nearest_joint
from sewer_hf.synth.pipe import Scene, regather


def _inner_box(scene: Scene, rho_max: float) -> tuple[slice, slice]:
    """Pixel box around the vanishing point containing display radius rho_max."""
    rx, ry = rho_max * scene.sx + 2, rho_max * scene.sy + 2
    rows = slice(int(max(scene.vy - ry, 0)), int(min(scene.vy + ry, scene.height)))
    cols = slice(int(max(scene.vx - rx, 0)), int(min(scene.vx + rx, scene.width)))
    return rows, cols


def paint_deformation(scene: Scene, rng: np.random.Generator) -> None:
    """DE: from some depth on the round pipe is squashed into an ellipse (rings, the dark
    centre and texture all become oval)."""
    z_start = float(rng.uniform(0.9, 1.8))
    amount = float(rng.uniform(0.2, 0.34))
    angle = float(rng.normal(0.0, 0.35))  # squashed mostly from the top
    rows, cols = _inner_box(scene, scene.focal / z_start)
    u, v = scene.grids.u[rows, cols], scene.grids.v[rows, cols]
    rho = np.hypot(u, v)
    mask = rho < scene.focal / z_start
    u, v, rho = u[mask], v[mask], rho[mask]
    ramp = np.clip((scene.focal / rho - z_start) / 1.2, 0, 1) * amount
    c, s = np.cos(angle), np.sin(angle)
    p, q = c * u + s * v, -s * u + c * v
    p, q = p / (1 + ramp), q / (1 - ramp)
    theta = np.arctan2(q, p) + angle
    z_img = 1.0 / np.hypot(p, q)
    regather(scene, rows, cols, mask, theta, z_img)
    # The buckled wall folds: a dark crease around the squashed section, even on plain liners.
    z_fold = z_start + float(rng.uniform(0.4, 0.8))
    crease = np.abs(z_img * scene.focal - z_fold) < 0.06 * z_fold
    box = scene.pixels[rows, cols]
    box[mask] = np.where(crease[:, None], box[mask] // 4, box[mask])


def paint_displaced_joint(scene: Scene, rng: np.random.Generator) -> None:
    """FS: the pipe beyond a joint is shifted sideways: a bright step face shows on one side
    of the ring, a dark gap on the other, and the rings beyond are off-centre."""
    zj = nearest_joint(scene, rng, 1.0, 2.0)
    shift = float(rng.uniform(0.2, 0.36))
    direction = float(rng.uniform(0, 2 * np.pi))
    ex, ey = shift * np.cos(direction), shift * np.sin(direction)
    rows, cols = _inner_box(scene, scene.focal / zj)
    u, v = scene.grids.u[rows, cols], scene.grids.v[rows, cols]
    inside = np.hypot(u, v) < scene.focal / zj
    dx, dy = u[inside] / scene.focal, v[inside] / scene.focal  # ray directions
    # Where the ray crosses the joint plane, relative to the far pipe's axis.
    qx, qy = dx * zj - ex, dy * zj - ey
    face = qx * qx + qy * qy > 1.0
    # Otherwise: depth where the ray meets the shifted wall, |z d - e| = 1.
    dd = dx * dx + dy * dy
    de = dx * ex + dy * ey
    z = (de + np.sqrt(np.maximum(de * de - dd * (shift * shift - 1.0), 0))) / np.maximum(dd, 1e-9)
    z = np.where(face, zj, np.maximum(z, zj))
    theta = np.where(face, np.arctan2(qy, qx), np.arctan2(z * dy - ey, z * dx - ex))
    regather(scene, rows, cols, inside, theta, z / scene.focal)
    box = scene.pixels[rows, cols]
    lit = box[inside].astype(np.float32)
    # Step face: faces the camera lamp, so brighter; gap on the far side: in shadow.
    gap_side = np.cos(theta - direction) > 0.3
    gap = (~face) & gap_side & (z < zj + 0.6 * shift * zj + 0.15)
    gain = np.where(face, 1.6, np.where(gap, 0.12, 1.0)).astype(np.float32)
    lift = np.where(face, 35.0, 0.0).astype(np.float32)
    box[inside] = np.clip(lit * gain[:, None] + lift[:, None], 0, 255).astype(np.uint8)
