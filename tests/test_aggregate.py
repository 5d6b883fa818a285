"""aggregate_windows: max / top-k mean per label, Present >= every location, always 14 finite values in [0, 1]."""
from __future__ import annotations

import numpy as np
import pytest

from inference.aggregate import aggregate_windows, enforce_present_rule
from inference.config import AggregationConfig
from inference.errors import InferenceError
from inference.labels import PRESENT_INDEX


def test_max_per_label():
    probs = np.random.default_rng(0).uniform(size=(9, 14))
    probs[:, PRESENT_INDEX] = 1.0  # keep the Present rule out of this comparison
    out = aggregate_windows(probs, AggregationConfig(method="max"))
    np.testing.assert_allclose(out, probs.max(axis=0))


def test_topk_mean_per_label():
    probs = np.zeros((5, 14))
    probs[:, 0] = [0.1, 0.9, 0.3, 0.7, 0.5]
    probs[:, PRESENT_INDEX] = [0.9, 0.9, 0.9, 0.0, 0.0]
    out = aggregate_windows(probs, AggregationConfig(method="topk_mean", top_k=3))
    assert out[0] == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert out[PRESENT_INDEX] == pytest.approx(0.9)
    # fewer windows than k: the mean of all of them
    out = aggregate_windows(probs[:2], AggregationConfig(method="topk_mean", top_k=3))
    assert out[0] == pytest.approx(0.5)


def test_present_is_never_below_the_largest_location():
    probs = np.full((3, 14), 0.05)
    probs[1, 4] = 0.8
    out = aggregate_windows(probs, AggregationConfig())
    assert out[PRESENT_INDEX] == pytest.approx(0.8)
    assert out[4] == pytest.approx(0.8)
    kept = enforce_present_rule(np.r_[np.full(13, 0.2), 0.6])
    assert kept[PRESENT_INDEX] == pytest.approx(0.6)


def test_output_is_14_finite_values_in_unit_interval():
    probs = np.random.default_rng(1).uniform(-0.1, 1.1, size=(4, 14))
    out = aggregate_windows(probs, AggregationConfig(method="topk_mean", top_k=2))
    assert out.shape == (14,) and np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


@pytest.mark.parametrize("probs,match", [(np.zeros((0, 14)), "no window"), (np.zeros((3, 13)), "shape"),
                                         (np.full((2, 14), np.nan), "non-finite")])
def test_bad_input_raises(probs, match):
    with pytest.raises(InferenceError, match=match):
        aggregate_windows(probs, AggregationConfig())
