"""A grid of synthetic frames with their label codes underneath (docs, eyeballing).

    python -m sewer_hf.synth.contact_sheet docs/synthetic_contact_sheet.png
"""
from __future__ import annotations

import sys

import numpy as np
from PIL import Image, ImageDraw

from sewer_hf.data.labels import CLASSES
from sewer_hf.synth.render import render_frame

# One frame per signature plus common real combinations and a normal frame.
SHOWCASE: tuple[tuple[tuple[str, ...], int], ...] = (
    ((), 10), (("RB",), 5), (("OB", "FS"), 10), (("FS",), 0),
    (("DE",), 5), (("IS",), 10), (("RO",), 5), (("IN",), 2),
    (("AF",), 10), (("BE",), 20), (("FO",), 5), (("GR",), 10),
    (("PH", "OB"), 5), (("PB",), 0), (("OS",), 5), (("OP", "OK"), 10),
    (("OK",), 5), (("PF",), 10), ((), 30), (("RB", "OB", "FS", "AF"), 10),
)


def contact_sheet(items=SHOWCASE, size: tuple[int, int] = (352, 288), columns: int = 5, seed: int = 0,
                  caption_px: int = 16, scale: float = 0.75) -> Image.Image:
    """Render `items` ((class codes, water level) pairs) into a captioned grid."""
    width, height = int(size[0] * scale), int(size[1] * scale)
    rows = (len(items) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * (height + caption_px)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (codes, water) in enumerate(items):
        frame = render_frame(list(codes), water, size, np.random.default_rng([seed, k]))
        frame = frame.resize((width, height), Image.BILINEAR)
        x, y = (k % columns) * width, (k // columns) * (height + caption_px)
        sheet.paste(frame, (x, y))
        label = "+".join(c for c in CLASSES if c in codes) or "normal"
        draw.text((x + 6, y + height + 3), f"{label}   water {water}%", fill=(0, 0, 0))
    return sheet


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/synthetic_contact_sheet.png"
    # A 256-colour palette keeps the docs image small; the frames themselves are RGB.
    contact_sheet().quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out}")
