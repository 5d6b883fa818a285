"""The competition-scale phantom: each modality's grid as in the real data (slices, slab, pixels) and its slab."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from inference.errors import ConfigError

from .acquisition import Acquisition
from .anatomy import Anatomy

__all__ = ["ModalityGrid", "COMPETITION_GRIDS", "downscale_grids", "competition_grid", "willis_band",
           "willis_share", "WILLIS_PAD_MM"]

WILLIS_PAD_MM = 5.0  # the circle-of-Willis band: the 13 location sites' z range, padded this much either side


@dataclass(frozen=True)
class ModalityGrid:
    """How the competition's series of one modality sample the head (the seed's tables, see the README).

    Attributes:
        modality: competition modality label.
        slices: slice count range (inclusive).
        coverage_mm: slab thickness range along the slice normal (first slice to last).
        pixel_mm: in-plane pixel spacing range (rows = cols = size).
        size: rows and columns.
        anchor: 'vertex': the slab's top sits at the vertex and it runs down (CTA from the neck, whole-brain MR);
            'willis': the slab is centred on the circle of Willis (time-of-flight MRA).
        non_axial_fraction: coronal or sagittal (half each); such a slab spans the head along its axis.
    """

    modality: str
    slices: tuple[int, int]
    coverage_mm: tuple[float, float]
    pixel_mm: tuple[float, float] = (0.35, 0.55)
    size: int = 512
    anchor: Literal["vertex", "willis"] = "vertex"
    non_axial_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("slices", "coverage_mm", "pixel_mm"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{self.modality} grid: {name} must be (low, high), 0 < low <= high, "
                                  f"got {(low, high)}")
        if self.slices[0] < 2 or self.size < 8 or self.anchor not in ("vertex", "willis"):
            raise ConfigError(f"{self.modality} grid: need >= 2 slices, size >= 8 and anchor 'vertex' or "
                              f"'willis', got {self.slices}, {self.size}, {self.anchor!r}")
        if not 0.0 <= self.non_axial_fraction <= 1.0:
            raise ConfigError(f"{self.modality} grid: non_axial_fraction must lie in [0, 1]")

    def downscaled(self, factor: int) -> ModalityGrid:
        """The same millimetres with `factor` times fewer pixels a side (slices unchanged)."""
        if factor < 1:
            raise ConfigError(f"downscale must be an integer >= 1, got {factor}")
        return replace(self, size=max(8, int(round(self.size / factor))),
                       pixel_mm=(self.pixel_mm[0] * factor, self.pixel_mm[1] * factor))


# The competition's series (the seed's tables): CTA about 400 slices from the neck to the vertex (180-260 mm), MRA
# about 175 slices of a time-of-flight slab (60-120 mm) around the circle of Willis, whole-brain T2 about 150
# slices, T1 post-contrast about 35 thick slices; 512 x 512 at 0.35-0.55 mm.
COMPETITION_GRIDS: tuple[ModalityGrid, ...] = (
    ModalityGrid("CTA", slices=(330, 470), coverage_mm=(180.0, 260.0), anchor="vertex"),
    ModalityGrid("MRA", slices=(140, 210), coverage_mm=(60.0, 120.0), anchor="willis"),
    ModalityGrid("MRI T2", slices=(120, 180), coverage_mm=(130.0, 170.0), anchor="vertex", non_axial_fraction=0.1),
    ModalityGrid("MRI T1post", slices=(28, 42), coverage_mm=(140.0, 190.0), anchor="vertex",
                 non_axial_fraction=0.2),
)


def downscale_grids(grids: Sequence[ModalityGrid], factor: int) -> tuple[ModalityGrid, ...]:
    """Every grid with `factor` times fewer pixels a side, the same millimetres and slices."""
    return tuple(g.downscaled(factor) for g in grids)


def willis_band(anatomy: Anatomy) -> tuple[float, float]:
    """(low, high) patient z (mm) of the circle-of-Willis region: the 13 location sites, padded WILLIS_PAD_MM."""
    z = [p[2] for _, p in anatomy.sites]
    return min(z) - WILLIS_PAD_MM, max(z) + WILLIS_PAD_MM


def willis_share(anatomy: Anatomy, acq: Acquisition) -> float:
    """Share of an axial series' slices whose plane lies inside the circle-of-Willis band (NaN when not axial)."""
    if acq.plane != "axial":
        return float("nan")
    low, high = willis_band(anatomy)
    z = acq.positions()[:, 2]
    return float(np.mean((z >= low) & (z <= high)))


def competition_grid(rng: np.random.Generator, anatomy: Anatomy, grid: ModalityGrid) -> Acquisition:
    """The geometry of one competition-scale series (storage options left at their defaults).

    The slab always holds every location site and blob: a vertex-anchored slab grows downwards, a Willis-centred
    one widens, when its drawn coverage would miss one.
    """
    plane = "axial"
    if rng.random() < grid.non_axial_fraction:
        plane = "coronal" if rng.random() < 0.5 else "sagittal"
    spacing = round(float(rng.uniform(*grid.pixel_mm)), 4)
    num_slices = int(rng.integers(grid.slices[0], grid.slices[1] + 1))
    coverage = float(rng.uniform(*grid.coverage_mm))
    head = np.asarray(anatomy.head_centre, dtype=float)
    semi = np.asarray(anatomy.head_semi_axes, dtype=float)
    low, high = anatomy.extent()
    centre = head + np.array([*rng.uniform(-5.0, 5.0, size=2), 0.0])
    if plane == "axial":
        if grid.anchor == "vertex":
            top = head[2] + semi[2] + float(rng.uniform(0.0, 10.0))
            coverage = max(coverage, top - (low[2] - 4.0))
            centre[2] = top - coverage / 2.0
        else:
            needed = float(high[2] - low[2]) + 8.0
            coverage = max(coverage, needed)
            slack = (coverage - needed) / 2.0
            centre[2] = (low[2] + high[2]) / 2.0 + float(rng.uniform(-slack, slack))
    else:  # a whole-head slab across x (sagittal) or y (coronal)
        axis = 0 if plane == "sagittal" else 1
        coverage = 2.0 * semi[axis] + float(rng.uniform(0.0, 10.0))
        centre[axis] = head[axis]
        centre[2] = head[2]
    slice_spacing = round(coverage / (num_slices - 1), 3)
    return Acquisition(plane=plane, rows=grid.size, cols=grid.size, num_slices=num_slices,  # type: ignore[arg-type]
                       pixel_spacing=(spacing, spacing), slice_spacing=slice_spacing,
                       centre=tuple(round(float(v), 2) for v in centre))  # type: ignore[arg-type]
