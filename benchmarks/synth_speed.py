"""Speed of the synthetic frame generator on one core.

    .venv/bin/python benchmarks/synth_speed.py [--quick] [--size 352x288]

Prints frames/s for: a plain PIL PNG encode of a noise image of the same size (baseline,
measured in the same run), rendering only, and render + PNG encode (what `generate_dataset`
does per frame), each with its ratio to the baseline. Target: >= 50 frames/s at 352x288.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from sewer_hf.synth.dataset import PNG_COMPRESS_LEVEL, frame_rng, make_frame, parse_size
from sewer_hf.synth.label_sampler import sample_labels
from sewer_hf.synth.render import render_frame


def rate(fn, n: int) -> float:
    fn(0)  # warm-up: builds the per-size grids
    start = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames (about 5 s)")
    ap.add_argument("--size", default="352x288")
    args = ap.parse_args()
    size = parse_size(args.size)
    n = 60 if args.quick else 400
    noise = Image.fromarray(np.random.default_rng(0).integers(90, 170, (size[1], size[0], 3), dtype=np.uint8))

    def encode_noise(i):
        noise.save(io.BytesIO(), format="PNG", compress_level=PNG_COMPRESS_LEVEL)

    def render_only(i):
        rng = frame_rng(0, i)
        labels, water = sample_labels(rng)
        render_frame(labels, water, size, rng)

    def render_normal(i):
        render_frame([], 10, size, frame_rng(0, i))

    def full(i):
        make_frame(0, i, size)

    base = rate(encode_noise, n)
    print(f"size {size[0]}x{size[1]}, {n} frames each, one process")
    print(f"baseline  PNG encode of a noise image : {base:7.1f} frames/s  (1.00x)")
    for name, fn in (("render, no defects", render_normal), ("render, real label mix", render_only),
                     ("render + PNG (dataset)", full)):
        r = rate(fn, n)
        print(f"{name:38s}: {r:7.1f} frames/s  ({r / base:.2f}x baseline)")


if __name__ == "__main__":
    main()
