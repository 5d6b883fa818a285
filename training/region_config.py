"""The region stage's trainer settings (issue 21), apart from training/region.py so that reading a config never
imports torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.config import setting as _f
from inference.errors import ConfigError
from inference.region import RegionSpec

__all__ = ["RegionTrainConfig"]


@dataclass(frozen=True)
class RegionTrainConfig:
    """The region stage (issue 21): the locator, its box and the 2.5D model trained inside the box."""

    enabled: bool = _f(False, "find the circle of Willis first and train/score the 2.5D model inside its box")
    input_size: int = _f(64, "side of each of the locator's six projections")
    max_slices: int = _f(64, "the coarse copy keeps every k-th slice, at most this many")
    max_side: int = _f(128, "the coarse copy keeps every s-th row/column, at most this many a side")
    steps: int = _f(400, "locator optimisation steps per model (K folds + the final model)")
    batch_size: int = _f(32, "locator batch size")
    lr: float = _f(0.003, "locator learning rate (AdamW, cosine)")
    augment_copies: int = _f(6, "random sub-crops (+ left/right flips) of each positive series per model")
    recall: float = _f(0.995, "share of out-of-fold points the box must hold")
    margin_mm: float = _f(4.0, "added to the box's half-size along every axis")
    min_half_mm: float = _f(15.0, "the box's half-size is at least this along every axis")
    workers: int = _f(2, "worker processes reading the coarse copies")

    def __post_init__(self) -> None:
        if not 0.5 <= self.recall <= 1.0:
            raise ConfigError(f"region.recall must be in [0.5, 1], got {self.recall}")
        for name in ("input_size", "max_slices", "max_side", "steps", "batch_size", "augment_copies"):
            if getattr(self, name) < 1:
                raise ConfigError(f"region.{name} must be >= 1, got {getattr(self, name)}")

    def spec(self, **values: Any) -> RegionSpec:
        """The kernel's RegionSpec with this config's coarse sizes."""
        return RegionSpec(input_size=self.input_size, max_slices=self.max_slices, max_side=self.max_side, **values)
