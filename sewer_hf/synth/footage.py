"""Synthetic inspection footage: a camera travelling through a pipe, defects at known times.

The video is cut into pipe *sections* of `SECTION_S` seconds. Each section is one frame rendered
by `sewer_hf.synth.render_frame` (its own random stream, so a new stretch of pipe); within the
section the camera moves forward (a slow centred zoom), then the next section starts. Defect
events span whole sections: for an event the section is rendered with that class, otherwise it
is normal pipe. The events are large, salient classes by default (`FOOTAGE_CLASSES`), so that a
small model trained on synthetic frames can find them.

    write_footage(out, seconds, seed, fps=10, size=(352, 288)) -> list of events
    F.mp4 + F.events.json  ({"events": [{"class", "name", "start", "end"}, ...], ...})

Same seed, same frames and the same events file.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sewer_hf.data.labels import CLASS_NAMES, CLASSES
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.synth import render_frame
from sewer_hf.synth.dataset import parse_size
from sewer_hf.synth.render import check_size

SECTION_S = 1.0  # one stretch of pipe per second
FORWARD_ZOOM = 0.2  # the camera's forward motion over one section (1.0 -> 1.2 zoom)
EVENT_SECTIONS = (2, 4)  # an event lasts 2-4 s ...
GAP_SECTIONS = (2, 4)  # ... with 2-4 s of normal pipe before it
# Big, high-contrast signatures of the synthetic renderer (roots, deposit mound, obstacle box,
# branch pipe, reinstatement cut): visible even at the 32-64 px of a smoke-trained model.
FOOTAGE_CLASSES: tuple[str, ...] = ("RO", "AF", "FO", "GR", "OS")
DEFAULT_FPS = 10
DEFAULT_SIZE = (352, 288)
MAX_SECONDS = 3600
CODECS = ("libx264", "mpeg4")  # first one the installed PyAV/FFmpeg can encode


@dataclass(frozen=True)
class FootageEvent:
    code: str
    start: float
    end: float

    def as_dict(self) -> dict:
        return {"class": self.code, "name": CLASS_NAMES[self.code], "start": self.start, "end": self.end}


def events_path(video_path: str | Path) -> Path:
    """F.mp4 -> F.events.json (next to the video)."""
    p = Path(video_path)
    return p.with_name(p.stem + ".events.json")


def plan_events(n_sections: int, rng: np.random.Generator,
                classes: Sequence[str] = FOOTAGE_CLASSES) -> list[FootageEvent]:
    """Alternate normal gaps and single-class events over `n_sections`; classes cycle in a
    shuffled order so a short video still shows several of them."""
    events: list[FootageEvent] = []
    order: list[str] = []
    section = 0
    while True:
        section += int(rng.integers(GAP_SECTIONS[0], GAP_SECTIONS[1] + 1))
        length = int(rng.integers(EVENT_SECTIONS[0], EVENT_SECTIONS[1] + 1))
        if section + length > n_sections:
            return events
        if not order:
            order = [classes[i] for i in rng.permutation(len(classes))]
        events.append(FootageEvent(order.pop(0), section * SECTION_S, (section + length) * SECTION_S))
        section += length


def section_labels(events: Sequence[FootageEvent], n_sections: int) -> list[list[str]]:
    labels: list[list[str]] = [[] for _ in range(n_sections)]
    for ev in events:
        for s in range(int(round(ev.start / SECTION_S)), int(round(ev.end / SECTION_S))):
            labels[s].append(ev.code)
    return labels


def iter_frames(seconds: float, seed: int, fps: int = DEFAULT_FPS, size: tuple[int, int] = DEFAULT_SIZE,
                classes: Sequence[str] = FOOTAGE_CLASSES):
    """(events, generator of PIL frames) — the frames are rendered one at a time."""
    from PIL import Image

    n_sections = int(np.ceil(seconds / SECTION_S))
    root = np.random.SeedSequence(int(seed))
    plan_rng, water_rng = (np.random.default_rng(s) for s in root.spawn(2))
    events = plan_events(n_sections, plan_rng, classes)
    labels = section_labels(events, n_sections)
    water = int(water_rng.integers(0, 15))  # the same sewer all along: one water level, +-5 %
    n_frames = int(round(seconds * fps))
    per_section = int(round(SECTION_S * fps))
    width, height = size

    def frames() -> Iterator[Image.Image]:
        base, current = None, -1
        for i in range(n_frames):
            section = min(i // per_section, n_sections - 1)
            if section != current:
                rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, section)))
                level = int(np.clip(water + rng.integers(-5, 6), 0, 100))
                base, current = render_frame(labels[section], level, size, rng), section
            zoom = 1.0 + FORWARD_ZOOM * (i % per_section) / per_section
            w, h = width / zoom, height / zoom
            box = ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
            yield base.resize(size, Image.Resampling.BILINEAR, box=box)

    return events, frames()


def pick_codec() -> str:
    import av

    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not built into this FFmpeg
            continue
    raise DataError(f"this PyAV build can encode none of {', '.join(CODECS)}")


def write_footage(out: str | Path, seconds: float, seed: int = 0, fps: int = DEFAULT_FPS,
                  size: tuple[int, int] = DEFAULT_SIZE, classes: Sequence[str] = FOOTAGE_CLASSES,
                  progress: bool = False) -> list[dict]:
    """Encode the footage to `out` (container from the suffix, e.g. .mp4) and write
    `events_path(out)`; returns the ground-truth events."""
    import av
    from tqdm.auto import tqdm

    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigError(f"seconds={seconds}: expected a duration in (0, {MAX_SECONDS}]")
    if int(fps) != fps or not 1 <= fps <= 60:
        raise ConfigError(f"fps={fps}: expected a whole number of frames per second in 1..60")
    width, height = check_size(size)
    if width % 2 or height % 2:
        raise ConfigError(f"size {width}x{height}: the encoder (yuv420p) needs even width and height")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ConfigError(f"classes {list(classes)}: expected Sewer-ML codes from {', '.join(CLASSES)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    events, frames = iter_frames(seconds, seed, int(fps), (width, height), classes)
    codec = pick_codec()
    with av.open(str(out), "w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            # constant quantiser: x264's rate control (crf/mb-tree lookahead) depends on thread
            # timing, so its bytes differ from run to run; qp gives the same file every time
            stream.options = {"qp": "26", "preset": "veryfast"}
        else:
            stream.bit_rate = 1_500_000
        stream.codec_context.thread_count = 1
        for image in tqdm(frames, total=int(round(seconds * fps)), desc="footage", unit="frame",
                          disable=not progress):
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush
    truth = [ev.as_dict() for ev in events]
    events_path(out).write_text(json.dumps({
        "video": out.name, "seconds": float(seconds), "fps": int(fps), "size": [width, height], "seed": int(seed),
        "codec": codec, "events": truth}, indent=2) + "\n")
    return truth


def read_events(path: str | Path) -> list[dict]:
    """Ground-truth events of a footage file (F.mp4 or F.events.json)."""
    p = Path(path)
    p = p if p.name.endswith(".events.json") else events_path(p)
    try:
        data = json.loads(p.read_text())
        return [{"class": e["class"], "start": float(e["start"]), "end": float(e["end"])} for e in data["events"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: expected a footage events file with events[class, start, end] ({exc})") from None


def add_synth_footage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="video file to write, e.g. footage.mp4 (+ footage.events.json)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS)
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="WxH, default 352x288")
    parser.add_argument("--classes", default=",".join(FOOTAGE_CLASSES),
                        help=f"comma-separated defect codes to show (default {','.join(FOOTAGE_CLASSES)})")
    parser.set_defaults(func=run_synth_footage)


def run_synth_footage(args: argparse.Namespace) -> int:
    classes = [c.strip().upper() for c in args.classes.split(",") if c.strip()]
    events = write_footage(args.out, args.seconds, args.seed, args.fps, args.size, classes, progress=True)
    print(f"wrote {args.out} ({args.seconds:g} s at {args.fps} fps) and {events_path(args.out)} "
          f"({len(events)} events: {', '.join(e['class'] for e in events)})")
    return 0
