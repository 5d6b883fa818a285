"""Scores of series predictions: the competition score where defined, per label, per modality."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX, PRESENT_LABEL
from inference.metric import MetricError, roc_auc

__all__ = ["score_predictions", "score_by_modality"]


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """AUC per label (None where a label has one class), the mean location AUC over defined labels, and the score.

    `score` equals `inference.metric.competition_score(...).score` when every label has both classes; otherwise it
    is 0.5 x Present AUC + 0.5 x mean of the defined location AUCs and `complete` is False (small validation folds
    rarely hold all 13 locations).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    per_label: dict[str, float | None] = {}
    for i, name in enumerate(LABELS):
        try:
            per_label[name] = roc_auc(y_true[:, i], y_pred[:, i])
        except MetricError:
            per_label[name] = None
    locations = [per_label[n] for n in LOCATION_LABELS if per_label[n] is not None]
    present = per_label[PRESENT_LABEL]
    mean_location = float(np.mean(locations)) if locations else None
    parts = [v for v in (present, mean_location) if v is not None]
    score = float(np.mean(parts)) if parts else None
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
    return {m: score_predictions(y_true[modality == m], y_pred[modality == m]) for m in sorted(set(modality))}
