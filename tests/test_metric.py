"""The competition metric against sklearn, and its weighting of Present vs locations."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metric import MetricError, competition_score, roc_auc
from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 40)
        if y.min() == y.max():
            continue
        scores = rng.integers(0, 6, 40) / 5.0  # many ties
        assert roc_auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores), abs=1e-12)


def test_one_class_column_gives_a_clear_error():
    with pytest.raises(MetricError, match="only one class"):
        roc_auc(np.zeros(5), np.linspace(0, 1, 5))
    y = np.random.default_rng(1).integers(0, 2, (20, len(LABELS)))
    y[:, 3] = 0
    with pytest.raises(MetricError, match=LABELS[3]):
        competition_score(y, np.random.default_rng(2).random(y.shape))


def test_score_is_half_present_half_mean_location():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (60, len(LABELS)))
    p = rng.random(y.shape)
    report = competition_score(y, p)
    present = sklearn_metrics.roc_auc_score(y[:, PRESENT_INDEX], p[:, PRESENT_INDEX])
    locations = np.mean([sklearn_metrics.roc_auc_score(y[:, i], p[:, i]) for i in range(len(LOCATION_LABELS))])
    # official weighting: 13 for Present, 1 per location, normalised by 26
    weights = np.array([1.0] * len(LOCATION_LABELS) + [13.0])
    aucs = np.array([sklearn_metrics.roc_auc_score(y[:, i], p[:, i]) for i in range(len(LABELS))])
    assert report.score == pytest.approx(float((weights * aucs).sum() / weights.sum()), abs=1e-12)
    assert report.score == pytest.approx(0.5 * present + 0.5 * locations, abs=1e-12)
    assert report.present_auc == pytest.approx(present)


def test_perfect_and_inverted_predictions():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (30, len(LABELS)))
    assert competition_score(y, y.astype(float)).score == pytest.approx(1.0)
    assert competition_score(y, 1.0 - y).score == pytest.approx(0.0)


def test_lenient_score_is_undefined_without_a_present_auc():
    from evaluation.metric import score_predictions

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (40, len(LABELS)))
    p = rng.random(y.shape)
    y[:, PRESENT_INDEX] = 1  # every series positive: Present AUC undefined
    report = score_predictions(y, p)
    assert report["present_auc"] is None and report["mean_location_auc"] is not None
    assert report["score"] is None and not report["complete"]  # not the location mean in disguise


def test_fold_wise_scores_rank_within_each_fold_and_ignore_scales_across_folds():
    from evaluation.metric import score_fold_wise, score_predictions

    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, (60, len(LABELS)))
    folds = np.repeat([0, 1], 30)
    # each fold ranks its series perfectly, but fold 1's model answers on a lower scale than fold 0's
    p = np.where(y == 1, 0.6, 0.4) - 0.3 * (folds == 1)[:, None]
    pooled = score_predictions(y, p)["score"]
    fold_wise = score_fold_wise(y, p, folds)
    assert pooled < 0.9 and fold_wise["score"] == pytest.approx(1.0)
    assert fold_wise["folds"] == 2 and fold_wise["series"] == 60
    p[:30] = rng.random((30, len(LABELS)))  # fold 0 now guesses
    mixed = score_fold_wise(y, p, folds)
    assert mixed["per_fold"][1]["score"] == pytest.approx(1.0)
    assert mixed["score"] == pytest.approx((mixed["per_fold"][0]["score"] + 1.0) / 2)
    y[:30, PRESENT_INDEX] = 1  # fold 0's Present AUC undefined: the mean is over the folds that define it
    assert score_fold_wise(y, p, folds)["present_auc"] == pytest.approx(1.0)
