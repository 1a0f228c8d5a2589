"""Sewer-ML metrics: hand-computed corner cases, agreement with a plain loop implementation of the
official code on real label rows, the published Table 15 values, the evaluate module, thresholds."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from sewer_hf.data.labels import CIW, CLASSES
from sewer_hf.errors import DataError
from sewer_hf.metrics import (
    average_precision,
    compute_metrics,
    constant_baseline,
    f2_ciw_from_per_class,
    load_metric,
    read_scores_csv,
    tune_thresholds,
    write_scores_csv,
)
from sewer_hf.metrics.thresholds import f2_over_grid, load_thresholds, save_thresholds

FIXTURE = Path(__file__).parent / "fixtures" / "sewerml_val_rows.csv"
K = len(CLASSES)
CIW_SUM = sum(CIW.values())
RB, OB = CLASSES.index("RB"), CLASSES.index("OB")


# ---------------------------------------------------------------- reference implementation
def _div(a: float, b: float) -> float:
    """a / b where 0/0 (NaN) -> 0, as the official code's NaN replacement."""
    return a / b if b != 0 else 0.0


def loop_average_precision(scores: list[float], targets: list[int]) -> float:
    """The official per-class AP loop (ties: a stable ascending sort, reversed)."""
    ranking = sorted(range(len(scores)), key=lambda i: scores[i])[::-1]
    total = sum(targets)
    positives, seen, precision_sum = 0, 0, 0.0
    for i in ranking:
        seen += 1
        if targets[i] == 1:
            positives += 1
            precision_sum += positives / seen
        if positives == total:
            break
    return precision_sum / positives if positives > 0 else 0.0


def loop_metrics(scores, targets, thresholds) -> dict:
    """Plain-Python Sewer-ML metrics following the official code step by step."""
    n = len(scores)
    ng, np_, nc = [0] * (K + 1), [0] * (K + 1), [0] * (K + 1)
    for i in range(n):
        predicted = [scores[i][k] >= thresholds[k] for k in range(K)]
        for k in range(K):
            ng[k] += targets[i][k]
            np_[k] += predicted[k]
            nc[k] += predicted[k] and targets[i][k] == 1
        pred_normal, true_normal = not any(predicted), not any(targets[i])
        ng[K] += true_normal
        np_[K] += pred_normal
        nc[K] += pred_normal and true_normal
    np_ = [p if p > 0 else 1 for p in np_]
    p = [nc[k] / np_[k] for k in range(K + 1)]
    r = [_div(nc[k], ng[k]) for k in range(K + 1)]
    f1 = [_div(2 * p[k] * r[k], p[k] + r[k]) for k in range(K + 1)]
    f2 = [_div(5 * p[k] * r[k], 4 * p[k] + r[k]) for k in range(K + 1)]
    ap = [loop_average_precision([row[k] for row in scores], [row[k] for row in targets]) for k in range(K)]
    op, orr = sum(nc) / sum(np_), _div(sum(nc), sum(ng))
    cp, cr = sum(p) / (K + 1), sum(r) / (K + 1)
    exact = sum(
        all((scores[i][k] >= thresholds[k]) == (targets[i][k] == 1) for k in range(K)) for i in range(n)
    )
    return {
        "F2_CIW": sum(CIW[c] * f2[k] for k, c in enumerate(CLASSES)) / CIW_SUM,
        "F1_Normal": f1[K], "mAP": sum(ap) / K, "macro_F1": sum(f1) / (K + 1),
        "micro_precision": op, "micro_recall": orr, "micro_F1": _div(2 * op * orr, op + orr),
        "CP": cp, "CR": cr, "CF1": _div(2 * cp * cr, cp + cr), "exact_match": exact / n,
        "per_class": {c: {"precision": p[k], "recall": r[k], "F1": f1[k], "F2": f2[k], "AP": ap[k]}
                      for k, c in enumerate(CLASSES)},
        "normal": {"precision": p[K], "recall": r[K], "F1": f1[K], "F2": f2[K]},
    }


def read_fixture_targets() -> np.ndarray:
    with FIXTURE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[int(row[c]) for c in CLASSES] for row in rows], dtype=np.int64)


def assert_same_metrics(got: dict, want: dict) -> None:
    for key, value in want.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                for name, number in (inner.items() if isinstance(inner, dict) else [(sub, inner)]):
                    actual = got[key][sub][name] if isinstance(inner, dict) else got[key][sub]
                    assert actual == pytest.approx(number, rel=1e-12, abs=1e-12), (key, sub, name)
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------- hand-computed cases
def four_images():
    """img0: RB, scored exactly 0.5 (TP). img1: normal, RB just under 0.5 (normal TP).
    img2: normal but OB scored 0.7 (OB FP, normal FN). img3: OB, all scores 0.1 (OB FN, normal FP)."""
    scores = np.zeros((4, K))
    targets = np.zeros((4, K), dtype=int)
    scores[0, RB], targets[0, RB] = 0.5, 1
    scores[1, RB] = np.nextafter(0.5, 0.0)
    scores[2, OB] = 0.7
    scores[3, :], targets[3, OB] = 0.1, 1
    return scores, targets


def test_inclusive_threshold_normal_slot_and_zero_classes_by_hand():
    m = compute_metrics(*four_images())
    assert m["per_class"]["RB"] == {"precision": 1.0, "recall": 1.0, "F1": 1.0, "F2": 1.0, "AP": 1.0, "support": 1}
    # OB: one FP, one FN -> P = R = 0 and F = 0/0 -> 0; its AP ranks the FP (0.7) above the TP
    assert m["per_class"]["OB"] == {"precision": 0.0, "recall": 0.0, "F1": 0.0, "F2": 0.0, "AP": 0.5, "support": 1}
    # classes never predicted nor present: Np = 0 -> 1, R = 0/0 -> 0
    assert m["per_class"]["FO"] == {"precision": 0.0, "recall": 0.0, "F1": 0.0, "F2": 0.0, "AP": 0.0, "support": 0}
    # normal: true {img1, img2}, predicted {img1, img3}
    assert m["normal"] == {"precision": 0.5, "recall": 0.5, "F1": 0.5, "F2": 0.5, "support": 2}
    assert m["F2_CIW"] == pytest.approx(1.0 / CIW_SUM, rel=1e-15)  # only RB scores; all 17 weights count
    assert m["F1_Normal"] == 0.5
    assert m["macro_F1"] == pytest.approx(1.5 / 18)
    assert m["CP"] == pytest.approx(1.5 / 18) and m["CR"] == pytest.approx(1.5 / 18)
    assert m["CF1"] == pytest.approx(1.5 / 18)
    # micro: Nc 2; Np 1 (RB) + 1 (OB) + 15 empty classes counted as 1 + 2 (normal) = 19; Ng 4
    assert m["micro_precision"] == pytest.approx(2 / 19)
    assert m["micro_recall"] == pytest.approx(0.5)
    assert m["micro_F1"] == pytest.approx(2 * (2 / 19) * 0.5 / (2 / 19 + 0.5))
    assert m["exact_match"] == 0.5  # img0 and img1
    assert m["mAP"] == pytest.approx(1.5 / 17)
    assert m["num_images"] == 4


def test_threshold_just_above_the_score_flips_the_prediction():
    scores, targets = four_images()
    m = compute_metrics(scores, targets, threshold=np.nextafter(0.5, 1.0))
    assert m["per_class"]["RB"]["recall"] == 0.0
    assert m["normal"]["support"] == 2 and m["normal"]["precision"] == pytest.approx(1 / 3)


def test_per_class_threshold_vector():
    scores, targets = four_images()
    thresholds = np.full(K, 0.5)
    thresholds[RB] = 0.6  # img0 is no longer predicted RB, so it is predicted normal
    m = compute_metrics(scores, targets, threshold=thresholds)
    assert m["per_class"]["RB"]["F2"] == 0.0 and m["per_class"]["RB"]["precision"] == 0.0
    assert m["normal"]["precision"] == pytest.approx(1 / 3) and m["normal"]["recall"] == 0.5
    assert m["threshold"]["RB"] == 0.6 and m["threshold"]["OB"] == 0.5
    # a dict of 17 thresholds is the same as the vector; a flat vector the same as the float
    assert compute_metrics(scores, targets, dict(zip(CLASSES, thresholds))) == m
    assert compute_metrics(scores, targets, [0.5] * K) == compute_metrics(scores, targets, 0.5)
    # OB at 0.8: its false positive at 0.7 goes away, img2 becomes predicted normal
    thresholds[OB] = 0.8
    assert compute_metrics(scores, targets, thresholds)["normal"]["recall"] == 1.0


def test_class_with_predictions_but_no_positives_scores_zero_not_nan():
    scores = np.zeros((3, K))
    targets = np.zeros((3, K), dtype=int)
    scores[:, CLASSES.index("FO")] = 0.9  # every image predicted FO, none has it
    targets[0, RB] = 1
    scores[0, RB] = 0.9
    m = compute_metrics(scores, targets)
    assert m["per_class"]["FO"]["precision"] == 0.0 and m["per_class"]["FO"]["recall"] == 0.0
    assert m["per_class"]["FO"]["F2"] == 0.0
    assert m["normal"]["precision"] == 0.0 and m["normal"]["recall"] == 0.0  # Np = 0 -> 1
    assert all(math.isfinite(v) for k, v in m.items() if isinstance(v, float))
    assert m["F2_CIW"] == pytest.approx(1.0 / CIW_SUM)


def test_all_normal_images_all_predicted_normal():
    m = compute_metrics(np.zeros((5, K)), np.zeros((5, K), dtype=int))
    assert m["F1_Normal"] == 1.0 and m["F2_CIW"] == 0.0 and m["exact_match"] == 1.0 and m["mAP"] == 0.0
    assert m["micro_recall"] == 1.0 and m["micro_precision"] == pytest.approx(5 / 22)


@pytest.mark.parametrize(
    "scores, targets, expected",
    [
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], (1 / 1 + 2 / 3) / 2),
        ([0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0], 1 / 4),
        ([0.5, 0.5, 0.2], [1, 0, 0], 1 / 2),  # tie: the later row ranks first
        ([0.5, 0.5, 0.2], [0, 1, 0], 1.0),
        ([0.3, 0.3, 0.3], [1, 1, 0], (1 / 2 + 2 / 3) / 2),
        ([0.3, 0.9, 0.1], [0, 0, 0], 0.0),  # no positives
    ],
)
def test_average_precision_by_hand(scores, targets, expected):
    got = average_precision(np.array(scores)[:, None], np.array(targets, dtype=bool)[:, None])
    assert got[0] == pytest.approx(expected, rel=1e-15)
    assert loop_average_precision(scores, targets) == pytest.approx(expected, rel=1e-15)


# ---------------------------------------------------------------- agreement with the loop
@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, "vector")])
def test_agrees_with_loop_implementation_on_real_label_rows(seed, threshold):
    targets = read_fixture_targets()
    rng = np.random.default_rng(seed)
    # informative but noisy scores, rounded to 2 decimals so that ties and exact 0.5 occur
    scores = np.round(np.clip(0.35 * targets + rng.random(targets.shape) * 0.75, 0, 1), 2)
    if threshold == "vector":
        threshold = np.round(rng.uniform(0.2, 0.8, K), 2)
    thresholds = np.broadcast_to(threshold, (K,)).tolist()
    got = compute_metrics(scores, targets, threshold)
    want = loop_metrics(scores.tolist(), targets.tolist(), thresholds)
    assert_same_metrics(got, want)
    assert (scores == 0.5).any() and 0.0 < got["F2_CIW"] < 1.0


def test_all_fractions_in_unit_interval():
    targets = read_fixture_targets()
    m = compute_metrics(np.random.default_rng(3).random(targets.shape), targets)
    numbers = [v for v in m.values() if isinstance(v, float)]
    numbers += [v for d in m["per_class"].values() for k, v in d.items() if k != "support"]
    assert len(numbers) == 11 + 5 * K
    assert all(0.0 <= v <= 1.0 for v in numbers)


# ---------------------------------------------------------------- published values
XIE_F2 = [38.87, 77.86, 52.92, 37.48, 79.78, 19.96, 32.90, 46.59, 53.52, 53.48, 12.66, 58.74, 56.49,
          40.44, 26.37, 47.51, 76.98]
BENCHMARK_F2 = [42.92, 83.56, 54.06, 39.16, 86.99, 23.89, 37.17, 50.41, 59.64, 60.12, 11.30, 66.39,
                66.40, 50.16, 37.32, 64.86, 82.88]


def test_f2_ciw_reproduces_table_15():
    assert round(f2_ciw_from_per_class(XIE_F2), 2) == 48.57
    assert round(f2_ciw_from_per_class(dict(zip(CLASSES, BENCHMARK_F2))), 2) == 55.36
    # a class at 0 keeps its weight in the denominator
    assert f2_ciw_from_per_class([1.0] * 16 + [0.0]) == pytest.approx((CIW_SUM - CIW["OK"]) / CIW_SUM)
    with pytest.raises(DataError, match="17"):
        f2_ciw_from_per_class(XIE_F2[:16])


# ---------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "scores, targets, threshold, message",
    [
        (np.zeros((2, 16)), np.zeros((2, 16)), 0.5, r"shape \(N, 17\)"),
        (np.zeros((2, K)), np.zeros((3, K)), 0.5, "shape of scores"),
        (np.zeros((0, K)), np.zeros((0, K)), 0.5, "0 rows"),
        (np.full((2, K), np.nan), np.zeros((2, K)), 0.5, "finite.*row 0, class RB"),
        (np.zeros((2, K)), np.full((2, K), 2), 0.5, "0 or 1.*row 0, class RB"),
        (np.zeros((2, K)), np.zeros((2, K)), [0.5] * 16, "threshold"),
        (np.zeros((2, K)), np.zeros((2, K)), float("inf"), "finite"),
        (np.zeros((2, K)), np.zeros((2, K)), {"RB": 0.5}, "missing"),
        (np.zeros((2, K)), np.zeros((2, K)), "high", "threshold must be"),
    ],
)
def test_bad_inputs_raise_clear_data_errors(scores, targets, threshold, message):
    with pytest.raises(DataError, match=message):
        compute_metrics(scores, targets, threshold)


# ---------------------------------------------------------------- evaluate module
def test_evaluate_module_matches_compute_metrics():
    import evaluate

    targets = read_fixture_targets()[:600]
    scores = np.random.default_rng(4).random(targets.shape)
    thresholds = np.linspace(0.3, 0.7, K)
    for metric in (load_metric(), evaluate.load(str(Path(__file__).parents[1] / "sewer_hf/metrics/sewer_ml"))):
        metric.add_batch(predictions=scores[:250].tolist(), references=targets[:250].tolist())
        metric.add_batch(predictions=scores[250:], references=targets[250:])
        assert metric.compute(threshold=thresholds.tolist()) == compute_metrics(scores, targets, thresholds)
    single = load_metric()
    for s, t in zip(scores[:50], targets[:50]):
        single.add(predictions=s, references=t)
    assert single.compute() == compute_metrics(scores[:50], targets[:50])


# ---------------------------------------------------------------- tuned thresholds
def noisy_scores(targets, seed):
    rng = np.random.default_rng(seed)
    return np.clip(0.3 * targets + rng.random(targets.shape) * 0.7, 0, 1)


def test_tune_thresholds_improves_f2_ciw_on_its_data():
    targets = read_fixture_targets()
    scores = noisy_scores(targets, 5)
    tuned = tune_thresholds(scores, targets, objective="per_class_f2")
    assert tuned.shape == (K,) and np.all((tuned > 0) & (tuned < 1))
    base, best = compute_metrics(scores, targets), compute_metrics(scores, targets, tuned)
    assert best["F2_CIW"] > base["F2_CIW"] + 0.01
    for code in CLASSES:  # each class's F2 is maximised on its own
        assert best["per_class"][code]["F2"] >= base["per_class"][code]["F2"]


def scores_where_per_class_f2_destroys_normal(seed=3, n=1500):
    """A model that separates the frequent classes well but the rare ones barely: maximising
    each rare class's F2 alone lowers its threshold until almost every frame is flagged."""
    targets = read_fixture_targets()[:n]
    rng = np.random.default_rng(seed)
    separation = np.where(targets.mean(axis=0) > 0.05, 0.5, 0.08)  # frequent classes: clear signal
    scores = np.clip(0.25 + separation * targets + 0.12 * rng.standard_normal(targets.shape), 0, 1)
    return scores, targets


def test_benchmark_tuning_keeps_normal_where_per_class_f2_destroys_it():
    scores, targets = scores_where_per_class_f2_destroys_normal()
    default = compute_metrics(scores, targets)
    per_class = compute_metrics(scores, targets, tune_thresholds(scores, targets, objective="per_class_f2"))
    tuned = tune_thresholds(scores, targets)
    benchmark = compute_metrics(scores, targets, tuned)
    assert per_class["F1_Normal"] < 0.5 * default["F1_Normal"]  # the failure this objective exists for
    assert benchmark["F1_Normal"] >= default["F1_Normal"] - 1e-12  # the floor holds
    assert benchmark["F2_CIW"] > default["F2_CIW"] + 0.01  # and F2_CIW still gains
    predicted_normal = ~(scores >= tuned).any(axis=1)
    assert predicted_normal.any()


def test_benchmark_tuning_never_flags_every_frame_when_0_5_does():
    targets = read_fixture_targets()[:800]
    rng = np.random.default_rng(4)
    scores = np.clip(0.6 + 0.3 * targets + 0.05 * rng.standard_normal(targets.shape), 0, 1)  # 0.5 flags all
    assert compute_metrics(scores, targets)["F1_Normal"] == 0.0
    tuned = tune_thresholds(scores, targets)
    assert compute_metrics(scores, targets, tuned)["F1_Normal"] > 0.0
    assert (~(scores >= tuned).any(axis=1)).any()


def test_benchmark_tuning_keeps_a_margin_above_calling_every_frame_normal():
    from sewer_hf.metrics.thresholds import NORMAL_MARGIN

    targets = read_fixture_targets()[:800]
    rng = np.random.default_rng(0)  # weak scores, all above 0.5: the floor is calling every frame normal
    scores = np.clip(0.6 + 0.3 * targets + 0.15 * rng.standard_normal(targets.shape), 0, 1)
    all_normal = compute_metrics(np.zeros(targets.shape), targets)["F1_Normal"]
    bare = compute_metrics(scores, targets, tune_thresholds(scores, targets, normal_margin=0.0))
    kept = compute_metrics(scores, targets, tune_thresholds(scores, targets))
    assert bare["F1_Normal"] < all_normal + NORMAL_MARGIN  # without the margin, the floor is met only just
    assert kept["F1_Normal"] >= all_normal + NORMAL_MARGIN - 1e-12
    assert kept["F2_CIW"] > compute_metrics(scores, targets)["F2_CIW"]  # still a gain over 0.5
    with pytest.raises(DataError, match="normal_margin"):
        tune_thresholds(scores, targets, normal_margin=1.5)


def test_benchmark_tuning_is_the_per_class_optimum_without_normal_frames():
    targets = read_fixture_targets()[:600]
    targets = targets[targets.any(axis=1)]  # no normal frame: the floor is void
    scores = noisy_scores(targets, 9)
    assert np.array_equal(tune_thresholds(scores, targets), tune_thresholds(scores, targets, objective="per_class_f2"))
    with pytest.raises(DataError, match="objective"):
        tune_thresholds(scores, targets, objective="f1")


def test_constant_baseline_is_what_image_blind_predictors_score():
    targets = read_fixture_targets()[:700]
    base = constant_baseline(targets)
    flag_present = np.tile(targets.any(axis=0).astype(float), (len(targets), 1))  # every frame, each present class
    assert base["F2_CIW"] == pytest.approx(compute_metrics(flag_present, targets)["F2_CIW"])
    assert base["F1_Normal"] == pytest.approx(compute_metrics(np.zeros(targets.shape), targets)["F1_Normal"])
    rng = np.random.default_rng(0)  # the expected AP of a random order: the mean over many orders
    draws = [compute_metrics(rng.random(targets.shape), targets)["mAP"] for _ in range(300)]
    assert base["mAP"] == pytest.approx(np.mean(draws), abs=3 * np.std(draws) / np.sqrt(300) + 1e-3)


def test_the_learned_bar_fails_every_image_blind_predictor_and_passes_informative_scores():
    from sewer_hf.metrics import learned

    targets = read_fixture_targets()[:700]
    base = constant_baseline(targets)
    rng = np.random.default_rng(1)
    for blind in (np.zeros(targets.shape), np.ones(targets.shape), rng.random(targets.shape),
                  np.tile(targets.any(axis=0).astype(float), (len(targets), 1))):
        assert not all(learned(compute_metrics(blind, targets), base).values())
    informed = compute_metrics(0.5 * targets + 0.45 * rng.random(targets.shape), targets)
    assert learned(informed, base) == {"F2_CIW": True, "F1_Normal": True, "mAP": True}
    assert not learned({**informed, "mAP": 1.9 * base["mAP"]}, base)["mAP"]  # 2x the constant scorer's, not just above


def test_f2_over_grid_matches_compute_metrics_and_tuning_is_argmax():
    targets = read_fixture_targets()[:500]
    scores = np.round(noisy_scores(targets, 6), 2)  # ties and scores equal to grid points
    grid = np.array([0.2, 0.35, 0.5, 0.71])
    table = f2_over_grid(scores, targets.astype(bool), grid)
    for g, t in enumerate(grid):
        f2 = compute_metrics(scores, targets, t)["per_class"]
        assert table[g] == pytest.approx([f2[c]["F2"] for c in CLASSES], abs=1e-15)
    tuned = tune_thresholds(scores, targets, grid=grid, objective="per_class_f2")
    assert np.all(table[np.searchsorted(grid, tuned), np.arange(K)] == table.max(axis=0))


def test_tune_keeps_default_for_class_without_positives(tmp_path):
    targets = read_fixture_targets()[:300]
    targets[:, CLASSES.index("OS")] = 0
    tuned = tune_thresholds(noisy_scores(targets, 7), targets)
    assert tuned[CLASSES.index("OS")] == 0.5
    path = save_thresholds(tmp_path / "thr.json", tuned)
    assert np.array_equal(load_thresholds(path), tuned)


# ---------------------------------------------------------------- scores files
def test_scores_csv_round_trip_is_exact(tmp_path):
    scores = np.random.default_rng(8).random((20, K))
    scores[0, 0] = np.nextafter(0.5, 0.0)
    names = [f"{i:08d}.png" for i in range(20)]
    read_names, read = read_scores_csv(write_scores_csv(tmp_path / "s.csv", names, scores))
    assert read_names == names and np.array_equal(read, scores) and read[0, 0] < 0.5
    just_under = np.full((1, K), np.nextafter(np.float32(0.5), np.float32(0)), dtype=np.float32)
    _, read32 = read_scores_csv(write_scores_csv(tmp_path / "s32.csv", ["a.png"], just_under))
    assert np.all(read32 < 0.5) and np.all(read32.astype(np.float32) == just_under)


def test_scores_csv_columns_by_header(tmp_path):
    columns = list(reversed(CLASSES))
    path = tmp_path / "s.csv"
    path.write_text("Filename," + ",".join(columns) + "\n" + "x.png," + ",".join(str(i / 100) for i in range(K)) + "\n")
    _, scores = read_scores_csv(path)
    assert scores[0, CLASSES.index("OK")] == 0.0 and scores[0, CLASSES.index("RB")] == 0.16
