"""`sewer-hf evaluate` end to end: real annotation rows, a scores CSV, thresholds, mismatch errors."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sewer_hf.cli import main
from sewer_hf.data.labels import CLASSES
from sewer_hf.metrics import compute_metrics, load_thresholds, save_thresholds, write_scores_csv

FIXTURE = Path(__file__).parent / "fixtures" / "sewerml_val_rows.csv"
N_ROWS = 400  # enough for every path; the full fixture is used by test_metrics.py


@pytest.fixture()
def annotations(tmp_path) -> Path:
    """The first N_ROWS real rows, with the official header."""
    with FIXTURE.open(newline="") as handle:
        lines = handle.read().splitlines()
    path = tmp_path / "SewerML_Val.csv"
    path.write_text("\n".join(lines[: N_ROWS + 1]) + "\n")
    return path


def load_rows(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["Filename"] for r in rows], np.array([[int(r[c]) for c in CLASSES] for r in rows])


def write_shuffled_scores(path: Path, names, scores, seed=0) -> Path:
    """Rows in another order and columns in another order than the annotations: matched by name."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(names))
    columns = rng.permutation(len(CLASSES))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Filename", *[CLASSES[c] for c in columns]])
        for i in rows:
            writer.writerow([names[i], *[repr(float(scores[i, c])) for c in columns]])
    return path


def make_scores(annotations: Path, seed=0):
    names, targets = load_rows(annotations)
    rng = np.random.default_rng(seed)
    scores = np.round(np.clip(0.45 * targets + 0.52 * rng.random(targets.shape), 0, 1), 3)
    return names, targets, scores


def test_evaluate_end_to_end_matches_compute_metrics(annotations, tmp_path, capsys):
    names, targets, scores = make_scores(annotations)
    scores_csv = write_shuffled_scores(tmp_path / "scores.csv", names, scores)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--annotations", str(annotations), "--scores", str(scores_csv), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = compute_metrics(scores, targets)
    result = json.loads(out.read_text())
    assert result["F2_CIW"] == expected["F2_CIW"] and result["per_class"] == expected["per_class"]
    assert result["normal"] == expected["normal"] and result["num_images"] == N_ROWS
    assert 0.3 < expected["F1_Normal"] < 1 and 0.3 < expected["F2_CIW"] < 1
    assert f"  F2_CIW       {100 * expected['F2_CIW']:6.2f}\n" in printed
    assert f"  F1_Normal    {100 * expected['F1_Normal']:6.2f}\n" in printed
    for code in CLASSES:
        assert f"\n  {code:<6} {100 * expected['per_class'][code]['precision']:6.2f}" in printed
    assert f"\n  Normal {100 * expected['normal']['precision']:6.2f}" in printed


def test_evaluate_threshold_number_and_json_file(annotations, tmp_path):
    names, targets, scores = make_scores(annotations, seed=1)
    scores_csv = write_scores_csv(tmp_path / "scores.csv", names, scores)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--annotations", str(annotations), "--scores", str(scores_csv),
                 "--threshold", "0.35", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["F2_CIW"] == compute_metrics(scores, targets, 0.35)["F2_CIW"]
    per_class = np.linspace(0.2, 0.8, len(CLASSES))
    thr_file = save_thresholds(tmp_path / "thr.json", per_class)
    assert main(["evaluate", "--annotations", str(annotations), "--scores", str(scores_csv),
                 "--threshold", str(thr_file), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["F2_CIW"] == compute_metrics(scores, targets, per_class)["F2_CIW"]
    assert result["threshold"]["OK"] == pytest.approx(0.8)


def test_evaluate_tune_thresholds_writes_a_threshold_file(annotations, tmp_path):
    names, targets, scores = make_scores(annotations, seed=2)
    scores_csv = write_scores_csv(tmp_path / "scores.csv", names, scores)
    tuned_path = tmp_path / "tuned.json"
    assert main(["evaluate", "--annotations", str(annotations), "--scores", str(scores_csv),
                 "--tune-thresholds", str(tuned_path)]) == 0
    tuned = load_thresholds(tuned_path)
    assert np.all((tuned > 0) & (tuned < 1))
    assert compute_metrics(scores, targets, tuned)["F2_CIW"] > compute_metrics(scores, targets)["F2_CIW"]


def _run_error(capsys, annotations, scores_csv, *extra) -> str:
    code = main(["evaluate", "--annotations", str(annotations), "--scores", str(scores_csv), *extra])
    assert code == 2
    return capsys.readouterr().err


def test_missing_extra_and_duplicate_filenames_are_named(annotations, tmp_path, capsys):
    names, _, scores = make_scores(annotations)
    missing = write_scores_csv(tmp_path / "missing.csv", names[7:], scores[7:])
    err = _run_error(capsys, annotations, missing)
    assert "7 filename(s)" in err and "missing from" in err and names[0] in err and "(2 more)" in err

    extra_names = names + ["99999998.png", "99999999.png"]
    extra = write_scores_csv(tmp_path / "extra.csv", extra_names, np.vstack([scores, scores[:2]]))
    err = _run_error(capsys, annotations, extra)
    assert "2 filename(s)" in err and "not in" in err and "99999999.png" in err

    dup = write_scores_csv(tmp_path / "dup.csv", names + [names[3]], np.vstack([scores, scores[3:4]]))
    err = _run_error(capsys, annotations, dup)
    assert "more than once" in err and names[3] in err


@pytest.mark.parametrize(
    "header, row, message",
    [
        ("Filename," + ",".join(CLASSES[:-1]), None, "missing column.*OK"),
        ("Filename," + ",".join(CLASSES) + ",Extra", None, "unexpected column.*Extra"),
        ("Filename," + ",".join(CLASSES), "BAD", r"line 2, column RB: 'abc' is not a finite number"),
        ("Filename," + ",".join(CLASSES), "NAN", "column RB: 'nan' is not a finite number"),
        ("Filename," + ",".join(CLASSES), "SHORT", "line 2: 3 fields, expected 18"),
    ],
)
def test_malformed_scores_file(annotations, tmp_path, capsys, header, row, message):
    names, _, scores = make_scores(annotations)
    n_cols = header.count(",")
    cells = {"BAD": "abc", "NAN": "nan"}
    lines = [header]
    for i, name in enumerate(names):
        if i == 0 and row == "SHORT":
            lines.append(f"{name},0.1,0.2")
        elif i == 0 and row in cells:
            lines.append(",".join([name, cells[row], *["0.1"] * (n_cols - 1)]))
        else:
            lines.append(",".join([name, *["0.1"] * n_cols]))
    path = tmp_path / "scores.csv"
    path.write_text("\n".join(lines) + "\n")
    err = _run_error(capsys, annotations, path)
    assert re.search(message, err), err


def test_bad_annotation_value_and_threshold(annotations, tmp_path, capsys):
    names, _, scores = make_scores(annotations)
    scores_csv = write_scores_csv(tmp_path / "scores.csv", names, scores)
    broken = tmp_path / "broken.csv"
    lines = annotations.read_text().splitlines()
    cells = lines[5].split(",")
    cells[3] = "2"  # the RB column of the official header
    lines[5] = ",".join(cells)
    broken.write_text("\n".join(lines) + "\n")
    assert "line 6, column RB: '2' is not 0 or 1" in _run_error(capsys, broken, scores_csv)
    assert "neither a number nor an existing JSON file" in _run_error(capsys, annotations, scores_csv, "--threshold", "high")
    bad_json = tmp_path / "thr.json"
    bad_json.write_text(json.dumps({"RB": 0.5}))
    assert "missing" in _run_error(capsys, annotations, scores_csv, "--threshold", str(bad_json))
    assert "does not exist" in _run_error(capsys, tmp_path / "nope.csv", scores_csv)
