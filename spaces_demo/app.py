"""Sewer defect finder: a Gradio app (a Hugging Face Space) around a `sewer_hf` classifier.

* Image tab: per-class probabilities with the model's tuned thresholds, a verdict, and the
  DINO attention map (last layer, CLS token, mean over heads) over the image.  API `/classify_image`.
* Video tab: scan inspection footage; timeline plot, events table, downloadable CSV/report.
  API `/scan_video`.

The model is `MODEL_ID` (a Hub id or a local classifier folder; default: the quickstart model
of this repository). `python spaces_demo/app.py` (or `make demo`) serves it; Gradio's own
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address. Bad input (not an image, too many
pixels, an empty/corrupt/too long video) is refused with a message, and the server carries on.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
_REPO = HERE.parent
if (_REPO / "sewer_hf").is_dir() and str(_REPO) not in sys.path:  # run from a checkout, not installed
    sys.path.insert(0, str(_REPO))

from sewer_hf import labels as L  # noqa: E402
from sewer_hf.errors import SewerHFError  # noqa: E402

DEFAULT_MODEL = str(_REPO / "runs" / "quickstart" / "ssl_finetune" / "classifier")
MODEL_ID = os.environ.get("MODEL_ID", DEFAULT_MODEL)
MAX_IMAGE_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", 25_000_000))  # e.g. 5000 x 5000
MAX_VIDEO_SECONDS = float(os.environ.get("MAX_VIDEO_SECONDS", 600))  # 10 min
VIDEO_SAMPLE_FPS = 2.0
DISPLAY_MAX_SIDE = 512
EXAMPLES = sorted(str(p) for p in (HERE / "examples").glob("*.jpg"))
TABLE_HEADERS = ["code", "defect", "probability", "threshold", "flagged"]
EVENT_HEADERS = ["code", "defect", "start (s)", "end (s)", "peak score", "peak at (s)"]


@functools.lru_cache(maxsize=2)
def load_models(model_id: str):
    """(SewerClassifier, AttentionExplainer) for a Hub id or a local folder, loaded once."""
    from sewer_hf.attention import AttentionExplainer
    from sewer_hf.predict import SewerClassifier

    local = Path(model_id)
    if (model_id.startswith((".", "/")) or local.exists()) and not (local / "config.json").is_file():
        raise SewerHFError(f"model {model_id!r}: no classifier folder there (config.json missing); run "
                           "`make quickstart` or set MODEL_ID to a Hub id or a classifier folder")
    classifier = SewerClassifier(model_id)
    return classifier, AttentionExplainer(classifier)


# ------------------------------------------------------------------------------------------------
# Handlers (plain functions: the UI, the API and the tests call these)
# ------------------------------------------------------------------------------------------------

def open_checked_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A decoded RGB image, or gr.Error: read the header first and refuse images over
    `max_pixels` before their pixels are decoded."""
    if source is None:
        raise gr.Error("Upload an image first.")
    if isinstance(source, Image.Image):
        image = source
    else:
        name = Path(str(source)).name
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
    try:
        return image.convert("RGB")  # decodes now
    except (OSError, ValueError, SyntaxError) as exc:
        raise gr.Error(f"The image file is damaged and cannot be decoded ({exc}).") from None


def classify_image(image, model_id: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """-> (probabilities by full class name, table rows, verdict markdown, attention overlay)."""
    from sewer_hf.attention import overlay

    rgb = open_checked_image(image, max_pixels)
    classifier, explainer = load_models(model_id or MODEL_ID)
    scores, attention = explainer.explain(rgb)
    flagged = classifier.verdict(scores)
    probabilities = {L.CLASS_NAMES[c]: float(s) for c, s in zip(L.CLASSES, scores)}
    rows = [[c, L.CLASS_NAMES[c], round(float(s), 4), round(float(t), 4), "yes" if c in flagged else ""]
            for c, s, t in zip(L.CLASSES, scores, classifier.thresholds)]
    rows.sort(key=lambda r: -r[2])
    if flagged:
        verdict = "**Defects:** " + ", ".join(f"{L.CLASS_NAMES[c]} ({c})" for c in flagged)
    else:
        verdict = "**Normal**: no class reaches its threshold."
    display = rgb.copy()
    display.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    return probabilities, rows, verdict, overlay(display, attention)


def scan_video(path, model_id: str | None = None, max_seconds: float = MAX_VIDEO_SECONDS,
               fps: float = VIDEO_SAMPLE_FPS):
    """-> (timeline plot path, events rows, [timeline.csv, events.json, report.html], summary)."""
    from sewer_hf.video import scan_footage
    from sewer_hf.video_report import write_report

    if not path:
        raise gr.Error("Upload a video first.")
    classifier, _ = load_models(model_id or MODEL_ID)
    try:
        result = scan_footage(path, classifier, fps=fps, max_duration_s=max_seconds, progress=False)
    except SewerHFError as exc:  # DataError: empty, corrupt, no video stream, too long
        raise gr.Error(str(exc).replace(str(path), Path(str(path)).name)) from None
    out = Path(tempfile.mkdtemp(prefix="sewer_scan_"))
    paths = write_report(result, out)
    events = result.flat_events()
    rows = [[e["class"], L.CLASS_NAMES[e["class"]], e["start"], e["end"], e["peak_score"], e["peak_time"]]
            for e in events]
    summary = (f"Scanned **{result.stats.sampled}** frames of {result.duration_s:.1f} s "
               f"({fps:g} per second): **{len(events)}** event(s).")
    if result.stats.corrupt:
        summary += f" {result.stats.corrupt} damaged frame(s) were skipped."
    return str(paths["plot"]), rows, [str(paths["csv"]), str(paths["events"]), str(paths["html"])], summary


# ------------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------------

class CheckedImage(gr.Image):
    """gr.Image whose own upload handling (it opens the file) turns a bad file into a clear
    message instead of a server-side exception. `is_template` keeps the stock Image frontend."""

    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Image.DecompressionBombError:
            raise gr.Error("Far too many pixels (decompression-bomb guard); please resize the image.") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise gr.Error("Not an image file that can be read (PNG, JPEG, BMP, TIFF, WebP).") from None


def build_demo(model_id: str | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS,
               max_video_seconds: float = MAX_VIDEO_SECONDS) -> gr.Blocks:
    model_id = model_id or MODEL_ID
    load_models(model_id)  # fail at start-up, with a clear message, if the model is missing

    def _classify(image):
        return classify_image(image, model_id, max_image_pixels)

    def _scan(path):
        return scan_video(path, model_id, max_video_seconds)

    with gr.Blocks(title="Sewer defect finder") as demo:
        gr.Markdown("# Sewer defect finder\nSelf-supervised ViT (DINO) fine-tuned for the 17 Sewer-ML defect "
                    f"classes. Model: `{model_id}`.")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    image_in = CheckedImage(type="filepath", label="CCTV frame", sources=["upload"])
                    classify_btn = gr.Button("Classify", variant="primary")
                    if EXAMPLES:
                        gr.Examples(EXAMPLES, inputs=image_in)
                with gr.Column():
                    verdict = gr.Markdown(elem_id="verdict")
                    attention = gr.Image(label="attention of the CLS token (last layer, mean of heads)",
                                         type="pil", interactive=False)
            probabilities = gr.Label(num_top_classes=5, label="probabilities (independent, per class)")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="all classes", interactive=False)
            classify_btn.click(_classify, image_in, [probabilities, table, verdict, attention],
                               api_name="classify_image")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    video_in = gr.Video(label=f"inspection footage (up to {max_video_seconds / 60:g} min)",
                                        sources=["upload"])
                    scan_btn = gr.Button("Scan", variant="primary")
                with gr.Column():
                    summary = gr.Markdown()
                    files = gr.File(label="timeline.csv, events.json, report.html", file_count="multiple")
            plot = gr.Image(label="score timeline", type="filepath", interactive=False)
            events = gr.Dataframe(headers=EVENT_HEADERS, label="events", interactive=False)
            scan_btn.click(_scan, video_in, [plot, events, files, summary], api_name="scan_video")
    return demo


if __name__ == "__main__":
    build_demo(MODEL_ID).launch()  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT apply
