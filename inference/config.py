"""Typed, frozen configuration shared by the trainer and the kernel (written into the weights manifest)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["PreprocessConfig", "WindowConfig", "AggregationConfig", "BudgetConfig", "VolumeConfig", "config_hash",
           "setting", "AGGREGATION_METHODS", "AggregationMethod"]

AggregationMethod = Literal["max", "topk_mean", "learned"]  # window probabilities -> series answer
AGGREGATION_METHODS: tuple[AggregationMethod, ...] = ("max", "topk_mean", "learned")


def setting(default: Any, help: str) -> Any:
    """A config field with its default and its help line (the one place a setting is described: `--help`,
    the docs and the trainer's presets all read it from the field's metadata)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PreprocessConfig:
    """How a loaded volume becomes the uint8 (slices, size, size) stack both trainer and kernel see."""

    image_size: int = setting(224, "slices are resized to image_size x image_size (the model input size)")
    ct_window: tuple[float, float] = setting((0.0, 500.0), "Hounsfield units mapped to 0..255")
    mr_percentiles: tuple[float, float] = setting((1.0, 99.0), "MR intensities between these percentiles map to 0..255")
    percentile_stride: int = setting(4, "every n-th voxel along each axis estimates the MR percentiles")
    keep_aspect: bool = setting(True, "pad each slice to a physical square (pixel spacing) before resizing")
    slice_spacing_mm: float | None = setting(None, "resample the slice axis to this spacing (null = native slices)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mr_percentiles", tuple(float(v) for v in self.mr_percentiles))
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")
        if not self.ct_window[0] < self.ct_window[1]:
            raise ConfigError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        low, high = self.mr_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {self.mr_percentiles}")
        if self.percentile_stride < 1:
            raise ConfigError(f"percentile_stride must be >= 1, got {self.percentile_stride}")
        if self.slice_spacing_mm is not None and self.slice_spacing_mm <= 0:
            raise ConfigError(f"slice_spacing_mm must be positive or None, got {self.slice_spacing_mm}")


@dataclass(frozen=True)
class WindowConfig:
    """Which slices make one 2.5D window and how windows are scaled into model input."""

    offsets: tuple[int, ...] = setting((-2, -1, 0, 1, 2), "slice offsets of the window channels around the centre")
    stride: int = setting(1, "the kernel visits every stride-th centre slice")
    scale: float = setting(1.0 / 255.0, "model input = uint8 pixel * scale")
    batch_size: int = setting(16, "windows per onnxruntime run in the kernel")
    gpu_batch_size: int | None = setting(None, "windows per run when the folds run on CUDA (null: batch_size)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", tuple(int(v) for v in self.offsets))
        if not self.offsets or 0 not in self.offsets:
            raise ConfigError(f"offsets must contain 0 (the centre slice), got {self.offsets}")
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.gpu_batch_size is not None and self.gpu_batch_size < 1:
            raise ConfigError(f"gpu_batch_size must be >= 1 or null, got {self.gpu_batch_size}")

    @property
    def channels(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True)
class AggregationConfig:
    """How fold outputs and window probabilities become the 14 series probabilities."""

    fold_average: Literal["prob", "logit"] = setting("prob", "prob (mean of fold probabilities) or logit (sigmoid of "
                                                     "the mean logit)")
    method: AggregationMethod = setting(
        "max", "max, topk_mean, or learned (the manifest's aggregator, fitted by the trainer on out-of-fold "
               "windows): window -> series reduction per label")
    top_k: int = setting(3, "windows averaged by topk_mean")
    tta_flip: bool = setting(False, "also run the left-right mirrored window and swap left/right labels back")

    def __post_init__(self) -> None:
        if self.fold_average not in ("prob", "logit"):
            raise ConfigError(f"fold_average must be 'prob' or 'logit', got {self.fold_average!r}")
        if self.method not in AGGREGATION_METHODS:
            raise ConfigError(f"method must be one of {', '.join(AGGREGATION_METHODS)}, got {self.method!r}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True)
class VolumeConfig:
    """The volume model's input: the prepared stack resampled to `depth` slices, fed as `depth` channels."""

    depth: int = setting(32, "slices the series is resampled to (linear, first to last): the model's input channels")
    scale: float = setting(1.0 / 255.0, "model input = uint8 pixel * scale")

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ConfigError(f"volume depth must be >= 2, got {self.depth}")


@dataclass(frozen=True)
class BudgetConfig:
    """The whole run's limits, and the steps (in order) by which the kernel trades accuracy for time."""

    run_hours: float = setting(12.0, "the competition's limit for the whole hidden test set")
    expected_series: int = setting(2500, "about how many series the hidden test set holds")
    margin: float = setting(0.85, "degrade one step when the projected run passes this share of the limit")
    recover: float = setting(0.8, "undo a step when the level below projects under margin x recover x limit")
    window: int = setting(20, "recent series whose median time the projection uses")
    min_series: int = setting(5, "series finished at the current level before the budget may change it (one slow "
                                 "series, such as the first with its warm-up or a decoder hang, is no evidence)")
    degrade_steps: tuple[str, ...] = setting(("tta_off", "stride_2", "half_folds"),
                                             "the speed-ups, in the order they are taken (tta_off, stride_2, "
                                             "half_folds); empty: never degrade")

    def __post_init__(self) -> None:
        object.__setattr__(self, "degrade_steps", tuple(str(s) for s in self.degrade_steps))
        if self.run_hours <= 0 or self.expected_series < 1 or self.window < 1:
            raise ConfigError(f"run_hours, expected_series and window must be positive, got {self.run_hours}, "
                              f"{self.expected_series}, {self.window}")
        if not 0.0 < self.margin <= 1.0 or not 0.0 < self.recover <= 1.0:
            raise ConfigError(f"margin and recover must be in (0, 1], got {self.margin}, {self.recover}")
        if not 1 <= self.min_series <= self.window:
            raise ConfigError(f"min_series must be in [1, window={self.window}], got {self.min_series}")
        if len(set(self.degrade_steps)) != len(self.degrade_steps):
            raise ConfigError(f"degrade_steps repeats a step: {self.degrade_steps}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build config `cls` from a dict, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}; known: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def config_hash(cfg: Any, length: int = 12) -> str:
    """A short stable hash of a config's values (used in cache keys)."""
    text = json.dumps(to_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


__all__ += ["to_dict", "from_dict"]
