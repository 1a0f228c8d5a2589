import csv
from pathlib import Path

import numpy as np
import pytest

from sewer_hf.data.labels import CLASSES
from sewer_hf.data.sampling import stratified_fraction
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
