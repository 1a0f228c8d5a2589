"""Footage scanning (`sewer_hf.inference.video`, `sewer_hf.inference.report`) and synthetic footage
(`sewer_hf.synth.footage`): smoothing/event logic, the report files, bad videos, and event-level
precision/recall of a smoke-trained model against a chance baseline."""
import csv
import hashlib
import json

import numpy as np
import pytest

from sewer_hf.data import labels as L
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.inference.report import match_events, random_placement_baseline, write_report
from sewer_hf.inference.video import find_segments, scan_footage, smooth_scores

FOOTAGE_SECONDS = 8


def make_random_classifier(out_dir, image_size=32, thresholds=None, seed=0):
    import torch

    from sewer_hf.models.hf_export import save_classifier
    from sewer_hf.models.vit import create_backbone

    torch.manual_seed(seed)
    backbone = create_backbone("vit_tiny", img_size=image_size)
    head = torch.nn.Linear(backbone.num_features, L.NUM_CLASSES)
    return save_classifier(backbone, head, out_dir, image_size=image_size, thresholds=thresholds)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from sewer_hf.inference.predict import SewerClassifier

    # thresholds at 0.5 except two low ones, so that a random model flags something
    thresholds = {c: 0.5 for c in L.CLASSES} | {"RB": 0.05, "OK": 0.3}
    folder = make_random_classifier(tmp_path_factory.mktemp("clf") / "classifier", thresholds=thresholds)
    return SewerClassifier(folder, device="cpu")


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    from sewer_hf.synth.footage import write_footage

    path = tmp_path_factory.mktemp("footage") / "pipe.mp4"
    write_footage(path, FOOTAGE_SECONDS, seed=5, fps=10)
    return path


# --- pure logic ---------------------------------------------------------------------------------

def test_smoothing_is_a_centred_moving_average_with_shrinking_ends():
    x = np.array([[0.0], [3.0], [6.0], [0.0], [0.0]])
    got = smooth_scores(x, 3)[:, 0]
    assert got == pytest.approx([1.5, 3.0, 3.0, 2.0, 0.0])
    assert smooth_scores(x, 1) == pytest.approx(x)
    with pytest.raises(ConfigError, match="odd"):
        smooth_scores(x, 4)


def test_segments_merge_short_gaps_and_report_the_peak():
    times = np.arange(12) * 0.5
    values = np.array([0, .6, .9, 0, .7, 0, 0, 0, 0, .8, .8, 0])
    segs = find_segments(times, values, 0.5, period=0.5, merge_gap_s=0.5)
    # 0.5-1.5 and 2.0-2.5 are 0.5 s apart -> merged; 4.5-5.5 stays apart (2 s gap)
    assert [(s["start"], s["end"]) for s in segs] == [(0.5, 2.5), (4.5, 5.5)]
    assert segs[0]["peak_score"] == pytest.approx(0.9) and segs[0]["peak_time"] == 1.0
    assert segs[0]["samples"] == 3
    unmerged = find_segments(times, values, 0.5, period=0.5, merge_gap_s=0.0)
    assert len(unmerged) == 3


def test_event_matching_and_the_random_placement_baseline():
    truth = [{"class": "RO", "start": 2.0, "end": 5.0}, {"class": "FO", "start": 10.0, "end": 12.0}]
    pred = [{"class": "RO", "start": 4.5, "end": 6.0},  # overlaps the RO event
            {"class": "FO", "start": 2.0, "end": 5.0},  # right time, wrong class
            {"class": "RO", "start": 5.0, "end": 6.0}]  # touches the end only: no overlap
    m = match_events(pred, truth)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 2)
    chance = random_placement_baseline([{"class": "RO", "start": 0, "end": 1.0}], truth, duration=100.0, draws=2000)
    # a 1 s segment placed in [0, 99] overlaps [2, 5] with probability 4/99
    assert chance["precision"] == pytest.approx(4 / 99, abs=0.015)


# --- synthetic footage --------------------------------------------------------------------------

def test_synth_footage_is_deterministic_with_true_events(tmp_path, capsys):
    import av

    from sewer_hf.cli import main
    from sewer_hf.synth.footage import FOOTAGE_CLASSES, read_events

    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for out in (a, b):
        assert main(["synth-footage", "--out", str(out), "--seconds", "12", "--seed", "7", "--fps", "5",
                     "--size", "176x144"]) == 0
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    events = read_events(a)
    assert events and all(e["class"] in FOOTAGE_CLASSES and 0 <= e["start"] < e["end"] <= 12 for e in events)
    assert all(e1["end"] <= e2["start"] for e1, e2 in zip(events, events[1:]))
    with av.open(str(a)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (176, 144)
        assert sum(1 for _ in container.decode(stream)) == 60
    assert main(["synth-footage", "--out", str(tmp_path / "c.mp4"), "--seconds", "5", "--size", "175x144"]) == 2
    assert "even" in capsys.readouterr().err


# --- scanning -----------------------------------------------------------------------------------

def test_scan_writes_timeline_events_plot_and_html(classifier, footage, tmp_path, capsys):
    from sewer_hf.cli import main

    model_dir = classifier.model_dir
    out = tmp_path / "report"
    assert main(["scan", str(footage), "--model", model_dir, "--out", str(out), "--fps", "2",
                 "--batch-size", "5", "--smooth", "3"]) == 0
    rows = list(csv.reader((out / "timeline.csv").open()))
    assert rows[0] == ["time_s", *L.CLASSES, "defect"]
    assert len(rows) - 1 == FOOTAGE_SECONDS * 2
    times = [float(r[0]) for r in rows[1:]]
    assert times == pytest.approx(np.arange(FOOTAGE_SECONDS * 2) / 2, abs=0.06)

    doc = json.loads((out / "events.json").read_text())
    assert doc["frames_sampled"] == FOOTAGE_SECONDS * 2 and doc["frames_read"] == FOOTAGE_SECONDS * 10
    assert doc["frames_sampled"] <= doc["frames_decoded"] <= doc["frames_read"]
    assert doc["corrupt_frames"] == 0 and set(doc["events"]) == set(L.CLASSES)
    assert doc["thresholds"]["RB"] == pytest.approx(0.05)
    # the defect flag and the events agree with the smoothed scores and the thresholds
    result = scan_footage(footage, classifier, fps=2, smooth=3, progress=False)
    assert np.array([[float(v) for v in r[1:18]] for r in rows[1:]]) == pytest.approx(result.smoothed, abs=1e-4)
    assert [int(r[-1]) for r in rows[1:]] == [int(f) for f in result.flags.any(axis=1)]
    for k, code in enumerate(L.CLASSES):
        assert sum(ev["samples"] for ev in doc["events"][code]) == int(result.flags[:, k].sum()), code
    assert doc["events"]["RB"], "a threshold of 0.05 flags the random model's RB somewhere"

    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "data:image/jpeg;base64," in html
    assert L.CLASS_NAMES["RB"] in html and "src=\"http" not in html
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "scanned 16 frames" in capsys.readouterr().out


def _reencoded(footage, path, codec):
    """The fixture's frames encoded again with ``codec`` and B-frames (what CCTV recorders often write)."""
    import av

    frames = [f.to_ndarray(format="rgb24") for f in av.open(str(footage)).decode(video=0)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.max_b_frames = 2
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("codec, suffix", [("h264", "mp4"), ("mpeg4", "avi"), ("mpeg2video", "mpg")])
def test_sampling_decodes_only_what_the_samples_need_and_keeps_their_pixels(footage, tmp_path, codec, suffix):
    """Frames no sample needs are skipped when nothing else is built from them (non-reference
    frames); the sampled frames (the earliest of each 1/fps slot) and their pixels are exactly
    those of decoding every frame: H.264 (the synthetic footage), MPEG-4 Part 2 and MPEG-2 in a
    program stream (which starts at a non-zero time)."""
    import math

    import av

    from sewer_hf.inference.video import DecodeStats, open_footage, sample_frames

    path = footage if codec == "h264" else _reencoded(footage, tmp_path / f"pipe.{suffix}", codec)

    def digest(frame):
        return hashlib.sha256(frame.to_ndarray(format="rgb24").tobytes()).hexdigest()

    expected, next_slot = [], 0
    with av.open(str(path)) as container:  # the reference: every frame decoded
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for frame in container.decode(video=0):
            t = max(0.0, float(frame.time) - start)
            if math.floor(t * 2 + 1e-6) >= next_slot:
                next_slot = math.floor(t * 2 + 1e-6) + 1
                expected.append((round(t, 6), digest(frame)))
    container, stream, info = open_footage(path)
    stats = DecodeStats()
    with container:
        got = [(round(t, 6), digest(frame)) for t, frame in sample_frames(container, stream, info, 2.0, stats)]
    assert info.codec == codec
    assert got == expected and len(got) >= FOOTAGE_SECONDS * 2
    assert stats.read == FOOTAGE_SECONDS * 10 and stats.sampled == len(got)
    assert stats.decoded < stats.read, "the non-reference frames between samples were skipped"
    assert stats.last_frame_s == pytest.approx(FOOTAGE_SECONDS - 0.1, abs=0.11), "coverage counts skipped frames"


def test_damaged_packets_are_skipped_and_counted(classifier, footage, tmp_path):
    data = bytearray(footage.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) // 4, len(data) - 4000, len(data) // 6):
        data[offset:offset + 300] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    result = scan_footage(damaged, classifier, fps=2, progress=False)
    assert result.stats.corrupt > 0
    assert 0 < result.stats.sampled <= FOOTAGE_SECONDS * 2
    doc = json.loads((write_report(result, tmp_path / "r")["events"]).read_text())
    assert doc["corrupt_frames"] == result.stats.corrupt
    assert "damaged frame(s) could not be decoded" in (tmp_path / "r" / "report.html").read_text()


def test_lanes_hand_back_batches_in_order_and_their_errors(classifier, footage):
    import threading
    import time

    import torch

    from sewer_hf.inference.predict import in_lanes

    started = []

    def work(i):  # the first item is the slowest: the results must still come back in order
        started.append(i)
        time.sleep(0.05 if i == 0 else 0.0)
        if i == 5:
            raise DataError("item 5 is broken")
        return i * 10, threading.get_ident()

    got = []
    with pytest.raises(DataError, match="item 5"):
        for value, _ in in_lanes(range(8), work, lanes=2):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]
    assert max(started) <= 5 + 2, "no more than lanes + 1 items run ahead of the one that failed"
    threads = {ident for _, ident in in_lanes(range(6), lambda i: (time.sleep(0.02), threading.get_ident()), 2)}
    assert len(threads) == 2, "two lanes, two threads"
    stream = in_lanes(iter(range(1000)), lambda i: i, lanes=1)  # a consumer that stops early
    assert next(stream) == 0
    stream.close()
    # torch ops in a lane run on its own thread; a single lane keeps the caller's threads
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert set(in_lanes(range(4), lambda _: torch.get_num_threads(), lanes=2)) == {1}
        assert set(in_lanes(range(2), lambda _: torch.get_num_threads(), lanes=1)) == {2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    class Failing:  # the model fails on the second batch: the scan stops with that error
        thresholds, model_dir, calls = classifier.thresholds, classifier.model_dir, 0
        preprocess = staticmethod(classifier.preprocess)

        def scores_from_arrays(self, arrays):
            Failing.calls += 1
            if Failing.calls == 2:
                raise RuntimeError("model broke")
            return classifier.scores_from_arrays(arrays)

    with pytest.raises(RuntimeError, match="model broke"):
        scan_footage(footage, Failing(), fps=2, batch_size=4, progress=False)


def test_scan_in_two_lanes_equals_one_batch_at_a_time(classifier, footage, tmp_path):
    from sewer_hf.inference.onnx import export_onnx
    from sewer_hf.inference.predict import SewerClassifier

    export_onnx(classifier.model_dir, tmp_path / "model.onnx")
    one = SewerClassifier(classifier.model_dir, backend="onnx", onnx_path=tmp_path / "model.onnx", lanes=1)
    two = SewerClassifier(classifier.model_dir, backend="onnx", onnx_path=tmp_path / "model.onnx", lanes=2)
    a = scan_footage(footage, one, fps=2, batch_size=3, progress=False)
    b = scan_footage(footage, two, fps=2, batch_size=3, progress=False)
    assert b.times.tolist() == a.times.tolist() and len(a.times) == FOOTAGE_SECONDS * 2
    assert np.abs(b.scores - a.scores).max() <= 1e-5
    assert sorted(b.thumbnails) == sorted(a.thumbnails)
    assert all(b.thumbnails[i] == a.thumbnails[i] for i in a.thumbnails), "each thumbnail is its own frame's"
    # PyTorch on the CPU runs in lanes too (each lane's torch ops on its own thread): the same scan
    torch_two = SewerClassifier(classifier.model_dir, device="cpu", backend="torch", lanes=2)
    c = scan_footage(footage, torch_two, fps=2, batch_size=3, progress=False)
    assert c.times.tolist() == a.times.tolist() and np.abs(c.scores - a.scores).max() <= 1e-4
    with pytest.raises(ConfigError, match="lanes=2: parallel lanes run on the CPU"):
        SewerClassifier(classifier.model_dir, device="cuda", backend="torch", lanes=2)


def test_scan_precision_int8(classifier, footage, tmp_path, capsys):
    import shutil

    from sewer_hf.cli import main

    model_dir = tmp_path / "classifier"
    shutil.copytree(classifier.model_dir, model_dir)
    args = ["scan", str(footage), "--model", str(model_dir), "--out", str(tmp_path / "r"), "--threads", "1"]
    assert main(args + ["--precision", "int8"]) == 2
    assert "no int8 model" in capsys.readouterr().err
    assert main(["export-onnx", "--model", str(model_dir), "--check-frames", "16", "--bf16-check", "no"]) == 0
    passed = "passed: offered" in capsys.readouterr().out
    code = main(args + ["--precision", "int8"])
    err = capsys.readouterr().err
    if passed:
        assert code == 0 and "ONNX Runtime int8" in err
    else:
        assert code == 2 and "failed its accuracy check" in err
    assert main(args + ["--precision", "fp32", "--out", str(tmp_path / "r32")]) == 0
    assert "ONNX Runtime fp32" in capsys.readouterr().err
    rows = list(csv.reader((tmp_path / "r32" / "timeline.csv").open()))
    assert len(rows) - 1 == FOOTAGE_SECONDS * 2
    if passed:  # int8 and fp32 timelines: same samples, scores close
        rows8 = list(csv.reader((tmp_path / "r" / "timeline.csv").open()))
        a = np.array([[float(x) for x in r[1:18]] for r in rows[1:]])
        b = np.array([[float(x) for x in r[1:18]] for r in rows8[1:]])
        assert a.shape == b.shape and np.abs(a - b).max() < 0.2


def test_unreadable_files_are_clear_data_errors(classifier, footage, tmp_path):
    import av

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    audio = tmp_path / "sound.wav"
    with av.open(str(audio), "w") as container:  # a file with an audio stream only
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    for path, message in ((empty, "empty"), (text, "not a readable video"), (audio, "no video stream"),
                          (tmp_path / "missing.mp4", "no such video")):
        with pytest.raises(DataError, match=message) as info:
            scan_footage(path, classifier, progress=False)
        assert path.name in str(info.value)
    with pytest.raises(DataError, match="over the limit"):
        scan_footage(footage, classifier, max_duration_s=FOOTAGE_SECONDS / 2, progress=False)


# --- does it find the events? --------------------------------------------------------------------

def _render_footage_frames(n_per_group, image_size, seed):
    """Single-defect frames of the footage classes (plus normal ones), normalised, and their targets."""
    import torch
    from PIL import Image

    from sewer_hf.synth import render_frame
    from sewer_hf.synth.footage import FOOTAGE_CLASSES

    rng = np.random.default_rng(seed)
    groups = [[]] + [[c] for c in FOOTAGE_CLASSES]
    images, targets = [], []
    for i in range(n_per_group * len(groups)):
        codes = groups[i % len(groups)]
        frame = render_frame(codes, int(rng.integers(0, 15)), (176, 144), rng)
        images.append(np.asarray(frame.resize((image_size, image_size), Image.Resampling.BICUBIC)))
        targets.append([c in codes for c in L.CLASSES])
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(L.SEWER_MEAN).view(1, 3, 1, 1)) / torch.tensor(L.SEWER_STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.tensor(targets).float()


def _train_footage_model(out_dir, image_size=32, per_group=200, epochs=11, peak_lr=5e-4, batch_size=32, seed=0,
                         head_lr_scale=10.0):
    """A smoke-trained ViT-T/16 from scratch (about 75 s on 2 CPU cores, both threads): 1,200
    frames of the footage classes rendered once and held at the 32 px it trains on, one-cycle
    AdamW, flips, the new head at 10x the lr (measured for this run: below); thresholds tuned on 120
    held-out frames. The footage classes are large enough to see at 32 px, where a step costs a
    quarter of one at 64 px (5 tokens instead of 17). Measured on this scan: 14 epochs without the
    head's lr scale gave event P/R 0.29/1.00 (chance 0.15/0.43); with it, 11 epochs gave 0.32/1.00
    (chance 0.24/0.51) and 9 only 0.25/0.67 (chance 0.19/0.37), too close to the bar below."""
    import torch
    import torch.nn.functional as F

    from sewer_hf.metrics import tune_thresholds
    from sewer_hf.models.hf_export import save_classifier
    from sewer_hf.models.vit import create_backbone

    x, y = _render_footage_frames(per_group, image_size, seed)
    x_val, y_val = _render_footage_frames(20, image_size, seed + 1)
    torch.manual_seed(seed)
    backbone = create_backbone("vit_tiny", img_size=image_size)
    head = torch.nn.Linear(backbone.num_features, L.NUM_CLASSES)
    model = torch.nn.Sequential(backbone, head)
    # fused AdamW, the new head at head_lr_scale x the lr (this 32-px one-cycle run's own measurement)
    opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": peak_lr},
                             {"params": head.parameters(), "lr": head_lr_scale * peak_lr}],
                            lr=peak_lr, weight_decay=0.05, fused=True)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[peak_lr, head_lr_scale * peak_lr], total_steps=steps,
                                                pct_start=0.1)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), x[idx].flip(3), x[idx])
            loss = F.binary_cross_entropy_with_logits(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        val_scores = torch.sigmoid(model(x_val)).numpy()
    thresholds = tune_thresholds(val_scores, y_val.numpy().astype(int))
    return save_classifier(backbone, head, out_dir, image_size=image_size, thresholds=thresholds)


@pytest.mark.slow  # ~80 s on 2 cores with 2 threads, ~90 s in a make-test worker's 1 (training dominates)
def test_smoke_trained_model_finds_events_above_chance(tmp_path):
    from sewer_hf.inference.predict import SewerClassifier
    from sewer_hf.synth.footage import read_events, write_footage

    video = tmp_path / "long.mp4"
    truth = write_footage(video, 40, seed=11, fps=4, size=(176, 144))
    clf = SewerClassifier(_train_footage_model(tmp_path / "clf"), device="cpu")
    result = scan_footage(video, clf, fps=2, smooth=3, progress=False)
    predicted = result.flat_events()
    got = match_events(predicted, read_events(video))
    chance = random_placement_baseline(predicted, truth, duration=40.0)
    print(f"event P/R {got['precision']:.2f}/{got['recall']:.2f} ({got['predicted']} predicted, "
          f"{got['true']} true); chance P/R {chance['precision']:.2f}/{chance['recall']:.2f}")
    assert got["recall"] > 0 and got["f1"] > chance["f1"] + 0.1 and got["precision"] > chance["precision"]
