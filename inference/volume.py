"""The loaded series (`Volume`) and the axis permutation/flip that puts any acquisition in canonical orientation.

Canonical orientation (every series, whatever its acquisition plane or direction):
  axis 0 (slices): inferior -> superior   (+z of DICOM's LPS patient frame)
  axis 1 (rows):   anterior -> posterior  (+y)
  axis 2 (cols):   patient right -> patient left (+x), i.e. the radiological display convention:
                   the patient's left lies at high column indices, on the right of the image.
Only axis permutations and flips are used (oblique stacks snap to the nearest axis), so voxels are never
interpolated and a finding on the patient's left always lands at high column indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SliceSource", "CanonicalTransform", "Volume", "canonical_transform"]


@dataclass(frozen=True)
class SliceSource:
    """Where one acquired slice came from: the file's SOPInstanceUID and the 0-based frame inside it."""

    sop_instance_uid: str
    frame: int = 0
    path: str = ""


@dataclass(frozen=True)
class CanonicalTransform:
    """canonical = np.flip(stack.transpose(axes), axis=[i for i, f in enumerate(flips) if f]).

    `stack` is the acquired array (k, i, j): k along the slice normal (sorted), i the image row, j the column.
    `axes[c]` is the stack axis that becomes canonical axis c; `flips[c]` says canonical axis c is reversed.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def apply(self, stack: np.ndarray) -> np.ndarray:
        """Canonical view of a (k, i, j) stack (a view when possible, no copy)."""
        out = stack.transpose(self.axes)
        flip_axes = tuple(c for c, f in enumerate(self.flips) if f)
        return np.flip(out, axis=flip_axes) if flip_axes else out

    def point(self, stack_index: tuple[float, float, float],
              stack_shape: tuple[int, int, int]) -> tuple[float, float, float]:
        """Map a (k, i, j) stack coordinate (may be fractional) to its (slice, row, col) canonical coordinate."""
        out = []
        for c in range(3):
            a = self.axes[c]
            value = float(stack_index[a])
            if self.flips[c]:
                value = stack_shape[a] - 1 - value
            out.append(value)
        return out[0], out[1], out[2]

    def spacing(self, stack_spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """Permute a (k, i, j) spacing into canonical (slice, row, col) order."""
        return tuple(float(stack_spacing[a]) for a in self.axes)  # type: ignore[return-value]


def canonical_transform(row_direction: ArrayLike, column_direction: ArrayLike,
                        slice_direction: ArrayLike | None = None) -> CanonicalTransform:
    """The permutation/flips that bring a stack acquired with these directions to canonical orientation.

    Args:
        row_direction: patient-space direction of increasing column index j (ImageOrientationPatient[:3]).
        column_direction: direction of increasing row index i (ImageOrientationPatient[3:]).
        slice_direction: direction of increasing stack index k; defaults to row x column (the slice normal),
            which is the order the loader sorts slices in.
    Returns:
        A CanonicalTransform; each canonical axis takes the stack axis best aligned with it.
    """
    r = np.asarray(row_direction, dtype=float)
    c = np.asarray(column_direction, dtype=float)
    n = np.cross(r, c) if slice_direction is None else np.asarray(slice_direction, dtype=float)
    # stack axes 0, 1, 2 point along n, c, r in patient (x, y, z) space
    directions = np.stack([n, c, r])  # (stack axis, patient xyz)
    # canonical axes are patient z, y, x (in that order)
    alignment = directions[:, [2, 1, 0]]  # (stack axis, canonical axis)
    axes = [-1, -1, -1]
    flips = [False, False, False]
    remaining_stack = [0, 1, 2]
    # greedy by strongest alignment, so oblique stacks still give a permutation
    order = np.dstack(np.unravel_index(np.argsort(-np.abs(alignment), axis=None), alignment.shape))[0]
    for s, cax in order:
        if axes[cax] == -1 and s in remaining_stack:
            axes[cax] = int(s)
            flips[cax] = bool(alignment[s, cax] < 0)
            remaining_stack.remove(s)
    return CanonicalTransform(axes=tuple(axes), flips=tuple(flips))  # type: ignore[arg-type]


@dataclass
class Volume:
    """One series in canonical orientation.

    Attributes:
        pixels: float32 (slices, rows, cols), canonical orientation, rescaled (CT in Hounsfield units).
        spacing: (slice, row, col) spacing in mm, canonical order.
        modality: "CT" or "MR".
        series_uid: the folder's basename (the SeriesInstanceUID on Kaggle).
        sources: one SliceSource per acquired (stack) slice, in sorted stack order k.
        transform: stack -> canonical permutation/flips.
        stack_shape: shape of the acquired (k, i, j) stack before the transform.
        dropped: human-readable notes on files or frames left out (unreadable, other image size...).
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    series_uid: str = ""
    sources: list[SliceSource] = field(default_factory=list)
    transform: CanonicalTransform = field(default_factory=CanonicalTransform)
    stack_shape: tuple[int, int, int] = (0, 0, 0)
    dropped: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    def stack_view(self) -> np.ndarray:
        """`pixels` seen in acquired (k, i, j) stack order: a view, so writing slice k of it fills the volume."""
        flip_axes = tuple(c for c, f in enumerate(self.transform.flips) if f)
        out = np.flip(self.pixels, axis=flip_axes) if flip_axes else self.pixels
        return out.transpose(np.argsort(self.transform.axes))

    def stack_index_of(self, sop_instance_uid: str, frame: int = 0) -> int:
        """Stack index k of a (SOPInstanceUID, frame); KeyError when that frame is not in the volume."""
        for k, src in enumerate(self.sources):
            if src.sop_instance_uid == sop_instance_uid and src.frame == frame:
                return k
        raise KeyError(f"{sop_instance_uid} frame {frame} is not in series {self.series_uid}")

    def to_canonical(self, sop_instance_uid: str, frame: int, x: float, y: float) -> tuple[float, float, float]:
        """Map a localizer point (file, 0-based frame, pixel column x, pixel row y) to canonical (slice, row, col)."""
        k = self.stack_index_of(sop_instance_uid, frame)
        return self.transform.point((k, y, x), self.stack_shape)
