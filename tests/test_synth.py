"""Synthetic Sewer-ML generator: determinism, annotation files, label statistics, signatures."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from sewer_hf.cli import main as cli_main
from sewer_hf.data.labels import CLASSES, CSV_COLUMNS, FRAME_SIZES
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.synth import generate_dataset, load_label_table, render_frame, sample_labels

SMALL = (176, 144)


def _digests(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.suffix in (".png", ".csv")}


def _read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate_dataset(out, 14, 6, seed=7, size=SMALL, workers=1, progress=False, defect_fraction=0.7)
    return out, summary


def test_same_seed_same_bytes_regardless_of_workers(dataset, tmp_path):
    out, _ = dataset
    generate_dataset(tmp_path / "two", 14, 6, seed=7, size=SMALL, workers=2, progress=False, defect_fraction=0.7)
    assert _digests(out) == _digests(tmp_path / "two")
    generate_dataset(tmp_path / "other", 14, 6, seed=8, size=SMALL, progress=False, defect_fraction=0.7)
    other = _digests(tmp_path / "other")
    assert sum(other[k] != v for k, v in _digests(out).items()) >= 20  # every frame + CSVs


def test_flat_layout_and_annotation_files(dataset):
    out, summary = dataset
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:08d}.png" for i in range(1, 21)]
    header, train = _read_rows(out / "SewerML_Train.csv")
    assert tuple(header) == CSV_COLUMNS
    header_val, val = _read_rows(out / "SewerML_Val.csv")
    assert tuple(header_val) == CSV_COLUMNS
    assert [r["Filename"] for r in train] == pngs[:14] and [r["Filename"] for r in val] == pngs[14:]
    water_values = set(load_label_table().water_values.tolist())
    for row in train + val:
        labels = [int(row[c]) for c in CLASSES]
        assert set(labels) <= {0, 1}
        assert int(row["Defect"]) == int(any(labels))
        assert int(row["ND"]) == 1 - int(row["Defect"])
        assert int(row["VA"]) == 1
        assert int(row["WaterLevel"]) in water_values
    assert summary["splits"]["Train"]["frames"] == 14
    assert summary["splits"]["Val"]["normal"] == sum(int(r["Defect"]) == 0 for r in val)
    with Image.open(out / pngs[0]) as im:
        assert im.size == SMALL and im.mode == "RGB"


def test_label_frequencies_follow_the_shipped_table():
    table = load_label_table()
    rng = np.random.default_rng(0)
    draws = [sample_labels(rng) for _ in range(4000)]
    labels = np.array([d[0] for d in draws])
    normal = labels.sum(axis=1) == 0
    assert abs(normal.mean() - table.normal_fraction) < 0.03
    assert 0.5 < table.normal_fraction < 0.56  # the paper: 552,820 of 1,040,129
    # The most frequent real combination, OB+FS, is drawn about as often as the table says.
    p_obfs = table.combo_probabilities()["OB+FS"] * (1 - table.normal_fraction)
    obfs = np.all(labels == (np.isin(CLASSES, ["OB", "FS"])).astype(np.uint8), axis=1).mean()
    assert abs(obfs - p_obfs) < 0.02
    # FS is the most frequent class among defect frames (as in Sewer-ML).
    assert CLASSES[int(labels.sum(axis=0).argmax())] == "FS"
    # Oversampling defects keeps the co-occurrence but changes the normal share.
    more = np.array([sample_labels(rng, defect_fraction=0.9)[0] for _ in range(2000)])
    assert abs((more.sum(axis=1) == 0).mean() - 0.1) < 0.03
    with pytest.raises(ConfigError):
        sample_labels(rng, defect_fraction=1.5)


@pytest.mark.parametrize("size", [FRAME_SIZES[0], FRAME_SIZES[3], (64, 64)])
def test_frame_sizes(size):
    image = render_frame(["FS", "RO"], 10, size, np.random.default_rng(1))
    assert image.size == size and image.mode == "RGB"


def test_default_size_mix_uses_real_sizes(tmp_path):
    generate_dataset(tmp_path, 12, 0, seed=3, progress=False)
    sizes = set()
    for p in tmp_path.glob("*.png"):
        with Image.open(p) as im:
            sizes.add(im.size)
    assert sizes <= set(FRAME_SIZES) and len(sizes) >= 2


@pytest.mark.parametrize("code", CLASSES)
def test_each_class_signature_is_visible(code):
    """Same random streams with and without one label: the label's pixels must change
    clearly (mean change over the frame and a sizeable changed area)."""
    changed = []
    for seed in range(3):
        plain = np.asarray(render_frame([], 5, (352, 288), np.random.default_rng(seed)), dtype=np.int16)
        marked = np.asarray(render_frame([code], 5, (352, 288), np.random.default_rng(seed)), dtype=np.int16)
        diff = np.abs(plain - marked).max(axis=2)
        changed.append((diff > 40).mean())
    assert min(changed) > 0.002, f"{code}: changed area fractions {changed}"
    assert np.mean(changed) > 0.006, f"{code}: changed area fractions {changed}"


def test_other_labels_do_not_move_a_signature():
    """Independent streams per class: adding RO does not change where the FS step is."""
    base = np.asarray(render_frame(["FS"], 0, SMALL, np.random.default_rng(4)), dtype=np.int16)
    both = np.asarray(render_frame(["FS", "PB"], 0, SMALL, np.random.default_rng(4)), dtype=np.int16)
    same = (np.abs(base - both).max(axis=2) <= 2).mean()
    assert same > 0.8


def test_water_level_changes_the_bottom_of_the_frame():
    dry = np.asarray(render_frame([], 0, (352, 288), np.random.default_rng(2)), dtype=np.int16)
    wet = np.asarray(render_frame([], 30, (352, 288), np.random.default_rng(2)), dtype=np.int16)
    bottom = np.abs(dry - wet)[-60:].mean()
    top = np.abs(dry - wet)[:60].mean()
    assert bottom > 10 and bottom > 4 * top


def test_bad_input_is_reported():
    with pytest.raises(ConfigError):
        render_frame(["XX"], 0)
    with pytest.raises(ConfigError):
        render_frame([], 150)
    with pytest.raises(ConfigError):
        render_frame([], 0, (10, 10))


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "data"
    rc = cli_main(["synth", "--out", str(out), "--train", "7", "--val", "3", "--seed", "1",
                   "--size", "176x144", "--no-progress"])
    assert rc == 0
    assert len(list(out.glob("*.png"))) == 10
    _, rows = _read_rows(out / "SewerML_Val.csv")
    assert [r["Filename"] for r in rows] == ["00000008.png", "00000009.png", "00000010.png"]
    assert "Train: 7 frames" in capsys.readouterr().out
    # A second run into the same directory must not silently mix datasets.
    rc = cli_main(["synth", "--out", str(out), "--train", "2", "--val", "1", "--no-progress"])
    assert rc == 2 and "already holds a dataset" in capsys.readouterr().err
    rc = cli_main(["synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "bogus", "--overwrite"])
    assert rc == 2 and "--size" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(out), "--train", "2", "--val", "1", "--overwrite",
                     "--size", "176x144", "--no-progress"]) == 0
    assert len(list(out.glob("*.png"))) == 3


def test_generate_rejects_bad_counts(tmp_path):
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path, 0, 0, progress=False)
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path, -1, 3, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError):
        generate_dataset(tmp_path / "file", 1, 0, progress=False)
