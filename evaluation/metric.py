"""The competition score: 0.5 x AUC(Aneurysm Present) + 0.5 x mean AUC of the 13 locations (numpy only).

The one scorer of the kit: the trainer's validation and out-of-fold reports, the demo and the gateway's report.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.errors import KitError
from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX, PRESENT_LABEL

__all__ = ["MetricError", "roc_auc", "ScoreReport", "competition_score", "score_predictions", "score_by_modality",
           "score_fold_wise"]


class MetricError(KitError, ValueError):
    """The labels cannot be scored (a column with one class makes its AUC undefined)."""


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), as sklearn computes it.

    Raises:
        MetricError: when y_true holds only one class, where the AUC is undefined (the official metric fails too).
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise MetricError(f"y_true has {y_true.size} values but y_score has {y_score.size}")
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(
            f"AUC is undefined: only one class present ({n_pos} positives, {n_neg} negatives); "
            "score on a split where every label has both classes"
        )
    order = np.argsort(y_score, kind="mergesort")
    sorted_scores = y_score[order]
    ranks = np.empty(y_score.size, dtype=np.float64)
    # average ranks over runs of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [y_score.size]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    rank_sum = ranks[y_true].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class ScoreReport:
    """The competition score and its parts (strict: every label has both classes)."""

    score: float
    present_auc: float
    mean_location_auc: float
    per_label: dict[str, float]


def _check_shapes(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.ndim != 2 or y_true.shape[1] != len(LABELS) or y_pred.shape != y_true.shape:
        raise MetricError(f"expected two (series, {len(LABELS)}) arrays, got {y_true.shape} and {y_pred.shape}")


def competition_score(y_true: np.ndarray, y_pred: np.ndarray) -> ScoreReport:
    """Score (series, 14) labels against (series, 14) probabilities, columns in `LABELS` order.

    The official metric weights Aneurysm Present 13 and each location 1, normalised by 26:
    0.5 x AUC(Present) + 0.5 x mean of the 13 location AUCs.

    Raises:
        MetricError: a label has one class (the official metric fails too), or the shapes are wrong.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    _check_shapes(y_true, y_pred)
    per_label = {}
    for i, name in enumerate(LABELS):
        try:
            per_label[name] = roc_auc(y_true[:, i], y_pred[:, i])
        except MetricError as exc:
            raise MetricError(f"{name}: {exc}") from None
    present = per_label[PRESENT_LABEL]
    locations = float(np.mean([per_label[name] for name in LOCATION_LABELS]))
    return ScoreReport(
        score=0.5 * present + 0.5 * locations,
        present_auc=present,
        mean_location_auc=locations,
        per_label=per_label,
    )


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """The lenient score of small splits, JSON-ready: AUC per label (None where a label has one class).

    `mean_location_auc` averages the defined locations. `score` is 0.5 x Present AUC + 0.5 x that mean, and None
    when Present AUC or every location is undefined; it equals `competition_score(...).score` when `complete`
    (every label has both classes: small validation folds rarely hold all 13 locations).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    _check_shapes(y_true, y_pred)
    per_label: dict[str, float | None] = {}
    for i, name in enumerate(LABELS):
        try:
            per_label[name] = roc_auc(y_true[:, i], y_pred[:, i])
        except MetricError:
            per_label[name] = None
    locations = [per_label[n] for n in LOCATION_LABELS if per_label[n] is not None]
    present = per_label[PRESENT_LABEL]
    mean_location = float(np.mean(locations)) if locations else None
    score = None if present is None or mean_location is None else 0.5 * present + 0.5 * mean_location
    return {
        "score": score,
        "present_auc": present,
        "mean_location_auc": mean_location,
        "defined_locations": len(locations),
        "complete": present is not None and len(locations) == len(LOCATION_LABELS),
        "series": int(y_true.shape[0]),
        "positives": int(y_true[:, PRESENT_INDEX].sum()),
        "per_label": per_label,
    }


def score_by_modality(y_true: np.ndarray, y_pred: np.ndarray, modality: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`score_predictions` on each modality's series."""
    modality = np.asarray(modality).astype(str)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {m: score_predictions(y_true[modality == m], y_pred[modality == m]) for m in sorted(set(modality))}


def score_fold_wise(y_true: np.ndarray, y_pred: np.ndarray, folds: Sequence[int]) -> dict[str, Any]:
    """`score_predictions` on each fold's series, and the mean of each figure over the folds where it is defined.

    Out-of-fold answers come from one model per fold, each with its own probability scale. Pooling them into one
    AUC also scores how the folds' scales line up, which the kernel never meets: it averages every fold's model
    for every series. Comparing two ways of answering (fixed reductions, a learned aggregator, a blend) fold by fold
    compares only how each ranks the series one model saw.

    Returns:
        {"score", "present_auc", "mean_location_auc": fold means (None where no fold defines it), "folds": n,
        "series": n, "per_fold": {fold: score_predictions(...)}}.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    folds = np.asarray(folds)
    per_fold = {int(f): score_predictions(y_true[folds == f], y_pred[folds == f]) for f in np.unique(folds)}

    def mean(key: str) -> float | None:
        values = [r[key] for r in per_fold.values() if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {"score": mean("score"), "present_auc": mean("present_auc"), "mean_location_auc": mean("mean_location_auc"),
            "folds": len(per_fold), "series": int(y_true.shape[0]), "per_fold": per_fold}
