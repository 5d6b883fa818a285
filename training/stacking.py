"""Fit the learned aggregator on out-of-fold windows, and measure it against the fixed reductions, fold by fold."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.metric import score_fold_wise
from inference.aggregate import FEATURE_NAMES, LearnedAggregator, aggregate_windows, series_features
from inference.config import AggregationConfig
from inference.labels import LABELS, LOCATION_INDICES, PRESENT_INDEX

__all__ = ["SeriesWindows", "anchor_feature", "fit_aggregator", "cross_validated", "stacking_report"]

log = logging.getLogger(__name__)

_MIN_SCALE = 1e-6
# L2 penalty of the standardised weights, all but the anchor's (the best fixed reduction's own feature): chosen on
# the out-of-fold series of four default-phantom runs (2 seeds x 2 and 3 folds; benchmarks/bench_aggregation.py):
# fold-wise gain over the top-k mean +0.002 to +0.005 at 100, +0.001 to +0.003 at 1000, -0.008 to +0.003 at 10
DEFAULT_L2 = 100.0


@dataclass(frozen=True)
class SeriesWindows:
    """One out-of-fold series: its window probabilities from the fold that did not train on it."""

    uid: str
    fold: int
    modality: str  # "CT" or "MR" (the loader's), what the kernel's features see
    windows: np.ndarray  # (N, 14)
    labels: np.ndarray  # (14,)


def _logistic(x: np.ndarray, y: np.ndarray, *, l2: float, free: Sequence[int] = (),
              iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method: (weights, bias). The bias and the weights of the
    `free` columns are not penalised."""
    n, f = x.shape
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    beta = np.zeros(f + 1)
    penalty = np.full(f + 1, l2)
    penalty[-1] = 0.0
    penalty[list(free)] = 0.0
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(design @ beta)))
        gradient = design.T @ (p - y) + penalty * beta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def _intercept(offset: np.ndarray, y: np.ndarray, *, iterations: int = 50) -> float:
    """The bias b maximising the likelihood of sigmoid(offset + b) for labels y (one-dimensional Newton)."""
    b = 0.0
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(offset + b)))
        curvature = float((p * (1 - p)).sum()) + 1e-9
        step = float((p - y).sum()) / curvature
        b -= step
        if abs(step) < 1e-8:
            break
    return b


def _constant_bias(y: np.ndarray) -> float:
    rate = float(np.clip(y.mean(), 0.01, 0.99))
    return float(np.log(rate / (1 - rate)))


def anchor_feature(method: str, top_k: int) -> str | None:
    """The feature of `series_features` that is the fixed reduction `method` (in logit space), None if none is."""
    name = "max" if method == "max" else f"top{top_k}_mean" if method == "topk_mean" else None
    return name if name in FEATURE_NAMES else None


def fit_aggregator(series: Sequence[SeriesWindows], *, l2: float = DEFAULT_L2, anchor: str | None = "top3_mean",
                   pooled_locations: bool = True) -> LearnedAggregator:
    """Logistic regressions on `series_features` of out-of-fold series: Present's own, and the 13 locations'.

    Every weight but the `anchor` feature's is penalised, so the fit shrinks towards a rescaling of that fixed
    reduction (the same ranking, label by label) rather than towards a constant: a few hundred series can move it
    only as far as they support (held out on four default-phantom runs: shrunk towards zero at L2 10, the fit lost
    up to 0.021 to the top-k mean; anchored at L2 100, at most 0.011).

    Features are standardised over every (series, label) row. With `pooled_locations` (the default) the 13
    locations share one set of weights, fitted on all their rows together, and each keeps its own bias: a location
    has a few dozen positives in a few hundred series, too few for 19 weights of its own (measured on the default
    phantom: per-label fits lost 0.04-0.05 location AUC to the top-k mean held out, pooled ones matched it).
    A label with one class in `series` keeps the bias of its prevalence (clipped); alone, it has zero weights.

    Raises:
        ValueError: no series.
    """
    if not series:
        raise ValueError("fit_aggregator needs out-of-fold series")
    return _fit(*_features_and_labels(series), l2=l2, anchor=anchor, pooled_locations=pooled_locations)


def _features_and_labels(series: Sequence[SeriesWindows]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 14, F) `series_features` and (n, 14) labels of `series`."""
    return (np.stack([series_features(s.windows, s.modality) for s in series]),
            np.stack([s.labels for s in series]).astype(np.float64))


def _fit(features: np.ndarray, labels: np.ndarray, *, l2: float, anchor: str | None,
         pooled_locations: bool) -> LearnedAggregator:
    """`fit_aggregator` on features already computed: (n, 14, F) and (n, 14) labels."""
    if anchor is not None and anchor not in FEATURE_NAMES:
        raise ValueError(f"anchor {anchor!r} is not one of the features {FEATURE_NAMES}")
    free = [FEATURE_NAMES.index(anchor)] if anchor is not None else []
    flat = features.reshape(-1, features.shape[-1])
    mean = flat.mean(axis=0)
    scale = np.maximum(flat.std(axis=0), _MIN_SCALE)
    standard = (features - mean) / scale
    weights = np.zeros((len(LABELS), len(FEATURE_NAMES)))
    bias = np.zeros(len(LABELS))
    groups = [[PRESENT_INDEX], list(LOCATION_INDICES)] if pooled_locations else [[j] for j in range(len(LABELS))]
    for group in groups:
        y = labels[:, group]
        if y.min() == y.max():
            bias[group] = [_constant_bias(labels[:, j]) for j in group]
            continue
        w, b = _logistic(standard[:, group, :].reshape(-1, standard.shape[-1]), y.reshape(-1), l2=l2, free=free)
        for j in group:
            weights[j] = w
            bias[j] = b if len(group) == 1 else (
                _intercept(standard[:, j, :] @ w, labels[:, j]) if labels[:, j].min() != labels[:, j].max()
                else _constant_bias(labels[:, j]))
    return LearnedAggregator(mean=mean, scale=scale, weights=weights, bias=bias)


def cross_validated(series: Sequence[SeriesWindows], *, l2: float = DEFAULT_L2, anchor: str | None = "top3_mean",
                    pooled_locations: bool = True) -> np.ndarray:
    """(n, 14) learned answers for `series`, each from an aggregator fitted on the other folds' series only."""
    if not series:
        return np.zeros((0, len(LABELS)))
    features, labels = _features_and_labels(series)  # once: each fold's fit takes its rows
    fold_of = np.array([s.fold for s in series])
    if len(set(fold_of)) < 2:  # one fold only: nothing to fit on without its own series
        raise ValueError("cross-validation needs out-of-fold series from at least two folds")
    out = np.zeros((len(series), len(LABELS)))
    for fold in np.unique(fold_of):
        held = fold_of == fold
        aggregator = _fit(features[~held], labels[~held], l2=l2, anchor=anchor, pooled_locations=pooled_locations)
        out[held] = aggregator.from_features(features[held])
    return out


def stacking_report(series: Sequence[SeriesWindows], *, top_k: int, l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Fixed reductions and the learned aggregator (anchored on the better fixed one, fitted on the other folds)
    on the same out-of-fold series, scored fold by fold (`evaluation.metric.score_fold_wise`).

    Pooled over folds, each fold's answers would also be judged on how their scale lines up with the other folds',
    and the learned ones come from a different fit in each fold: measured on the default phantom, a learned
    aggregator equal to the top-k mean up to a rescaling (infinite L2) lost 0.009-0.015 to it pooled, 0 fold-wise.

    Returns:
        {"max": scores, "topk_mean": scores, "learned": scores, "best_fixed": name, "anchor": feature name,
        "learned_gain": score difference (None when a score is undefined), "series": n}; scores as
        `evaluation.metric.score_fold_wise`.
    """
    truth = np.stack([s.labels for s in series])
    folds = [s.fold for s in series]
    fixed_answers = {
        "max": np.stack([aggregate_windows(s.windows, AggregationConfig(method="max")) for s in series]),
        "topk_mean": np.stack([aggregate_windows(s.windows, AggregationConfig(method="topk_mean", top_k=top_k))
                               for s in series]),
    }
    report: dict[str, Any] = {name: score_fold_wise(truth, probs, folds) for name, probs in fixed_answers.items()}
    fixed = {name: report[name]["score"] for name in fixed_answers if report[name]["score"] is not None}
    report["best_fixed"] = max(fixed, key=fixed.get) if fixed else None
    report["anchor"] = anchor_feature(report["best_fixed"] or "topk_mean", top_k)
    report["learned"] = score_fold_wise(truth, cross_validated(series, l2=l2, anchor=report["anchor"]), folds)
    learned = report["learned"]["score"]
    report["learned_gain"] = None if learned is None or not fixed else learned - max(fixed.values())
    report["series"] = len(series)
    return report
