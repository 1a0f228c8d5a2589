"""Hostile inputs (issue 15): each bad input is refused with a named error (a SewerHFError; the
CLI prints `error: ...` and exits 2) or handled with nothing lost. One test per fault, each
failing before its fix; the config domains and the CSV / score-file readers are covered by
table-driven and fuzz tests (tests/test_config_domains.py, the fuzz tests below)."""
import csv
import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf import labels as L
from sewer_hf.cli import main as cli
from sewer_hf.data import decode_rgb
from sewer_hf.errors import ConfigError, DataError, SewerHFError

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from sewer_hf.export import save_classifier
    from sewer_hf.model import build_classifier, create_backbone

    torch.manual_seed(0)
    clf = build_classifier(create_backbone("vit_tiny", img_size=IMAGE_SIZE))
    with torch.no_grad():  # scores far from 0.5 and sensitive to the pixels
        for p in clf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        clf.head.weight.normal_(0, 1.0)
    return save_classifier(clf.backbone, clf.head, tmp_path_factory.mktemp("clf") / "classifier",
                           image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    from sewer_hf.predict import SewerClassifier

    return SewerClassifier(classifier_dir, device="cpu", backend="torch")


def _ramp(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
                   + rng.normal(0, 20, (h, w, 3)), 0, 255)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Files in the modes users bring: 16-bit grayscale, RGBA, LA, palette (with and without a
    transparent colour), grayscale, RGB."""
    folder = tmp_path_factory.mktemp("odd")
    rgb = _ramp().astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    images = {
        "deep16": Image.fromarray((_ramp()[..., 0] * 257).astype(np.uint16)),
        "rgba": Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"),
        "la": Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA"),
        "palette": Image.fromarray(rgb).quantize(16),
        "gray": Image.fromarray(rgb[..., 1], mode="L"),
        "rgb": Image.fromarray(rgb),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        image.save(paths[name])
    trans = folder / "palette_transparent.png"
    images["palette"].save(trans, transparency=0)
    paths["palette_transparent"] = trans
    return paths


# ------------------------------------------------------------------------------------------------
# 3. one decoder for every entry point
# ------------------------------------------------------------------------------------------------

def test_16_bit_png_is_scaled_not_white_and_every_source_kind_decodes_the_same(odd_images):
    with Image.open(odd_images["deep16"]) as deep:
        assert deep.mode.startswith("I")
        naive = np.asarray(deep.convert("RGB"))  # what the Space did
    ours = np.asarray(decode_rgb(odd_images["deep16"]))
    assert naive.mean() > 240 and 60 < ours.mean() < 190  # almost white vs the real picture
    for name, path in odd_images.items():
        expected = np.asarray(decode_rgb(path))
        assert expected.dtype == np.uint8 and expected.shape[2] == 3, name
        for source in (str(path), path.read_bytes(), Image.open(path), {"bytes": None, "path": str(path)}):
            np.testing.assert_array_equal(np.asarray(decode_rgb(source)), expected, err_msg=name)
    # numpy arrays too: 16-bit scaled, RGBA composited as for the file
    np.testing.assert_array_equal(np.asarray(decode_rgb(np.asarray(Image.open(odd_images["rgba"])))),
                                  np.asarray(decode_rgb(odd_images["rgba"])))
    with pytest.raises(DataError, match="not an image that can be decoded"):
        decode_rgb(b"not an image", strict=True)


def test_predict_scores_a_pil_image_like_the_file(classifier, odd_images):
    """`sewer-hf predict` (files) and SewerClassifier.predict (PIL, as the Space and the pipeline
    helpers call it) give the same scores for 16-bit, RGBA, LA and palette images."""
    names = list(odd_images)
    paths = [str(odd_images[n]) for n in names]
    from_files, bad = classifier.predict_files(paths, progress=False)
    assert bad == []
    from_pil = classifier.predict([Image.open(p) for p in paths])
    from_bytes = classifier.predict([odd_images[n].read_bytes() for n in names])
    for i, name in enumerate(names):
        assert np.abs(from_pil[i] - from_files[i]).max() < 1e-5, name
        assert np.abs(from_bytes[i] - from_files[i]).max() < 1e-5, name


def test_every_entry_point_calls_the_one_decoder(classifier, odd_images, monkeypatch, tmp_path):
    import sewer_hf.data as data
    from sewer_hf.attention import AttentionExplainer, overlay

    calls = []
    real = data.decode_rgb

    def spy(image, *args, **kwargs):
        calls.append(type(image).__name__)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(data, "decode_rgb", spy)
    path = str(odd_images["rgba"])
    for entry in (lambda: classifier.predict([Image.open(path)]), lambda: classifier.predict_files([path], progress=False),
                  lambda: classifier.preprocess(Image.open(path)),
                  lambda: AttentionExplainer(classifier).explain(Image.open(path)),
                  lambda: overlay(Image.open(path), np.ones((2, 2)))):
        calls.clear()
        entry()
        assert calls, entry


# ------------------------------------------------------------------------------------------------
# 2. a non-empty output_dir: refused, unless --overwrite_output_dir (cleared) or --resume_from_checkpoint
# ------------------------------------------------------------------------------------------------

def _finished_run(out):
    """The folder a finished pretraining run leaves."""
    (out / "checkpoints" / "step_00000010").mkdir(parents=True)
    (out / "checkpoints" / "step_00000010" / "model.safetensors").write_bytes(b"old")
    (out / "backbone").mkdir()
    (out / "backbone" / "config.json").write_text("{}")
    (out / "config.yaml").write_text("epochs: 2\n")
    (out / "knn.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    return out


def _tiny_pretrain_config(out, **kw):
    from sewer_hf.config import PretrainConfig

    return PretrainConfig(data=str(out.parent / "no_data_needed"), output_dir=str(out), report_to="none",
                          image_size=32, **kw)


def test_a_finished_run_in_output_dir_is_refused_without_a_flag(tmp_path, capsys):
    from sewer_hf.config import PretrainConfig
    from sewer_hf.pretrain import pretrain
    from sewer_hf.recipe import run_recipe

    out = _finished_run(tmp_path / "run")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ConfigError, match=r"output_dir .*run is not empty \(a finished run: backbone/, checkpoints/, "
                                          r"config.yaml.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        pretrain(_tiny_pretrain_config(out))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched
    # the recipe's command line: a named error, exit 2
    assert run_recipe(PretrainConfig, pretrain, [f"--output_dir={out}", "--report_to=none"]) == 2
    assert "is not empty" in capsys.readouterr().err
    # anything at all counts, not only a finished run
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        pretrain(_tiny_pretrain_config(started))


def test_overwrite_output_dir_clears_the_old_run_so_latest_cannot_resume_it(tmp_path):
    from sewer_hf.training import CheckpointManager, start_run

    out = _finished_run(tmp_path / "run")
    cfg = _tiny_pretrain_config(out, overwrite_output_dir=True)
    accelerator, _ = start_run(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # the new run's config only
    assert "overwrite_output_dir: true" in (out / "config.yaml").read_text()
    assert CheckpointManager(accelerator, out).resolve("latest") is None  # no old checkpoint to resume
    # a folder that is not a run folder is never deleted
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="does not look like a run folder.*thesis.tex"):
        start_run(_tiny_pretrain_config(foreign, overwrite_output_dir=True))
    assert (foreign / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        start_run(_tiny_pretrain_config(a_file))


def test_resume_latest_in_a_started_folder_without_checkpoints_starts_fresh(tmp_path):
    from sewer_hf.training import CheckpointManager, MetricsLog, TrainState, resume_and_track, start_run

    out = tmp_path / "crashed"  # a run that died before its first checkpoint
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 2\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    cfg = _tiny_pretrain_config(out, resume_from_checkpoint="latest")
    accelerator, _ = start_run(cfg)
    state, ckpt, log = TrainState(), CheckpointManager(accelerator, out), MetricsLog(accelerator, out)
    resume_and_track(accelerator, cfg, state, ckpt, log, "test")
    assert state.step == 0 and log.path.read_text() == ""  # fresh start, fresh log
    # an empty or absent folder needs no flag
    start_run(_tiny_pretrain_config(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    start_run(_tiny_pretrain_config(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------------
# 6. fp16 on the CPU: no silent no-op
# ------------------------------------------------------------------------------------------------

def test_fp16_on_the_cpu_falls_back_to_fp32_and_says_so(tmp_path, capsys):
    from sewer_hf.training import start_run

    assert not torch.cuda.is_available()
    cfg = _tiny_pretrain_config(tmp_path / "fp16", mixed_precision="fp16")
    accelerator, _ = start_run(cfg)
    out = capsys.readouterr().out
    assert "mixed_precision=fp16 has no effect on the CPU" in out and "this run trains in fp32" in out
    assert cfg.mixed_precision == "no" and accelerator.mixed_precision == "no"
    assert "mixed_precision: 'no'" in (tmp_path / "fp16" / "config.yaml").read_text()  # what ran, not what was asked
