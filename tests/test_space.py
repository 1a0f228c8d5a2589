"""The Gradio Space (`sewer_hf.hub.space_app`, served by `spaces_demo/app.py` and by the folder
`sewer-hf push-space` builds): its handlers, bad input, the launched app through `gradio_client`,
the built folder started where the checkout is not importable, the upload to a fake Hub, and
the page in a real headless Chromium."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from html import escape
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from sewer_hf.data import labels as L  # noqa: E402
from sewer_hf.hub import space_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "spaces_demo"
CHROMIUM = "/usr/bin/chromium"
EXAMPLES = space_app.find_examples()
EXAMPLE = next(p for p in EXAMPLES if "RO_" in p)
SPACE_ID = "sewer-org/sewer-demo"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny classifier (32 px) trained on "synthetic" data (its training config says data: null),
    with RB's threshold at 0: RB is always in the verdict."""
    import torch

    from sewer_hf.config import FinetuneConfig, save_config
    from sewer_hf.models.hf_export import save_classifier
    from sewer_hf.models.vit import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", img_size=32)
    head = torch.nn.Linear(backbone.num_features, L.NUM_CLASSES)
    thresholds = {c: 0.5 for c in L.CLASSES} | {"RB": 0.0}
    out = save_classifier(backbone, head, tmp_path_factory.mktemp("m") / "tiny_run" / "classifier", image_size=32,
                          thresholds=thresholds, verify=False)
    save_config(FinetuneConfig(data=None, image_size=32), out / "training_config.yaml")
    return str(out)


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    from sewer_hf.synth.footage import write_footage

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
    truncated.write_bytes(Path(EXAMPLE).read_bytes()[:1500])  # a JPEG cut short: header fine, pixels missing
    return {"not an image": text, "over the limit": _png_header_only(tmp_path / "huge.png", 10_000, 10_000),
            "damaged": truncated}


def _our_report_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{space_app.REPORT_PREFIX}*"))


# ------------------------------------------------------------------------------------------------
# Handlers
# ------------------------------------------------------------------------------------------------

def test_model_is_named_and_marked_synthetic(model_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here: the card cannot be read
    info = space_app.describe_model(model_dir)
    assert info.name == "ViT-T/16 sewer classifier (tiny run)" and model_dir not in info.name
    assert info.synthetic and info.url is None
    header = space_app.header_html(info)
    assert "Trained on synthetic frames" in header and model_dir not in header
    hub = space_app.describe_model("sewer-org/sewer-vit-tiny")  # no network: the id is the name
    assert hub.url == "https://huggingface.co/sewer-org/sewer-vit-tiny" and not hub.synthetic
    assert "href='https://huggingface.co/sewer-org/sewer-vit-tiny'" in space_app.header_html(hub)


def test_classify_image_verdict_first_bars_and_attention(model_dir):
    from PIL import Image

    verdict, overlay, bars, scores = space_app.classify_image(EXAMPLE, model_dir)
    assert set(scores) == set(L.CLASSES)
    assert scores["RB"]["threshold"] == 0.0 and scores["RB"]["flagged"]
    assert all(s["flagged"] == (s["score"] >= s["threshold"]) for s in scores.values())
    flagged = [c for c, s in scores.items() if s["flagged"]]
    assert "defect" in verdict and all(L.CLASS_NAMES[c] in verdict for c in flagged)
    assert bars.count("bar-row") == 17 and bars.count("bar-row hit") == len(flagged)
    assert isinstance(overlay, Image.Image) and overlay.size == Image.open(EXAMPLE).size
    # normal: no class reaches its threshold
    normal = space_app.verdict_html(np.full(17, 0.1), np.full(17, 0.5))
    assert "Normal pipe" in normal and "found" not in normal
    legend = space_app.legend_html()
    assert all(escape(L.CLASS_NAMES[c]) in legend and escape(L.CLASS_DESCRIPTIONS[c]) in legend for c in L.CLASSES)
    assert len(EXAMPLES) >= 4 and all(Path(p).stat().st_size < 50_000 for p in EXAMPLES)
    assert all(space_app.example_label(p) != Path(p).stem for p in EXAMPLES)  # each names its defect


def test_16_bit_and_rgba_pngs_score_as_in_predict(model_dir, tmp_path):
    """The Space decodes with the project's decoder, as `sewer-hf predict` does."""
    from PIL import Image

    from sewer_hf.inference.predict import SewerClassifier

    rgb = np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.uint16)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray((rgb[..., 1] * 257).astype(np.uint16)).save(gray16)  # mode I;16
    rgba = tmp_path / "rgba.png"
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    Image.fromarray(np.concatenate([rgb.astype(np.uint8), alpha], axis=2), "RGBA").save(rgba)
    paths = [str(gray16), str(rgba)]
    expected, bad = SewerClassifier(model_dir, device="cpu").predict_files(paths, progress=False)
    assert bad == []
    for path, want in zip(paths, expected):
        _, _, _, scores = space_app.classify_image(path, model_dir)
        got = np.array([scores[c]["score"] for c in L.CLASSES])
        assert got == pytest.approx(want, abs=2e-4), path


def test_bad_images_are_refused_with_a_message(model_dir, tmp_path):
    for message, path in _bad_files(tmp_path).items():
        with pytest.raises(gr.Error, match=message):
            space_app.classify_image(str(path), model_dir)
    with pytest.raises(gr.Error, match="Upload an image"):
        space_app.classify_image(None, model_dir)


def test_scan_video_findings_files_and_bounded_temp_folders(model_dir, short_video, tmp_path, monkeypatch):
    monkeypatch.setattr(space_app.REPORTS, "keep", 1)  # 4 in the Space; 1 here, to need only 2 scans
    before = _our_report_folders()
    for _ in range(2):
        summary, rows, files, plot = space_app.scan_video(str(short_video), model_dir)
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    assert [Path(f).name for f in files] == ["report.html", "timeline.csv", "events.json"]
    assert "8 frames scored" in summary and "Click a finding" in summary
    rb = [r for r in rows if r[2] == "RB"]  # threshold 0: one finding over the whole clip
    assert rb and rb[0][1] == L.CLASS_NAMES["RB"] and rb[0][3] == "0:00.0" and rb[0][4] == "0:04.0"
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    minutes, seconds = rows[-1][3].split(":")
    assert space_app.finding_start(rows, len(rows) - 1) == pytest.approx(60 * int(minutes) + float(seconds))
    created = _our_report_folders() - before
    assert created == {Path(files[0]).parent}  # the older report folder is deleted
    space_app.REPORTS.clear()
    assert not (_our_report_folders() - before)


def test_bad_videos_and_images_sent_as_video_are_refused(model_dir, short_video, tmp_path):
    before = _our_report_folders()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(5000))
    renamed = tmp_path / "frame.mp4"  # a PNG with a video's name
    renamed.write_bytes(Path(EXAMPLE).read_bytes())
    png = tmp_path / "frame.png"
    from PIL import Image

    Image.open(EXAMPLE).save(png)
    for path, message in ((empty, "empty"), (junk, "not a readable video"), (png, "is an image .PNG., not a video"),
                          (renamed, "is an image .JPEG., not a video")):
        with pytest.raises(gr.Error, match=message):
            space_app.scan_video(str(path), model_dir)
    with pytest.raises(gr.Error, match="over the limit of 2 s"):
        space_app.scan_video(str(short_video), model_dir, max_seconds=2)
    assert _our_report_folders() == before  # refusals leave nothing behind


def test_truncated_footage_shows_the_coverage_warning(model_dir, tmp_path):
    """A video cut in half (index at the front, so it still opens) declares 6 s; the page says how
    much was scanned."""
    import av

    from sewer_hf.synth.footage import write_footage

    plain, fast = tmp_path / "plain.mp4", tmp_path / "fast.mp4"
    write_footage(plain, 6, seed=0, fps=8, size=(64, 48))
    with av.open(str(plain)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    summary = space_app.scan_video(str(cut), model_dir)[0]
    assert "of the 0:06.0 this video declares could be scanned" in summary and "cut off or damaged" in summary
    assert "declares" not in space_app.scan_video(str(fast), model_dir)[0]
    space_app.REPORTS.clear()


# ------------------------------------------------------------------------------------------------
# The launched app
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(model_dir):
    demo = space_app.build_demo(model_dir, max_video_seconds=5)
    demo.queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, ssr_mode=False,
                quiet=True, **space_app.launch_options(demo))
    yield demo
    demo.close()


def test_launched_app_refuses_bad_requests_and_batches_concurrent_frames(served, short_video, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served.local_url, analytics_enabled=False, verbose=False)
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/classify_image", "/scan_video"}
    for message, path in _bad_files(tmp_path).items():
        with pytest.raises(AppError, match="image|pixels|damaged"):
            client.predict(handle_file(str(path)), api_name="/classify_image")
    from sewer_hf.synth.footage import write_footage

    long_video = tmp_path / "long.mp4"
    write_footage(long_video, 6, seed=3, fps=2, size=(64, 48))
    with pytest.raises(AppError, match="over the limit of 5 s"):
        client.predict(handle_file(str(long_video)), api_name="/scan_video")
    with pytest.raises(AppError, match="not a video"):
        client.predict(handle_file(EXAMPLE), api_name="/scan_video")

    served.lane.batches.clear()
    jobs = [client.submit(handle_file(EXAMPLE), api_name="/classify_image") for _ in range(6)]
    results = [job.result(timeout=60) for job in jobs]
    for verdict, attention, bars, scores in results:
        assert L.CLASS_NAMES["RB"] in verdict and scores["RB"]["flagged"]
        assert Path(attention["value"]).is_file()
    assert sum(served.lane.batches) == 6 and max(served.lane.batches) > 1  # served together, not one by one


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_browser_example_gives_verdict_and_attention_and_findings_jump(served, short_video, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "space.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served.local_url, wait_until="networkidle")
            # wait_for: visible within the timeout (is_visible does not wait; on a busy machine the
            # page could still be rendering after "networkidle", and the check failed once)
            page.get_by_text("Trained on synthetic frames").wait_for(timeout=30_000)
            page.locator("#legend").get_by_text(L.CLASS_DESCRIPTIONS["RO"]).wait_for(timeout=30_000)
            page.get_by_text(space_app.example_label(EXAMPLE), exact=True).click()
            page.locator("#verdict").get_by_text(L.CLASS_NAMES["RB"]).wait_for(timeout=30_000)
            page.locator("#attention img").wait_for(timeout=30_000)
            assert page.locator("#bars .bar-row").count() == 17
            page.screenshot(path=str(shot), full_page=True)

            page.get_by_role("tab", name="Footage").click()
            page.locator("#footage input[type=file]").set_input_files(str(short_video))
            page.get_by_role("button", name="Scan footage").click()
            page.locator("#findings").wait_for(timeout=30_000)
            starts = page.locator("#findings [data-testid^='cell-'][data-testid$='-3']")  # the 'from' column
            starts.first.wait_for(timeout=10_000)
            times = [space_app.finding_start([["", "", "", t]], 0) for t in starts.all_inner_texts()]
            row = max(range(len(times)), key=lambda i: times[i])  # the latest finding: a real jump
            assert times[row] > 0
            page.locator(f"#findings [data-testid='cell-{row}-1']").click()
            page.wait_for_function("t => Math.abs(document.querySelector('#footage video').currentTime - t) < 0.05",
                                   arg=times[row], timeout=10_000)
            page.screenshot(path=str(tmp_path / "footage.png"), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("SEWER_SPACE_SCREENSHOT"):  # keep them for a human to look at
        folder = Path(os.environ["SEWER_SPACE_SCREENSHOT"])
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("space.png", "footage.png"):
            (folder / name).write_bytes((tmp_path / name).read_bytes())


# ------------------------------------------------------------------------------------------------
# `sewer-hf push-space`: the built folder, started where the checkout is not importable
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def space_folder(model_dir, tmp_path_factory):
    from sewer_hf import cli

    out = tmp_path_factory.mktemp("space") / "sewer-demo"
    assert cli.main(["push-space", "--model", model_dir, "--repo-id", SPACE_ID, "--dry-run", "--out", str(out)]) == 0
    return out


def test_space_folder_has_front_matter_requirements_wheel_and_model(space_folder):
    import yaml

    text = (space_folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__ and meta["app_file"] == "app.py"
    assert meta["license"] == "apache-2.0"  # the bundled model was trained on synthetic frames
    assert "Trained on synthetic frames" in text and f'Client("{SPACE_ID}")' in text
    files = {p.relative_to(space_folder).as_posix() for p in space_folder.rglob("*") if p.is_file()}
    assert {"app.py", "requirements.txt", "space_config.json", "model/config.json", "model/model.safetensors",
            "model/README.md", "wheels/sewer_hf-0.1.0-py3-none-any.whl"} <= files
    assert sum(f.startswith("examples/") for f in files) == len(EXAMPLES)
    assert not any(f.endswith(".pyi") for f in files)
    requirements = [line.split(">")[0].split("=")[0].strip().lower()
                    for line in (space_folder / "requirements.txt").read_text().splitlines()
                    if line and line[0] not in "#-"]
    assert {"torch", "transformers", "av", "matplotlib", "huggingface-hub"} <= set(requirements)
    assert "gradio" not in requirements  # the Space SDK provides the pinned version
    assert json.loads((space_folder / "space_config.json").read_text())["model"] == "model"
    assert (space_folder / "app.py").read_text() == (SPACE / "app.py").read_text()  # one launcher
    # a Hub model: listed in `models`, nothing bundled
    from sewer_hf.hub.space import build_space_folder

    hub = build_space_folder("sewer-org/sewer-vit-tiny", space_folder.parent / "hub", SPACE_ID,
                             wheel=str(space_folder / "wheels" / "sewer_hf-0.1.0-py3-none-any.whl"))
    meta = yaml.safe_load((hub / "README.md").read_text().split("---\n")[1])
    assert meta["models"] == ["sewer-org/sewer-vit-tiny"] and not (hub / "model").exists()


def test_built_space_starts_without_the_checkout_and_answers(space_folder, tmp_path, free_port):
    """`python app.py` in the built folder, with the checkout off sys.path: no site (so not the
    editable install's .pth), the third-party packages only, cwd outside the repository."""
    import sysconfig

    from gradio_client import Client, handle_file

    port = free_port
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MODEL_ID", "GRADIO"))}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-S", "-P", "app.py"], cwd=space_folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 90
        while not any("Running on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.time() < deadline, "".join(lines)
            time.sleep(0.2)
        origin = next(line for line in lines if line.startswith("sewer_hf from "))
        assert str(space_folder / "wheels") in origin and str(REPO) not in origin  # the bundled wheel
        assert "sewer-demo-model" in origin and str(space_folder / "model") in origin  # the bundled model
        client = Client(f"http://127.0.0.1:{port}", analytics_enabled=False, verbose=False)
        verdict, attention, bars, scores = client.predict(handle_file(EXAMPLE), api_name="/classify_image")
        assert L.CLASS_NAMES["RB"] in verdict and scores["RB"]["flagged"] and scores["RB"]["threshold"] == 0.0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not (space_folder / "app.pyi").exists()


# ------------------------------------------------------------------------------------------------
# `sewer-hf push-space` against an in-process fake Hub
# ------------------------------------------------------------------------------------------------

class FakeSpaceHub:
    """The routes `create_repo(repo_type="space")` + `upload_folder` use; records what arrives."""

    def __init__(self) -> None:
        self.requests, self.created, self.commits = [], [], []

    def handler(self, request):
        import base64

        import httpx2

        self.requests.append(request)
        method, path = request.method, request.url.path
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            return httpx2.Response(200, json={"url": f"https://hub.test/spaces/{body['organization']}/{body['name']}"})
        if method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if method == "POST" and path.startswith("/api/spaces/") and path.endswith("/preupload/main"):
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if method == "POST" and path.startswith("/api/spaces/") and path.endswith("/commit/main"):
            lines = [json.loads(x) for x in request.content.decode().splitlines() if x.strip()]
            self.commits.append({x["value"]["path"]: base64.b64decode(x["value"]["content"])
                                 for x in lines if x["key"] == "file"})
            url = f"https://hub.test/spaces/{SPACE_ID}/commit/{'0' * 40}"
            return httpx2.Response(200, json={"commitUrl": url, "commitOid": "0" * 40, "success": True})
        if method == "HEAD" and path.endswith("/README.md"):
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        return httpx2.Response(404, json={"error": "not found"}, headers={"X-Error-Code": "RepoNotFound"})


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    hub = FakeSpaceHub()
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.test")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_stored_token"))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handler)))
    yield hub
    huggingface_hub.set_client_factory(_http.default_client_factory)


def test_push_space_uploads_a_gradio_space_and_needs_a_token(model_dir, space_folder, fake_hub, monkeypatch,
                                                             tmp_path, capsys):
    from sewer_hf import cli

    wheel = str(space_folder / "wheels" / "sewer_hf-0.1.0-py3-none-any.whl")
    out = tmp_path / "not_built"
    assert cli.main(["push-space", "--model", model_dir, "--repo-id", SPACE_ID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and "HF_TOKEN" in err and "--dry-run" in err
    assert fake_hub.requests == [] and not out.exists()  # stopped before any work

    monkeypatch.setenv("HF_TOKEN", "hf_FakeSecretTokenForSpaceTests0123")
    assert cli.main(["push-space", "--model", model_dir, "--repo-id", SPACE_ID, "--private", "--wheel", wheel]) == 0
    assert "https://hub.test/spaces/sewer-org/sewer-demo" in capsys.readouterr().out
    [created] = fake_hub.created
    assert created["type"] == "space" and created["sdk"] == "gradio" and created["visibility"] == "private"
    [files] = fake_hub.commits
    assert {"README.md", "app.py", "requirements.txt", "space_config.json", "model/model.safetensors",
            "wheels/sewer_hf-0.1.0-py3-none-any.whl"} <= set(files)
    assert b"hf_FakeSecret" not in b"".join(files.values())
