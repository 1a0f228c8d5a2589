"""Loader, bad-input errors, decoding, torch wrapper, check-data and generic image sources.

Annotations are real Sewer-ML rows (tests/fixtures/SewerML_{Train,Val}.csv); the images are
tiny stand-in PNGs drawn here, in tmp_path.
"""
from __future__ import annotations

import csv
import io
import logging
import pickle
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf import cli
from sewer_hf.data import decode_rgb, load_image_dataset, load_sewer_ml, normalize_split
from sewer_hf.data.labels import CLASSES, CSV_COLUMNS
from sewer_hf.data.torch_dataset import SkipCounter, collate_skip_bad
from sewer_hf.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_CSV = FIXTURES / "SewerML_Train.csv"
VAL_CSV = FIXTURES / "SewerML_Val.csv"


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    # load_dataset("parquet" / "imagefolder") converts into the HF cache: keep it per test.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def draw_png(path: Path, seed: int, size=(24, 18)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_root(tmp_path: Path, csv_path: Path = TRAIN_CSV, subdir: str | None = None, skip: int = 0) -> Path:
    """A data root with the CSV and a PNG per row (flat, or in ``subdir``), minus the last ``skip``."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    shutil.copy(csv_path, root / csv_path.name)
    images = root / subdir if subdir else root
    images.mkdir(exist_ok=True)
    rows = read_rows(csv_path)
    for i, row in enumerate(rows[: len(rows) - skip]):
        draw_png(images / row["Filename"], seed=i)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------


def test_loads_flat_layout_with_real_labels(tmp_path):
    root = make_root(tmp_path)
    ds = load_sewer_ml(root, "Train")
    rows = read_rows(TRAIN_CSV)

    assert ds.column_names == ["image", "labels", "filename", "water_level", "defect"]
    assert ds.features["labels"] == datasets.List(datasets.Value("int8"), length=17)
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds["filename"] == [r["Filename"] for r in rows]
    expected = np.array([[int(r[c]) for c in CLASSES] for r in rows])
    np.testing.assert_array_equal(np.array(ds["labels"]), expected)
    assert ds["water_level"] == [int(r["WaterLevel"]) for r in rows]
    assert ds["defect"] == [int(r["Defect"]) for r in rows]
    assert expected.sum(axis=0).min() >= 1 and (expected.sum(axis=1) == 0).sum() >= 5  # fixture mix
    # Paths are stored; decoding happens on access.
    raw = ds.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw == {"bytes": None, "path": str((root / rows[0]["Filename"]).resolve())}
    img = ds[3]["image"]
    assert img.size == (24, 18)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(root / rows[3]["Filename"])))


@pytest.mark.parametrize("folder", ["Val", "val", "validation"])
def test_loads_per_split_layout(tmp_path, folder):
    root = make_root(tmp_path, VAL_CSV, subdir=folder)
    ds = load_sewer_ml(root, "validation")
    assert len(ds) == 20
    assert ds.split == "validation"
    paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert all(Path(p["path"]).parent.name == folder for p in paths)
    assert ds[0]["image"].size == (24, 18)


def test_mixed_layout_takes_each_image_where_it_is(tmp_path):
    root = make_root(tmp_path, VAL_CSV, subdir="Val")
    moved = read_rows(VAL_CSV)[:5]
    for row in moved:
        (root / "Val" / row["Filename"]).rename(root / row["Filename"])
    ds = load_sewer_ml(root, "val")
    paths = [Path(p["path"]) for p in ds.cast_column("image", datasets.Image(decode=False))["image"]]
    assert [p.parent.name for p in paths[:5]] == ["root"] * 5
    assert {p.parent.name for p in paths[5:]} == {"Val"}
    assert all(p.is_file() for p in paths)


def test_check_files_false_picks_layout_from_first_rows_without_listing(tmp_path):
    root = make_root(tmp_path, VAL_CSV, subdir="val", skip=3)  # 3 missing: not noticed
    ds = load_sewer_ml(root, "Val", check_files=False)
    assert len(ds) == 20
    paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert {Path(p["path"]).parent.name for p in paths} == {"val"}


def test_annotations_dir_is_used_before_data_root(tmp_path):
    root = make_root(tmp_path, VAL_CSV)
    ann = tmp_path / "ann"
    ann.mkdir()
    rows = read_rows(VAL_CSV)[:4]
    write_csv(ann / "SewerML_Val.csv", list(CSV_COLUMNS), [[r[c] for c in CSV_COLUMNS] for r in rows])
    ds = load_sewer_ml(root, "Val", annotations_dir=ann)
    assert ds["filename"] == [r["Filename"] for r in rows]


def test_split_names_accept_any_case_and_reject_others():
    assert [normalize_split(s) for s in ("train", "TRAIN", "val", "Validation", "test")] == ["Train", "Train", "Val", "Val", "Test"]
    with pytest.raises(ConfigError, match="'dev'"):
        normalize_split("dev")


def test_test_split_with_only_filenames_has_no_labels(tmp_path):
    root = tmp_path / "root"
    (root / "Test").mkdir(parents=True)
    names = [r["Filename"] for r in read_rows(VAL_CSV)[:6]]
    write_csv(root / "SewerML_Test.csv", ["Filename"], [[n] for n in names])
    for i, n in enumerate(names):
        draw_png(root / "Test" / n, seed=i)
    ds = load_sewer_ml(root, "test")
    assert ds.column_names == ["image", "filename"]
    assert ds["filename"] == names
    assert ds[0]["image"].mode == "RGB"
    with pytest.raises(DataError, match="no 'labels' column"):
        import sewer_hf.data.torch_dataset as data

        data.SewerTorchDataset(ds, transform=None)


def test_test_split_with_water_level_but_no_labels(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_csv(root / "SewerML_Test.csv", ["Filename", "WaterLevel"], [["a.png", "10"], ["b.png", "0"]])
    for i, n in enumerate(["a.png", "b.png"]):
        draw_png(root / n, seed=i)
    ds = load_sewer_ml(root, "Test")
    assert ds.column_names == ["image", "filename", "water_level"]
    assert ds["water_level"] == [10, 0]


def test_missing_images_raise_with_count_and_names(tmp_path):
    root = make_root(tmp_path, skip=3)
    last = [r["Filename"] for r in read_rows(TRAIN_CSV)[-3:]]
    with pytest.raises(DataError) as err:
        load_sewer_ml(root, "Train")
    message = str(err.value)
    assert "SewerML_Train.csv" in message and "3 of 40 image files are missing" in message
    assert all(name in message for name in last)
    assert "drop_missing=True" in message


def test_drop_missing_drops_and_reports(tmp_path, caplog):
    root = make_root(tmp_path, skip=3)
    with caplog.at_level(logging.WARNING, logger="sewer_hf.data"):
        ds = load_sewer_ml(root, "Train", drop_missing=True)
    assert len(ds) == 37
    assert ds["filename"] == [r["Filename"] for r in read_rows(TRAIN_CSV)[:37]]
    assert "dropped 3 row(s)" in ds.info.description
    assert any("dropped 3 row(s)" in r.getMessage() for r in caplog.records)


def test_all_images_missing_is_an_error_even_with_drop_missing(tmp_path):
    root = make_root(tmp_path, skip=40)
    with pytest.raises(DataError, match="none of the 40 images found"):
        load_sewer_ml(root, "Train", drop_missing=True)


def test_no_annotations_and_no_shards(tmp_path):
    with pytest.raises(DataError, match=r"no annotation file .*SewerML_Val\.csv and no prepared shards"):
        load_sewer_ml(tmp_path, "val")
    with pytest.raises(DataError, match="is not a folder"):
        load_sewer_ml(tmp_path / "nope", "val")


# ---------------------------------------------------------------------------------------
# Bad annotation files: the first offending row, with file, line, column and value
# ---------------------------------------------------------------------------------------


def corrupt(tmp_path: Path, row_index: int, column: str, value: str) -> Path:
    """The Train fixture with one cell replaced (row_index 0 = first data row = line 2)."""
    rows = read_rows(TRAIN_CSV)
    rows[row_index][column] = value
    return write_csv(tmp_path / "SewerML_Train.csv", list(CSV_COLUMNS), [[r[c] for c in CSV_COLUMNS] for r in rows])


def load_csv_only(folder: Path):
    return load_sewer_ml(folder, "Train", check_files=False)


@pytest.mark.parametrize(
    ("row_index", "column", "value", "expected"),
    [
        (6, "OB", "2", "expected a label 0 or 1, got '2'"),
        (11, "RB", "", "expected a label 0 or 1, got ''"),
        (3, "PH", "1.0", "expected a label 0 or 1, got '1.0'"),
        (20, "WaterLevel", "high", "expected an integer percentage 0-100, got 'high'"),
        (21, "WaterLevel", "250", "expected an integer percentage 0-100, got '250'"),
        (9, "Defect", "7", "expected 0 or 1, got '7'"),
        (0, "Filename", "", "expected an image file name, got an empty value"),
    ],
)
def test_bad_values_name_file_line_column_value(tmp_path, row_index, column, value, expected):
    corrupt(tmp_path, row_index, column, value)
    with pytest.raises(DataError) as err:
        load_csv_only(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "SewerML_Train.csv"))
    assert f"line {row_index + 2}, column '{column}'" in message
    assert expected in message


def test_defect_inconsistent_with_labels(tmp_path):
    rows = read_rows(TRAIN_CSV)
    normal = next(i for i, r in enumerate(rows) if r["Defect"] == "0")
    defect = next(i for i, r in enumerate(rows) if r["Defect"] == "1")
    corrupt(tmp_path, normal, "Defect", "1")
    with pytest.raises(DataError, match=rf"line {normal + 2}, column 'Defect': got '1' but the row has none of the 17"):
        load_csv_only(tmp_path)

    positives = [c for c in CLASSES if rows[defect][c] == "1"]
    corrupt(tmp_path, defect, "Defect", "0")
    with pytest.raises(DataError) as err:
        load_csv_only(tmp_path)
    assert f"line {defect + 2}, column 'Defect': got '0' but the row has defect label(s) {', '.join(positives)}" in str(err.value)


def test_duplicate_filenames_are_named(tmp_path):
    rows = read_rows(TRAIN_CSV)
    corrupt(tmp_path, 30, "Filename", rows[4]["Filename"])
    with pytest.raises(DataError) as err:
        load_csv_only(tmp_path)
    message = str(err.value)
    assert f"line 32, column 'Filename': duplicate filename '{rows[4]['Filename']}' (first at line 6)" in message
    assert "1 filename(s) occur more than once" in message


def test_wrong_number_of_fields(tmp_path):
    path = tmp_path / "SewerML_Train.csv"
    lines = TRAIN_CSV.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0]  # drop the Defect field of line 6
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"SewerML_Train\.csv, line 6: expected 22 fields \(as in the header\), got 21"):
        load_csv_only(tmp_path)


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "SewerML_Train.csv"
    lines = TRAIN_CSV.read_text().splitlines()
    lines.insert(3, "")  # a blank line 4: pyarrow skips it, the row count must not
    cells = lines[10].split(",")
    cells[CSV_COLUMNS.index("FS")] = "3"
    lines[10] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 11, column 'FS': expected a label 0 or 1, got '3'"):
        load_csv_only(tmp_path)


@pytest.mark.parametrize(
    ("header_change", "expected"),
    [
        (lambda h: [c for c in h if c != "OK"], r"line 1 \(header\): missing column\(s\) 'OK'"),
        (lambda h: [c for c in h if c not in ("WaterLevel", "Defect")], r"missing column\(s\) 'WaterLevel', 'Defect'"),
        (lambda h: h + ["XX"], r"line 1 \(header\): unknown column\(s\) 'XX'"),
        (lambda h: h + ["RB"], r"column\(s\) 'RB' appear more than once"),
    ],
)
def test_header_problems(tmp_path, header_change, expected):
    header = header_change(list(CSV_COLUMNS))
    rows = [[r.get(c, "0") for c in header] for r in read_rows(TRAIN_CSV)]
    write_csv(tmp_path / "SewerML_Train.csv", header, rows)
    with pytest.raises(DataError, match=expected) as err:
        load_csv_only(tmp_path)
    assert str(tmp_path / "SewerML_Train.csv") in str(err.value)
    assert "Filename,WaterLevel,VA,RB" in str(err.value)  # says what was expected


def test_test_split_labels_must_be_complete(tmp_path):
    write_csv(tmp_path / "SewerML_Test.csv", ["Filename", "RB", "OB"], [["a.png", "0", "1"]])
    with pytest.raises(DataError, match=r"SewerML_Test\.csv, line 1 \(header\): missing column\(s\) 'PF'"):
        load_sewer_ml(tmp_path, "Test", check_files=False)


def test_header_with_bom_and_crlf_loads(tmp_path):
    text = TRAIN_CSV.read_text().replace("\n", "\r\n")
    (tmp_path / "SewerML_Train.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    ds = load_csv_only(tmp_path)
    assert ds["filename"] == [r["Filename"] for r in read_rows(TRAIN_CSV)]


# ---------------------------------------------------------------------------------------
# decode_rgb
# ---------------------------------------------------------------------------------------


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_decode_grayscale_and_palette():
    gray = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), mode="L")
    out = decode_rgb({"bytes": png_bytes(gray), "path": "gray.png"})
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out)[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    out = decode_rgb(png_bytes(palette))
    np.testing.assert_array_equal(np.asarray(out)[0], [[10, 20, 30], [200, 100, 50]])


def test_decode_alpha_is_composited_on_black():
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8), mode="RGBA")
    out = decode_rgb(png_bytes(rgba))
    assert out.mode == "RGB"
    np.testing.assert_allclose(np.asarray(out)[0].astype(int), [[200, 100, 50], [0, 0, 0], [100, 50, 25]], atol=1)

    # palette with a transparent entry
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 255, 255, 40, 50, 60] + [0] * 762)
    pal.putdata([0, 1])
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    np.testing.assert_array_equal(np.asarray(decode_rgb(buf.getvalue()))[0], [[0, 0, 0], [40, 50, 60]])


def test_decode_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    out = decode_rgb(str(path))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0], [0, 4, 128, 255])


def test_decode_accepts_paths_dicts_and_pil_images(tmp_path):
    path = tmp_path / "x.png"
    draw_png(path, seed=1)
    expected = np.asarray(Image.open(path))
    for source in (path, str(path), {"bytes": None, "path": str(path)}, Image.open(path), path.read_bytes()):
        np.testing.assert_array_equal(np.asarray(decode_rgb(source)), expected)


def test_truncated_and_garbage_files_give_none_and_a_log(tmp_path, caplog):
    good = tmp_path / "good.png"
    draw_png(good, seed=2, size=(64, 64))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with caplog.at_level(logging.WARNING, logger="sewer_hf.data"):
        assert decode_rgb(truncated) is None
        assert decode_rgb({"bytes": None, "path": str(garbage)}) is None
        assert decode_rgb(tmp_path / "absent.png") is None
    text = caplog.text
    assert "truncated.png" in text and "garbage.png" in text and "absent.png" in text


# ---------------------------------------------------------------------------------------
# SewerTorchDataset + collate_skip_bad
# ---------------------------------------------------------------------------------------


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float() / 255


def test_torch_dataset_skips_a_corrupt_image(tmp_path):
    import sewer_hf.data.torch_dataset as data

    root = make_root(tmp_path, VAL_CSV)
    rows = read_rows(VAL_CSV)
    (root / rows[2]["Filename"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = data.SewerTorchDataset(load_sewer_ml(root, "Val"), transform=to_tensor)
    assert len(ds) == 20 and ds[2] is None
    item = ds[1]
    assert item["labels"].dtype == torch.float32 and item["labels"].shape == (17,)
    assert item["labels"].tolist() == [float(rows[1][c]) for c in CLASSES]

    assert pickle.loads(pickle.dumps(ds))[1]["index"] == 1  # DataLoader workers (spawn) pickle it

    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_skip_bad)
    batches = list(loader)
    first = batches[0]
    assert first["n_skipped"] == 1
    assert first["pixel_values"].shape == (3, 3, 8, 8)
    assert first["labels"].shape == (3, 17)
    assert first["index"].tolist() == [0, 1, 3]
    assert sum(b["n_skipped"] for b in batches) == 1
    assert sum(len(b["index"]) for b in batches) == 19


def same_items(got: list, expected: list) -> bool:
    """Items of SewerTorchDataset equal key by key (tensors and arrays by value; None for None)."""
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected):
        if (a is None) != (b is None):
            return False
        if a is not None and (a.keys() != b.keys() or not all(
                np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)):
            return False
    return True


def test_torch_dataset_reads_a_batch_as_its_items(tmp_path):
    """The DataLoader's batched read (``__getitems__``: one read of the table) gives exactly the
    items read one by one, in the sampler's order, corrupt images as None, in every mode."""
    import sewer_hf.data.torch_dataset as data

    root = make_root(tmp_path, VAL_CSV)
    rows = read_rows(VAL_CSV)
    (root / rows[2]["Filename"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")  # skipped when decoded
    (root / rows[7]["Filename"]).write_bytes(b"")  # skipped in every mode
    hf = load_sewer_ml(root, "Val")
    order = [7, 2, 0, 19, 2]
    for kwargs in ({"transform": to_tensor}, {"encoded": True}, {"transform": to_tensor, "with_labels": False}):
        ds = data.SewerTorchDataset(hf, **kwargs)
        got = ds.__getitems__(order)
        assert got[0] is None and got[2]["index"] == 0 and same_items(got, [ds[i] for i in order]), kwargs


def test_torch_dataset_keeps_decoded_frames_and_reads_each_once(tmp_path, monkeypatch):
    """keep_decoded: the items of later epochs come from memory, equal to a fresh read (pixels,
    labels, index; unreadable images None again, without another decode); what the collate
    hands on is a copy; refused for a split too large, a random or per-image transform, or
    encoded bytes."""
    import sewer_hf.data.torch_dataset as data
    from sewer_hf.feed.augment import DecodeForGPU

    root = make_root(tmp_path, VAL_CSV)
    rows = read_rows(VAL_CSV)
    (root / rows[2]["Filename"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    hf = load_sewer_ml(root, "Val")
    order = [5, 2, 0, 19, 5]
    for with_labels in (True, False):
        fresh = data.SewerTorchDataset(hf, DecodeForGPU(16), with_labels=with_labels)
        kept = data.SewerTorchDataset(hf, DecodeForGPU(16), with_labels=with_labels)
        assert kept.keep_decoded(20 * 3 * 16 * 16)  # the whole split, to the byte
        expected = [fresh[i] for i in order]
        assert same_items(kept.__getitems__(order), expected)  # the first read fills the cache
        decodes = []
        monkeypatch.setattr(data, "decode_rgb", lambda image: decodes.append(image))
        again = kept.__getitems__(order)
        assert same_items(again, expected) and decodes == [] and again[1] is None, with_labels
        batch = collate_skip_bad(again)
        batch["pixel_values"].zero_()  # the loop's batch is its own: the kept frames stay
        assert same_items(kept.__getitems__(order), expected)
        assert kept[3] is None and decodes == [hf.cast_column("image", datasets.Image(decode=False))[3]["image"]]
        monkeypatch.undo()
    assert not data.SewerTorchDataset(hf, DecodeForGPU(16)).keep_decoded(20 * 3 * 16 * 16 - 1)
    assert not data.SewerTorchDataset(hf, to_tensor).keep_decoded(2**30)
    assert not data.SewerTorchDataset(hf, encoded=True).keep_decoded(2**30)


def test_torch_dataset_hands_over_encoded_bytes(tmp_path):
    """encoded=True: the file's bytes, undecoded, as a numpy array (kept off the device by
    accelerate); an empty file is skipped like a corrupt one."""
    import sewer_hf.data.torch_dataset as data

    root = make_root(tmp_path, VAL_CSV)
    rows = read_rows(VAL_CSV)
    (root / rows[3]["Filename"]).write_bytes(b"")
    ds = data.SewerTorchDataset(load_sewer_ml(root, "Val"), encoded=True)
    item = ds[1]
    assert "pixel_values" not in item and item["encoded"].dtype == np.uint8
    assert item["encoded"].tobytes() == (root / rows[1]["Filename"]).read_bytes()
    assert ds[3] is None
    batch = collate_skip_bad([ds[0], ds[3], ds[1]])
    assert isinstance(batch["encoded"], list) and len(batch["encoded"]) == 2 and batch["n_skipped"] == 1
    assert batch["labels"].shape == (2, 17)


def test_torch_dataset_multi_view_and_unlabelled(tmp_path):
    import sewer_hf.data.torch_dataset as data

    root = make_root(tmp_path, VAL_CSV)
    two_views = lambda img: [to_tensor(img), to_tensor(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]  # noqa: E731
    ds = data.SewerTorchDataset(load_sewer_ml(root, "Val"), transform=two_views, with_labels=False)
    batch = collate_skip_bad([ds[0], None, ds[1]])
    assert "labels" not in batch and batch["n_skipped"] == 1
    assert isinstance(batch["pixel_values"], list) and len(batch["pixel_values"]) == 2
    assert batch["pixel_values"][0].shape == (2, 3, 8, 8)
    torch.testing.assert_close(batch["pixel_values"][1], batch["pixel_values"][0].flip(-1))


def test_all_bad_batch_is_none_and_counted():
    counter = SkipCounter()
    assert collate_skip_bad([None, None]) is None
    assert counter.add(None) is False
    good = {"pixel_values": torch.zeros(3, 2, 2), "index": 0}
    assert counter.add(collate_skip_bad([good, None, None])) is True
    assert (counter.images, counter.empty_batches) == (2, 1)


# ---------------------------------------------------------------------------------------
# check-data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_check_data_lists_unreadable_and_missing(tmp_path, capsys, workers):
    root = make_root(tmp_path, VAL_CSV, subdir="Val", skip=2)
    rows = read_rows(VAL_CSV)
    bad = root / "Val" / rows[5]["Filename"]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    code = cli.main(["check-data", "--data-root", str(root), "--split", "val", "--workers", workers])
    out = capsys.readouterr().out
    assert code == 1
    assert f"unreadable: {bad}" in out
    assert f"missing: {rows[-1]['Filename']}" in out and f"missing: {rows[-2]['Filename']}" in out
    assert "Val: 20 images checked, 2 missing, 1 unreadable" in out


def test_check_data_clean_split_exits_0(tmp_path, capsys):
    root = make_root(tmp_path, VAL_CSV)
    assert cli.main(["check-data", "--data-root", str(root), "--split", "Val", "--workers", "1"]) == 0
    assert "Val: 20 images checked, 0 missing, 0 unreadable" in capsys.readouterr().out


def test_check_data_bad_csv_is_a_clear_error(tmp_path, capsys):
    corrupt(tmp_path, 0, "RB", "x")
    assert cli.main(["check-data", "--data-root", str(tmp_path), "--split", "train"]) == 2
    assert "line 2, column 'RB'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# load_image_dataset
# ---------------------------------------------------------------------------------------


def image_folder(tmp_path: Path, n: int = 5) -> Path:
    folder = tmp_path / "frames"
    (folder / "video1").mkdir(parents=True)
    for i in range(n):
        draw_png(folder / "video1" / f"frame{i}.png", seed=i)
    return folder


def test_image_dataset_from_sewer_root(tmp_path):
    root = make_root(tmp_path, VAL_CSV)
    ds = load_image_dataset(root, split="val")
    assert len(ds) == 20 and "labels" in ds.column_names and ds[0]["image"].size == (24, 18)


def test_image_dataset_from_image_folder(tmp_path):
    ds = load_image_dataset(image_folder(tmp_path))
    assert len(ds) == 5 and isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (24, 18)


def test_image_dataset_from_save_to_disk_and_parquet(tmp_path):
    frames = datasets.Dataset.from_dict(
        {"image": [str(p) for p in sorted(image_folder(tmp_path).rglob("*.png"))]}
    ).cast_column("image", datasets.Image())
    frames.save_to_disk(str(tmp_path / "saved"))
    assert len(load_image_dataset(tmp_path / "saved")) == 5
    datasets.DatasetDict({"train": frames, "validation": frames.select([0, 1])}).save_to_disk(str(tmp_path / "saved_dict"))
    assert len(load_image_dataset(tmp_path / "saved_dict", split="val")) == 2

    (tmp_path / "pq").mkdir()
    embedded = frames  # to_parquet embeds the image bytes
    embedded.select(range(3)).to_parquet(str(tmp_path / "pq" / "a.parquet"))
    embedded.select(range(3, 5)).to_parquet(str(tmp_path / "pq" / "b.parquet"))
    assert len(load_image_dataset(tmp_path / "pq" / "a.parquet")) == 3
    by_glob = load_image_dataset(str(tmp_path / "pq" / "*.parquet"))
    assert len(by_glob) == 5 and by_glob[4]["image"].size == (24, 18)
    assert len(load_image_dataset(tmp_path / "pq")) == 5


def test_image_dataset_string_paths_become_images(tmp_path):
    paths = [str(p) for p in sorted(image_folder(tmp_path).rglob("*.png"))]
    datasets.Dataset.from_dict({"image": paths}).save_to_disk(str(tmp_path / "paths"))
    ds = load_image_dataset(tmp_path / "paths")
    assert isinstance(ds.features["image"], datasets.Image) and ds[0]["image"].size == (24, 18)


def test_image_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="not an image source"):
        load_image_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_image_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match="no file matches"):
        load_image_dataset(str(tmp_path / "*.parquet"))
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match=r"no 'image' column \(columns: 'text'\)"):
        load_image_dataset(tmp_path / "text")
