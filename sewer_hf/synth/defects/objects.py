"""Things inside the pipe: AF settled deposits (a mound on the floor), FO an obstacle,
IS intruding sealing ring (a black rubber strip sagging from a joint), RO roots (strands
hanging from a joint)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sewer_hf.synth.defects._draw import nearest_joint, pick_theta, textured_fill
from sewer_hf.synth.pipe import Scene

OBSTACLE_COLOURS = ((150, 62, 42), (128, 126, 118), (225, 225, 218), (50, 75, 160), (40, 40, 38))


def paint_settled_deposits(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """AF: a sand/gravel mound on the floor; its top meets the wall where sin(theta) = 1 - 2h."""
    water = max(scene.water_level, 0) / 100.0
    peak = min(water + rng.uniform(0.12, 0.25), 0.55)
    z1 = float(rng.uniform(0.8, 1.6))
    z = np.linspace(z1, z1 + rng.uniform(1.5, 4.0), 14)
    t = (z - z[0]) / (z[-1] - z[0])
    h = np.maximum(peak * np.sin(np.pi * t) ** 0.6 * (1 + rng.normal(0, 0.06, len(z))), 0.02)
    theta_r = np.arcsin(np.clip(1 - 2 * h, -1, 1))
    rx, ry = scene.project(theta_r, z)
    lx, ly = scene.project(np.pi - theta_r, z)
    poly = list(zip(np.r_[rx, lx[::-1]].tolist(), np.r_[ry, ly[::-1]].tolist()))
    sand = np.array([rng.uniform(120, 165), rng.uniform(105, 140), rng.uniform(70, 100)])
    near, far = float(scene.light(z[0])), float(scene.light(z[-1]))
    textured_fill(image, poly, sand, rng, contrast=0.35, cell_px=max(2.0, scene.px_per_radius(z1) * 0.05),
                  speckle=0.5, gradient=(far * 1.1, near * 1.2))


def paint_obstacle(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """FO: a brick, stone or piece of rubbish lying in the pipe."""
    z0 = float(rng.uniform(1.0, 2.0))
    ppr = scene.px_per_radius(z0)
    fx, fy = (float(c) for c in scene.project(np.pi / 2, z0))
    fx += rng.uniform(-0.3, 0.3) * ppr
    fy -= max(scene.water_level, 0) / 100.0 * 2 * ppr * 0.5  # rests partly under water
    w, h = ppr * rng.uniform(0.45, 0.75), ppr * rng.uniform(0.3, 0.55)
    colour = OBSTACLE_COLOURS[int(rng.integers(len(OBSTACLE_COLOURS)))]
    draw.ellipse([fx - w * 0.6, fy - h * 0.12, fx + w * 0.6, fy + h * 0.15], fill=(20, 18, 15))  # shadow
    if rng.random() < 0.5:  # a block: lit top face and darker front
        top = h * 0.35
        draw.polygon([(fx - w / 2, fy - h), (fx + w / 2, fy - h), (fx + w / 2 - w * 0.12, fy - h - top),
                      (fx - w / 2 + w * 0.12, fy - h - top)], fill=scene.shade(colour, z0, 1.5))
        draw.rectangle([fx - w / 2, fy - h, fx + w / 2, fy], fill=scene.shade(colour, z0, 0.95))
    else:  # a rounded stone / bag
        a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        r = 1 + 0.15 * (rng.random(16) - 0.5)
        xs, ys = fx + w / 2 * r * np.cos(a), fy - h / 2 + h / 2 * r * np.sin(a)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=scene.shade(colour, z0, 1.1))
        draw.ellipse([fx - w * 0.25, fy - h * 0.85, fx + w * 0.05, fy - h * 0.6], fill=scene.shade(colour, z0, 1.6))


def paint_intruding_seal(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """IS: a black rubber sealing ring pushed out of a joint, sagging into the pipe."""
    zj = nearest_joint(scene, rng, 0.9, 1.7)
    centre = pick_theta(scene, rng)
    span = float(rng.uniform(1.4, 2.6))
    sag = float(rng.uniform(0.12, 0.3))
    t = np.linspace(0, 1, 24)
    theta = centre - span / 2 + span * t
    k = (scene.focal / zj) * (1 - sag * np.sin(np.pi * t))
    x, y = scene.vx + scene.sx * np.cos(theta) * k, scene.vy + scene.sy * np.sin(theta) * k
    ppr = scene.px_per_radius(zj)
    pts = list(zip(x.tolist(), y.tolist()))
    draw.line(pts, fill=(20, 20, 22), width=max(3, int(ppr * rng.uniform(0.09, 0.14))), joint="curve")
    hi = [(px - 0.25 * (px - scene.vx) * 0.06, py - 0.25 * (py - scene.vy) * 0.06) for px, py in pts]
    draw.line(hi, fill=(95, 95, 100), width=max(1, int(ppr * 0.02)))


def paint_roots(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """RO: a tangle of pale root strands hanging down from a joint in the upper pipe."""
    zj = nearest_joint(scene, rng, 0.9, 1.8)
    centre = float(rng.uniform(-np.pi + 0.5, -0.5))
    ppr = scene.px_per_radius(zj)
    n = int(rng.integers(25, 50))
    starts = centre + rng.uniform(-0.45, 0.45, n)
    x0, y0 = scene.project(starts, np.full(n, zj))
    steps = 12
    length = ppr * rng.uniform(0.5, 1.0) / steps
    # Strands head downwards with a curl; cumulative sums give all points at once.
    heading = np.pi / 2 + rng.normal(0, 0.5, (n, 1)) + np.cumsum(rng.normal(0, 0.35, (n, steps)), axis=1)
    seg = length * rng.uniform(0.6, 1.3, (n, 1))
    xs = x0[:, None] + np.cumsum(np.cos(heading) * seg, axis=1)
    ys = y0[:, None] + np.cumsum(np.sin(heading) * seg, axis=1)
    colour = np.array([rng.uniform(150, 200), rng.uniform(120, 160), rng.uniform(80, 110)])
    mass = list(zip(x0.tolist(), y0.tolist()))
    if len(mass) > 2:  # dense mat where the roots come in
        draw.line(sorted(mass), fill=scene.shade(colour * 0.7, zj, 1.2), width=max(3, int(ppr * 0.12)))
    width = max(1, int(ppr * 0.025))
    for i in range(n):
        pts = [(float(x0[i]), float(y0[i]))] + list(zip(xs[i].tolist(), ys[i].tolist()))
        draw.line(pts, fill=scene.shade(colour * rng.uniform(0.8, 1.15), zj, 1.3), width=width)
