"""A loaded `Volume` -> the uint8 (Z, S, S) stack the model sees: the one preprocessing path of trainer and kernel."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .config import PreprocessConfig, VolumeConfig
from .errors import InferenceError
from .volume import Volume

__all__ = ["PreparedVolume", "SliceGeometry", "SlicePlan", "preprocess_volume", "plan_slices", "prepare_slices",
           "prepared_volume", "intensity_range", "slice_geometry", "to_uint8", "sample_slices", "warn_if_constant_ct",
           "resample_depth", "volume_model_input"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceGeometry:
    """Where a canonical (rows, cols) slice lands in the S x S output: resized to (height, width) at (top, left)."""

    rows: int
    cols: int
    size: int
    height: int
    width: int
    top: int
    left: int

    def row(self, r: float) -> float:
        """Output row of canonical row `r` (pixel centres, as cv2.resize maps them)."""
        return (r + 0.5) * self.height / self.rows - 0.5 + self.top

    def col(self, c: float) -> float:
        """Output column of canonical column `c`."""
        return (c + 0.5) * self.width / self.cols - 0.5 + self.left


@dataclass(frozen=True)
class PreparedVolume:
    """The model-ready stack of one series.

    Attributes:
        pixels: uint8 (Z, S, S), canonical orientation (patient left at high column indices).
        series_uid: the series' identifier (folder basename).
        modality: "CT" or "MR".
        spacing: (slice, row, col) spacing in mm of the prepared stack.
        geometry: how each canonical slice was placed in the S x S square.
        slice_scale: prepared slice index = canonical slice index * slice_scale (1.0 without resampling).
        intensity: the (low, high) input values mapped to 0 and 255.
    """

    pixels: np.ndarray
    series_uid: str
    modality: str
    spacing: tuple[float, float, float]
    geometry: SliceGeometry
    slice_scale: float = 1.0
    intensity: tuple[float, float] = (0.0, 255.0)

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    def canonical_to_prepared(self, slice_: float, row: float, col: float) -> tuple[float, float, float]:
        """Map a canonical (slice, row, col) voxel coordinate of the `Volume` to float (z, r, c) in `pixels`."""
        return float(slice_) * self.slice_scale, self.geometry.row(row), self.geometry.col(col)


def slice_geometry(rows: int, cols: int, row_spacing: float, col_spacing: float, *, size: int,
                   keep_aspect: bool = True) -> SliceGeometry:
    """Fit a (rows, cols) slice into size x size, keeping its physical aspect ratio when `keep_aspect`.

    The slice is padded (centred) to a physical square: its longer physical side fills the output.
    """
    if rows < 1 or cols < 1:
        raise InferenceError(f"slice shape must be positive, got {(rows, cols)}")
    if not keep_aspect:
        return SliceGeometry(rows, cols, size, size, size, 0, 0)
    rs = row_spacing if np.isfinite(row_spacing) and row_spacing > 0 else 1.0
    cs = col_spacing if np.isfinite(col_spacing) and col_spacing > 0 else 1.0
    height_mm, width_mm = rows * rs, cols * cs
    side_mm = max(height_mm, width_mm)
    height = min(size, max(1, int(round(size * height_mm / side_mm))))
    width = min(size, max(1, int(round(size * width_mm / side_mm))))
    return SliceGeometry(rows, cols, size, height, width, (size - height) // 2, (size - width) // 2)


def intensity_range(volume: Volume, cfg: PreprocessConfig) -> tuple[float, float]:
    """The (low, high) input values mapped to 0 and 255: the CT window, or MR percentiles of a strided subsample."""
    if volume.modality.upper() == "CT":
        return cfg.ct_window
    s = cfg.percentile_stride
    sample = np.asarray(volume.pixels[::s, ::s, ::s], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(sample, cfg.mr_percentiles)
    if high <= low:  # a mostly constant volume: fall back to the sample's full range
        low, high = float(sample.min()), float(sample.max())
    return float(low), float(high)


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 255] (clipped, rounded) for one 2D image."""
    alpha = 255.0 / (high - low)
    # clip below first so convertScaleAbs's absolute value never sees a negative number; it saturates above 255
    src = np.ascontiguousarray(image, dtype=np.float32)
    clipped = cv2.max(src, float(low))  # type: ignore[call-overload]  # cv2's stubs omit its scalar overload
    return cv2.convertScaleAbs(clipped, alpha=alpha, beta=-low * alpha)


@dataclass(frozen=True)
class SlicePlan:
    """What `prepare_slices` applies to every slice: the intensity range mapped to 0..255 and the geometry."""

    low: float
    high: float
    geometry: SliceGeometry


def sample_slices(volume: Volume, cfg: PreprocessConfig) -> range:
    """The canonical slices `plan_slices` reads pixels from: every percentile_stride-th one (none for CT)."""
    if volume.modality.upper() == "CT":
        return range(0)
    return range(0, volume.num_slices, cfg.percentile_stride)


def warn_if_constant_ct(volume: Volume, cfg: PreprocessConfig) -> None:
    """Log a warning when a CT volume holds one value (the CT window still applies: a uniform stack)."""
    if volume.modality.upper() == "CT":
        s = cfg.percentile_stride
        sample = volume.pixels[::s, ::s, ::s]
        if sample.min() == sample.max():
            log.warning("series %s: constant CT volume (value %.4g)", volume.series_uid, float(sample.min()))


def plan_slices(volume: Volume, cfg: PreprocessConfig, *, check_constant: bool = True) -> SlicePlan:
    """Intensity range (CT window or MR percentiles) and slice geometry of `volume`; warns on a constant volume.

    Only the slices of `sample_slices(volume, cfg)` are read, so a volume still loading can be planned once those
    are in (`check_constant=False` then defers the CT check to `warn_if_constant_ct`).

    Raises:
        InferenceError: the volume is not 3D or has no slice.
    """
    pixels = volume.pixels
    if pixels.ndim != 3 or min(pixels.shape) < 1:
        raise InferenceError(f"series {volume.series_uid}: expected a non-empty 3D volume, got shape {pixels.shape}")
    low, high = intensity_range(volume, cfg)
    if volume.modality.upper() == "CT":
        if check_constant:
            warn_if_constant_ct(volume, cfg)
    elif not high > low:
        log.warning("series %s: constant %s volume (value %.4g); returning a black stack",
                    volume.series_uid, volume.modality, low)
        high = low + 1.0 if np.isfinite(low) else 1.0
        low = low if np.isfinite(low) else 0.0
    _, r_sp, c_sp = (float(v) for v in volume.spacing)
    geometry = slice_geometry(pixels.shape[1], pixels.shape[2], r_sp, c_sp,
                              size=cfg.image_size, keep_aspect=cfg.keep_aspect)
    return SlicePlan(low=float(low), high=float(high), geometry=geometry)


def prepare_slices(pixels: np.ndarray, plan: SlicePlan, out: np.ndarray, start: int = 0,
                   stop: int | None = None) -> None:
    """Write prepared slices `start:stop` of `pixels` into `out` (uint8 (Z, S, S), zero-filled: the padding)."""
    geometry = plan.geometry
    stop = pixels.shape[0] if stop is None else stop
    shrink = geometry.height <= geometry.rows and geometry.width <= geometry.cols
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    rows = slice(geometry.top, geometry.top + geometry.height)
    cols = slice(geometry.left, geometry.left + geometry.width)
    for z in range(start, stop):  # 2D resizes only: cv2 would treat a 3D array as channels
        img = to_uint8(pixels[z], plan.low, plan.high)
        if (geometry.height, geometry.width) != img.shape:
            img = cv2.resize(img, (geometry.width, geometry.height), interpolation=interpolation)
        out[z, rows, cols] = img


def prepared_volume(volume: Volume, cfg: PreprocessConfig, plan: SlicePlan, stack: np.ndarray) -> PreparedVolume:
    """Wrap a stack filled by `prepare_slices` (resampling the slice axis when cfg asks for it)."""
    z_sp, r_sp, c_sp = (float(v) for v in volume.spacing)
    slice_scale = 1.0
    if cfg.slice_spacing_mm is not None:
        stack, slice_scale = _resample_slices(stack, z_sp, cfg.slice_spacing_mm)
    geometry = plan.geometry
    spacing = (z_sp / slice_scale, r_sp * geometry.rows / geometry.height, c_sp * geometry.cols / geometry.width)
    return PreparedVolume(pixels=stack, series_uid=volume.series_uid, modality=volume.modality, spacing=spacing,
                          geometry=geometry, slice_scale=slice_scale, intensity=(plan.low, plan.high))


def _resample_slices(stack: np.ndarray, spacing: float, target: float) -> tuple[np.ndarray, float]:
    """Linear resampling of the slice axis from `spacing` to `target` mm; returns (stack, slice_scale)."""
    n = stack.shape[0]
    if n < 2 or not np.isfinite(spacing) or spacing <= 0 or abs(spacing - target) < 1e-6:
        return stack, 1.0
    scale = spacing / target
    count = max(1, int(np.floor((n - 1) * scale + 1e-6)) + 1)
    return _interpolate_slices(stack, np.arange(count, dtype=np.float64) / scale), scale


def _interpolate_slices(stack: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint8 slices at fractional `positions` of a uint8 (Z, S, S) stack, linear between neighbours."""
    n = stack.shape[0]
    lower = np.clip(np.floor(positions).astype(np.int64), 0, n - 1)
    upper = np.minimum(lower + 1, n - 1)
    weight = np.clip(positions - lower, 0.0, 1.0).astype(np.float32)[:, None, None]
    out = np.empty((len(positions), *stack.shape[1:]), dtype=np.uint8)
    for start in range(0, len(positions), 32):  # chunks keep the float32 temporaries small
        sl = slice(start, start + 32)
        mixed = stack[lower[sl]] * (1.0 - weight[sl]) + stack[upper[sl]] * weight[sl]
        np.rint(mixed, out=mixed)
        out[sl] = mixed.astype(np.uint8)
    return out


def resample_depth(stack: np.ndarray, depth: int) -> np.ndarray:
    """The prepared uint8 (Z, S, S) stack resampled to `depth` slices spread evenly from the first slice to the
    last (linear interpolation along the slice axis): the volume model's input, one channel per slice.

    Raises:
        InferenceError: an empty stack or a depth below 1.
    """
    if stack.ndim != 3 or stack.shape[0] < 1 or depth < 1:
        raise InferenceError(f"cannot resample a stack of shape {stack.shape} to {depth} slices")
    return _interpolate_slices(stack, np.linspace(0.0, stack.shape[0] - 1, depth))


def volume_model_input(stack: np.ndarray, cfg: VolumeConfig, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The volume model's (D, S, S) input from a prepared uint8 stack: `resample_depth` to `cfg.depth` slices,
    times `cfg.scale` (in float32, then cast to `dtype`), the same for the trainer and the kernel."""
    scaled = resample_depth(np.asarray(stack), cfg.depth).astype(np.float32) * np.float32(cfg.scale)
    return scaled.astype(dtype, copy=False)


def preprocess_volume(volume: Volume, cfg: PreprocessConfig) -> PreparedVolume:
    """Normalize, square-pad and resize every slice of `volume`; optionally resample the slice axis.

    Args:
        volume: a loaded series in canonical orientation (float32 pixels; CT in Hounsfield units).
        cfg: the preprocessing settings (read from the weights manifest in the kernel).
    Returns:
        A PreparedVolume with uint8 (Z, cfg.image_size, cfg.image_size) pixels.
    Raises:
        ConfigError: the volume is not 3D or has no slice.
    Example:
        >>> prepared = preprocess_volume(load_series(folder), manifest.preprocess)
    """
    plan = plan_slices(volume, cfg)
    size = plan.geometry.size
    stack = np.zeros((volume.pixels.shape[0], size, size), dtype=np.uint8)
    prepare_slices(volume.pixels, plan, stack)
    return prepared_volume(volume, cfg, plan, stack)
