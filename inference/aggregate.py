"""Window probabilities (N, 14) -> the series' 14 probabilities (max or top-k mean, Present >= every location)."""
from __future__ import annotations

import numpy as np

from .config import AggregationConfig
from .errors import InferenceError
from .labels import LABELS, PRESENT_INDEX

__all__ = ["aggregate_windows", "enforce_present_rule"]

_LOCATION_INDEX = [i for i in range(len(LABELS)) if i != PRESENT_INDEX]


def enforce_present_rule(probs: np.ndarray) -> np.ndarray:
    """Rule: `Aneurysm Present` = max(Present, max over the 13 locations).

    An aneurysm at any location means an aneurysm is present, so the series-level probability is never below the
    largest location probability. Returns a new (14,) array.
    """
    out = np.array(probs, dtype=np.float64)
    out[PRESENT_INDEX] = max(out[PRESENT_INDEX], out[_LOCATION_INDEX].max())
    return out


def aggregate_windows(window_probs: np.ndarray, cfg: AggregationConfig) -> np.ndarray:
    """Reduce per-window probabilities to series probabilities, label by label.

    Args:
        window_probs: (N, 14) probabilities, N >= 1, columns in `LABELS` order.
        cfg: `method` "max" (largest window) or "topk_mean" (mean of the `top_k` largest windows, fewer when
            N < top_k).
    Returns:
        (14,) float64, finite, in [0, 1], with the Present rule of `enforce_present_rule` applied.
    Raises:
        InferenceError: wrong shape, no window, or non-finite values.
    """
    probs = np.asarray(window_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise InferenceError(f"window probabilities must be (N, {len(LABELS)}), got shape {probs.shape}")
    if probs.shape[0] == 0:
        raise InferenceError("no window to aggregate")
    if not np.isfinite(probs).all():
        raise InferenceError("window probabilities contain non-finite values")
    if cfg.method == "max":
        series = probs.max(axis=0)
    else:
        k = min(cfg.top_k, probs.shape[0])
        series = -np.partition(-probs, k - 1, axis=0)[:k].mean(axis=0)
    return np.clip(enforce_present_rule(series), 0.0, 1.0)
