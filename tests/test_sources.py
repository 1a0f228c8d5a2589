"""Where recipes find their splits: a missing held-out split is optional, a broken one is an error."""
import shutil
from pathlib import Path

import pytest

from sewer_hf.data.sources import has_split, load_split
from sewer_hf.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def sewer_root(tmp_path):
    from PIL import Image

    shutil.copy(FIXTURES / "SewerML_Train.csv", tmp_path / "SewerML_Train.csv")
    for line in (tmp_path / "SewerML_Train.csv").read_text().splitlines()[1:]:
        Image.new("RGB", (8, 8)).save(tmp_path / line.split(",")[0])
    return tmp_path


def test_missing_held_out_split_is_optional(sewer_root):
    assert has_split(str(sewer_root), "Train") and not has_split(str(sewer_root), "Val")
    assert load_split(str(sewer_root), "Val", labelled=False, required=False) is None
    assert len(load_split(str(sewer_root), "Train", labelled=True)) == 40
    with pytest.raises(DataError):
        load_split(str(sewer_root), "Val", labelled=False)


def test_a_broken_held_out_split_is_not_silently_skipped(sewer_root):
    (sewer_root / "SewerML_Val.csv").write_text("Filename,Bogus\n00000001.png,1\n")
    with pytest.raises(DataError, match="SewerML_Val.csv"):
        load_split(str(sewer_root), "Val", labelled=False, required=False)


def test_unlabelled_source_cannot_feed_a_labelled_run(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"frame{i}.png")
    assert not has_split(str(tmp_path), "Val")
    with pytest.raises(DataError, match="needs labels"):
        load_split(str(tmp_path), "Train", labelled=True)
