"""Defects on the wall surface: RB cracks, OB surface damage, PF production error,
BE attached deposits, IN infiltration. Shapes are laid out in wall coordinates
(angle, depth) and projected, so they shrink and converge with perspective."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sewer_hf.synth.defects._draw import (
    nearest_joint,
    pick_theta,
    textured_fill,
    upper_theta,
    wall_blob,
)
from sewer_hf.synth.pipe import Scene

CRACK_RGB = (16, 14, 12)


def _walk(rng: np.random.Generator, theta0: float, z0: float, heading: float, steps: int,
          step: float, wiggle: float) -> tuple[np.ndarray, np.ndarray]:
    """A jagged random walk on the wall (heading 0 = around the pipe, pi/2 = deeper)."""
    angles = heading + np.cumsum(rng.normal(0, wiggle, steps))
    theta = theta0 + np.concatenate([[0], np.cumsum(np.cos(angles) * step)])
    z = np.maximum(z0 + np.concatenate([[0], np.cumsum(np.sin(angles) * step)]), 0.55)
    return theta, z


def paint_cracks(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """RB: dark branching cracks near the camera, sometimes with a broken-out hole."""
    for _ in range(int(rng.integers(1, 3))):
        for _ in range(8):  # start inside the frame
            theta0, z0 = pick_theta(scene, rng), float(rng.uniform(0.8, 1.6))
            x0, y0 = scene.project(theta0, z0)
            if 0 <= x0 < scene.width and 0 <= y0 < scene.height:
                break
        heading = float(rng.choice([0.0, np.pi / 2, -np.pi / 2, np.pi])) + rng.normal(0, 0.3)
        width = max(2, int(round(scene.px_per_radius(z0) * rng.uniform(0.035, 0.06))))
        theta, z = _walk(rng, theta0, z0, heading, int(rng.integers(14, 28)), 0.07, 0.45)
        x, y = scene.project(theta, z)
        draw.line(list(zip(x.tolist(), y.tolist())), fill=CRACK_RGB, width=width, joint="curve")
        for _ in range(int(rng.integers(2, 5))):  # branches
            i = int(rng.integers(1, len(theta)))
            bt, bz = _walk(rng, theta[i], z[i], heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.3),
                           int(rng.integers(5, 12)), 0.06, 0.5)
            bx, by = scene.project(bt, bz)
            draw.line(list(zip(bx.tolist(), by.tolist())), fill=CRACK_RGB, width=max(1, width * 2 // 3))
        if rng.random() < 0.35:  # a break: a piece of wall missing
            i = int(rng.integers(0, len(theta)))
            draw.polygon(wall_blob(scene, rng, theta[i], z[i], rng.uniform(0.1, 0.2), 14, 0.8), fill=CRACK_RGB)


def paint_surface_damage(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """OB: a rough, pitted patch with exposed aggregate (strong mottling, speckles)."""
    for _ in range(int(rng.integers(1, 3))):
        theta0, z0 = pick_theta(scene, rng), float(rng.uniform(0.85, 2.0))
        radius = float(rng.uniform(0.3, 0.6))
        poly = wall_blob(scene, rng, theta0, z0, radius, 28, 0.7, squash=rng.uniform(1.0, 2.0))
        base = scene.rgb * float(scene.light(z0)) * rng.uniform(0.55, 0.8)
        textured_fill(image, poly, base, rng, contrast=0.45, cell_px=max(2.0, scene.px_per_radius(z0) * 0.05),
                      speckle=0.8)


def paint_production_error(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """PF: a bulge running along the pipe: a lit ridge with a dark shadow beside it."""
    theta0 = pick_theta(scene, rng)
    z1 = float(rng.uniform(0.7, 1.2))
    z_edges = np.linspace(z1, z1 + rng.uniform(1.5, 4.0), 7)
    width = float(rng.uniform(0.09, 0.16))
    side = float(rng.choice([-1.0, 1.0]))
    for za, zb in zip(z_edges[:-1], z_edges[1:]):
        zm = 0.5 * (za + zb)
        for t0, t1, gain in ((0.0, width, 1.9), (width, 2.2 * width, 0.3)):
            ta, tb = theta0 + side * t0, theta0 + side * t1
            x, y = scene.project([ta, ta, tb, tb], [za, zb, zb, za])
            draw.polygon(list(zip(x.tolist(), y.tolist())), fill=scene.shade(scene.rgb, zm, gain))


def paint_attached_deposits(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """BE: pale lumpy crusts (lime, grease) stuck to the wall, often along the water line."""
    along_waterline = scene.water_threshold <= 1.0 and rng.random() < 0.6
    crust = np.array([rng.uniform(200, 235), rng.uniform(190, 225), rng.uniform(140, 200)])
    for _ in range(int(rng.integers(2, 6))):
        if along_waterline:
            base = np.arcsin(np.clip(scene.water_threshold, -1, 1))
            theta0 = float(rng.choice([base, np.pi - base]) + rng.uniform(-0.25, 0.05) * np.sign(np.cos(base) + 1e-9))
        else:
            theta0 = pick_theta(scene, rng)
        z0 = float(rng.uniform(0.8, 2.4))
        poly = wall_blob(scene, rng, theta0, z0, rng.uniform(0.14, 0.32), 20, 0.6, squash=rng.uniform(1, 2.5))
        shadow = [(x + 2, y + 3) for x, y in poly]
        draw.polygon(shadow, fill=scene.shade(scene.rgb, z0, 0.3))
        textured_fill(image, poly, crust * min(float(scene.light(z0)) * 1.15, 1.1), rng, contrast=0.2,
                      cell_px=max(2.0, scene.px_per_radius(z0) * 0.04))


def paint_infiltration(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """IN: water running in: glistening streaks down the wall from a joint, falling drips."""
    z0 = nearest_joint(scene, rng, 0.9, 2.2)
    theta0 = upper_theta(scene, rng)
    bottom = np.pi / 2
    # Run around the wall towards the bottom along the shorter way.
    delta = (bottom - theta0 + np.pi) % (2 * np.pi) - np.pi
    steps = 16
    theta = theta0 + np.linspace(0, delta * rng.uniform(0.6, 0.95), steps)
    z = z0 + np.cumsum(rng.normal(0, 0.03, steps))
    x, y = scene.project(theta, z)
    pts = list(zip(x.tolist(), y.tolist()))
    ppr = scene.px_per_radius(z0)
    draw.line(pts, fill=scene.shade(scene.rgb, z0, 0.45), width=max(3, int(ppr * 0.16)), joint="curve")
    draw.line(pts, fill=(235, 238, 240), width=max(2, int(ppr * 0.05)), joint="curve")
    # Drips falling from the source towards the pipe floor.
    sx, sy = pts[0]
    for _ in range(int(rng.integers(3, 8))):
        dx = rng.normal(0, ppr * 0.08)
        ya = sy + rng.uniform(0.05, 0.6) * ppr
        draw.line([(sx + dx, ya), (sx + dx, ya + rng.uniform(0.05, 0.18) * ppr)], fill=(225, 230, 235),
                  width=max(1, int(ppr * 0.03)))
    if rng.random() < 0.5:  # a jet
        draw.line([(sx, sy), (sx + rng.normal(0, ppr * 0.1), sy + ppr * rng.uniform(0.5, 1.0))],
                  fill=(215, 222, 228), width=max(2, int(ppr * 0.04)))
