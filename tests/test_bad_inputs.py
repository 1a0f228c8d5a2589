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

from sewer_hf.cli import main as cli
from sewer_hf.data import decode_rgb
from sewer_hf.data import labels as L
from sewer_hf.errors import ConfigError, DataError, SewerHFError

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from sewer_hf.models.hf_export import save_classifier
    from sewer_hf.models.vit import build_classifier, create_backbone

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
    from sewer_hf.inference.predict import SewerClassifier

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
    # Spied at the conversion every decode ends in, which the package's modules cannot bind to
    # a name of their own: a module that decoded by other means would not be seen.
    import sewer_hf.data.decode as decode
    from sewer_hf.inference.attention import AttentionExplainer, overlay

    calls = []
    real = decode._to_rgb

    def spy(image, *args, **kwargs):
        calls.append(type(image).__name__)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(decode, "_to_rgb", spy)
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
    from sewer_hf.train.pretrain import pretrain
    from sewer_hf.train.recipe import run_recipe

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
    from sewer_hf.train.run import CheckpointManager, start_run

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
    from sewer_hf.train.run import CheckpointManager, MetricsLog, TrainState, resume_and_track, start_run

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
    from sewer_hf.train.run import start_run

    assert not torch.cuda.is_available()
    cfg = _tiny_pretrain_config(tmp_path / "fp16", mixed_precision="fp16")
    accelerator, _ = start_run(cfg)
    out = capsys.readouterr().out
    assert "mixed_precision=fp16 has no effect on the CPU" in out and "this run trains in fp32" in out
    assert cfg.mixed_precision == "no" and accelerator.mixed_precision == "no"
    assert "mixed_precision: 'no'" in (tmp_path / "fp16" / "config.yaml").read_text()  # what ran, not what was asked


# ------------------------------------------------------------------------------------------------
# 4. evaluate: scores are probabilities, thresholds in [0, 1], labels exactly 0 or 1
# ------------------------------------------------------------------------------------------------

def _annotation_csv(path, n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        labels = (rng.random(L.NUM_CLASSES) < 0.2).astype(int)
        rows.append([f"{i:08d}.png", int(rng.integers(0, 101)), 1, *labels, 1 - int(labels.any()), int(labels.any())])
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(L.CSV_COLUMNS)
        writer.writerows(rows)
    return path


def _scores_csv(path, names, scores):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Filename", *L.CLASSES])
        for name, row in zip(names, scores):
            writer.writerow([name, *(repr(float(v)) for v in row)])
    return path


def _run(capsys, *argv):
    code = cli(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_evaluate_refuses_logits_and_thresholds_outside_0_1(tmp_path, capsys):
    ann = _annotation_csv(tmp_path / "SewerML_Val.csv")
    names = [f"{i:08d}.png" for i in range(6)]
    logits = np.random.default_rng(1).normal(0, 3, (6, L.NUM_CLASSES))
    code, text = _run(capsys, "evaluate", "--annotations", ann, "--scores", _scores_csv(tmp_path / "logits.csv", names, logits))
    assert code == 2 and "error: " in text and "logits.csv line " in text and "not a score in [0, 1]" in text
    assert "(the row of '000000" in text  # the row named by line, column and filename
    probabilities = _scores_csv(tmp_path / "p.csv", names, 1 / (1 + np.exp(-logits)))
    assert _run(capsys, "evaluate", "--annotations", ann, "--scores", probabilities)[0] == 0
    for bad in ("1.5", "-0.1", "nan", "inf"):
        code, text = _run(capsys, "evaluate", "--annotations", ann, "--scores", probabilities, "--threshold", bad)
        assert code == 2 and f"--threshold {bad}: expected a number in [0, 1]" in text
    per_class = tmp_path / "thr.json"
    per_class.write_text(json.dumps({c: (1.5 if c == "RO" else 0.5) for c in L.CLASSES}))
    code, text = _run(capsys, "evaluate", "--annotations", ann, "--scores", probabilities, "--threshold", per_class)
    assert code == 2 and "RO=1.5 outside [0, 1]" in text


@pytest.mark.parametrize("cell", [" 1", "1 ", "1.0", "+1", "01", "١"])
def test_a_label_must_be_exactly_0_or_1_in_every_reader(tmp_path, capsys, cell):
    from sewer_hf.data import read_annotations
    from sewer_hf.metrics.files import read_annotation_targets

    path = _annotation_csv(tmp_path / "SewerML_Val.csv")
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[L.CSV_COLUMNS.index("RO")] = cell
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4, column '?RO'?: .*" + __import__("re").escape(repr(cell))):
        read_annotations(path, "Val")
    with pytest.raises(DataError, match=r"line 4, column RO: " + __import__("re").escape(repr(cell))):
        read_annotation_targets(path)


# ------------------------------------------------------------------------------------------------
# 7. the small ones: predict's inputs, empty CSVs, synth sizes, scan's order, a Hub id offline
# ------------------------------------------------------------------------------------------------

def test_a_csv_with_a_header_and_no_rows_is_refused_everywhere(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    (root / "SewerML_Val.csv").write_text(",".join(L.CSV_COLUMNS) + "\n")
    code, text = _run(capsys, "check-data", "--data-root", root, "--split", "Val")
    assert code == 2 and "no rows follow" in text
    (tmp_path / "list.csv").write_text("Filename\n")
    code, text = _run(capsys, "predict", "--model", "unused", "--data", tmp_path / "list.csv", "--out", tmp_path / "s.csv")
    assert code == 2 and "list.csv: the header is there but no rows follow" in text
    assert not (tmp_path / "s.csv").exists()


def test_predict_names_a_missing_data_path_and_its_own_drop_missing_option(tmp_path, capsys, classifier_dir):
    code, text = _run(capsys, "predict", "--model", classifier_dir, "--data", tmp_path / "nope", "--out", tmp_path / "s.csv")
    assert code == 2 and "nope: does not exist" in text
    root = tmp_path / "root"
    root.mkdir()
    _annotation_csv(root / "SewerML_Val.csv", n=4)
    for i in (0, 2):  # two of the four images
        Image.fromarray(_ramp(seed=i).astype(np.uint8)).save(root / f"{i:08d}.png")
    code, text = _run(capsys, "predict", "--model", classifier_dir, "--data", root, "--out", tmp_path / "s.csv")
    assert code == 2 and "2 of 4 image files are missing" in text
    assert "--drop-missing" in text and "drop_missing=True" not in text  # an option this command has
    code, text = _run(capsys, "predict", "--model", classifier_dir, "--data", root, "--out", tmp_path / "s.csv",
                      "--drop-missing")
    assert code == 0 and [r["Filename"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == ["00000000.png", "00000002.png"]


def test_synth_refuses_a_size_it_cannot_draw(tmp_path, capsys):
    code, text = _run(capsys, "synth", "--out", tmp_path / "s", "--train", "1", "--val", "1", "--size", "100000x100000")
    assert code == 2 and "size must be at most 4096x4096 pixels, got 100000x100000" in text


def test_scan_checks_the_video_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import sewer_hf.inference.video

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the video was checked")

    monkeypatch.setattr(sewer_hf.inference.video, "SewerClassifier", no_model)
    text_file = tmp_path / "notes.mp4"
    text_file.write_text("not a video\n" * 40)
    for video, message in ((tmp_path / "missing.mp4", "no such video file"), (text_file, "not a readable video")):
        code, text = _run(capsys, "scan", video, "--model", "org/model", "--out", tmp_path / "r")
        assert code == 2 and message in text


def test_a_hub_id_while_offline_is_one_named_error(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_ramp().astype(np.uint8)).save(images / "a.png")
    code, text = _run(capsys, "predict", "--model", "some-org/sewer-vit", "--data", images, "--out", tmp_path / "s.csv")
    assert code == 2 and "Traceback" not in text
    assert "model some-org/sewer-vit: not a local folder, and the Hugging Face Hub could not provide it" in text
    assert "HF_HUB_OFFLINE is set" in text
    code, text = _run(capsys, "predict", "--model", images, "--data", images, "--out", tmp_path / "s.csv")
    assert code == 2 and "a folder without config.json" in text


# ------------------------------------------------------------------------------------------------
# 5. a truncated video: the scanned coverage, and a warning when it is short of the declared duration
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truncated_video(tmp_path_factory):
    """6 s of footage with its index (moov) at the front, cut in half: the container still
    declares 6 s."""
    import av

    from sewer_hf.synth.footage import write_footage

    folder = tmp_path_factory.mktemp("video")
    plain, fast = folder / "plain.mp4", folder / "fast.mp4"
    write_footage(plain, 6, seed=0, fps=8, size=(64, 48))
    with av.open(str(plain)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = fast.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[:64]  # the index really is at the front
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return fast, cut


def test_a_truncated_video_reports_its_scanned_coverage_and_warns(truncated_video, classifier, tmp_path, capsys,
                                                                   monkeypatch):
    import sewer_hf.inference.video
    from sewer_hf.inference.video import scan_footage

    whole, cut = truncated_video
    full = scan_footage(whole, classifier, fps=2, progress=False)
    assert full.coverage == pytest.approx(1.0) and full.coverage_warning is None
    result = scan_footage(cut, classifier, fps=2, progress=False)
    assert result.duration_s == pytest.approx(6.0)  # what the container declares
    assert 0.5 < result.scanned_s < 4.0 and result.coverage < 0.7
    assert result.coverage_warning and "of the declared 6.0 s" in result.coverage_warning
    assert all(ev["end"] <= result.scanned_s + 1e-6 for ev in result.flat_events())  # no event past the decoded end
    # the CLI, events.json and report.html say it too
    monkeypatch.setattr(sewer_hf.inference.video, "SewerClassifier", lambda *a, **k: classifier)
    code, text = _run(capsys, "scan", cut, "--model", "x", "--out", tmp_path / "r")
    assert code == 0 and "of the declared 6.0 s" in text and "warning: only" in text
    doc = json.loads((tmp_path / "r" / "events.json").read_text())
    assert doc["duration_s"] == 6.0 and doc["scanned_s"] == pytest.approx(result.scanned_s, abs=1e-3)
    assert doc["coverage"] < 0.7 and "truncated" in doc["coverage_warning"]
    assert "Warning: only" in (tmp_path / "r" / "report.html").read_text()


# ------------------------------------------------------------------------------------------------
# fuzz: random corruptions of annotation and score files: each is read correctly or refused with a
# named DataError, never a traceback
# ------------------------------------------------------------------------------------------------

N_FUZZ = 150  # corrupted files per reader (fixed seed)
TOKENS = ["", " ", " 1", "1 ", "1.0", "+1", "01", "-1", "2", "0.5", "nan", "inf", "-inf", "1e400", "-0.0",
          "1_0", "0x1", "abc", "١", "½", '"', '""', ",", "\n", "\r\n", "\t", "\x00", "\ufeff", "é", "Filename",
          "00000001.png"]


def _corrupt(text: str, rng: random.Random, kind: int) -> bytes:
    lines = text.splitlines(keepends=True)
    if kind == 0:  # a cell replaced by an odd token
        i = rng.randrange(len(lines))
        cells = lines[i].rstrip("\n").split(",")
        cells[rng.randrange(len(cells))] = rng.choice(TOKENS)
        lines[i] = ",".join(cells) + "\n"
    elif kind == 1:  # a line dropped or duplicated
        i = rng.randrange(len(lines))
        lines[i:i + 1] = [] if rng.random() < 0.5 else [lines[i], lines[i]]
    elif kind == 2:  # truncated anywhere
        return text.encode()[: rng.randrange(len(text.encode()) + 1)]
    elif kind == 3:  # random bytes spliced in (invalid UTF-8 included)
        data = bytearray(text.encode())
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(128, 256) if rng.random() < 0.7 else rng.randrange(128)
                            for _ in range(rng.randint(1, 6)))
        return bytes(data)
    elif kind == 4:  # a column removed from every line
        j = rng.randrange(len(lines[0].split(",")))
        lines = [",".join(c for k, c in enumerate(line.rstrip("\n").split(",")) if k != j) + "\n" for line in lines]
    elif kind == 5:  # columns shuffled consistently (still valid) or the header alone shuffled (mislabelled)
        order = list(range(len(lines[0].split(","))))
        rng.shuffle(order)
        todo = range(len(lines)) if rng.random() < 0.5 else [0]
        for i in todo:
            cells = lines[i].rstrip("\n").split(",")
            lines[i] = ",".join(cells[k] for k in order) + "\n"
    elif kind == 6:  # a character deleted
        i = rng.randrange(len(text))
        return (text[:i] + text[i + 1:]).encode()
    elif kind == 7:  # an odd token inserted anywhere
        i = rng.randrange(len(text) + 1)
        return (text[:i] + rng.choice(TOKENS) + text[i:]).encode()
    elif kind == 8:  # header only / empty / blank lines
        return rng.choice([lines[0], "", "\n\n", lines[0] + "\n\n"]).encode()
    elif kind == 9:  # a huge field
        i = rng.randrange(1, len(lines))
        lines[i] = "x" * 200_000 + lines[i]
    elif kind == 10:  # a BOM, CRLF line ends or blank lines (still valid)
        return rng.choice(["\ufeff" + text, text.replace("\n", "\r\n"), text.replace("\n", "\n\n")]).encode()
    else:  # a duplicated header column
        cells = lines[0].rstrip("\n").split(",")
        cells[rng.randrange(len(cells))] = rng.choice(cells)
        lines[0] = ",".join(cells) + "\n"
    return "".join(lines).encode()


def _strict_rows(data: bytes):
    """An independent reading: the rows as dicts, or None when the file is not clean UTF-8 CSV."""
    try:
        text = data.decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error):
        return None
    return [r for r in rows if any(v for v in r.values() if isinstance(v, str))]


def _fuzz(reader, check_accepted, base: str, tmp_path, seed: int):
    rng = random.Random(seed)
    csv.field_size_limit(131072)  # the default: a huge field must be refused, not read
    outcomes = {"read": 0, "refused": 0}
    for case in range(N_FUZZ):
        data = _corrupt(base, rng, kind=case % 12)  # every kind of corruption, N_FUZZ / 12 times each
        path = tmp_path / f"case_{case:03d}.csv"
        path.write_bytes(data)
        try:
            result = reader(path)
        except SewerHFError as exc:
            assert path.name in str(exc), (case, data[:300], exc)  # the error names the file
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc} (traceback instead of a named error) for {data[:300]!r}")
        check_accepted(result, data, case)
        outcomes["read"] += 1
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 50, outcomes


def test_fuzzed_annotation_files_are_read_correctly_or_refused(tmp_path):
    from sewer_hf.data import read_annotations
    from sewer_hf.metrics.files import read_annotation_targets

    base = _annotation_csv(tmp_path / "base.csv", n=300).read_text()  # > 8 KB: past the first read buffer

    def check(result, data, case):
        table, (names, targets) = result
        rows = _strict_rows(data)
        assert rows is not None and len(rows) == table.num_rows == len(names), case
        assert [row["Filename"].strip() for row in rows] == names == table.column("Filename").to_pylist(), case
        text = np.array([[row[code] for code in L.CLASSES] for row in rows])
        assert np.isin(text, ["0", "1"]).all(), case  # only plain 0/1 cells get through
        loaded = np.stack([table.column(code).to_numpy() for code in L.CLASSES], axis=1)
        assert np.array_equal(text == "1", targets == 1) and np.array_equal(loaded, targets), case
        assert [row["Defect"] for row in rows] == [str(int(t.any())) for t in targets], case

    def both(path):  # the loader's reader and the metric's reader must agree
        results = []
        for read in (lambda p: read_annotations(p, "Val"), read_annotation_targets):
            try:
                results.append(read(path))
            except SewerHFError as exc:
                results.append(exc)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        return tuple(results)

    _fuzz(both, check, base, tmp_path, seed=15)


def test_fuzzed_score_files_are_read_correctly_or_refused(tmp_path):
    from sewer_hf.metrics.files import read_scores_csv

    names = [f"{i:08d}.png" for i in range(40)]  # > 8 KB: past the first read buffer
    base = _scores_csv(tmp_path / "base.csv", names, np.random.default_rng(0).random((40, L.NUM_CLASSES))).read_text()

    def check(result, data, case):
        got_names, scores = result
        rows = _strict_rows(data)
        assert rows is not None and len(rows) == len(got_names) == scores.shape[0], case
        assert np.all((scores >= 0) & (scores <= 1)), case
        for i, row in enumerate(rows):
            assert row["Filename"].strip() == got_names[i], case
            assert [float(row[c]) for c in L.CLASSES] == scores[i].tolist(), case

    _fuzz(read_scores_csv, check, base, tmp_path, seed=16)
