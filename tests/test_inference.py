"""Fast inference: ONNX export parity, the predict path against the stock pipeline, the
`export-onnx` CLI, the ONNX Runtime backend of predict_files, unreadable files."""
import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf.errors import ConfigError, DataError
from sewer_hf.export import save_classifier
from sewer_hf.labels import CLASSES
from sewer_hf.model import build_classifier, create_backbone

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")

from sewer_hf.onnx_export import PARITY_TOLERANCE, export_onnx, onnx_max_abs_diff  # noqa: E402
from sewer_hf.predict import SewerClassifier  # noqa: E402

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


def test_export_onnx_cli_and_predict_backend_flag(classifier_dir, image_files, tmp_path, capsys):
    from sewer_hf.cli import main

    out = tmp_path / "exported" / "vit.onnx"
    assert main(["export-onnx", "--model", str(classifier_dir), "--out", str(out)]) == 0
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
