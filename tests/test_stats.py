"""The confidence intervals every benchmark table reports."""

import math

import numpy as np
import pytest

from ds_robot.stats import mean_ci95, wilson_ci95


@pytest.mark.parametrize("trials", [1, 5, 8, 30, 100, 200, 1000])
def test_wilson_interval_contains_its_estimate_at_the_edges(trials):
    for wins in (0, trials // 2, trials):
        rate, (lo, hi) = wilson_ci95(wins, trials)
        assert 0.0 <= lo <= rate <= hi <= 1.0
    assert wilson_ci95(trials, trials)[1][1] == 1.0 and wilson_ci95(0, trials)[1][0] == 0.0


def test_wilson_interval_known_value_and_empty():
    rate, (lo, hi) = wilson_ci95(189, 200)  # 0.945: a row of bench sim2real
    assert rate == pytest.approx(0.945) and lo == pytest.approx(0.9042, abs=1e-4) and hi == pytest.approx(0.9690, abs=1e-4)
    assert all(math.isnan(v) for v in (wilson_ci95(0, 0)[0], *wilson_ci95(0, 0)[1]))


def test_mean_interval_covers_the_mean():
    values = np.random.default_rng(0).normal(3.0, 1.0, 50)
    mean, (lo, hi) = mean_ci95(values)
    assert lo < mean < hi and lo < 3.0 < hi
