"""How a series samples patient space: plane, flips, slice order, grid, storage options; exact DICOM geometry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from inference.errors import ConfigError

__all__ = ["Acquisition", "PixelLocation", "PLANES", "COMPRESSIONS"]

PLANES = ("axial", "coronal", "sagittal")
COMPRESSIONS = (None, "jpeg2000", "jpegls", "rle")

# (row direction r = increasing column, column direction c = increasing row) before flips, LPS.
_BASE_ORIENTATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def _ds_round(value: float) -> float:
    """The float a DS string written with 4 decimals reads back as (no negative zero)."""
    return float(f"{round(float(value), 4) + 0.0:.4f}")


@dataclass(frozen=True)
class PixelLocation:
    """Where a patient-space point falls in a series: file-order slice index, 0-based row/col (fractional)."""

    index: int
    row: float
    col: float
    distance_mm: float  # distance from the point to that slice's plane


@dataclass(frozen=True)
class Acquisition:
    """The sampling grid and storage options of one series.

    Pixel (row i, col j) of file-order slice k lies at IPP_k + j * pixel_spacing[1] * r + i * pixel_spacing[0] * c,
    r = ImageOrientationPatient[:3], c = ImageOrientationPatient[3:]. Slices are spaced `slice_spacing` along
    r x c, centred on `centre`; `reverse_slices` makes InstanceNumber (and frame order) run against r x c.

    Attributes:
        plane: 'axial' | 'coronal' | 'sagittal'.
        rows, cols, num_slices: grid size.
        pixel_spacing: (row spacing, column spacing) in mm, as DICOM's PixelSpacing.
        slice_spacing: distance between slice centres (mm).
        centre: patient-mm centre of the sampled box.
        flip_rows: negate the column direction c (rows run the other way).
        flip_cols: negate the row direction r (columns run the other way).
        reverse_slices: file/frame order runs against the slice normal.
        multiframe: one enhanced multi-frame file instead of one file per slice.
        compression: None | 'jpeg2000' | 'jpegls' | 'rle' (all lossless).
        stripped: keep only the test-set tag allowlist (NumberOfFrames removed).
        noise: multiplier of the modality's noise level (0 = noiseless, exact renders).
        signed: CT stored as int16 with intercept 0 (else uint16 = HU + 1024, intercept -1024).
        rescale_slope: MR RescaleSlope (1.0 writes no rescale tags for MR).
        monochrome1: store inverted (MONOCHROME1), MR only.
    """

    plane: Literal["axial", "coronal", "sagittal"] = "axial"
    rows: int = 128
    cols: int = 128
    num_slices: int = 40
    pixel_spacing: tuple[float, float] = (1.6, 1.6)
    slice_spacing: float = 2.0
    centre: tuple[float, float, float] = (0.0, 2.0, -15.0)
    flip_rows: bool = False
    flip_cols: bool = False
    reverse_slices: bool = False
    multiframe: bool = False
    compression: str | None = None
    stripped: bool = False
    noise: float = 1.0
    signed: bool = False
    rescale_slope: float = 1.0
    monochrome1: bool = False

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ConfigError(f"plane must be one of {PLANES}, got {self.plane!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if min(self.rows, self.cols, self.num_slices) < 1:
            raise ConfigError(f"rows, cols, num_slices must be >= 1, got {self.rows, self.cols, self.num_slices}")
        if min(self.pixel_spacing) <= 0 or self.slice_spacing <= 0:
            raise ConfigError(f"spacings must be positive, got {self.pixel_spacing}, {self.slice_spacing}")
        if self.noise < 0 or self.rescale_slope <= 0:
            raise ConfigError(f"noise must be >= 0 and rescale_slope > 0, got {self.noise}, {self.rescale_slope}")
        object.__setattr__(self, "pixel_spacing", tuple(float(v) for v in self.pixel_spacing))
        object.__setattr__(self, "centre", tuple(float(v) for v in self.centre))

    @classmethod
    def cube(cls, size: int, spacing: float = 1.0, plane: Literal["axial", "coronal", "sagittal"] = "axial", *,
             centre: tuple[float, float, float] = (0.0, 2.0, -15.0), **options) -> Acquisition:
        """An N^3 grid of the given isotropic spacing around `centre`, noiseless.

        Every plane/flip/order samples exactly the same patient points (with an integer centre and spacing the
        coordinates are exact in floating point), so the canonical volumes must be identical.
        """
        options.setdefault("noise", 0.0)
        return cls(plane=plane, rows=size, cols=size, num_slices=size, pixel_spacing=(spacing, spacing),
                   slice_spacing=spacing, centre=centre, **options)

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def row_direction(self) -> np.ndarray:
        """r = ImageOrientationPatient[:3], the direction of increasing column index."""
        r = np.asarray(_BASE_ORIENTATION[self.plane][0])
        return -r if self.flip_cols else r

    @property
    def column_direction(self) -> np.ndarray:
        """c = ImageOrientationPatient[3:], the direction of increasing row index."""
        c = np.asarray(_BASE_ORIENTATION[self.plane][1])
        return -c if self.flip_rows else c

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def orientation(self) -> list[float]:
        """ImageOrientationPatient (6 values, no negative zeros)."""
        return [float(v) + 0.0 for v in np.concatenate([self.row_direction, self.column_direction])]

    @property
    def written_pixel_spacing(self) -> tuple[float, float]:
        return _ds_round(self.pixel_spacing[0]), _ds_round(self.pixel_spacing[1])

    def positions(self) -> np.ndarray:
        """(num_slices, 3) ImagePositionPatient of each file-order slice, as written (4-decimal DS)."""
        r, c, n = self.row_direction, self.column_direction, self.normal
        ps_row, ps_col = self.written_pixel_spacing
        corner = (np.asarray(self.centre) - (self.cols - 1) / 2.0 * ps_col * r - (self.rows - 1) / 2.0 * ps_row * c)
        offsets = (np.arange(self.num_slices) - (self.num_slices - 1) / 2.0) * self.slice_spacing
        if self.reverse_slices:
            offsets = offsets[::-1]
        out = corner[None, :] + offsets[:, None] * n[None, :]
        return np.vectorize(_ds_round)(out)

    def pixel_coordinates(self, slices: slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x, y, z (mm) of every pixel of the selected file-order slices.

        Each array broadcasts to (k, rows, cols) but keeps length 1 along the index axes it does not depend on
        (for axis-aligned planes each coordinate depends on one index axis only), so callers can evaluate
        separable terms cheaply; use np.broadcast_to for the full shape.
        """
        ipp = self.positions()[slices if slices is not None else slice(None)]
        ps_row, ps_col = self.written_pixel_spacing
        i = np.arange(self.rows, dtype=np.float64)
        j = np.arange(self.cols, dtype=np.float64)
        r, c = self.row_direction, self.column_direction
        out = []
        for axis in range(3):
            value = ipp[:, axis][:, None, None]
            if np.all(value == value[0]):
                value = value[:1]
            if c[axis] != 0:  # skipping exact-zero terms leaves every sum unchanged
                value = value + (i * ps_row * c[axis])[None, :, None]
            if r[axis] != 0:
                value = value + (j * ps_col * r[axis])[None, None, :]
            out.append(value)
        return out[0], out[1], out[2]

    def index_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(origin, A) with patient = origin + A @ (k, i, j) for file-order slice k, row i, column j."""
        ipp = self.positions()
        ps_row, ps_col = self.written_pixel_spacing
        step = self.normal * self.slice_spacing * (-1.0 if self.reverse_slices else 1.0)
        a = np.stack([step, self.column_direction * ps_row, self.row_direction * ps_col], axis=1)
        return ipp[0], a

    def locate(self, point) -> PixelLocation:
        """The file-order slice nearest a patient point and the point's fractional (row, col) in it."""
        p = np.asarray(point, dtype=float)
        ipp = self.positions()
        dist = (p[None, :] - ipp) @ self.normal
        k = int(np.argmin(np.abs(dist)))
        v = p - ipp[k]
        ps_row, ps_col = self.written_pixel_spacing
        return PixelLocation(index=k, row=float(v @ self.column_direction / ps_row),
                             col=float(v @ self.row_direction / ps_col), distance_mm=float(abs(dist[k])))

    def contains(self, location: PixelLocation) -> bool:
        return 0 <= location.row <= self.rows - 1 and 0 <= location.col <= self.cols - 1
