"""The Gradio app of the Space ("Sewer defect finder"), for a sewer inspector.

* **Frame** tab: upload a CCTV frame or click an example; the verdict comes first (normal, or the
  defects found, by name), then the attention map of the model's last layer, then one bar per
  class against its tuned threshold. A legend explains the 17 Sewer-ML codes. API `/classify_image`.
* **Footage** tab: upload inspection video; 2 frames per second are scored (with a progress
  bar), and the findings are listed with their time span and peak score. Clicking a finding
  moves the player there. The report downloads as HTML, CSV and JSON. API `/scan_video`.

`spaces_demo/app.py` (and the `app.py` that `sewer-hf push-space` writes) only find this package
and call :func:`build_demo`. Settings come from the environment: `MODEL_ID` (a Hub id or a
classifier folder; default the model bundled with the Space, else the quickstart classifier of
the checkout), `MAX_IMAGE_PIXELS`, `MAX_VIDEO_SECONDS`, `SPACE_THREADS` (model threads; default
all cores), `SPACE_PRECISION` (`auto`, `fp32` or `int8`, as `sewer-hf scan --precision`: the
footage scan runs int8 when the model folder ships a `model.int8.onnx` that passed its accuracy
check and it is the faster here; the Frame tab's attention map needs the PyTorch fp32 model).

Serving several users on a small CPU: requests run in parallel threads for decoding and
drawing, but every forward pass goes through one :class:`ModelLane`: concurrent frames are
batched into one pass (up to `MAX_BATCH` within `BATCH_WAIT_S`), and video batches take turns
with them, so the cores are never oversubscribed. (Gradio's own `batch=True` would fail every
request of a batch when one of them sends a bad file.)
"""
from __future__ import annotations

import atexit
import html
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

import sewer_hf
from sewer_hf.data import decode_rgb_or_error
from sewer_hf.data import labels as L
from sewer_hf.errors import SewerHFError
from sewer_hf.hub.publish import _arch_title, inspect_model_dir
from sewer_hf.inference.attention import overlay
from sewer_hf.inference.predict import SewerClassifier
from sewer_hf.inference.report import write_report
from sewer_hf.inference.video import scan_footage

MAX_IMAGE_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", 25_000_000))  # e.g. 5000 x 5000
MAX_VIDEO_SECONDS = float(os.environ.get("MAX_VIDEO_SECONDS", 600))  # 10 min
VIDEO_SAMPLE_FPS = 2.0
DISPLAY_MAX_SIDE = 512
MAX_BATCH = 8
BATCH_WAIT_S = 0.01  # how long the lane waits for more frames once one is waiting
IMAGE_CONCURRENCY = 8  # requests decoded/drawn at once; the model itself runs one batch at a time
VIDEO_CONCURRENCY = 1
KEEP_REPORT_FOLDERS = 4  # report folders kept on disk (Gradio copies the files it serves)
REPORT_PREFIX = "sewer_scan_"
SPACE_CONFIG = "space_config.json"  # written by `sewer-hf push-space`: which model, its card URL
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FINDING_HEADERS = ["#", "defect", "code", "from", "to", "peak score"]
TITLE = "Sewer defect finder"


def _gr():
    import gradio as gr

    return gr


# ------------------------------------------------------------------------------------------------
# Which model, described for people
# ------------------------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    model_id: str  # what SewerClassifier loads (Hub id or folder)
    name: str  # what the page calls it
    url: Optional[str] = None  # its model card
    synthetic: bool = False
    license: Optional[str] = None
    metrics: dict[str, float] = field(default_factory=dict)  # F2_CIW, F1_Normal, mAP on Val (0..1)


def _is_hub_id(model_id: str) -> bool:
    import re

    return (re.fullmatch(r"[\w.-]+/[\w.-]+", model_id) is not None and not Path(model_id).exists()
            and not model_id.startswith((".", "/")))


def _card_facts(readme: Path) -> dict[str, Any]:
    """name, synthetic, license and metrics from a model card README.md (as `sewer-hf push` writes)."""
    try:
        from huggingface_hub import ModelCard

        card = ModelCard.load(readme)
    except Exception:  # noqa: BLE001 - a card we cannot read just tells us nothing
        return {}
    data = card.data
    facts: dict[str, Any] = {"synthetic": "synthetic-data" in (data.tags or []) or "Trained on synthetic" in card.text,
                             "license": data.license}
    if data.model_name:
        facts["name"] = data.model_name
    facts["metrics"] = {r.metric_name: float(r.metric_value) for r in (data.eval_results or [])
                        if r.metric_name in ("F2_CIW", "F1_Normal", "mAP")}
    return facts


def _pretty_folder_name(folder: Path, config: dict) -> str:
    arch = _arch_title(config, (config.get("sewer_hf") or {}).get("arch"))
    run = folder.parent.name if folder.name == "classifier" else folder.name
    run = run.replace("_", " ").replace("-", " ").strip() or "local"
    if "quickstart" in folder.as_posix():
        run = f"quickstart {run}"
    return f"{arch} sewer classifier ({run})"


def describe_model(model_id: str, url: Optional[str] = None, name: Optional[str] = None) -> ModelInfo:
    """A `ModelInfo` for a Hub id or a classifier folder: its card (README.md) when there is
    one, else the run's own records (`sewer_hf.hub.publish.inspect_model_dir`)."""
    info = ModelInfo(model_id=model_id, name=name or model_id, url=url)
    facts: dict[str, Any] = {}
    if _is_hub_id(model_id):
        info.url = url or f"https://huggingface.co/{model_id}"
        info.name = name or model_id
        try:
            from huggingface_hub import hf_hub_download

            facts = _card_facts(Path(hf_hub_download(model_id, "README.md")))
        except Exception:  # noqa: BLE001 - no card (or offline): the id is the name
            facts = {}
        facts.pop("name", None)
    else:
        folder = Path(model_id)
        if (folder / "README.md").is_file():
            facts = _card_facts(folder / "README.md")
        if not facts:

            try:
                release = inspect_model_dir(folder)
                facts = {"synthetic": release.synthetic, "name": _pretty_folder_name(folder, release.config)}
                if release.metrics:
                    facts["metrics"] = {k: float(release.metrics[k]) for k in ("F2_CIW", "F1_Normal", "mAP")
                                        if isinstance(release.metrics.get(k), (int, float))}
            except SewerHFError:
                facts = {"name": _pretty_folder_name(folder, {})}
        if name:
            facts.pop("name", None)
        info.name = name or facts.pop("name", None) or folder.name
    info.synthetic = bool(facts.get("synthetic", False))
    info.license = facts.get("license")
    info.metrics = facts.get("metrics") or {}
    return info


def default_model(here: Optional[Path] = None) -> tuple[str, Optional[str], Optional[str]]:
    """(model id, card URL, display name): `MODEL_ID`, else the Space's `space_config.json`
    (a bundled `model/` folder or a Hub id), else the checkout's quickstart classifier."""
    config: dict[str, Any] = {}
    if here is not None and (here / SPACE_CONFIG).is_file():
        config = json.loads((here / SPACE_CONFIG).read_text())
    if os.environ.get("MODEL_ID"):
        return os.environ["MODEL_ID"], None, None
    if config.get("model"):
        model = config["model"]
        if here is not None and (here / model).is_dir():
            model = str(here / model)
        return model, config.get("model_url"), config.get("model_name")
    root = Path(__file__).resolve().parents[2]
    return str(root / "runs" / "quickstart" / "ssl_finetune" / "classifier"), None, None


# ------------------------------------------------------------------------------------------------
# The model, shared by all requests
# ------------------------------------------------------------------------------------------------

class ModelLane:
    """One classifier (+ its eager-attention twin) and one lane for its forward passes.

    `explain(array)` may be called from many threads: waiting frames are scored together in
    one batch (scores and attention maps). `scores_from_arrays` (the footage scan) takes its
    turn in the same lane. Only one forward pass runs at a time, with all of `threads`."""

    def __init__(self, model_id: str, threads: Optional[int] = None) -> None:
        import torch

        local = Path(model_id)
        if (model_id.startswith((".", "/")) or local.exists()) and not (local / "config.json").is_file():
            raise SewerHFError(f"model {model_id!r}: no classifier folder there (config.json missing); run "
                               "`make quickstart` or set MODEL_ID to a Hub id or a classifier folder")
        from sewer_hf.feed.machine import available_cores

        # the Space's vCPUs are a cgroup limit: os.cpu_count() would count the host's cores
        threads = threads or int(os.environ.get("SPACE_THREADS", 0)) or available_cores()
        torch.set_num_threads(threads)
        precision = os.environ.get("SPACE_PRECISION", "auto")
        self.classifier = SewerClassifier(model_id, device="cpu", threads=threads,
                                          backend="torch" if precision == "bf16" else "auto",
                                          precision=precision, lanes=1)  # one batch at a time: auto times it so
        from transformers import AutoModelForImageClassification

        self.eager = AutoModelForImageClassification.from_pretrained(
            self.classifier.model_dir, attn_implementation="eager").eval()
        self.patch = int(self.eager.config.patch_size)
        self.thresholds = self.classifier.thresholds
        self.model_dir = self.classifier.model_dir
        self._lock = threading.Lock()  # one forward pass at a time
        self._pending: list[tuple[np.ndarray, Future]] = []
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="sewer-model-lane", daemon=True)
        self._worker.start()
        self.batches: list[int] = []  # sizes of the image batches run (for benchmarks and tests)
        self.max_batch = MAX_BATCH

    # the footage scan's interface (a SewerClassifier look-alike)
    def preprocess(self, image) -> np.ndarray:
        return self.classifier.preprocess(image)

    def scores_from_arrays(self, arrays) -> np.ndarray:
        with self._lock:
            return self.classifier.scores_from_arrays(arrays)

    def verdict(self, scores) -> list[str]:
        return self.classifier.verdict(scores)

    # frames: batched with whatever else is waiting
    def explain(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 at the model's size -> (17 scores, attention grid summing to 1)."""
        future: Future = Future()
        with self._cond:
            self._pending.append((array, future))
            self._cond.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(BATCH_WAIT_S)  # let concurrent requests join this batch
            with self._cond:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            try:
                results = self._explain_batch([a for a, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - hand the failure to every waiter
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)

    def _explain_batch(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torch

        clf = self.classifier
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        with self._lock, torch.inference_mode():
            out = self.eager(pixel_values=clf.pixel_values(pixels), output_attentions=True)
        self.batches.append(len(arrays))
        scores = torch.sigmoid(out.logits.float()).numpy()
        cls_to_patches = out.attentions[-1][:, :, 0, 1:].mean(dim=1)  # (N, patches), mean over heads
        rows, cols = arrays[0].shape[0] // self.patch, arrays[0].shape[1] // self.patch
        grids = cls_to_patches.reshape(len(arrays), rows, cols).float().numpy()
        return [(scores[i], grids[i] / max(float(grids[i].sum()), 1e-12)) for i in range(len(arrays))]


_LANES: dict[str, ModelLane] = {}
_LANES_LOCK = threading.Lock()


def load_lane(model_id: str) -> ModelLane:
    """The shared `ModelLane` of a model, loaded once."""
    with _LANES_LOCK:
        if model_id not in _LANES:
            _LANES[model_id] = ModelLane(model_id)
        return _LANES[model_id]


# ------------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------------

def open_checked_image(source, max_pixels: int = MAX_IMAGE_PIXELS):
    """A decoded 8-bit RGB image, or gr.Error. The header is read first and images over
    `max_pixels` are refused before their pixels are decoded; decoding is the project's own
    (`sewer_hf.data.decode_rgb_or_error`, the one `sewer-hf predict` uses: 16-bit, palette and
    alpha images are converted the same way)."""
    from PIL import Image, UnidentifiedImageError

    gr = _gr()
    if source is None:
        raise gr.Error("Upload an image first.")
    name = "image" if isinstance(source, Image.Image) else Path(str(source)).name
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(source)  # header only
        except Image.DecompressionBombError:
            raise gr.Error(f"{name}: far too many pixels (decompression-bomb guard); the limit is "
                           f"{max_pixels:,} pixels.") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise gr.Error(f"{name}: not an image file that can be read (PNG, JPEG, BMP, TIFF, WebP).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise gr.Error(f"Image is {width}x{height} = {width * height:,} pixels, over the limit of "
                       f"{max_pixels:,}; please resize it.")
    rgb, error = decode_rgb_or_error(image)
    if rgb is None:
        raise gr.Error(f"{name}: the image file is damaged and cannot be decoded ({error}).")
    return rgb


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def verdict_html(scores: np.ndarray, thresholds: np.ndarray) -> str:
    """The verdict box: normal, or the defects found (by name, strongest first)."""
    flagged = [(c, float(s), float(t)) for c, s, t in zip(L.CLASSES, scores, thresholds) if s >= t]
    if not flagged:
        top = int(np.argmax(np.asarray(scores) - np.asarray(thresholds)))
        return ("<div class='verdict ok'><div class='headline'>✔ Normal pipe</div>"
                "<div class='detail'>No defect class reaches its threshold. Closest: "
                f"{html.escape(L.CLASS_NAMES[L.CLASSES[top]])} ({L.CLASSES[top]}) at {_pct(scores[top])}, "
                f"threshold {_pct(thresholds[top])}.</div></div>")
    flagged.sort(key=lambda f: -(f[1] - f[2]))
    items = "".join(f"<li><b>{html.escape(L.CLASS_NAMES[c])}</b> <span class='code'>{c}</span> "
                    f"<span class='score'>{_pct(s)} (threshold {_pct(t)})</span></li>" for c, s, t in flagged)
    word = "defect" if len(flagged) == 1 else "defects"
    return (f"<div class='verdict bad'><div class='headline'>⚠ {len(flagged)} {word} found</div>"
            f"<ul>{items}</ul></div>")


def bars_html(scores: np.ndarray, thresholds: np.ndarray) -> str:
    """One bar per class (score), with its threshold marked; flagged classes first, in red."""
    order = sorted(range(L.NUM_CLASSES), key=lambda k: (scores[k] < thresholds[k], -(scores[k] - thresholds[k])))
    rows = []
    for k in order:
        code, s, t = L.CLASSES[k], float(scores[k]), float(thresholds[k])
        cls = "bar-row hit" if s >= t else "bar-row"
        rows.append(
            f"<div class='{cls}' title='{html.escape(L.CLASS_DESCRIPTIONS[code])}'>"
            f"<span class='bar-name'>{html.escape(L.CLASS_NAMES[code])} <span class='code'>{code}</span></span>"
            f"<span class='bar-track'><span class='bar-fill' style='width:{100 * s:.1f}%'></span>"
            f"<span class='bar-thr' style='left:{100 * t:.1f}%'></span></span>"
            f"<span class='bar-val'>{_pct(s)} <small>/ {_pct(t)}</small></span></div>")
    return ("<div class='bars'><div class='bars-note'>Score of each class (bar) against its threshold (black mark); "
            "a class is reported when its bar reaches the mark. Classes are independent: a frame can show several."
            "</div>" + "".join(rows) + "</div>")


def legend_html() -> str:
    rows = "".join(f"<tr><td class='code'>{c}</td><td><b>{html.escape(L.CLASS_NAMES[c])}</b>: "
                   f"{html.escape(L.CLASS_DESCRIPTIONS[c])}</td></tr>" for c in L.CLASSES)
    return f"<table class='legend'>{rows}</table>"


def classify_image(image, model_id: Optional[str] = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """-> (verdict HTML, attention overlay image, per-class bars HTML, scores by code as a dict
    {code: {name, score, threshold, flagged}})."""

    rgb = open_checked_image(image, max_pixels)
    lane = load_lane(model_id or default_model()[0])
    scores, attention = lane.explain(lane.preprocess(rgb))
    thresholds = lane.thresholds
    display = rgb.copy()
    display.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    table = {c: {"name": L.CLASS_NAMES[c], "score": round(float(s), 4), "threshold": round(float(t), 4),
                 "flagged": bool(s >= t)} for c, s, t in zip(L.CLASSES, scores, thresholds)}
    return verdict_html(scores, thresholds), overlay(display, attention), bars_html(scores, thresholds), table


# ------------------------------------------------------------------------------------------------
# Footage
# ------------------------------------------------------------------------------------------------

class ReportFolders:
    """Report folders (`sewer_scan_*` in the temp dir): Gradio copies the files it serves into its
    own cache, so only the newest `keep` folders stay; the rest, and all at exit, are deleted."""

    def __init__(self, keep: int = KEEP_REPORT_FOLDERS) -> None:
        self.keep = keep
        self._folders: list[Path] = []
        self._lock = threading.Lock()
        atexit.register(self.clear)

    def new(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=REPORT_PREFIX))
        with self._lock:
            self._folders.append(folder)
            old, self._folders = self._folders[:-self.keep], self._folders[-self.keep:]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return folder

    def drop(self, folder: Path) -> None:
        with self._lock:
            if folder in self._folders:
                self._folders.remove(folder)
        shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        with self._lock:
            folders, self._folders = self._folders, []
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._folders)


REPORTS = ReportFolders()


def check_video_file(path) -> None:
    """gr.Error for what is clearly not footage: an image file (by content or name)."""
    from PIL import Image

    gr = _gr()
    p = Path(str(path))
    kind = None
    try:
        with Image.open(p) as im:
            kind = im.format  # PIL reads it: an image, not a video (PIL does not open MP4/AVI/MKV)
    except Exception:  # noqa: BLE001 - not an image: good
        if p.suffix.lower() in IMAGE_SUFFIXES:
            kind = p.suffix.lstrip(".").upper()
    if kind:
        raise gr.Error(f"{p.name} is an image ({kind}), not a video. Use the Frame tab for single frames; "
                       "the Footage tab takes inspection video (MP4, MOV, AVI, MKV, WebM).")


def _fmt_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _duration_text(seconds: float) -> str:
    """600 -> '10 min', 90 -> '1.5 min', 5 -> '5 s'."""
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


def _coverage_warning(result) -> Optional[str]:
    """The scan's own warning (`ScanResult.coverage_warning`) when it decoded less of the video
    than its declared duration (a truncated or damaged file), as a sentence for the page."""
    warning = getattr(result, "coverage_warning", None)
    if not warning:
        return None
    return (f"Only {_fmt_time(result.scanned_s)} of the {_fmt_time(result.duration_s)} this video declares could be "
            f"scanned ({100 * result.coverage:.0f}%): the file looks cut off or damaged, so nothing after "
            f"{_fmt_time(result.scanned_s)} was checked.")


def _summary_html(result, n_events: int, fps: float) -> str:
    parts = [f"<div class='scan-summary'><b>{n_events} finding{'s' if n_events != 1 else ''}</b> in "
             f"{_fmt_time(result.duration_s)} of footage ({result.stats.sampled} frames scored, {fps:g} per second)."]
    if n_events:
        parts.append(" Click a finding to jump the video there.")
    else:
        parts.append(" No class reached its threshold: a normal pipe throughout.")
    if result.stats.corrupt:
        parts.append(f"<div class='warn'>{result.stats.corrupt} damaged frame(s) were skipped.</div>")
    warning = _coverage_warning(result)
    if warning:
        parts.append(f"<div class='warn coverage'>⚠ {html.escape(warning)}</div>")
    return "".join(parts) + "</div>"


def scan_video(path, model_id: Optional[str] = None, max_seconds: float = MAX_VIDEO_SECONDS,
               fps: float = VIDEO_SAMPLE_FPS, progress: bool = False):
    """-> (summary HTML, findings rows, [report.html, timeline.csv, events.json], timeline plot path)."""

    gr = _gr()
    if not path:
        raise gr.Error("Upload a video first.")
    check_video_file(path)
    lane = load_lane(model_id or default_model()[0])
    try:
        result = scan_footage(path, lane, fps=fps, max_duration_s=max_seconds, progress=progress)
    except SewerHFError as exc:  # DataError: empty, corrupt, no video stream, too long
        raise gr.Error(str(exc).replace(str(path), Path(str(path)).name)) from None
    out = REPORTS.new()
    try:
        paths = write_report(result, out)
    except BaseException:
        REPORTS.drop(out)
        raise
    events = result.flat_events()
    rows = [[i + 1, L.CLASS_NAMES[e["class"]], e["class"], _fmt_time(e["start"]), _fmt_time(e["end"]),
             round(float(e["peak_score"]), 3)] for i, e in enumerate(events)]
    files = [str(paths["html"]), str(paths["csv"]), str(paths["events"])]
    return _summary_html(result, len(events), fps), rows, files, str(paths["plot"])


def finding_start(rows, index) -> Optional[float]:
    """Seconds of the start of finding row `index` of the findings table (its 'from' m:ss.s)."""
    try:
        import pandas as pd

        if isinstance(rows, pd.DataFrame):
            rows = rows.values.tolist()
    except ImportError:
        pass
    if isinstance(rows, dict):
        rows = rows.get("data") or []
    if not rows or index is None or index >= len(rows):
        return None
    minutes, seconds = str(rows[index][3]).split(":")
    return int(minutes) * 60 + float(seconds)


JUMP_JS = """(t) => {
  const v = document.querySelector('#footage video');
  if (v && t !== null && t !== undefined) { v.currentTime = t; v.scrollIntoView({block: 'nearest'}); }
  return t;
}"""

CSS = """
.verdict {border-radius: 10px; padding: 12px 16px; margin-bottom: 6px}
.verdict .headline {font-size: 1.45em; font-weight: 700}
.verdict ul {margin: 6px 0 0 0; padding-left: 1.2em}
.verdict.ok {background: #e7f6ec; border: 2px solid #2f9e55; color: #14532d}
.verdict.bad {background: #fdecea; border: 2px solid #d93025; color: #7f1d1d}
.verdict.idle {background: #f3f4f6; border: 2px dashed #9ca3af; color: #374151}
.verdict .score {color: #555; font-size: 0.9em}
.code {font-family: monospace; font-size: 0.85em; background: #eef; padding: 0 4px; border-radius: 4px; color: #334}
.bars {font-size: 0.85em}
.bar-name {white-space: nowrap; overflow: hidden; text-overflow: ellipsis}
.bars-note {color: #555; margin-bottom: 6px}
.bar-row {display: grid; grid-template-columns: 19em 1fr 6.5em; align-items: center; gap: 8px; padding: 1px 0}
.bar-track {position: relative; height: 12px; background: #e5e7eb; border-radius: 6px}
.bar-fill {position: absolute; left: 0; top: 0; bottom: 0; background: #60a5fa; border-radius: 6px}
.bar-row.hit .bar-fill {background: #dc2626}
.bar-row.hit .bar-name {font-weight: 700; color: #7f1d1d}
.bar-thr {position: absolute; top: -3px; bottom: -3px; width: 3px; background: #111; margin-left: -1px}
.bar-val {text-align: right; font-variant-numeric: tabular-nums}
.legend {font-size: 0.85em; border-collapse: collapse; width: 100%}
.legend, .legend tr, .legend td {border: none !important}
.legend td {padding: 2px 6px !important; border-bottom: 1px solid #eee !important; vertical-align: top}
.model-line {font-size: 0.95em}
.synthetic-notice {background: #fff7e0; border: 1px solid #e0a800; border-radius: 8px; padding: 8px 12px;
                   color: #5c4200; margin: 4px 0}
.scan-summary .warn {color: #92400e; background: #fff7e0; border-radius: 6px; padding: 6px 10px; margin-top: 6px}
"""


# ------------------------------------------------------------------------------------------------
# Examples
# ------------------------------------------------------------------------------------------------

def find_examples(here: Optional[Path] = None) -> list[str]:
    """Example frames: `<here>/examples/*.jpg` (a built Space), else those shipped in the package."""
    from importlib import resources

    folders = [here / "examples"] if here is not None else []
    packaged = resources.files("sewer_hf") / "resources" / "space_examples"
    folders.append(Path(str(packaged)))
    for folder in folders:
        if folder.is_dir():
            found = sorted(str(p) for p in folder.glob("*.jpg"))
            if found:
                return found
    return []


def example_label(path: str) -> str:
    """`roots.jpg` -> 'Roots (RO)'; names are the codes shown, joined by '+'."""
    codes = [c.upper() for c in Path(path).stem.split("_")[0].split("+")]
    names = [f"{L.CLASS_NAMES[c]} ({c})" for c in codes if c in L.CLASS_NAMES]
    return ", ".join(names) or Path(path).stem


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------

def header_html(info: ModelInfo) -> str:
    name = html.escape(info.name)
    model = f"<a href='{html.escape(info.url)}' target='_blank'>{name}</a>" if info.url else f"<b>{name}</b>"
    card = "" if info.url else " (local model, no published card)"
    metrics = ""
    if info.metrics:
        shown = ", ".join(f"{k} {100 * v:.1f}%" for k, v in info.metrics.items())
        metrics = f" Validation: {shown}."
    notice = ""
    if info.synthetic:
        notice = ("<div class='synthetic-notice'><b>Trained on synthetic frames.</b> This model has only seen "
                  "computer-generated sewer images, not real inspection footage: use it to try the tool, not "
                  "to judge real pipes.</div>")
    return (f"<div class='model-line'>Model: {model}{card}.{metrics} Finds the 17 defect and "
            "connection classes of the Sewer-ML benchmark in CCTV frames of sewer pipes; a person reviews "
            f"what it reports.</div>{notice}")


def build_demo(model_id: Optional[str] = None, max_image_pixels: int = MAX_IMAGE_PIXELS,
               max_video_seconds: float = MAX_VIDEO_SECONDS, here: Optional[Path] = None,
               model_url: Optional[str] = None, model_name: Optional[str] = None,
               image_concurrency: int = IMAGE_CONCURRENCY):
    """The Gradio Blocks of the Space. The model loads now (a clear error if it is missing)."""
    gr = _gr()
    if model_id is None:
        model_id, url, name = default_model(here)
        model_url, model_name = model_url or url, model_name or name
    lane = load_lane(model_id)
    info = describe_model(model_id, url=model_url, name=model_name)
    examples = find_examples(here)

    def _classify(image):
        verdict, attention, bars, table = classify_image(image, model_id, max_image_pixels)
        return verdict, gr.Image(value=attention, visible=True), gr.HTML(value=bars, visible=True), table

    def _scan(path, progress=gr.Progress(track_tqdm=True)):
        summary, rows, files, plot = scan_video(path, model_id, max_video_seconds, progress=True)
        return (summary, gr.Dataframe(value=rows, visible=bool(rows)), gr.File(value=files, visible=True),
                gr.Image(value=plot, visible=True))

    def _jump(rows, evt):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return finding_start(rows, row)

    _jump.__annotations__ = {"evt": gr.SelectData}  # how Gradio knows to pass the selection

    idle = ("<div class='verdict idle'><div class='headline'>No frame yet</div>"
            "<div class='detail'>Upload a CCTV frame, or click one of the examples below it. The verdict appears "
            "here: a normal pipe, or the defects found, by name.</div></div>")
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.HTML(header_html(info), elem_id="model-info")
        with gr.Tab("Frame"):
            verdict = gr.HTML(idle, elem_id="verdict", render=False)
            attention = gr.Image(label="Where the model looked (attention of its last layer)", type="pil",
                                 interactive=False, visible=False, height=300, elem_id="attention", render=False,
                                 format="jpeg")
            bars = gr.HTML(visible=False, elem_id="bars", render=False)
            scores = gr.JSON(visible=False, label="scores", render=False)
            outputs = [verdict, attention, bars, scores]
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    image_in = CheckedImage(type="filepath", label="CCTV frame", sources=["upload", "clipboard"],
                                            height=300)
                    classify_btn = gr.Button("Find defects", variant="primary")
                    if examples:
                        gr.Examples(examples, inputs=image_in, outputs=outputs, fn=_classify, run_on_click=True,
                                    cache_examples=False, example_labels=[example_label(p) for p in examples],
                                    label="Examples (synthetic frames): click one")
                    attention.render()
                with gr.Column(scale=1):
                    verdict.render()
                    bars.render()
                    with gr.Accordion("What the 17 codes mean", open=True) as legend:
                        gr.HTML(legend_html(), elem_id="legend")
            scores.render()
            # once there is a result, the legend folds away (the bars carry the names; hover for meanings)
            verdict.change(lambda: gr.Accordion(open=False), None, legend, api_visibility="private")
            classify_btn.click(_classify, image_in, outputs, api_name="classify_image",
                               concurrency_limit=image_concurrency, concurrency_id="frames")
            image_in.upload(_classify, image_in, outputs, api_visibility="private",
                            concurrency_limit=image_concurrency, concurrency_id="frames")
        with gr.Tab("Footage"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    video_in = gr.Video(label=f"Inspection footage (up to {_duration_text(max_video_seconds)})",
                                        sources=["upload"], elem_id="footage", height=320)
                    scan_btn = gr.Button("Scan footage", variant="primary")
                    plot = gr.Image(label="Score of each class over time (dashed: threshold; shaded: findings)",
                                    type="filepath", interactive=False, visible=False)
                with gr.Column(scale=1):
                    summary = gr.HTML("<div class='verdict idle'><div class='headline'>No footage yet</div>"
                                      f"<div class='detail'>Upload a video and press <b>Scan footage</b>. "
                                      f"{VIDEO_SAMPLE_FPS:g} frames per second are checked; the findings are "
                                      "listed here with their time in the video, and a click on one moves the "
                                      "player there. The report downloads as HTML, CSV and JSON.</div></div>",
                                      elem_id="scan-summary")
                    findings = gr.Dataframe(headers=FINDING_HEADERS, label="Findings", interactive=False,
                                            visible=False, elem_id="findings", max_height=420, wrap=True,
                                            column_widths=["8%", "42%", "10%", "13%", "13%", "14%"])
                    files = gr.File(label="Report: report.html, timeline.csv, events.json", file_count="multiple",
                                    visible=False)
            jump = gr.Number(visible=False)
            scan_btn.click(_scan, video_in, [summary, findings, files, plot], api_name="scan_video",
                           concurrency_limit=VIDEO_CONCURRENCY, concurrency_id="footage")
            findings.select(_jump, findings, jump, api_visibility="private").then(
                None, jump, None, js=JUMP_JS, api_visibility="private")
    demo.lane = lane
    demo.model_info = info
    demo.examples_dir = str(Path(examples[0]).parent) if examples else None
    return demo


def launch_options(demo) -> dict[str, Any]:
    """Keyword arguments for `demo.launch` (Gradio 6 takes css/theme there)."""
    gr = _gr()
    options: dict[str, Any] = {"css": CSS, "theme": gr.themes.Soft()}
    if demo.examples_dir:
        options["allowed_paths"] = [demo.examples_dir]
    return options


def CheckedImage(**kwargs):  # noqa: N802 - reads like the component it returns
    """A gr.Image whose upload handling (it opens the file) turns a bad file into a clear message
    instead of a server-side exception. The instance's `preprocess` is wrapped rather than
    subclassed: a gr.Image subclass makes Gradio write a `.pyi` stub next to this module (and
    fail when the package is imported from a zip, as in a built Space)."""
    gr = _gr()
    from PIL import Image, UnidentifiedImageError

    component = gr.Image(**kwargs)
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Image.DecompressionBombError:
            raise gr.Error("Far too many pixels (decompression-bomb guard); please resize the image.") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise gr.Error("Not an image file that can be read (PNG, JPEG, BMP, TIFF, WebP).") from None

    component.preprocess = preprocess
    return component


def main(here: Optional[Path] = None) -> None:
    """Build and serve (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address)."""

    demo = build_demo(here=here)
    print(f"sewer_hf from {Path(sewer_hf.__file__).parent}; model {demo.model_info.name} "
          f"({demo.model_info.model_id})", flush=True)
    demo.queue(default_concurrency_limit=IMAGE_CONCURRENCY)
    demo.launch(**launch_options(demo))
