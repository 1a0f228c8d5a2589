import csv
from pathlib import Path

import numpy as np
import pytest

from sewer_hf.data.labels import CLASSES
from sewer_hf.data.sampling import RepeatFactorSampler, repeat_factors, stratified_fraction
from sewer_hf.errors import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "sewerml_val_rows.csv"


def real_labels():
    with FIXTURE.open() as fh:
        return np.array([[int(r[c]) for c in CLASSES] for r in csv.DictReader(fh)])


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_fraction_is_deterministic_stratified_and_covers_every_class(fraction):
    y = real_labels()
    a = stratified_fraction(y, fraction, seed=1)
    assert np.array_equal(a, stratified_fraction(y, fraction, seed=1))
    assert not np.array_equal(a, stratified_fraction(y, fraction, seed=2))
    assert abs(len(a) - fraction * len(y)) <= 0.01 * len(y) + 2
    assert len(np.unique(a)) == len(a)
    present = y.any(0)
    assert y[a].any(0)[present].all()  # every class of the full set is represented
    share = y[a].sum(0)[present] / y.sum(0)[present]
    big = y.sum(0)[present] >= 40
    assert np.all(np.abs(share[big] - fraction) < 0.05), share  # stratified, not just random
    normal_share = (~y[a].any(1)).mean()
    assert abs(normal_share - (~y.any(1)).mean()) < 0.05


def test_rare_class_is_kept_even_at_ten_percent():
    y = np.zeros((200, 17), dtype=int)
    y[:3, 5] = 1  # a class with three examples: 10 % would be 0.3 of one
    y[3:60, 0] = 1
    taken = stratified_fraction(y, 0.1, seed=0)
    assert y[taken, 5].sum() >= 1 and y[taken, 0].sum() >= 1


def test_full_fraction_and_bad_values():
    y = np.eye(17, dtype=int)
    assert np.array_equal(stratified_fraction(y, 1.0), np.arange(17))
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            stratified_fraction(y, bad)


def test_repeat_factors_follow_lvis_rule_on_real_labels():
    """r_c = max(1, sqrt(t / f_c)); a frame takes the largest factor of its classes, a normal frame 1."""
    y = real_labels()
    freq = y.mean(0)
    r = repeat_factors(y, 0.1)
    assert r.shape == (len(y),) and np.all(r >= 1.0)
    assert np.all(r[~y.any(1)] == 1.0)
    rarest = int(np.argmin(np.where(freq > 0, freq, np.inf)))
    row = int(np.flatnonzero(y[:, rarest])[0])
    expected = max(np.sqrt(0.1 / freq[c]) if freq[c] < 0.1 else 1.0 for c in np.flatnonzero(y[row]))
    assert r[row] == pytest.approx(expected) and r[row] > 2.0  # Sewer-ML's tail: drawn well over twice as often
    frequent_only = (y[:, freq >= 0.1].any(1)) & ~(y[:, freq < 0.1].any(1))
    assert np.all(r[frequent_only] == 1.0)  # classes above the threshold are not repeated
    assert np.all(repeat_factors(y, 0.0) == 1.0)


def test_repeat_factor_sampler_draws_rare_frames_more_often_and_is_seeded_per_epoch():
    weights = np.ones(1000)
    weights[:50] = 4.0  # 50 "rare" frames: a quarter-and-a-bit of the draws instead of 5 %
    sampler = RepeatFactorSampler(weights, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 1000  # the epoch keeps its length
    assert first == list(RepeatFactorSampler(weights, seed=3))  # same seed and epoch: same draws
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new epoch, new draws
    rare_share = np.mean([i < 50 for i in first])
    assert abs(rare_share - 200 / 1150) < 0.05, rare_share  # in proportion to the weights
    with pytest.raises(ConfigError, match="positive weight"):
        RepeatFactorSampler(np.array([1.0, 0.0]))
