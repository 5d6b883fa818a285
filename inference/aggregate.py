"""Window probabilities (N, 14) -> the series' 14 probabilities: a fixed reduction, or the learned aggregator."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import AggregationConfig
from .errors import ConfigError, InferenceError, ManifestError
from .labels import LABELS, LOCATION_INDICES, PRESENT_INDEX

__all__ = ["aggregate_windows", "enforce_present_rule", "series_features", "LearnedAggregator", "make_aggregator",
           "FEATURE_NAMES", "FEATURE_VERSION"]

log = logging.getLogger(__name__)

_LOCATION_INDEX = list(LOCATION_INDICES)


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
    probs = _checked_windows(window_probs)
    if cfg.method == "learned":
        raise ConfigError("aggregate_windows reduces with a fixed method; the learned one comes from make_aggregator")
    if cfg.method == "max":
        series = probs.max(axis=0)
    else:
        k = min(cfg.top_k, probs.shape[0])
        series = -np.partition(-probs, k - 1, axis=0)[:k].mean(axis=0)
    return np.clip(enforce_present_rule(series), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ learned aggregation

FEATURE_VERSION = 1  # bump when a feature's definition changes: a manifest fitted on other features is refused
# per label, from that label's window probabilities (probability statistics in logit space)
_OWN = ("max", "top3_mean", "top5_mean", "top10_mean", "mean", "p50", "p90", "log_above_0.5", "log_above_0.9",
        "argmax_position", "top5_position_spread")
# the same for every label: the strongest location evidence and Present's own
_CONTEXT = ("location_max", "location_top3_mean", "present_max", "present_top3_mean")
_META = ("log_windows", "is_ct")
FEATURE_NAMES: tuple[str, ...] = _OWN + _CONTEXT + _META
_EPS = 1e-6


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _top_mean(sorted_desc: np.ndarray, k: int) -> np.ndarray:
    return sorted_desc[:min(k, sorted_desc.shape[0])].mean(axis=0)


def series_features(window_probs: np.ndarray, modality: str) -> np.ndarray:
    """(14, F) features of one series, one row per label, columns `FEATURE_NAMES` (version `FEATURE_VERSION`).

    Args:
        window_probs: (N, 14) window probabilities in slice order (N >= 1).
        modality: "CT" or "MR".
    Raises:
        InferenceError: wrong shape, no window, or non-finite values.
    """
    probs = _checked_windows(window_probs)
    n = probs.shape[0]
    ordered = -np.sort(-probs, axis=0)  # (N, 14), each column descending
    position = np.argsort(-probs, axis=0, kind="stable")[:min(5, n)] / max(n - 1, 1)  # top windows' places
    own = np.stack([
        _logit(ordered[0]), _logit(_top_mean(ordered, 3)), _logit(_top_mean(ordered, 5)),
        _logit(_top_mean(ordered, 10)), _logit(probs.mean(axis=0)), _logit(np.median(probs, axis=0)),
        _logit(np.quantile(probs, 0.9, axis=0)), np.log1p((probs > 0.5).sum(axis=0)),
        np.log1p((probs > 0.9).sum(axis=0)), position[0], position.std(axis=0),
    ], axis=1)  # (14, len(_OWN))
    location = probs[:, _LOCATION_INDEX].max(axis=1)  # the strongest location in each window
    location_sorted = -np.sort(-location)
    present_sorted = ordered[:, PRESENT_INDEX]
    context = np.array([_logit(location_sorted[0]), _logit(_top_mean(location_sorted, 3)),
                        _logit(present_sorted[0]), _logit(_top_mean(present_sorted, 3))])
    meta = np.array([np.log(n), 1.0 if modality.upper() == "CT" else 0.0])
    return np.concatenate([own, np.tile(context, (len(LABELS), 1)), np.tile(meta, (len(LABELS), 1))], axis=1)


def _checked_windows(window_probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(window_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise InferenceError(f"window probabilities must be (N, {len(LABELS)}), got shape {probs.shape}")
    if probs.shape[0] == 0:
        raise InferenceError("no window to aggregate")
    if not np.isfinite(probs).all():
        raise InferenceError("window probabilities contain non-finite values")
    return probs


@dataclass(frozen=True)
class LearnedAggregator:
    """Per-label logistic regressions on `series_features`, fitted by the trainer on out-of-fold windows.

    Stored in the manifest as plain numbers (`to_dict`); run in numpy: probability of label j =
    sigmoid(((features[j] - mean) / scale) . weights[j] + bias[j]).
    """

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (14, F)
    bias: np.ndarray  # (14,)
    feature_names: tuple[str, ...] = FEATURE_NAMES
    version: int = FEATURE_VERSION

    def __call__(self, window_probs: np.ndarray, modality: str) -> np.ndarray:
        return self.from_features(series_features(window_probs, modality))

    def from_features(self, features: np.ndarray) -> np.ndarray:
        """(..., 14) probabilities from (..., 14, F) `series_features` (one series or a stack of them)."""
        logits = np.einsum("...lf,lf->...l", (features - self.mean) / self.scale, self.weights) + self.bias
        return np.clip(np.exp(-np.logaddexp(0.0, -logits)), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logistic", "version": self.version, "features": list(self.feature_names),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "weights": self.weights.tolist(),
                "bias": self.bias.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedAggregator:
        """Read and check the manifest's entry.

        Raises:
            ManifestError: another kind or feature version, other features, wrong shapes or non-finite numbers.
        """
        if not isinstance(data, Mapping) or data.get("kind") != "logistic":
            raise ManifestError(f"aggregator: expected kind 'logistic', got {dict(data) if data else data!r}")
        if data.get("version") != FEATURE_VERSION or tuple(data.get("features", ())) != FEATURE_NAMES:
            raise ManifestError(f"aggregator: fitted on feature version {data.get('version')} "
                                f"{data.get('features')}; this kernel computes version {FEATURE_VERSION} "
                                f"{list(FEATURE_NAMES)}: retrain the aggregator or use a fixed method")
        try:
            out = cls(mean=np.asarray(data["mean"], np.float64), scale=np.asarray(data["scale"], np.float64),
                      weights=np.asarray(data["weights"], np.float64), bias=np.asarray(data["bias"], np.float64))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"aggregator: malformed numbers ({exc})") from exc
        f = len(FEATURE_NAMES)
        shapes = (out.mean.shape, out.scale.shape, out.weights.shape, out.bias.shape)
        if shapes != ((f,), (f,), (len(LABELS), f), (len(LABELS),)):
            raise ManifestError(f"aggregator: shapes {shapes} do not fit {f} features and {len(LABELS)} labels")
        arrays = (out.mean, out.scale, out.weights, out.bias)
        if not all(np.isfinite(a).all() for a in arrays) or (out.scale <= 0).any():
            raise ManifestError("aggregator: non-finite numbers or a non-positive scale")
        return out


def make_aggregator(cfg: AggregationConfig, learned: Mapping[str, Any] | None
                    ) -> Callable[[np.ndarray, str], np.ndarray]:
    """(window_probs, modality) -> 14 probabilities, as the manifest says.

    `method: learned` uses the manifest's fitted aggregator; when it is missing or unusable the kernel falls back
    to the top-k mean (logged), so a bad entry costs accuracy, never the run.
    """
    if cfg.method == "learned":
        try:
            if learned is None:
                raise ManifestError("aggregation.method is 'learned' but the manifest holds no aggregator")
            return LearnedAggregator.from_dict(learned)
        except ManifestError as exc:
            log.error("!!! %s; falling back to the top-%d mean !!!", exc, cfg.top_k)
            cfg = AggregationConfig(fold_average=cfg.fold_average, method="topk_mean", top_k=cfg.top_k,
                                    tta_flip=cfg.tta_flip)
    fixed = cfg
    return lambda window_probs, modality: aggregate_windows(window_probs, fixed)
