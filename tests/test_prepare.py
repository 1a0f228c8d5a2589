"""`sewer-hf prepare`: resized Parquet shards that load both ways, skip bad images, resume."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from sewer_hf import cli
from sewer_hf.data import load_image_dataset, load_sewer_ml
from sewer_hf.data.labels import CLASSES
from sewer_hf.data.prepare import prepare_split
from sewer_hf.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_CSV = FIXTURES / "SewerML_Train.csv"


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def source(tmp_path) -> Path:
    """A flat Sewer-ML root with 40 real annotation rows and stand-in PNGs of assorted sizes;
    image 7 is corrupt, image 39 is missing."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(TRAIN_CSV, root)
    rng = np.random.default_rng(0)
    for i, row in enumerate(read_rows()):
        w, h = [(35, 28), (72, 57), (48, 58)][i % 3]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / row["Filename"])
    names = [r["Filename"] for r in read_rows()]
    (root / names[7]).write_bytes(b"not a png")
    (root / names[39]).unlink()
    return root


def read_rows() -> list[dict[str, str]]:
    with open(TRAIN_CSV, newline="") as f:
        return list(csv.DictReader(f))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return cli.main(["prepare", "--data-root", str(root), "--split", "train", "--out", str(out),
                     "--size", "32", "--shard-size", "16", "--workers", "1", *extra])


def test_round_trip(source, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare(source, out) == 0
    report = capsys.readouterr().out
    names = [r["Filename"] for r in read_rows()]
    assert f"missing: {names[39]}" in report and f"unreadable: {names[7]}" in report
    assert "Train: 38 images in 3 shards" in report and "skipped 1 missing and 1 unreadable" in report

    # 39 existing rows -> ceil(39 / 16) = 3 shards, named like the Hub's.
    shards = sorted(p.name for p in out.glob("*.parquet"))
    assert shards == [f"Train-0000{i}-of-00003.parquet" for i in range(3)]
    manifest = json.loads((out / "Train-prepare.json").read_text())
    assert manifest["shards"]["Train-00000-of-00003.parquet"]["rows"] == 15
    assert manifest["shards"]["Train-00000-of-00003.parquet"]["skipped"][0]["filename"] == names[7]
    assert manifest["missing"] == [names[39]]

    expected = {r["Filename"]: [int(r[c]) for c in CLASSES] for r in read_rows()}
    plain = datasets.load_dataset("parquet", data_files=str(out / "Train-*.parquet"), split="train")
    ours = load_sewer_ml(out, "train")
    for ds in (plain, ours):
        assert ds.column_names == ["image", "labels", "filename", "water_level", "defect"]
        assert ds.features["labels"] == datasets.List(datasets.Value("int8"), length=17)
        assert ds["filename"] == [n for n in names[:39] if n != names[7]]
        assert all(expected[f] == lab for f, lab in zip(ds["filename"], ds["labels"]))
        assert {ds[i]["image"].size for i in range(len(ds))} == {(32, 32)}
        assert ds[0]["image"].format == "PNG"

    # The pixels are the source image resized once, bicubic, to size x size.
    original = Image.open(source / names[0]).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(ours[0]["image"]), np.asarray(original))
    assert len(load_image_dataset(out, split="Train")) == 38
    # Commands that also pass the annotations folder still get the shards.
    assert load_sewer_ml(out, "Train", annotations_dir=source)["filename"] == ours["filename"]


def test_rerun_skips_finished_shards_and_finishes_a_killed_run(source, tmp_path, capsys):
    out = tmp_path / "shards"
    assert prepare(source, out) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    capsys.readouterr()

    assert prepare(source, out) == 0
    assert "(0 written, 3 already done)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == mtimes

    # A killed run: one shard never renamed into place, a temporary left behind.
    (out / "Train-00001-of-00003.parquet").unlink()
    (out / ".Train-00001-of-00003.parquet.tmp-999").write_bytes(b"half")
    with pytest.raises(DataError, match=r"incomplete: 1 of 3 missing .*re-run `sewer-hf prepare`"):
        load_sewer_ml(out, "Train")
    assert prepare(source, out) == 0
    assert "(1 written, 2 already done)" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))
    assert (out / "Train-00000-of-00003.parquet").stat().st_mtime_ns == mtimes["Train-00000-of-00003.parquet"]
    assert len(load_sewer_ml(out, "Train")) == 38


def test_other_settings_into_the_same_folder_are_refused(source, tmp_path):
    out = tmp_path / "shards"
    assert prepare(source, out) == 0
    with pytest.raises(DataError, match=r"other settings .*size: 32 -> 48"):
        prepare_split(source, "train", out, size=48, shard_size=16, progress=False)
    (source / read_rows()[0]["Filename"]).unlink()  # the source changed: another fingerprint
    with pytest.raises(DataError, match=r"n_rows: 39 -> 38, .*filenames_sha1"):
        prepare_split(source, "train", out, size=32, shard_size=16, progress=False)


def test_jpeg_with_workers_and_test_split_without_labels(source, tmp_path):
    names = [r["Filename"] for r in read_rows()][:6]
    test_root = tmp_path / "test_root"
    (test_root / "Test").mkdir(parents=True)
    (test_root / "SewerML_Test.csv").write_text("Filename\n" + "\n".join(names) + "\n")
    for n in names:
        if (source / n).is_file():
            shutil.copy(source / n, test_root / "Test" / n)
    out = tmp_path / "shards"
    code = cli.main(["prepare", "--data-root", str(test_root), "--split", "test", "--out", str(out),
                     "--size", "20", "--shard-size", "4", "--format", "jpeg", "--workers", "2"])
    assert code == 0
    ds = load_sewer_ml(out, "Test")
    assert ds.column_names == ["image", "filename"]
    assert ds["filename"] == names
    raw = ds.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"][:3] == b"\xff\xd8\xff" and raw["path"].endswith(".jpg")
    assert ds[0]["image"].size == (20, 20)
