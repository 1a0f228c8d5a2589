"""Fast inference: ONNX export parity, the predict path against the stock pipeline, the
`export-onnx` CLI, the ONNX Runtime backend of predict_files, unreadable files."""
import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf.data.labels import CLASSES
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.models.hf_export import save_classifier
from sewer_hf.models.vit import build_classifier, create_backbone

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")

from sewer_hf.inference.onnx import PARITY_TOLERANCE, export_onnx, onnx_max_abs_diff  # noqa: E402
from sewer_hf.inference.predict import SewerClassifier  # noqa: E402

IMAGE_SIZE = 32
# The predict path feeds the model the same uint8 pixels as the stock processor (same decode,
# same torchvision resize); only fp32 rounding differs (fused x*scale+shift vs (x-mean)/std,
# batched vs one-image matmuls): ~1e-6 on a sigmoid. A one-level change of the resized pixels
# (PIL's bicubic instead of torchvision's) already moves these scores by ~1e-3, so 1e-4 tells
# "same preprocessing" from "similar preprocessing".
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    clf = build_classifier(create_backbone("vit_tiny", img_size=IMAGE_SIZE))
    with torch.no_grad():  # spread-out logits: scores far from 0.5 and sensitive to the pixels
        for p in clf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        clf.head.weight.normal_(0, 1.0)
    return save_classifier(clf.backbone, clf.head, tmp_path_factory.mktemp("clf") / "classifier",
                           image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def onnx_path(classifier_dir):
    return export_onnx(classifier_dir)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Readable frames of several sizes and modes, in the formats Sewer-ML and users bring."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(72, 56), (64, 48), (40, 32), (32, 32)]):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        pixels = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"rgb_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    gray = folder / "gray.png"
    Image.fromarray(rng.integers(0, 256, (50, 60), dtype=np.uint8), mode="L").save(gray)
    jpeg = folder / "frame.jpg"
    Image.open(paths[0]).save(jpeg, quality=90)
    return paths + [str(gray), str(jpeg)]


def _pipeline_scores(model_dir, paths):
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(model_dir), top_k=17, device="cpu")
    outputs = classify(paths, batch_size=4)
    return np.array([[{o["label"]: o["score"] for o in out}[c] for c in CLASSES] for out in outputs])


def test_onnx_logits_equal_pytorch(classifier_dir, onnx_path):
    import onnxruntime as ort
    from transformers import AutoModelForImageClassification

    assert onnx_path == classifier_dir / "model.onnx" and onnx_path.is_file()
    model = AutoModelForImageClassification.from_pretrained(classifier_dir).eval()
    assert onnx_max_abs_diff(model, onnx_path) <= PARITY_TOLERANCE
    # the batch axis is dynamic: 1 and 5 images (traced with 2)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = model(pixel_values=x).logits.numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        assert got.shape == (batch, 17)
        assert np.abs(got - expected).max() <= PARITY_TOLERANCE


def test_predict_path_matches_the_stock_pipeline(classifier_dir, image_files):
    from transformers import AutoImageProcessor

    clf = SewerClassifier(classifier_dir, device="cpu")
    scores, bad = clf.predict_files(image_files, batch_size=4, workers=2, progress=False)
    assert bad == [] and scores.shape == (len(image_files), 17)
    expected = _pipeline_scores(classifier_dir, image_files)
    assert np.abs(scores - expected).max() <= SCORE_TOLERANCE
    assert scores.std() > 0.05  # the check above compares informative scores, not a constant
    # and the pixels themselves: the exported image processor's pixel_values
    processor = AutoImageProcessor.from_pretrained(classifier_dir)
    image = Image.open(image_files[0])
    theirs = processor(image, return_tensors="pt")["pixel_values"]
    ours = clf.resized(image).unsqueeze(0).float() * clf._scale + clf._shift
    assert torch.allclose(ours, theirs, atol=1e-5)
    # a decoded RGB array (what `scan` hands over) takes a shortcut past PIL: the same pixels
    rgb = np.array(Image.open(image_files[0]).convert("RGB"))
    assert torch.equal(clf.resized(rgb), clf.resized(image))
    assert torch.equal(clf.resized(rgb[::2, ::2]), clf.resized(Image.fromarray(rgb[::2, ::2].copy())))  # strided view
    # predict() on PIL images is the same path (other batch split: fp32 rounding only)
    assert np.abs(clf.predict([Image.open(p) for p in image_files]) - scores).max() <= 1e-5


def test_pil_resize_is_measurably_different(classifier_dir, image_files):
    """The tolerance above can fail: PIL's bicubic resize (one level off here and there) is
    caught by it."""
    clf = SewerClassifier(classifier_dir, device="cpu")
    exact = clf.predict([Image.open(p) for p in image_files])
    def pil_resized(path):
        image = Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    pil_pixels = torch.stack([pil_resized(p) for p in image_files])
    assert np.abs(clf.scores_from_uint8(pil_pixels) - exact).max() > SCORE_TOLERANCE


def test_onnx_backend_predict_files_and_unreadable_files(classifier_dir, onnx_path, image_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    truncated = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    Image.open(image_files[0]).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    paths = [str(broken), *image_files[:3], str(truncated), str(tmp_path / "missing.png"), *image_files[3:]]

    torch_clf = SewerClassifier(classifier_dir, device="cpu")
    onnx_clf = SewerClassifier(classifier_dir, backend="onnx", threads=1)
    expected, bad_torch = torch_clf.predict_files(paths, batch_size=3, progress=False)
    got, bad_onnx = onnx_clf.predict_files(paths, batch_size=3, progress=False)
    assert bad_onnx == bad_torch == [0, 4, 5]
    assert got.shape == (len(image_files), 17)
    assert np.abs(got - expected).max() <= SCORE_TOLERANCE
    assert list(onnx_clf.thresholds) == list(torch_clf.thresholds)
    # in lanes (each decodes and scores its own batch on one thread): the same rows, in order
    for lanes in (2, 3):
        laned = SewerClassifier(classifier_dir, backend="onnx", lanes=lanes)
        got_laned, bad_laned = laned.predict_files(paths, batch_size=3, progress=False)
        assert bad_laned == [0, 4, 5]
        assert np.abs(got_laned - got).max() <= 1e-5
        torch_laned = SewerClassifier(classifier_dir, device="cpu", backend="torch", lanes=lanes)
        got_torch, bad_torch_laned = torch_laned.predict_files(paths, batch_size=3, progress=False)
        assert torch_laned.lanes == lanes and bad_torch_laned == [0, 4, 5]
        assert np.abs(got_torch - expected).max() <= 1e-5
    with pytest.raises(ConfigError, match="lanes=0"):
        SewerClassifier(classifier_dir, backend="onnx", lanes=0)


def test_export_onnx_cli_and_predict_backend_flag(classifier_dir, image_files, tmp_path, capsys):
    from sewer_hf.cli import main

    out = tmp_path / "exported" / "vit.onnx"
    assert main(["export-onnx", "--model", str(classifier_dir), "--out", str(out), "--int8", "none",
                 "--bf16-check", "no"]) == 0  # bf16 has its own test: no check left behind on a native-bf16 CPU
    assert out.is_file() and "match PyTorch" in capsys.readouterr().out
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in image_files[:3]:
        Image.open(p).save(folder / (p.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png"))
    (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    scores_csv = tmp_path / "scores.csv"
    assert main(["predict", "--model", str(classifier_dir), "--data", str(folder), "--out", str(scores_csv),
                 "--backend", "onnx", "--onnx", str(out), "--threads", "1", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 rows" in captured.out and "skipped 1 unreadable image(s): zz_broken.png" in captured.err
    rows = list(csv.DictReader(scores_csv.open()))
    assert [r["Filename"] for r in rows] == sorted(r["Filename"] for r in rows) and len(rows) == 3
    assert list(rows[0]) == ["Filename", *CLASSES]
    # a folder that is not a classifier: one clear line, exit code 2
    assert main(["export-onnx", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bad_backend_settings_are_clear_errors(classifier_dir, tmp_path):
    with pytest.raises(DataError, match="export-onnx"):
        SewerClassifier(classifier_dir, backend="onnx", onnx_path=tmp_path / "absent.onnx")
    with pytest.raises(ConfigError, match="backend"):
        SewerClassifier(classifier_dir, backend="tensorrt")
    with pytest.raises(ConfigError, match="precision"):
        SewerClassifier(classifier_dir, backend="onnx", precision="bf16")


def test_bf16_precision_stays_close(classifier_dir, image_files):
    fp32 = SewerClassifier(classifier_dir, device="cpu").predict_files(image_files, progress=False)[0]
    bf16 = SewerClassifier(classifier_dir, device="cpu", precision="bf16").predict_files(image_files, progress=False)[0]
    # bfloat16 keeps 8 mantissa bits: scores move, but by far less than a decision would need
    assert 0 < np.abs(bf16 - fp32).max() < 0.1


def test_auto_backend_prefers_onnx_when_exported(classifier_dir, onnx_path, tmp_path):
    assert SewerClassifier(classifier_dir, device="cpu", backend="auto").backend == "onnx"
    missing = tmp_path / "none.onnx"
    assert SewerClassifier(classifier_dir, device="cpu", backend="auto", onnx_path=missing).backend == "torch"
    assert SewerClassifier(classifier_dir, device="cpu", backend="auto", precision="bf16").backend == "torch"


# --- int8 (issue 17): export, accuracy check, --precision ---------------------------------------

@pytest.fixture(scope="module")
def int8_export(classifier_dir, tmp_path_factory):
    """export-onnx with its default int8 (dynamic) into a folder of its own: (fp32 path, check)."""
    import json

    from sewer_hf.cli import main
    from sewer_hf.inference.quantize import check_path, int8_path

    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    assert main(["export-onnx", "--model", str(classifier_dir), "--out", str(out), "--check-frames", "24",
                 "--bf16-check", "no"]) == 0  # the model dir stays without a bf16 check on any CPU
    assert int8_path(out).is_file() and check_path(out).is_file()
    return out, json.loads(check_path(out).read_text())


def test_int8_export_writes_a_check_that_measures_the_int8_model(int8_export):
    from sewer_hf.inference.quantize import int8_path, sha256

    onnx_file, check = int8_export
    assert check["precision"] == "int8" and check["method"] == "dynamic" and check["frames"] == 24
    assert check["int8_sha256"] == sha256(int8_path(onnx_file))
    assert int8_path(onnx_file).stat().st_size < onnx_file.stat().st_size / 2  # int8 weights
    assert 0 < check["max_abs_score_diff"] < 0.5  # quantized: scores move, a little
    assert check["passed"] == all(d >= -check["bound_points"] for d in check["delta_points"].values())
    for metric in ("F2_CIW", "F1_Normal"):
        assert check["delta_points"][metric] == pytest.approx(
            check["candidate"][metric] - check["fp32"][metric], abs=1e-3)


def test_compare_scores_passes_within_the_bound_and_fails_beyond_it():
    from sewer_hf.inference.quantize import compare_scores

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 17)) < 0.2).astype(int)
    reference = np.clip(targets * 0.6 + rng.random((200, 17)) * 0.5, 0, 1)
    same = compare_scores(reference, reference.copy(), targets, [0.5] * 17)
    assert same["passed"] and same["delta_points"] == {"F2_CIW": 0.0, "F1_Normal": 0.0}
    assert same["max_abs_score_diff"] == 0 and same["decisions_changed"] == 0
    worse = reference.copy()
    worse[targets == 1] -= 0.3  # positives fall below their thresholds: recall, hence F2_CIW, drops
    failed = compare_scores(reference, worse, targets, [0.5] * 17)
    assert not failed["passed"] and failed["delta_points"]["F2_CIW"] < -0.5
    assert failed["max_abs_score_diff"] == pytest.approx(0.3) and failed["decisions_changed"] > 0


def test_int8_precision_runs_the_checked_model_and_refuses_otherwise(classifier_dir, int8_export, image_files,
                                                                     tmp_path):
    import json
    import shutil

    from sewer_hf.inference.quantize import check_path, int8_path

    onnx_file, check = int8_export
    folder = tmp_path / "m"
    folder.mkdir()
    for f in (onnx_file, int8_path(onnx_file), check_path(onnx_file)):
        shutil.copy(f, folder / f.name)
    local = folder / "model.onnx"
    passed = dict(check, passed=True)
    check_path(local).write_text(json.dumps(passed))
    int8 = SewerClassifier(classifier_dir, precision="int8", onnx_path=local, threads=1)
    assert int8.backend == "onnx" and int8.precision == "int8" and int8.onnx_file == int8_path(local)
    fp32 = SewerClassifier(classifier_dir, backend="onnx", onnx_path=local, threads=1)
    got, _ = int8.predict_files(image_files, batch_size=4, progress=False)
    ref, _ = fp32.predict_files(image_files, batch_size=4, progress=False)
    assert 0 < np.abs(got - ref).max() < 0.5  # the int8 graph, not the fp32 one
    with pytest.raises(ConfigError, match="backend"):
        SewerClassifier(classifier_dir, backend="torch", precision="int8", onnx_path=local)
    # a failed check: refused, with the numbers
    check_path(local).write_text(json.dumps(dict(check, passed=False)))
    with pytest.raises(ConfigError, match="failed its accuracy check.*F2_CIW"):
        SewerClassifier(classifier_dir, precision="int8", onnx_path=local)
    # a replaced int8 file is not the one checked
    check_path(local).write_text(json.dumps(passed))
    int8_path(local).write_bytes(int8_path(local).read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="SHA-256"):
        SewerClassifier(classifier_dir, precision="int8", onnx_path=local)
    # no int8 model at all
    with pytest.raises(ConfigError, match="no int8 model.*export-onnx"):
        SewerClassifier(classifier_dir, precision="int8", onnx_path=tmp_path / "absent.onnx")
    with pytest.raises(ConfigError, match="precision"):
        SewerClassifier(classifier_dir, precision="int4")


def test_auto_precision_offers_int8_only_when_checked_and_never_bf16(classifier_dir, int8_export, tmp_path,
                                                                     monkeypatch):
    import json
    import shutil

    from sewer_hf.inference.predict import precision_candidates
    from sewer_hf.inference.quantize import check_path, int8_path

    monkeypatch.setenv("SEWER_HF_CACHE", str(tmp_path / "cache"))
    onnx_file, check = int8_export
    for f in (onnx_file, int8_path(onnx_file)):
        shutil.copy(f, tmp_path / f.name)
    local = tmp_path / "model.onnx"
    check_path(local).write_text(json.dumps(dict(check, passed=True)))
    assert precision_candidates(local, "cpu") == [("onnx", "fp32"), ("onnx", "int8")]
    assert precision_candidates(local, "cpu", backend="torch") == [("torch", "fp32")]
    assert precision_candidates(tmp_path / "none.onnx", "cpu") == [("torch", "fp32")]
    first = SewerClassifier(classifier_dir, device="cpu", backend="auto", precision="auto", onnx_path=local, threads=1)
    assert (first.backend, first.precision) in [("onnx", "fp32"), ("onnx", "int8")]
    assert "fastest on this machine" in first.choice and "ms/img" in first.choice
    again = SewerClassifier(classifier_dir, device="cpu", backend="auto", precision="auto", onnx_path=local, threads=1)
    assert again.precision == first.precision and "timed earlier" in again.choice
    check_path(local).write_text(json.dumps(dict(check, passed=False)))
    assert precision_candidates(local, "cpu") == [("onnx", "fp32")]
    only = SewerClassifier(classifier_dir, device="cpu", precision="auto", backend="auto", onnx_path=local)
    assert (only.backend, only.precision) == ("onnx", "fp32") and "only precision" in only.choice


def test_bf16_check_lets_auto_time_bf16_only_with_native_bf16(classifier_dir, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    import sewer_hf.inference.predict as P
    from sewer_hf.cli import main
    from sewer_hf.inference import precision as Q
    from sewer_hf.inference.predict import precision_candidates

    monkeypatch.setenv("SEWER_HF_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "classifier"
    shutil.copytree(classifier_dir, model)
    assert main(["export-onnx", "--model", str(model), "--int8", "none", "--check-frames", "8", "--bf16-check", "yes"]) == 0
    assert "model.bf16.check.json: bf16 weights on 8 held-out frames" in capsys.readouterr().out
    check = json.loads((model / Q.BF16_CHECK_FILE).read_text())
    assert check["precision"] == "bf16" and check["frames"] == 8
    assert check["weights_sha256"] == Q.sha256(model / Q.WEIGHTS_FILE)
    assert 0 < check["max_abs_score_diff"] < 0.2  # bf16 weights: scores move, a little
    assert check["passed"] == all(d >= -check["bound_points"] for d in check["delta_points"].values())
    (model / Q.BF16_CHECK_FILE).write_text(json.dumps(dict(check, passed=True)))
    onnx_file = model / "model.onnx"

    monkeypatch.setattr(P, "native_bf16", lambda flags=None: False)  # this machine: AVX2 only
    assert precision_candidates(onnx_file, "cpu", model_dir=model) == [("onnx", "fp32")]
    monkeypatch.setattr(P, "native_bf16", lambda flags=None: True)  # as on a CPU with AMX / AVX512-BF16
    assert precision_candidates(onnx_file, "cpu", model_dir=model) == [("onnx", "fp32"), ("torch", "bf16")]
    assert precision_candidates(onnx_file, "cpu", backend="onnx", model_dir=model) == [("onnx", "fp32")]
    # auto times the candidates and keeps the fastest: here bf16 is made to win
    timings, timed_lanes = iter([0.002, 0.001]), []  # s/img of fp32, then bf16 (the candidates' order)

    def fake_timer(score, size, lanes=1):
        score(torch.zeros(1, 3, *size[::-1], dtype=torch.uint8))
        timed_lanes.append(lanes)
        return next(timings)

    monkeypatch.setattr(P, "time_scorer", fake_timer)
    clf = SewerClassifier(model, device="cpu", backend="auto", precision="auto", lanes=3)
    assert (clf.backend, clf.precision) == ("torch", "bf16") and "bf16" in clf.choice
    assert clf.lanes == 3 and timed_lanes == [3, 3], "each candidate is timed in the lanes it will run in"
    # other weights than the ones checked: not offered
    (model / Q.WEIGHTS_FILE).write_bytes((model / Q.WEIGHTS_FILE).read_bytes() + b" ")
    assert Q.read_bf16_check(model)["passed"] is False
    assert precision_candidates(onnx_file, "cpu", model_dir=model) == [("onnx", "fp32")]


def test_time_scorer_runs_the_lanes_at_once_each_on_one_thread():
    import threading

    from sewer_hf.inference.precision import time_scorer

    calls, barrier = [], threading.Barrier(2, timeout=30)

    def score(pixels):  # both lanes must be in here at the same time, or the barrier times out
        calls.append((torch.get_num_threads(), tuple(pixels.shape)))
        barrier.wait()

    seconds = time_scorer(score, (6, 4), batch=2, repeats=1, lanes=2)
    assert calls == [(1, (2, 3, 4, 6))] * 4, "a warm-up and one timed round, two one-thread lanes each"
    assert 0 < seconds < 30
    calls.clear()
    time_scorer(lambda px: calls.append(torch.get_num_threads()), (6, 4), batch=2, repeats=2)
    assert calls == [torch.get_num_threads()] * 3, "one lane: the caller's threads"


def test_predict_cli_precision_flag(classifier_dir, int8_export, image_files, tmp_path, capsys):
    from sewer_hf.cli import main

    onnx_file, check = int8_export
    scores_csv = tmp_path / "scores.csv"
    args = ["predict", "--model", str(classifier_dir), "--data", str(tmp_path / "frames"), "--out", str(scores_csv),
            "--onnx", str(onnx_file), "--threads", "1"]
    (tmp_path / "frames").mkdir()
    for p in image_files[:3]:
        Image.open(p).convert("RGB").save(tmp_path / "frames" / (p.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".png"))
    code = main(args + ["--precision", "int8"])
    err = capsys.readouterr().err
    if check["passed"]:
        assert code == 0 and "ONNX Runtime int8" in err
    else:
        assert code == 2 and "failed its accuracy check" in err
    assert main(args + ["--precision", "fp32"]) == 0
    assert "ONNX Runtime fp32" in capsys.readouterr().err
    assert main(args + ["--precision", "int8", "--onnx", str(tmp_path / "none.onnx")]) == 2
    assert "no int8 model" in capsys.readouterr().err
