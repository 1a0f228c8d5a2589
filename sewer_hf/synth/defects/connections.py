"""Lateral connections, each with its own opening: GR branch pipe (clean socket with the
branch's tube inside), PH chiseled (jagged, broken edge), PB drilled (small clean round hole),
OS reinstatement cut (saw-tooth edge in a pale liner, flap), OP transition profile (coloured
collar, square inner opening), OK construction change (a pipe stub protruding into the pipe)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sewer_hf.synth.defects._draw import DARK_HOLE, centroid, scale_about, upper_theta, wall_blob
from sewer_hf.synth.pipe import Scene

COLLAR_COLOURS = ((215, 110, 40), (190, 55, 45), (70, 150, 80), (60, 90, 180), (220, 200, 60))


def _place(scene: Scene, rng: np.random.Generator, radius: tuple[float, float], depth=(0.85, 1.7)):
    """Angle, depth and radius of an opening: near enough to be seen on small thumbnails."""
    r = float(rng.uniform(*radius))
    return upper_theta(scene, rng), float(rng.uniform(max(depth[0], 0.55 + r), depth[1] + 0.5 * r)), r


def _outward(scene: Scene, points, k: float):
    """The same outline pushed away from the vanishing point (deeper inside a branch)."""
    cx, cy = centroid(points)
    dx, dy = (cx - scene.vx) * (k - 1), (cy - scene.vy) * (k - 1)
    return scale_about(points, cx, cy, 0.62, dx, dy)


def paint_branch_pipe(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0, z0, r = _place(scene, rng, (0.38, 0.55))
    outer = wall_blob(scene, None, theta0, z0, r * 1.12, 32)
    draw.polygon(outer, fill=scene.shade(scene.rgb, z0, 1.5))
    hole = wall_blob(scene, None, theta0, z0, r, 32)
    draw.polygon(hole, fill=scene.shade(scene.rgb, z0, 0.45))
    draw.polygon(_outward(scene, hole, 1.12), fill=scene.shade(scene.rgb, z0, 0.2))
    cx, cy = centroid(hole)
    draw.polygon(scale_about(_outward(scene, hole, 1.2), cx, cy, 0.55), fill=DARK_HOLE)


def paint_chiseled(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0, z0, r = _place(scene, rng, (0.22, 0.4))
    rubble = wall_blob(scene, rng, theta0, z0, r * 1.35, 30, 0.6)
    draw.polygon(rubble, fill=scene.shade((205, 200, 190), z0, 1.1))
    draw.polygon(wall_blob(scene, rng, theta0, z0, r, 30, 0.75), fill=DARK_HOLE)
    for _ in range(int(rng.integers(3, 7))):  # broken pieces around the edge
        a = rng.uniform(0, 2 * np.pi)
        draw.polygon(wall_blob(scene, rng, theta0 + 1.4 * r * np.cos(a), z0 + 1.4 * r * np.sin(a),
                               r * rng.uniform(0.12, 0.25), 6, 0.9), fill=scene.shade((185, 178, 165), z0, 1.0))


def paint_drilled(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0, z0, r = _place(scene, rng, (0.2, 0.3), depth=(0.85, 1.4))
    draw.polygon(wall_blob(scene, None, theta0, z0, r * 1.08, 28), fill=scene.shade(scene.rgb, z0, 1.5))
    hole = wall_blob(scene, None, theta0, z0, r, 28)
    draw.polygon(hole, fill=DARK_HOLE)


def paint_reinstatement_cut(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0, z0, r = _place(scene, rng, (0.26, 0.4))
    liner = (228, 226, 218)
    draw.polygon(wall_blob(scene, None, theta0, z0, r * 1.45, 32), fill=scene.shade(liner, z0, 1.1))
    teeth = int(rng.integers(7, 12)) * 2
    a = np.linspace(0, 2 * np.pi, teeth, endpoint=False)
    rr = r * np.where(np.arange(teeth) % 2 == 0, 1.0, 0.78)
    x, y = scene.project(theta0 + rr * np.cos(a), np.maximum(z0 + rr * np.sin(a), 0.5))
    draw.polygon(list(zip(x.tolist(), y.tolist())), fill=DARK_HOLE)
    # A flap of liner left hanging over part of the opening.
    start = rng.uniform(0, 2 * np.pi)
    arc = np.linspace(start, start + rng.uniform(1.2, 2.2), 10)
    fx, fy = scene.project(theta0 + r * np.cos(arc), z0 + r * np.sin(arc))
    ix, iy = scene.project(theta0 + 0.45 * r * np.cos(arc[::-1]), z0 + 0.45 * r * np.sin(arc[::-1]))
    draw.polygon(list(zip(np.r_[fx, ix].tolist(), np.r_[fy, iy].tolist())), fill=scene.shade(liner, z0, 0.95))


def paint_transition_profile(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0, z0, r = _place(scene, rng, (0.28, 0.45))
    collar = COLLAR_COLOURS[int(rng.integers(len(COLLAR_COLOURS)))]
    draw.polygon(wall_blob(scene, None, theta0, z0, r, 32), fill=scene.shade(collar, z0, 1.3))
    # The branch has another profile: a square inner opening inside the round collar.
    half = r * 0.55
    corners_t = theta0 + np.array([-half, half, half, -half])
    corners_z = z0 + np.array([-half, -half, half, half])
    x, y = scene.project(corners_t, corners_z)
    draw.polygon(list(zip(x.tolist(), y.tolist())), fill=DARK_HOLE)


def paint_construction_change(scene: Scene, image: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    theta0 = upper_theta(scene, rng)
    z0 = float(rng.uniform(1.0, 2.2))
    ppr = scene.px_per_radius(z0)
    wx, wy = (float(c) for c in scene.project(theta0, z0))
    reach = float(rng.uniform(0.25, 0.45))
    ix, iy = scene.vx + (wx - scene.vx) * (1 - reach), scene.vy + (wy - scene.vy) * (1 - reach)
    ax, ay = ix - wx, iy - wy
    norm = max(np.hypot(ax, ay), 1e-6)
    nx, ny = -ay / norm, ax / norm
    half = ppr * rng.uniform(0.16, 0.28)
    draw.polygon(wall_blob(scene, rng, theta0, z0, rng.uniform(0.3, 0.45), 20, 0.5),
                 fill=scene.shade((175, 172, 160), z0, 1.0))  # mortar collar where it enters
    stub = (165, 95, 55) if scene.material != "clay" else (150, 150, 145)
    body = [(wx + nx * half, wy + ny * half), (ix + nx * half, iy + ny * half),
            (ix - nx * half, iy - ny * half), (wx - nx * half, wy - ny * half)]
    draw.polygon(body, fill=scene.shade(stub, z0, 1.3))
    # The stub's open end: an ellipse across the pipe axis, rim lit, inside dark.
    a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ux, uy = ax / norm, ay / norm
    for k, colour in ((1.0, scene.shade(stub, z0, 1.6)), (0.72, DARK_HOLE)):
        ex = ix + k * half * (np.cos(a) * nx + 0.45 * np.sin(a) * ux)
        ey = iy + k * half * (np.cos(a) * ny + 0.45 * np.sin(a) * uy)
        draw.polygon(list(zip(ex.tolist(), ey.tolist())), fill=colour)
