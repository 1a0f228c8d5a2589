"""Scan inspection footage: stream-decode a video, classify sampled frames, find defect events.

    scan = scan_footage("inspection.mp4", SewerClassifier(model_dir), fps=2, smooth=3)
    write_report(scan, "report/")      # timeline.csv, events.json, timeline.png, report.html

* Decoding is streaming (PyAV): frames are decoded one packet at a time, one in every
  `1/fps` seconds is kept, resized to the model's input size and scored in batches of
  `batch_size`; only the batches in flight and one small JPEG thumbnail per sampled frame (in a
  temporary folder on disk) are kept, so memory does not grow with the video's length.
  Frames that no sample needs are skipped where nothing else is built from them (non-reference
  frames, FFmpeg's ``skip_frame``): the sampled frames and pixels are those of a full decode.
* Threads: this thread decodes; the classifier's `lanes` (one per core on a CPU) each
  convert, resize and score a batch on one thread, so 2 cores hold 2 busy lanes instead of a
  2-thread model stalled by a decode thread (`benchmarks/inference_cpu.py` measures both).
* Damaged packets are decoded strictly (FFmpeg `err_detect=explode`): a frame that does not
  decode cleanly is skipped and counted (`corrupt_frames`) instead of being passed on as
  error-concealed garbage. A file that cannot be opened, has no video stream, or yields no
  frame is a `DataError`.
* Smoothing: a centred moving average over `smooth` samples (odd; 1 = none); at the ends the
  window shrinks to the samples that exist. Centred, so an event is not shifted in time.
* Events, per class: the runs of samples whose smoothed score is >= the model's tuned
  threshold. A run covers [time of its first sample, time of its last sample + 1/fps); runs
  separated by at most `merge_gap` seconds are merged. Each event has its peak (smoothed)
  score and the time of that peak.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from sewer_hf.data import labels as L
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.inference.predict import SewerClassifier, add_precision_argument, add_thread_arguments, in_lanes
from sewer_hf.inference.report import write_report

DEFAULT_SAMPLE_FPS = 2.0
DEFAULT_SMOOTH = 3  # samples in the centred moving average (3 at 2 fps = 1.5 s)
DEFAULT_MERGE_GAP_S = 1.0  # merge runs of one class that are this close
DEFAULT_BATCH_SIZE = 32
THUMBNAIL_HEIGHT = 96
MAX_REPORT_THUMBNAILS = 48


@dataclass
class FootageInfo:
    path: str
    duration_s: Optional[float]  # None when the container does not say
    width: int
    height: int
    codec: str
    native_fps: Optional[float]


@dataclass
class DecodeStats:
    decoded: int = 0  # frames decoded (sampled or not)
    read: int = 0  # frames read from the file: decoded, or skipped as needed by no sample
    sampled: int = 0
    corrupt: int = 0  # packets that failed to decode, skipped
    last_frame_s: Optional[float] = None  # time of the last frame decoded (sampled or not)


@dataclass
class ScanResult:
    """Everything a report needs. `scores` are raw per-sample sigmoid scores, `smoothed` the
    moving average the events are computed from; both (n_samples, 17)."""

    source: str
    model: str
    info: FootageInfo
    sample_fps: float
    smooth: int
    merge_gap_s: float
    times: np.ndarray
    scores: np.ndarray
    smoothed: np.ndarray
    thresholds: np.ndarray
    events: dict[str, list[dict]]
    stats: DecodeStats
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # sample index -> JPEG bytes

    @property
    def flags(self) -> np.ndarray:
        """(n_samples, 17) bool: smoothed score >= threshold."""
        return self.smoothed >= self.thresholds[None, :]

    @property
    def duration_s(self) -> float:
        """The footage's duration as its container declares it (else the scanned span)."""
        if self.info.duration_s is not None:
            return float(self.info.duration_s)
        return self.scanned_s

    @property
    def scanned_s(self) -> float:
        """Seconds of footage actually decoded: up to the end of the last decoded frame (a
        truncated or damaged file stops short of its declared duration)."""
        last = self.stats.last_frame_s
        if last is None:
            last = float(self.times[-1]) if len(self.times) else 0.0
        frame = 1.0 / self.info.native_fps if self.info.native_fps else 1.0 / self.sample_fps
        end = last + frame
        return float(min(end, self.info.duration_s) if self.info.duration_s is not None else end)

    @property
    def coverage(self) -> Optional[float]:
        """scanned_s / the declared duration (None when the container declares none)."""
        if not self.info.duration_s:
            return None
        return min(1.0, self.scanned_s / float(self.info.duration_s))

    @property
    def coverage_warning(self) -> Optional[str]:
        """A sentence when the scan stopped short of the declared duration by more than one
        sample interval (a truncated or damaged file); None otherwise."""
        declared = self.info.duration_s
        if declared is None:
            return None
        slack = max(1.0 / self.sample_fps, 2.0 / self.info.native_fps if self.info.native_fps else 0.0)
        if declared - self.scanned_s <= slack:
            return None
        return (f"only {self.scanned_s:.1f} s of the declared {declared:.1f} s could be decoded "
                f"({100 * self.coverage:.0f} %); the file looks truncated or damaged after {self.scanned_s:.1f} s, "
                f"so nothing after that was scanned")

    def flat_events(self) -> list[dict]:
        """All events, each with its class code, sorted by start time."""
        out = [dict(ev, **{"class": code}) for code, evs in self.events.items() for ev in evs]
        return sorted(out, key=lambda e: (e["start"], L.CLASSES.index(e["class"])))


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------

def open_footage(path: str | Path):
    """(container, video stream, FootageInfo); a clear DataError for what cannot be scanned."""
    import av

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such video file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty (0 bytes), expected a video")
    try:
        container = av.open(str(p), "r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable video file ({exc})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DataError(f"{p}: has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    # strict decoding: a damaged packet raises (skipped and counted) instead of being concealed
    stream.codec_context.options = {"err_detect": "explode"}
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    rate = stream.average_rate or stream.guessed_rate
    info = FootageInfo(str(p), duration if duration and duration > 0 else None, stream.codec_context.width,
                       stream.codec_context.height, stream.codec_context.name, float(rate) if rate else None)
    return container, stream, info


def sample_frames(container, stream, info: FootageInfo, fps: float, stats: DecodeStats,
                  max_duration_s: Optional[float] = None) -> Iterator[tuple[float, "object"]]:
    """Yield (time in seconds from the start, av.VideoFrame) for one frame per 1/fps seconds:
    the earliest frame of each 1/fps slot.

    A frame that no slot needs and no other frame needs is not decoded: before each packet the
    decoder is told to skip non-reference frames (FFmpeg ``skip_frame=NONREF``) unless the packet
    may be the earliest of its slot (no earlier frame of that slot read yet). Reference frames
    are always decoded, since later frames are built from them, so the yielded frames and their
    pixels are the same as when decoding everything (at 2 fps from 25 fps H.264 this skips
    about 40 % of the frames; codecs without the option decode them all)."""
    import av

    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    codec = stream.codec_context
    mode = codec.skip_frame
    earliest: dict[int, float] = {}  # per slot: the earliest frame time read so far
    next_index = 0  # the sample slot (time * fps) we are waiting for

    def seconds(timestamp) -> float:  # a frame time (in seconds) -> seconds from the start
        return max(0.0, float(timestamp) - start)

    def read_up_to(t: float) -> None:  # the coverage, and the length limit
        stats.last_frame_s = t if stats.last_frame_s is None else max(stats.last_frame_s, t)
        if max_duration_s is not None and t > max_duration_s:
            raise DataError(f"{info.path}: longer than the limit of {max_duration_s:g} s")

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:  # the container itself is damaged past this point
            stats.corrupt += 1
            return
        packet_t, needed = None, True
        if packet.pts is not None and packet.time_base is not None:
            packet_t = seconds(packet.pts * packet.time_base)
            packet_slot = math.floor(packet_t * fps + 1e-6)
            first = earliest.get(packet_slot)
            needed = first is None or packet_t < first
            if needed:
                earliest[packet_slot] = packet_t
            if len(earliest) > 64:  # only the slots around the decoder's position matter
                earliest = {k: v for k, v in earliest.items() if k >= next_index - 1}
            want = "DEFAULT" if needed else "NONREF"
        else:  # no timestamp (a flush or a raw stream): decode it
            want = "DEFAULT"
        if want != mode:
            codec.skip_frame = mode = want
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            stats.corrupt += 1
            if needed and packet_t is not None and earliest.get(packet_slot) == packet_t:
                del earliest[packet_slot]  # the slot's next frame is needed in its place
            continue
        if packet_t is not None and packet.size:
            stats.read += 1
            if mode == "NONREF":  # read cleanly; its frame may have been skipped
                read_up_to(packet_t)
        for frame in frames:
            stats.decoded += 1
            t = seconds(frame.time) if frame.time is not None else (stats.decoded - 1) / (info.native_fps or fps)
            read_up_to(t)
            slot = math.floor(t * fps + 1e-6)
            if slot >= next_index:
                next_index = slot + 1
                stats.sampled += 1
                yield t, frame


# ------------------------------------------------------------------------------------------------
# Smoothing and events (pure numpy)
# ------------------------------------------------------------------------------------------------

def smooth_scores(scores: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along time (axis 0) over `window` samples (odd); the window
    shrinks at both ends to the samples that exist."""
    if int(window) != window or window < 1 or window % 2 == 0:
        raise ConfigError(f"smooth={window}: expected an odd number of samples >= 1 (1 = no smoothing)")
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if window == 1 or n == 0:
        return scores.copy()
    half = int(window) // 2
    csum = np.concatenate([np.zeros((1,) + scores.shape[1:]), np.cumsum(scores, axis=0)])
    idx = np.arange(n)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, n)
    return (csum[hi] - csum[lo]) / (hi - lo).reshape((-1,) + (1,) * (scores.ndim - 1))


def find_segments(times: np.ndarray, values: np.ndarray, threshold: float, period: float,
                  merge_gap_s: float, end_s: Optional[float] = None) -> list[dict]:
    """Runs of `values >= threshold` as {start, end, peak_score, peak_time, samples}; a run's
    end (last sample + period) is clipped to `end_s`, the end of the footage, when given."""
    flagged = np.asarray(values) >= threshold
    runs: list[list[int]] = []
    for i in np.flatnonzero(flagged):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    merged: list[list[int]] = []
    for first, last in runs:
        if merged and times[first] - (times[merged[-1][1]] + period) <= merge_gap_s + 1e-9:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    out = []
    for first, last in merged:
        span = np.arange(first, last + 1)
        peak = int(span[np.argmax(values[span])])
        end = float(times[last] + period) if end_s is None else min(float(times[last] + period), end_s)
        out.append({"start": round(float(times[first]), 3), "end": round(end, 3),
                    "peak_score": round(float(values[peak]), 4), "peak_time": round(float(times[peak]), 3),
                    "samples": int(flagged[span].sum())})
    return out


def find_events(times: np.ndarray, smoothed: np.ndarray, thresholds: np.ndarray, period: float,
                merge_gap_s: float = DEFAULT_MERGE_GAP_S, end_s: Optional[float] = None) -> dict[str, list[dict]]:
    """Per class code (all 17, in benchmark order): its merged segments."""
    return {code: find_segments(times, smoothed[:, k], float(thresholds[k]), period, merge_gap_s, end_s)
            for k, code in enumerate(L.CLASSES)}


# ------------------------------------------------------------------------------------------------
# The scan
# ------------------------------------------------------------------------------------------------

def _thumbnail_jpeg(frame) -> bytes:
    """A small JPEG of a decoded video frame, scaled by FFmpeg straight from its YUV planes
    (area averaging): ~0.5 ms for a 720x576 frame, against ~3 ms through a full-size RGB image."""
    w, h = frame.width, frame.height
    thumb = frame.reformat(width=max(2, round(w * THUMBNAIL_HEIGHT / h)), height=THUMBNAIL_HEIGHT,
                           format="rgb24", interpolation="AREA").to_image()
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _check_options(fps: float, batch_size: int, smooth: int, merge_gap_s: float) -> None:
    if not fps > 0 or not math.isfinite(fps):
        raise ConfigError(f"fps={fps}: expected frames per second > 0, e.g. 2")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: expected a whole number >= 1")
    smooth_scores(np.zeros((1, 1)), smooth)  # validates `smooth`
    if merge_gap_s < 0:
        raise ConfigError(f"merge_gap={merge_gap_s}: expected seconds >= 0")


def scan_footage(path: str | Path, classifier, fps: float = DEFAULT_SAMPLE_FPS,
                 batch_size: int = DEFAULT_BATCH_SIZE, smooth: int = DEFAULT_SMOOTH,
                 merge_gap_s: float = DEFAULT_MERGE_GAP_S, max_duration_s: Optional[float] = None,
                 progress: bool = True) -> ScanResult:
    """Classify one frame per 1/fps seconds of `path` with a `SewerClassifier` (anything with
    `preprocess(HxWx3 uint8 RGB array) -> uint8 array`, `scores_from_arrays(arrays)`, `thresholds`, `model_dir`;
    with `lanes` > 1, `scores_from_arrays(arrays, lane=True)` is called from that many threads)."""
    from tqdm.auto import tqdm

    _check_options(fps, batch_size, smooth, merge_gap_s)
    container, stream, info = open_footage(path)
    if max_duration_s is not None and info.duration_s is not None and info.duration_s > max_duration_s:
        container.close()
        raise DataError(f"{path}: {info.duration_s:.1f} s long, over the limit of {max_duration_s:g} s")
    stats = DecodeStats()
    times: list[float] = []
    scores: list[np.ndarray] = []
    total = math.ceil(info.duration_s * fps) if info.duration_s else None
    lanes = max(1, getattr(classifier, "lanes", 1))
    per_batch = math.ceil(batch_size / lanes)  # batch_size frames in flight across the lanes
    with tempfile.TemporaryDirectory(prefix="sewer_scan_") as thumbs_dir, container, \
            tqdm(total=total, desc="scan", unit="frame", disable=not progress) as bar:
        thumbs = Path(thumbs_dir)

        def sampled_batches() -> Iterator[list[tuple[int, object]]]:
            """(sample index, frame) batches, decoded here in the calling thread."""
            batch: list[tuple[int, object]] = []
            for t, frame in sample_frames(container, stream, info, fps, stats, max_duration_s):
                batch.append((len(times), frame))
                times.append(t)
                if len(batch) == per_batch:
                    yield batch
                    batch = []
            if batch:
                yield batch

        def score(batch: list[tuple[int, object]]) -> np.ndarray:
            """Runs in a lane: RGB conversion, thumbnail, resize and the model for one batch."""
            arrays = []
            for index, frame in batch:
                (thumbs / f"{index}.jpg").write_bytes(_thumbnail_jpeg(frame))
                arrays.append(classifier.preprocess(frame.to_ndarray(format="rgb24")))  # no PIL copy
            return classifier.scores_from_arrays(arrays, lane=True) if lanes > 1 else classifier.scores_from_arrays(arrays)

        # decoding (this thread) runs ahead of the lanes by one batch; FFmpeg, the resize and the
        # model release the GIL. A lane's error is raised here.
        for batch_scores in in_lanes(sampled_batches(), score, lanes):
            scores.append(batch_scores)
            bar.update(len(batch_scores))
        if not times:
            detail = f" ({stats.corrupt} damaged packet(s))" if stats.corrupt else ""
            raise DataError(f"{path}: no video frame could be decoded{detail}")
        times_arr = np.asarray(times, dtype=np.float64)
        raw = np.concatenate(scores).astype(np.float64)
        smoothed = smooth_scores(raw, smooth)
        thresholds = np.asarray(classifier.thresholds, dtype=np.float64)
        result = ScanResult(str(path), str(getattr(classifier, "model_dir", "")), info, float(fps), int(smooth),
                            float(merge_gap_s), times_arr, raw, smoothed, thresholds, {}, stats)
        # events end where the decoded footage ends, not at a declared duration never reached
        end_s = max(result.scanned_s, float(times_arr[-1])) if info.duration_s else None
        result.events = find_events(times_arr, smoothed, thresholds, 1.0 / fps, merge_gap_s, end_s)
        for i in report_frames(result):
            result.thumbnails[i] = (thumbs / f"{i}.jpg").read_bytes()
    return result


def report_frames(result: ScanResult, limit: int = MAX_REPORT_THUMBNAILS) -> list[int]:
    """Sample indices of the flagged frames shown in the report: the peak frame of every event
    first (in time order), then other flagged frames spread evenly, `limit` in all."""
    index_of = {round(float(t), 3): i for i, t in enumerate(result.times)}
    peaks = sorted({index_of[ev["peak_time"]] for ev in result.flat_events() if ev["peak_time"] in index_of})
    chosen = peaks[:limit]
    taken = set(chosen)  # built once, not per flagged frame
    others = [i for i in np.flatnonzero(result.flags.any(axis=1)) if i not in taken]
    room = limit - len(chosen)
    if room > 0 and others:
        step = max(1, math.ceil(len(others) / room))
        chosen += [int(i) for i in others[::step][:room]]
    return sorted(chosen)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("footage", metavar="FOOTAGE", help="inspection video (any format FFmpeg reads)")
    parser.add_argument("--model", required=True, help="classifier folder (runs/.../classifier) or Hub id")
    parser.add_argument("--out", required=True, help="report folder: timeline.csv, events.json, timeline.png, report.html")
    parser.add_argument("--fps", type=float, default=DEFAULT_SAMPLE_FPS, help="frames scored per second of video")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--smooth", type=int, default=DEFAULT_SMOOTH,
                        help="centred moving average over this many samples (odd; 1 = none)")
    parser.add_argument("--merge-gap", type=float, default=DEFAULT_MERGE_GAP_S,
                        help="merge detections of one class separated by at most this many seconds")
    parser.add_argument("--max-duration", type=float, default=None, help="refuse videos longer than this (s)")
    parser.add_argument("--device", default=None)

    add_thread_arguments(parser)
    add_precision_argument(parser)
    parser.set_defaults(func=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    _check_options(args.fps, args.batch_size, args.smooth, args.merge_gap)
    container, _, info = open_footage(args.footage)  # a bad video fails in milliseconds, before the model loads
    container.close()
    if args.max_duration is not None and info.duration_s is not None and info.duration_s > args.max_duration:
        raise DataError(f"{args.footage}: {info.duration_s:.1f} s long, over the limit of {args.max_duration:g} s")
    classifier = SewerClassifier(args.model, device=args.device, threads=args.threads, backend="auto",
                                 precision=args.precision, lanes=args.lanes)
    print(f"model: {classifier.describe()}", file=sys.stderr)
    result = scan_footage(args.footage, classifier, fps=args.fps, batch_size=args.batch_size, smooth=args.smooth,
                          merge_gap_s=args.merge_gap, max_duration_s=args.max_duration)
    paths = write_report(result, args.out)
    events = result.flat_events()
    counts = {c: len(v) for c, v in result.events.items() if v}
    of = (f"{result.scanned_s:.1f} s of the declared {result.duration_s:.1f} s" if result.coverage_warning
          else f"{result.duration_s:.1f} s")
    print(f"scanned {result.stats.sampled} frames covering {of} ({result.stats.read} read, {result.stats.decoded} decoded); "
          f"{len(events)} event(s)" + (": " + ", ".join(f"{c} x{n}" for c, n in counts.items()) if counts else ""))
    if result.coverage_warning:
        print(f"warning: {result.coverage_warning}", file=sys.stderr)
    if result.stats.corrupt:
        print(f"skipped {result.stats.corrupt} damaged frame(s)/packet(s)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
