"""The trainer's typed configuration: YAML presets, dotted command-line overrides, validation."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.config import (
    AggregationConfig,
    PreprocessConfig,
    VolumeConfig,
    WindowConfig,
    from_dict,
    to_dict,
)
from inference.config import setting as _f
from inference.errors import ConfigError
from inference.kinds import DEFAULT_KIND, model_kind
from inference.region import RegionSpec

__all__ = [
    "ModelConfig",
    "SamplingConfig",
    "AugmentConfig",
    "TrainLoopConfig",
    "CacheConfig",
    "ExportConfig",
    "RegionTrainConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "describe_keys",
]


def _require_fractions(section: Any, prefix: str, names: tuple[str, ...]) -> None:
    """ConfigError unless each of these fields (shares, probabilities) is in [0, 1]."""
    for name in names:
        value = getattr(section, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{prefix}.{name} must be in [0, 1], got {value}")


def _require_counts(section: Any, prefix: str, names: tuple[str, ...]) -> None:
    """ConfigError unless each of these fields (counts, sizes) is at least 1."""
    for name in names:
        value = getattr(section, name)
        if value < 1:
            raise ConfigError(f"{prefix}.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The dual-stream network."""

    kind: str = _f(DEFAULT_KIND, "window25d (2.5D windows, dual stream) or volume32 (the whole series resampled to "
                                 "volume.depth slices as the channels of one image, one timm backbone): "
                                 "inference.kinds")
    arch: str = _f("tf_efficientnet_b0", "any timm model name, used for both streams")
    pretrained: bool = _f(False, "start from timm's pretrained weights (checked before the first epoch; CLI: "
                               "--pretrained / --no-pretrained)")
    coord_dim: int = _f(64, "width of the coordinate MLP (2 -> coord_dim)")
    drop_rate: float = _f(0.2, "dropout before the classifier")
    heatmap_weight: float = _f(0.0, "weight of the localizer-heatmap loss, a training-only head on the full stream "
                                    "(0 = off; the exported graph is the same either way): training.heatmap")
    heatmap_stride: int = _f(8, "the heatmap's cell in input pixels: the full stream's feature map of this stride")
    heatmap_sigma: float = _f(6.0, "std of each localizer's gaussian in the heatmap target, input pixels")

    def __post_init__(self) -> None:
        model_kind(self.kind)  # ConfigError naming the unknown kind
        if self.heatmap_weight < 0:
            raise ConfigError(f"model.heatmap_weight must be >= 0, got {self.heatmap_weight}")
        if self.heatmap_sigma <= 0:
            raise ConfigError(f"model.heatmap_sigma must be positive, got {self.heatmap_sigma}")
        _require_counts(self, "model", ("heatmap_stride",))
        if self.coord_dim < 1:
            raise ConfigError(f"model.coord_dim must be >= 1, got {self.coord_dim}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"model.drop_rate must be in [0, 1), got {self.drop_rate}")


@dataclass(frozen=True)
class SamplingConfig:
    """Which windows a training epoch sees, their labels and the stream-2 regime (the inference-regime guard)."""

    label_radius: int = _f(2, "a window centred within this many slices of a localizer is positive for its location")
    positive_jitter: int = _f(2, "positive windows are centred up to this many slices from the localizer slice")
    negatives_per_positive: float = _f(2.0, "negative windows drawn per positive window")
    negative_min_distance: int = _f(5, "negatives from positive series lie at least this many slices from a localizer")
    positive_series_negative_share: float = _f(0.3, "share of negatives taken from positive series (far slices)")
    same_level_share: float = _f(0.8, "share of negatives from negative series, at the slice levels of positives")
    guard: bool = _f(True, "inference-regime guard: positives often get identical streams + zero coordinates, "
                     "negatives random ROI crops + their coordinates; false = the flawed design (measure only)")
    positive_inference_share: float = _f(0.6, "with the guard: share of positives in the inference regime")
    negative_roi_share: float = _f(0.4, "with the guard: share of negatives given a random ROI crop + coordinates")
    roi_fraction: float = _f(0.15, "ROI box side as a fraction of the image side")
    hard_negative_share: float = _f(0.0, "share of negatives drawn from mined hard negatives (windows the current "
                                    "model scores highest in negative regions; see train.mine_every)")

    def __post_init__(self) -> None:
        _require_fractions(self, "sampling", ("positive_series_negative_share", "same_level_share",
                                              "positive_inference_share", "negative_roi_share", "hard_negative_share"))
        if self.guard and self.positive_inference_share < 0.5:
            raise ConfigError("sampling.positive_inference_share must be >= 0.5 with the guard on "
                              f"(got {self.positive_inference_share}); set sampling.guard=false to measure the flaw")
        if not 0.0 < self.roi_fraction <= 1.0:
            raise ConfigError(f"sampling.roi_fraction must be in (0, 1], got {self.roi_fraction}")
        if self.label_radius < 0 or self.positive_jitter < 0:
            raise ConfigError("sampling.label_radius and sampling.positive_jitter must be >= 0")
        if self.positive_jitter > self.label_radius:
            raise ConfigError(f"sampling.positive_jitter ({self.positive_jitter}) must not exceed "
                              f"sampling.label_radius ({self.label_radius}): a jittered positive must stay positive")
        if self.negative_min_distance <= self.label_radius:
            raise ConfigError(f"sampling.negative_min_distance ({self.negative_min_distance}) must exceed "
                              f"sampling.label_radius ({self.label_radius})")
        if self.negatives_per_positive < 0:
            raise ConfigError(f"sampling.negatives_per_positive must be >= 0, got {self.negatives_per_positive}")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations that keep anatomy (applied identically to every channel of a window)."""

    flip_lr: float = _f(0.5, "probability of a left-right flip (labels are swapped left <-> right with it)")
    rotate_deg: float = _f(10.0, "max in-plane rotation, degrees")
    scale: float = _f(0.1, "max relative zoom in or out")
    translate: float = _f(0.05, "max shift as a fraction of the image side")
    brightness: float = _f(0.1, "max additive intensity shift (input units, 1.0 = white)")
    contrast: float = _f(0.15, "max relative contrast change")
    noise_std: float = _f(0.02, "max std of additive gaussian noise")
    blur_prob: float = _f(0.15, "probability of a light gaussian blur")

    def __post_init__(self) -> None:
        _require_fractions(self, "augment", ("flip_lr", "blur_prob"))


@dataclass(frozen=True)
class TrainLoopConfig:
    """Folds, optimisation and checkpoints."""

    num_folds: int = _f(5, "K of the stratified K-fold split (Aneurysm Present x Modality)")
    folds: tuple[int, ...] = _f((), "folds to train (empty = all); CLI: --folds 0,2")
    epochs: int = _f(12, "epochs per fold")
    windows_per_epoch: int = _f(20000, "training windows sampled afresh each epoch")
    batch_size: int = _f(32, "windows per optimisation step (per process under torchrun)")
    optimizer: str = _f("adamw", "adamw or adam")
    lr: float = _f(1e-3, "peak learning rate (cosine decay to lr * min_lr_ratio)")
    min_lr_ratio: float = _f(0.01, "final learning rate as a fraction of lr")
    warmup_steps: int = _f(100, "linear warm-up steps")
    weight_decay: float = _f(1e-4, "AdamW weight decay (Adam: L2)")
    grad_clip: float = _f(1.0, "max gradient norm (0 = off)")
    present_weight: float = _f(1.0, "BCE weight of Aneurysm Present relative to each location (the metric: 13)")
    amp: bool = _f(True, "mixed precision on CUDA (ignored on CPU)")
    seed: int = _f(0, "seed for folds, sampling, augmentation and init")
    num_workers: int = _f(2, "DataLoader worker processes (0 = in the main process)")
    val_stride: int = _f(1, "validation windows every n-th slice (1 = what the kernel does with stride 1)")
    val_every: int = _f(1, "validate every n epochs (and always after the last)")
    resume: bool = _f(True, "continue a fold from its last checkpoint; skip finished folds")
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    mine_every: int = _f(1, "with sampling.hard_negative_share > 0: re-mine hard negatives every n epochs")
    mine_max_series: int = _f(400, "training series scored per mining pass (a random subset when more)")
    mine_per_series: int = _f(3, "highest-scoring negative windows kept per mined series")

    def __post_init__(self) -> None:
        object.__setattr__(self, "folds", tuple(int(v) for v in self.folds or ()))
        if self.num_folds < 2:
            raise ConfigError(f"train.num_folds must be >= 2, got {self.num_folds}")
        bad = [f for f in self.folds if not 0 <= f < self.num_folds]
        if bad:
            raise ConfigError(f"train.folds {bad} outside 0..{self.num_folds - 1}")
        if self.present_weight <= 0:
            raise ConfigError(f"train.present_weight must be positive, got {self.present_weight}")
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"train.optimizer must be adamw or adam, got {self.optimizer!r}")
        _require_counts(self, "train", ("epochs", "windows_per_epoch", "batch_size", "val_stride", "val_every",
                                        "mine_every", "mine_max_series", "mine_per_series"))


@dataclass(frozen=True)
class CacheConfig:
    """The preprocessed-volume cache."""

    workers: int = _f(2, "worker processes that load and preprocess series")


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export of each fold."""

    opset: int = _f(17, "ONNX opset (>= 17)")
    fp16: bool = _f(False, "export float16 models (GPU kernels); parity then checked at export.fp16_tol")
    parity_tol: float = _f(1e-4, "max |torch - onnxruntime| logit difference on real validation windows")
    fp16_tol: float = _f(5e-2, "parity tolerance of the float16 export")
    parity_windows: int = _f(32, "validation windows used in the parity check")
    oof: bool = _f(True, "score each exported fold on its held-out series through inference.predict.Predictor")
    stack: bool = _f(True, "fit the learned aggregator on the out-of-fold windows (needs oof and 2+ folds); the "
                           "kernel uses it when it beats the best fixed reduction in fold-wise cross-validation")

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ConfigError(f"export.opset must be >= 17, got {self.opset}")


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
        _require_counts(self, "region", ("input_size", "max_slices", "max_side", "steps", "batch_size",
                                         "augment_copies"))

    def spec(self, **values: Any) -> RegionSpec:
        """The kernel's RegionSpec with this config's coarse sizes."""
        return RegionSpec(input_size=self.input_size, max_slices=self.max_slices, max_side=self.max_side, **values)


_SECTIONS: dict[str, type] = {
    "preprocess": PreprocessConfig,
    "windows": WindowConfig,
    "aggregation": AggregationConfig,
    "volume": VolumeConfig,
    "model": ModelConfig,
    "sampling": SamplingConfig,
    "augment": AugmentConfig,
    "train": TrainLoopConfig,
    "cache": CacheConfig,
    "export": ExportConfig,
    "region": RegionTrainConfig,  # issue 21: the region-of-interest stage
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs; `to_dict()` is what lands in the manifest's provenance."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    region: RegionTrainConfig = field(default_factory=RegionTrainConfig)  # issue 21

    def __post_init__(self) -> None:
        if self.model.heatmap_weight > 0 and not model_kind(self.model.kind).windowed:
            raise ConfigError(f"model.heatmap_weight needs a windowed kind (the heatmap is the 2.5D window's); "
                              f"model.kind is {self.model.kind!r}: add --set model.heatmap_weight=0")

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the window's slices, or the volume's depth for a volume kind."""
        return model_kind(self.model.kind).channels(self.windows, self.volume)

    def to_dict(self) -> dict[str, Any]:
        return {name: to_dict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = data or {}
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; known: {sorted(_SECTIONS)}")
        parts = {}
        for name, section_cls in _SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
            parts[name] = from_dict(section_cls, values)
        return cls(**parts)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: turn numeric-looking strings into numbers."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and not any(ch in value for ch in ".eE") else number
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 3, 1e-3, true, [-2,0,2]) to a config dict."""
    out = {k: dict(v or {}) for k, v in (data or {}).items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=3)")
        if section not in _SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; known: {sorted(_SECTIONS)}")
        if name not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            raise ConfigError(f"override {item!r}: {section} has no key {name!r}; see --help")
        out.setdefault(section, {})[name] = _coerce(yaml.safe_load(raw))
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset (None = built-in defaults), apply overrides, validate.

    Raises:
        ConfigError: unreadable file, unknown section/key, or an out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of sections")
    data = {k: {n: _coerce(v) for n, v in (section or {}).items()} if isinstance(section, dict) else section
            for k, section in data.items()}
    data = apply_overrides(data, overrides or [])
    try:
        return TrainConfig.from_dict(data)
    except TypeError as exc:
        raise ConfigError(f"bad config value: {exc}") from exc


def describe_keys() -> str:
    """Every config key with its default and help line, for --help."""
    lines = []
    for section, cls in _SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            lines.append(f"  {section}.{f.name} = {getattr(defaults, f.name)!r}  {help_text}".rstrip())
    return "\n".join(lines)
