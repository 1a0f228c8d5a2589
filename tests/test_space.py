"""The Gradio Space (`spaces_demo/app.py`): its handlers, bad input, the launched app through
`gradio_client`, and one upload in a real headless Chromium."""
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from sewer_hf import labels as L  # noqa: E402

SPACE = Path(__file__).resolve().parents[1] / "spaces_demo"
sys.path.insert(0, str(SPACE))
import app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
EXAMPLE = SPACE / "examples" / "roots.jpg"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from sewer_hf.export import save_classifier
    from sewer_hf.model import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", img_size=32)
    head = torch.nn.Linear(backbone.num_features, L.NUM_CLASSES)
    thresholds = {c: 0.5 for c in L.CLASSES} | {"RB": 0.0}  # RB always flagged: a known verdict
    return str(save_classifier(backbone, head, tmp_path_factory.mktemp("m") / "classifier", image_size=32,
                               thresholds=thresholds))


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    from sewer_hf.footage import write_footage

    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_footage(path, 4, seed=2, fps=5, size=(176, 144))
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels (the header is all Image.open reads)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(EXAMPLE.read_bytes()[:1500])  # a JPEG cut short: header fine, pixels missing
    return {"not an image": text, "over the limit": _png_header_only(tmp_path / "huge.png", 10_000, 10_000),
            "damaged": truncated}


def test_space_readme_front_matter():
    import yaml

    text = (SPACE / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__ == "6.31.0"
    assert meta["app_file"] == "app.py" and meta["license"] and meta["models"]
    requirements = [line.split(">")[0].split("=")[0].strip().lower()
                    for line in (SPACE / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert {"torch", "transformers", "av", "matplotlib"} <= set(requirements)
    assert "gradio" not in requirements  # the Space SDK provides the pinned version
    assert len(app.EXAMPLES) >= 2 and all(Path(p).stat().st_size < 50_000 for p in app.EXAMPLES)


def test_classify_image_gives_scores_thresholds_verdict_and_attention(model_dir):
    from PIL import Image

    from sewer_hf.attention import AttentionExplainer
    from sewer_hf.predict import SewerClassifier

    probabilities, rows, verdict, overlay = app.classify_image(str(EXAMPLE), model_dir)
    assert set(probabilities) == set(L.CLASS_NAMES.values())
    assert len(rows) == 17 and {r[0] for r in rows} == set(L.CLASSES)
    by_code = {r[0]: r for r in rows}
    assert by_code["RB"][3] == 0.0 and by_code["RB"][4] == "yes"
    assert all((r[4] == "yes") == (r[2] >= r[3]) for r in rows)
    assert verdict.startswith("**Defects:**") and L.CLASS_NAMES["RB"] in verdict
    assert isinstance(overlay, Image.Image) and overlay.size == Image.open(EXAMPLE).size

    # the scores are the classifier's; the map is the last layer's CLS attention on the 2x2 grid
    clf = SewerClassifier(model_dir, device="cpu")
    scores, grid = AttentionExplainer(clf).explain(Image.open(EXAMPLE))
    assert scores == pytest.approx(clf.predict([Image.open(EXAMPLE)])[0], abs=1e-5)
    assert grid.shape == (2, 2) and grid.sum() == pytest.approx(1.0) and (grid >= 0).all()


def test_bad_images_are_refused_with_a_message(model_dir, tmp_path):
    for message, path in _bad_files(tmp_path).items():
        with pytest.raises(gr.Error, match=message):
            app.classify_image(str(path), model_dir)
    with pytest.raises(gr.Error, match="Upload an image"):
        app.classify_image(None, model_dir)


def test_scan_video_handler_and_bad_videos(model_dir, short_video, tmp_path):
    plot, rows, files, summary = app.scan_video(str(short_video), model_dir)
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    assert [Path(f).name for f in files] == ["timeline.csv", "events.json", "report.html"]
    assert "**8** frames" in summary
    assert rows and all(r[0] == "RB" or r[0] in L.CLASSES for r in rows)
    assert any(r[0] == "RB" and r[2] == 0.0 and r[3] == pytest.approx(4.0) for r in rows)  # threshold 0
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(5000))
    for path, message in ((empty, "empty"), (junk, "not a readable video")):
        with pytest.raises(gr.Error, match=message):
            app.scan_video(str(path), model_dir)
    with pytest.raises(gr.Error, match="over the limit of 2 s"):
        app.scan_video(str(short_video), model_dir, max_seconds=2)


@pytest.fixture(scope="module")
def served(model_dir):
    demo = app.build_demo(model_dir, max_video_seconds=3)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, ssr_mode=False,
                quiet=True)
    yield demo.local_url
    demo.close()


def test_launched_app_refuses_bad_requests_and_keeps_serving(served, short_video, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served, analytics_enabled=False, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    assert {"/classify_image", "/scan_video"} <= set(api["named_endpoints"])
    for message, path in _bad_files(tmp_path).items():
        with pytest.raises(AppError, match="image|pixels|damaged"):
            client.predict(handle_file(str(path)), api_name="/classify_image")
    with pytest.raises(AppError, match="over the limit of 3 s"):
        client.predict(handle_file(str(short_video)), api_name="/scan_video")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(AppError, match="not a readable video"):
        client.predict(handle_file(str(junk)), api_name="/scan_video")
    probabilities, rows, verdict, overlay = client.predict(handle_file(str(EXAMPLE)), api_name="/classify_image")
    assert L.CLASS_NAMES["RB"] in verdict and Path(overlay).is_file()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_browser_upload_shows_a_verdict(served, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "space.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(served, wait_until="networkidle")
            page.locator("input[type=file]").first.set_input_files(str(EXAMPLE))
            page.get_by_role("button", name="Classify").click()
            page.locator("#verdict").get_by_text(L.CLASS_NAMES["RB"]).wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("SEWER_SPACE_SCREENSHOT"):  # keep it for a human to look at
        Path(os.environ["SEWER_SPACE_SCREENSHOT"]).write_bytes(shot.read_bytes())
