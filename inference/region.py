"""The region of interest: a box in the volume's millimetres, the ONE crop (trainer = kernel), and the locator.

The locator is a tiny ONNX model trained by `training/region.py` on the localizer points of positive series:
from a coarse copy of the canonical volume (every k-th slice, low resolution) it regresses a reference point of
the circle of Willis as a fraction of the volume's extent along each canonical axis; the box is that point +
shift +- the half-size the trainer measured out of fold (so that >= 99.5% of held-out points fall inside). When
the locator cannot run or its answer is implausible, the series is answered on the whole volume and the report
says why.

Coordinates: canonical voxel (slice, row, col) index i along an axis sits at i * spacing mm (voxel 0 at 0 mm).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from .config import PreprocessConfig
from .errors import InferenceError, ManifestError
from .normalize import PreparedVolume, preprocess_volume, to_uint8
from .volume import Volume

__all__ = ["Box", "Region", "RegionSpec", "RegionAnswer", "Locator", "crop_volume", "prepare_region",
           "coarse_volume", "locator_input", "box_from_fraction", "check_box", "points_mm", "box_slices", "BoxAnswer",
           "LOCATOR_INPUT", "LOCATOR_OUTPUT"]

log = logging.getLogger(__name__)

Point = tuple[float, float, float]  # (slice, row, col)

LOCATOR_INPUT = "coarse"  # ONNX input: float32 [batch, 6, S, S] (3 max and 3 mean projections, 0..1)
LOCATOR_OUTPUT = "centre"  # ONNX output: float32 [batch, 3], the centre as a fraction of the extent per axis


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in canonical millimetres: `lo` and `hi` are (slice, row, col) mm, lo <= hi."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", tuple(float(v) for v in self.lo))
        object.__setattr__(self, "hi", tuple(float(v) for v in self.hi))
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise InferenceError(f"a box needs 3 coordinates per corner, got {self.lo}, {self.hi}")
        if not all(math.isfinite(v) for v in self.lo + self.hi) or any(a > b for a, b in zip(self.lo, self.hi)):
            raise InferenceError(f"not a box: lo {self.lo}, hi {self.hi}")

    @classmethod
    def around(cls, centre: tuple[float, float, float], half: tuple[float, float, float]) -> Box:
        """The box centre +- half (mm) along each axis."""
        return cls(cast(Point, tuple(c - h for c, h in zip(centre, half))),
                   cast(Point, tuple(c + h for c, h in zip(centre, half))))

    @property
    def centre(self) -> tuple[float, float, float]:
        return tuple((a + b) / 2.0 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def size(self) -> tuple[float, float, float]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def contains(self, point_mm: tuple[float, float, float]) -> bool:
        return all(a <= p <= b for a, p, b in zip(self.lo, point_mm, self.hi))

    def to_dict(self) -> dict[str, list[float]]:
        return {"lo": [round(v, 3) for v in self.lo], "hi": [round(v, 3) for v in self.hi]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Box:
        return cls(tuple(data["lo"]), tuple(data["hi"]))


@dataclass(frozen=True)
class Region:
    """A cropped volume and where it came from.

    Attributes:
        volume: the crop, a `Volume` with the source's spacing and modality (no `sources`: the stack is gone).
        origin: canonical voxel index of the crop's voxel (0, 0, 0) in the source volume.
        box: the box asked for (the crop is that box clipped to the volume, in whole voxels).
        slice_share: the crop's slices / the source's slices.
        area_share: the crop's in-plane area / the source's.
    """

    volume: Volume
    origin: tuple[int, int, int]
    box: Box
    slice_share: float
    area_share: float

    def to_region(self, slice_: float, row: float, col: float) -> tuple[float, float, float]:
        """A source canonical voxel coordinate in the crop's voxels (may fall outside the crop)."""
        return slice_ - self.origin[0], row - self.origin[1], col - self.origin[2]

    def holds(self, slice_: float, row: float, col: float) -> bool:
        """Whether a source canonical voxel coordinate lies inside the crop."""
        z, r, c = self.to_region(slice_, row, col)
        shape = self.volume.pixels.shape
        return 0 <= z <= shape[0] - 1 and 0 <= r <= shape[1] - 1 and 0 <= c <= shape[2] - 1


def _index_range(lo_mm: float, hi_mm: float, spacing: float, n: int) -> tuple[int, int]:
    """Voxel indices [start, stop) whose centres lie in [lo_mm, hi_mm], clipped to [0, n)."""
    sp = spacing if math.isfinite(spacing) and spacing > 0 else 1.0
    start = max(0, int(math.ceil(lo_mm / sp - 1e-6)))
    stop = min(n, int(math.floor(hi_mm / sp + 1e-6)) + 1)
    return start, stop


def _box_ranges(volume: Volume, box: Box) -> list[tuple[int, int]]:
    """Per canonical axis, the voxel indices [start, stop) whose centres lie in the box (clipped to the volume).

    Raises:
        InferenceError: the box misses the volume along some axis (nothing to crop).
    """
    shape = volume.pixels.shape
    ranges = [_index_range(box.lo[a], box.hi[a], float(volume.spacing[a]), shape[a]) for a in range(3)]
    if any(stop - start < 1 for start, stop in ranges):
        raise InferenceError(f"series {volume.series_uid}: box {box.to_dict()} misses the volume "
                             f"(shape {shape}, spacing {tuple(volume.spacing)})")
    return ranges


def crop_volume(volume: Volume, box: Box) -> Region:
    """THE crop: the voxels of `volume` whose centres lie inside `box` (clipped to the volume).

    The trainer's cache and the kernel both crop with this function, then prepare the crop with the one
    preprocessing path (`inference.normalize`), so a window means the same thing to both.

    Raises:
        InferenceError: the box misses the volume along some axis (nothing to crop).
    """
    shape = volume.pixels.shape
    (z0, z1), (r0, r1), (c0, c1) = _box_ranges(volume, box)
    pixels = np.ascontiguousarray(volume.pixels[z0:z1, r0:r1, c0:c1])
    crop = Volume(pixels=pixels, spacing=cast(Point, tuple(volume.spacing)), modality=volume.modality,
                  series_uid=volume.series_uid, dropped=list(volume.dropped))
    return Region(volume=crop, origin=(z0, r0, c0), box=box, slice_share=(z1 - z0) / shape[0],
                  area_share=(r1 - r0) * (c1 - c0) / (shape[1] * shape[2]))


def prepare_region(volume: Volume, box: Box | None, cfg: PreprocessConfig) -> tuple[Region | None, PreparedVolume]:
    """The crop of `volume` to `box` at the preset's resolution (`preprocess_volume` of `crop_volume`); the whole
    volume when `box` is None. What the trainer caches; the kernel streams the same two steps slice by slice."""
    if box is None:
        return None, preprocess_volume(volume, cfg)
    region = crop_volume(volume, box)
    return region, preprocess_volume(region.volume, cfg)


@dataclass(frozen=True)
class RegionSpec:
    """The locator and its box, as the trainer wrote them into the manifest's `region` section.

    Attributes:
        file: the locator's ONNX file, relative to the bundle folder; sha256 its hash.
        input_size: side of each projection fed to the locator (S).
        max_slices: the coarse copy keeps every k-th slice, k the smallest giving at most this many.
        max_side: ... and every s-th row and column, s the smallest giving at most this many a side.
        ct_window: Hounsfield units mapped to 0..1 in the coarse copy (MR: the percentiles below).
        mr_percentiles: MR intensities between these percentiles of the coarse copy map to 0..1.
        half_size_mm: the box's half-size along (slice, row, col), measured out of fold by the trainer.
        shift_mm: the box's centre minus the locator's reference point (mm; the sites lie more below it than above).
        min_slices: fewer slices than this: no region (the whole volume answers).
        min_extent_mm: a volume shorter than this along an axis: no region.
        max_outside: a predicted centre further than this fraction of the extent outside the volume: implausible.
        stats: the trainer's out-of-fold figures (recall, errors); provenance only.
    """

    file: str = "locator.onnx"
    sha256: str = ""
    input_size: int = 64
    max_slices: int = 64
    max_side: int = 128
    ct_window: tuple[float, float] = (0.0, 500.0)
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    half_size_mm: tuple[float, float, float] = (40.0, 50.0, 50.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    min_slices: int = 8
    min_extent_mm: float = 20.0
    max_outside: float = 0.1
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("ct_window", "mr_percentiles", "half_size_mm", "shift_mm"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.input_size < 8 or self.max_slices < 2 or self.max_side < 8:
            raise ManifestError(f"region: bad coarse sizes {self.input_size}, {self.max_slices}, {self.max_side}")
        if len(self.half_size_mm) != 3 or not all(math.isfinite(h) and h > 0 for h in self.half_size_mm):
            raise ManifestError(f"region: half_size_mm must be 3 positive numbers, got {self.half_size_mm}")
        if len(self.shift_mm) != 3 or not all(math.isfinite(v) for v in self.shift_mm):
            raise ManifestError(f"region: shift_mm must be 3 finite numbers, got {self.shift_mm}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("ct_window", "mr_percentiles", "half_size_mm", "shift_mm"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionSpec:
        if not isinstance(data, dict):
            raise ManifestError(f"region: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ManifestError(f"region: unknown keys {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"region: malformed value: {exc}") from exc


def coarse_volume(volume: Volume, spec: RegionSpec) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The locator's coarse copy: every k-th slice, every s-th row and column, mapped to uint8 (CT window or MR
    percentiles of the copy itself). Returns (uint8 (m, r, c), its voxel spacing in mm)."""
    pixels = volume.pixels
    n, rows, cols = pixels.shape
    k = max(1, math.ceil(n / spec.max_slices))
    s = max(1, math.ceil(max(rows, cols) / spec.max_side))
    coarse = np.asarray(pixels[::k, ::s, ::s], dtype=np.float32)
    if volume.modality.upper() == "CT":
        low, high = spec.ct_window
    else:
        finite = coarse[np.isfinite(coarse)]
        low, high = np.percentile(finite, spec.mr_percentiles) if finite.size else (0.0, 1.0)
        if not high > low:
            high = low + 1.0
    # the 2.5D path's own mapping, applied to the copy's slices at once (as one tall 2D image)
    finite_coarse = np.nan_to_num(coarse, nan=low).reshape(-1, coarse.shape[-1])
    scaled = to_uint8(finite_coarse, float(low), float(high)).reshape(coarse.shape)
    spacing = tuple(float(v) for v in volume.spacing)
    return scaled, (spacing[0] * k, spacing[1] * s, spacing[2] * s)


def locator_input(coarse: np.ndarray, spec: RegionSpec) -> np.ndarray:
    """float32 (6, S, S): the coarse copy's max and mean projections along each canonical axis, each resized to
    S x S (axial: rows x cols; coronal: slices x cols; sagittal: slices x rows), scaled to 0..1."""
    size = spec.input_size
    out = np.empty((6, size, size), dtype=np.float32)
    for axis in range(3):
        for j, image in enumerate((coarse.max(axis=axis), coarse.mean(axis=axis, dtype=np.float32))):
            image = np.asarray(image, dtype=np.float32)
            interpolation = cv2.INTER_AREA if min(image.shape) >= size else cv2.INTER_LINEAR
            out[axis + 3 * j] = cv2.resize(image, (size, size), interpolation=interpolation) / 255.0
    return out


def box_from_fraction(fraction: np.ndarray, coarse_shape: tuple[int, int, int],
                      coarse_spacing: tuple[float, float, float], half: tuple[float, float, float],
                      shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Box:
    """The box (reference + shift) +- half, the reference given as a fraction of the coarse copy's extent."""
    centre = tuple(float(f) * max(m - 1, 1) * sp + d
                   for f, m, sp, d in zip(fraction, coarse_shape, coarse_spacing, shift))
    return Box.around(centre, half)  # type: ignore[arg-type]


def check_box(shape: tuple[int, ...], spacing: tuple[float, ...], fraction: np.ndarray, spec: RegionSpec) -> str:
    """Why the locator's answer on a volume of this shape and spacing cannot be trusted ("" when it can)."""
    if len(shape) != 3:
        return f"volume shape {tuple(shape)} is not 3D"
    n, rows, cols = shape
    if n < spec.min_slices:
        return f"{n} slices (< {spec.min_slices})"
    extent = [(m - 1) * float(sp) for m, sp in zip((n, rows, cols), spacing)]
    if not all(math.isfinite(e) and e >= spec.min_extent_mm for e in extent):
        return f"extent {[round(e, 1) for e in extent]} mm (< {spec.min_extent_mm} mm along some axis)"
    fraction = np.asarray(fraction, dtype=np.float64).reshape(-1)
    if fraction.shape != (3,) or not np.all(np.isfinite(fraction)):
        return f"locator output {fraction.tolist()} is not 3 finite numbers"
    if np.any(fraction < -spec.max_outside) or np.any(fraction > 1.0 + spec.max_outside):
        return f"centre {np.round(fraction, 3).tolist()} lies outside the volume"
    return ""


def points_mm(points: list[tuple[float, float, float]], spacing: tuple[float, float, float]) -> np.ndarray:
    """Canonical voxel coordinates (slice, row, col) -> (N, 3) mm."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 3) * np.asarray(spacing, dtype=np.float64)[None, :]


def box_slices(volume: Volume, box: Box) -> list[int]:
    """The canonical slices of `volume` that `crop_volume(volume, box)` keeps.

    Raises:
        InferenceError: the box misses the volume along some axis.
    """
    return list(range(*_box_ranges(volume, box)[0]))


@dataclass
class BoxAnswer:
    """What the locator found for one series: a box (None: the whole volume answers), why not, and its cost."""

    box: Box | None
    note: str
    seconds: float = 0.0


@dataclass
class RegionAnswer:
    """What the locator did for one series: the region (None: the whole volume answers), why, and its cost."""

    region: Region | None
    note: str
    seconds: float = 0.0


class Locator:
    """The bundle's region locator: volume -> `RegionAnswer`; never raises (any failure: the whole volume).

    Args:
        bundle_dir: the weights folder holding `spec.file`.
        spec: the manifest's region section.
        providers: onnxruntime providers (default: CPU; the locator is tiny).
    """

    def __init__(self, bundle_dir: str | Path, spec: RegionSpec, *, providers: list[str] | None = None) -> None:
        self.path = Path(bundle_dir) / spec.file
        self.spec = spec
        self.providers = providers or ["CPUExecutionProvider"]
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        return self._session

    def warm_up(self) -> str:
        """Build the session and run one synthetic input, so the first series does not carry it; "" when it
        worked, else why (logged; `locate` will then answer the whole volume)."""
        try:
            size = self.spec.input_size
            self.session().run([LOCATOR_OUTPUT], {LOCATOR_INPUT: np.zeros((1, 6, size, size), np.float32)})
            return ""
        except Exception as exc:  # the locator must never cost the run: each series is answered on its volume
            log.error("region locator %s cannot run (%s: %s): series are scored on their whole volume",
                      self.path, type(exc).__name__, exc)
            return f"{type(exc).__name__}: {exc}"

    def fraction(self, volume: Volume) -> tuple[np.ndarray, tuple[int, int, int], tuple[float, float, float]]:
        """The locator's raw answer (centre fraction) and the coarse copy's shape and spacing."""
        coarse, spacing = coarse_volume(volume, self.spec)
        inputs = locator_input(coarse, self.spec)[None]
        out = self.session().run([LOCATOR_OUTPUT], {LOCATOR_INPUT: inputs})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1), coarse.shape, spacing

    def coarse_slices(self, num_slices: int) -> list[int]:
        """The canonical slices the coarse copy reads (what a stream should decode first)."""
        return list(range(0, num_slices, max(1, math.ceil(num_slices / self.spec.max_slices))))

    def find(self, volume: Volume) -> BoxAnswer:
        """The box of `volume` (only its `coarse_slices` are read), or None with the reason (too few slices, an
        implausible answer, a box that misses the volume, any error); never raises."""
        start = time.perf_counter()
        try:
            shape = volume.pixels.shape
            if len(shape) != 3 or shape[0] < self.spec.min_slices:
                return BoxAnswer(None, f"whole volume: {shape[0] if shape else 0} slices "
                                       f"(< {self.spec.min_slices})", time.perf_counter() - start)
            fraction, coarse_shape, coarse_spacing = self.fraction(volume)
            problem = check_box(shape, tuple(volume.spacing), fraction, self.spec)
            if problem:
                return BoxAnswer(None, f"whole volume: {problem}", time.perf_counter() - start)
            box = box_from_fraction(fraction, coarse_shape, coarse_spacing, self.spec.half_size_mm,
                                    self.spec.shift_mm)
            box_slices(volume, box)  # raises when the box misses the volume
            return BoxAnswer(box, "", time.perf_counter() - start)
        except Exception as exc:  # the locator must never cost the series: the whole volume answers
            log.warning("series %s: region locator failed (%s: %s); scoring the whole volume",
                        volume.series_uid, type(exc).__name__, exc)
            return BoxAnswer(None, f"whole volume: locator failed: {type(exc).__name__}: {exc}",
                             time.perf_counter() - start)

    def locate(self, volume: Volume) -> RegionAnswer:
        """The region of `volume`, or None with the reason (`find`, then the crop); never raises."""
        return self.crop(volume, self.find(volume))

    @staticmethod
    def crop(volume: Volume, found: BoxAnswer) -> RegionAnswer:
        """The crop of `volume` to the box `find` gave (the whole volume when it gave none); never raises."""
        if found.box is None:
            return RegionAnswer(None, found.note, found.seconds)
        start = time.perf_counter()
        try:
            region = crop_volume(volume, found.box)
        except Exception as exc:  # noqa: BLE001 - as in find: the whole volume answers
            return RegionAnswer(None, f"whole volume: crop failed: {type(exc).__name__}: {exc}",
                                found.seconds + time.perf_counter() - start)
        note = (f"region {region.volume.pixels.shape} of {volume.pixels.shape}: {region.slice_share:.0%} of the "
                f"slices, {region.area_share:.0%} of the area")
        return RegionAnswer(region, note, found.seconds + time.perf_counter() - start)
