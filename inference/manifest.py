"""The weights manifest (weights/manifest.json): read, write and check it against its ONNX files and the competition."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    AggregationConfig,
    BudgetConfig,
    PreprocessConfig,
    VolumeConfig,
    WindowConfig,
    from_dict,
    to_dict,
)
from .errors import ConfigError, ManifestError
from .kinds import DEFAULT_KIND, KINDS, REGION_KIND_NAMES, ModelKind, model_kind
from .labels import LABELS

__all__ = ["MANIFEST_NAME", "FORMAT_VERSION", "INPUT_DTYPES", "FoldEntry", "Manifest", "sha256_file",
           "manifest_path"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
INPUT_DTYPES = ("float32", "float16")


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(folder: str | Path) -> Path:
    """The manifest file of a bundle folder (a path to the manifest itself is accepted too)."""
    path = Path(folder)
    return path if path.suffix == ".json" else path / MANIFEST_NAME


@dataclass(frozen=True)
class FoldEntry:
    """One fold's ONNX file (relative to the bundle folder), its sha256 and its validation score."""

    fold: int
    file: str
    sha256: str
    val_score: float | None = None

    @classmethod
    def for_file(cls, folder: str | Path, file: str, *, fold: int, val_score: float | None = None) -> FoldEntry:
        """An entry for `folder/file` with its sha256 computed now."""
        return cls(fold=int(fold), file=str(file), sha256=sha256_file(Path(folder) / file),
                   val_score=None if val_score is None else float(val_score))


@dataclass(frozen=True)
class Manifest:
    """What the kernel needs to know about a weights bundle; see weights/README.md for the JSON format.

    Attributes:
        labels: output label names, must equal `LABELS` (competition order).
        input_name, output_name: the ONNX graph's input and output names.
        input_shape: e.g. ("batch", 5, 224, 224); a str or None marks a dynamic dimension.
        input_dtype: "float32" or "float16".
        preprocess, windows, aggregation: the configs the trainer used (the kernel must use the same).
        folds: one FoldEntry per ONNX file.
        priors: 14 fallback probabilities (e.g. training prevalence) used when a series cannot be predicted.
        provenance: free-form facts about the bundle (git commit, config, date...).
        budget: the whole run's limits and the degradation steps the kernel may take (optional in the JSON).
        aggregator: the learned aggregator's numbers (`inference.aggregate.LearnedAggregator.to_dict`), used when
            aggregation.method is "learned" (optional in the JSON).
        kind: the model kind (`inference.kinds`: a windowed kind, where `windows` and `aggregation` apply, or a
            volume kind, one input per series); absent in the JSON means `inference.kinds.DEFAULT_KIND`.
        volume: the volume model's input (volume kinds only).
        region: the region locator (`inference.region.RegionSpec.to_dict`): the model scores the locator's box
            (absent in the JSON: the whole volume); only a kind that takes one (`inference.kinds`).
        format_version: manifest format version (FORMAT_VERSION).
    """

    labels: tuple[str, ...]
    input_name: str
    output_name: str
    input_shape: tuple[int | str | None, ...]
    input_dtype: str
    preprocess: PreprocessConfig
    windows: WindowConfig
    aggregation: AggregationConfig
    folds: tuple[FoldEntry, ...]
    priors: tuple[float, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    aggregator: dict[str, Any] | None = None
    kind: str = DEFAULT_KIND
    volume: VolumeConfig | None = None
    region: dict[str, Any] | None = None  # issue 21: the region locator's spec (inference.region.RegionSpec)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "folds", tuple(self.folds))
        object.__setattr__(self, "priors", tuple(float(p) for p in self.priors))

    # --- JSON -------------------------------------------------------------------------------------------------
    @property
    def kind_spec(self) -> ModelKind:
        """The registry's entry of `kind` (`inference.kinds`); ConfigError for a kind this kit does not know."""
        return model_kind(self.kind)

    @property
    def input_channels(self) -> int:
        """Channels of one model input: the window's slices, or the resampled depth of a volume kind."""
        kind = KINDS.get(self.kind)
        return self.windows.channels if kind is None else kind.channels(self.windows, self.volume)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (see weights/README.md)."""
        return {
            "format_version": self.format_version,
            "labels": list(self.labels),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "preprocess": to_dict(self.preprocess),
            "windows": to_dict(self.windows),
            "aggregation": to_dict(self.aggregation),
            "folds": [dataclasses.asdict(f) for f in self.folds],
            "priors": list(self.priors),
            "provenance": json.loads(json.dumps(self.provenance, default=str)),
            "budget": to_dict(self.budget),
            **({"aggregator": self.aggregator} if self.aggregator is not None else {}),
            **({"kind": self.kind} if self.kind != DEFAULT_KIND else {}),
            **({"volume": to_dict(self.volume)} if self.volume is not None else {}),
            **({"region": self.region} if self.region is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> Manifest:
        """Parse the JSON form; ManifestError names the missing or malformed key."""
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
        required = ("format_version", "labels", "input_name", "output_name", "input_shape", "input_dtype",
                    "preprocess", "windows", "aggregation", "folds", "priors")
        missing = [k for k in required if k not in data]
        if missing:
            raise ManifestError(f"{source}: missing keys {missing}")
        version = data["format_version"]
        if version != FORMAT_VERSION:
            raise ManifestError(f"{source}: format_version {version!r} is not supported (this kernel reads "
                                f"version {FORMAT_VERSION}); rebuild the bundle with a matching trainer")
        try:
            folds = tuple(FoldEntry(fold=int(f["fold"]), file=str(f["file"]), sha256=str(f["sha256"]).lower(),
                                    val_score=None if f.get("val_score") is None else float(f["val_score"]))
                          for f in data["folds"])
            return cls(
                labels=tuple(str(v) for v in data["labels"]),
                input_name=str(data["input_name"]),
                output_name=str(data["output_name"]),
                input_shape=tuple(data["input_shape"]),
                input_dtype=str(data["input_dtype"]),
                preprocess=from_dict(PreprocessConfig, data["preprocess"]),
                windows=from_dict(WindowConfig, data["windows"]),
                aggregation=from_dict(AggregationConfig, data["aggregation"]),
                folds=folds,
                priors=tuple(float(p) for p in data["priors"]),
                provenance=dict(data.get("provenance") or {}),
                budget=from_dict(BudgetConfig, data.get("budget") or {}),  # optional: older bundles have none
                aggregator=data.get("aggregator"),
                kind=str(data.get("kind", DEFAULT_KIND)),
                volume=from_dict(VolumeConfig, data["volume"]) if data.get("volume") is not None else None,
                region=data.get("region"),
                format_version=int(version),
            )
        except ConfigError as exc:
            raise ManifestError(f"{source}: bad config: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: malformed value: {type(exc).__name__}: {exc}") from exc

    def write(self, folder: str | Path) -> Path:
        """Write `folder/manifest.json` (after checking the fields that need no files); return its path."""
        problems = self.problems()
        if problems:
            raise ManifestError("refusing to write an invalid manifest: " + "; ".join(problems))
        path = manifest_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path, *, verify: bool = True) -> Manifest:
        """Read a bundle's manifest; with `verify`, also check it against its files (see `verify`).

        Raises:
            ManifestError: missing or unparsable file, or any mismatch.
        """
        path = manifest_path(folder)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ManifestError(f"cannot read weights manifest {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        manifest = cls.from_dict(data, source=str(path))
        if verify:
            manifest.verify(path.parent)
        return manifest

    # --- checks -----------------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Everything wrong with the manifest's own fields (no file access)."""
        out = []
        if self.labels != LABELS:
            if sorted(self.labels) == sorted(LABELS):
                out.append(f"labels are the competition's but in another order: {list(self.labels)}; "
                           f"expected {list(LABELS)}")
            else:
                extra = sorted(set(self.labels) - set(LABELS))
                lacking = sorted(set(LABELS) - set(self.labels))
                out.append(f"labels differ from the competition's 14: unknown {extra}, missing {lacking}")
        if self.input_dtype not in INPUT_DTYPES:
            out.append(f"input_dtype {self.input_dtype!r} is not one of {INPUT_DTYPES}")
        out.extend(self._input_problems())
        if len(self.priors) != len(LABELS):
            out.append(f"priors has {len(self.priors)} values, expected {len(LABELS)}")
        elif not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in self.priors):
            out.append(f"priors must be finite probabilities in [0, 1], got {list(self.priors)}")
        if not self.folds:
            out.append("no folds listed")
        out.extend(self._region_problems())

        ids = [f.fold for f in self.folds]
        if len(set(ids)) != len(ids):
            out.append(f"fold ids are not unique: {ids}")
        for f in self.folds:
            if len(f.sha256) != 64 or any(ch not in "0123456789abcdef" for ch in f.sha256.lower()):
                out.append(f"fold {f.fold}: sha256 {f.sha256!r} is not a 64-digit hex digest")
        return out

    def _region_problems(self) -> list[str]:
        """The region locator's section (issue 21): it parses, and the kind takes a region (`inference.kinds`)."""
        if self.region is None:
            return []
        from .region import RegionSpec

        out = []
        try:
            RegionSpec.from_dict(self.region)
        except ManifestError as exc:
            out.append(str(exc))
        kind = KINDS.get(self.kind)
        if kind is None or not kind.takes_region:
            out.append(f"a region locator needs kind {', '.join(REGION_KIND_NAMES)}, not {self.kind}")
        return out

    def _input_problems(self) -> list[str]:
        """The kind and the model input's shape against the configs."""
        out = []
        try:
            kind = model_kind(self.kind)
        except ConfigError as exc:
            kind = None
            out.append(f"kind {self.kind!r} is not one this kernel runs: {exc}")
        if kind is not None and kind.needs_volume and self.volume is None:
            out.append(f"kind {kind.name} needs a volume section (its depth)")
        channels = self.input_channels
        expected = (channels, self.preprocess.image_size, self.preprocess.image_size)
        if len(self.input_shape) != 4:
            out.append(f"input_shape {list(self.input_shape)} must have 4 dimensions (batch, C, S, S)")
        elif kind is not None and kind.needs_volume and tuple(self.input_shape[1:]) != expected:
            out.append(f"input_shape {list(self.input_shape)} does not match volume.depth {channels} and "
                       f"preprocess.image_size {expected[1]}")
        elif kind is not None and not kind.needs_volume and tuple(self.input_shape[1:]) != expected:
            out.append(f"input_shape {list(self.input_shape)} does not match the configs: windows.offsets gives "
                       f"{expected[0]} channels and preprocess.image_size {expected[1]} (expected "
                       f"[batch, {expected[0]}, {expected[1]}, {expected[2]}])")
        return out

    def verify(self, folder: str | Path) -> None:
        """Check the fields and every fold file in `folder`: present and with the recorded sha256.

        Raises:
            ManifestError: listing every problem found.
        """
        folder = Path(folder)
        if folder.suffix == ".json":
            folder = folder.parent
        problems = self.problems()
        for f in self.folds:
            path = folder / f.file
            if not path.is_file():
                problems.append(f"fold {f.fold}: file {path} is missing")
                continue
            actual = sha256_file(path)
            if actual != f.sha256.lower():
                problems.append(f"fold {f.fold}: sha256 of {path} is {actual}, manifest says {f.sha256} "
                                f"(file replaced or corrupted: re-export or rewrite the manifest)")
        if isinstance(self.region, dict):  # issue 21: the region locator's file
            path = folder / str(self.region.get("file", ""))
            if not path.is_file():
                problems.append(f"region locator {path} is missing")
            elif sha256_file(path) != str(self.region.get("sha256", "")).lower():
                problems.append(f"region locator {path}: sha256 differs from the manifest's")
        if problems:
            raise ManifestError(f"weights manifest in {folder} is inconsistent: " + "; ".join(problems))
