"""Evaluate the analytic head at every pixel's patient position: tissue memberships -> modality intensities."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.errors import ConfigError

from .acquisition import Acquisition
from .anatomy import Anatomy, Neck, vessel_label_segments

__all__ = ["Intensities", "MODALITY_INTENSITIES", "blob_level", "render_volume", "render_vessel_labels"]

_EDGE_MM = 1.0  # soft tissue boundaries ramp over 1 mm (a function of position only: orientation-exact)
_CHUNK_VOXELS = 2_000_000


@dataclass(frozen=True)
class Intensities:
    """Nominal tissue intensities of one modality (HU for CT, arbitrary scanner units for MR, before gain).

    `blob` is None when the blob follows brain + (vessel - brain) * blob_contrast; T2 sets its own flow-void
    model (dark blob core, bright CSF rim). `noise` is the standard deviation (Gaussian for CT, Rician for MR).
    """

    air: float
    scalp: float
    skull: float
    brain: float
    csf: float
    vessel: float
    noise: float
    vessel_sheath_mm: float = 0.0  # CSF sheath drawn around vessels and blobs (T2 cisterns)
    blob_rim_mm: float = 0.0
    soft: float = 0.0  # neck soft tissue (muscle), drawn only for an anatomy with a neck


# CTA: contrast-filled vessels ~330 HU in 35 HU brain, skull 1100 HU. MRA (TOF) and T1post: bright vessels and
# bright scalp fat (fat sits above the blobs so MR percentile scaling keeps vessel and blob levels apart).
# T2: bright CSF, vessels are dark flow voids inside a thin CSF sheath; blobs are dark round flow voids with a
# bright CSF rim (blob_contrast makes the core darker).
MODALITY_INTENSITIES: dict[str, Intensities] = {
    "CTA": Intensities(air=-1000.0, scalp=30.0, skull=1100.0, brain=35.0, csf=8.0, vessel=330.0, noise=7.0,
                       soft=45.0),
    "MRA": Intensities(air=0.0, scalp=1300.0, skull=30.0, brain=200.0, csf=80.0, vessel=700.0, noise=14.0,
                       soft=160.0),
    "MRI T1post": Intensities(air=0.0, scalp=1300.0, skull=40.0, brain=420.0, csf=120.0, vessel=760.0,
                              noise=14.0, soft=380.0),
    "MRI T2": Intensities(air=0.0, scalp=520.0, skull=30.0, brain=450.0, csf=1400.0, vessel=60.0, noise=14.0,
                          vessel_sheath_mm=1.0, blob_rim_mm=2.0, soft=330.0),
}


def blob_level(modality: str, blob_contrast: float, vessel: float | None = None) -> float:
    """Nominal intensity of a blob's core (before MR gain)."""
    t = MODALITY_INTENSITIES[modality]
    vessel = t.vessel if vessel is None else vessel
    if t.blob_rim_mm > 0:  # flow void: darker than the vessel as contrast rises
        return float(vessel / max(blob_contrast, 1e-6))
    return float(t.brain + (vessel - t.brain) * blob_contrast)


def _ramp(signed_distance: np.ndarray) -> np.ndarray:
    """Membership 1 inside (negative distance), 0 outside, linear over _EDGE_MM."""
    return np.clip(0.5 - signed_distance / _EDGE_MM, 0.0, 1.0)


def _index_box(origin: np.ndarray, affine_inv: np.ndarray, low: np.ndarray, high: np.ndarray,
               shape: tuple[int, int, int]) -> tuple[slice, slice, slice] | None:
    """Index-space bounding box (file-order k, i, j) of a patient-space box, clamped to the grid."""
    corners = np.array([[low[0] if a else high[0], low[1] if b else high[1], low[2] if c else high[2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    idx = (corners - origin) @ affine_inv.T
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 2
    out = []
    for axis in range(3):
        a, b = max(int(lo[axis]), 0), min(int(hi[axis]), shape[axis])
        if a >= b:
            return None
        out.append(slice(a, b))
    return out[0], out[1], out[2]


def _segment_distance(x, y, z, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    length2 = float(ab @ ab) or 1e-12
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / length2, 0.0, 1.0)
    return np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)


def _ellipsoid_membership(x, y, z, centre, semi) -> np.ndarray:
    r = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
                + ((z - centre[2]) / semi[2]) ** 2)
    return _ramp((r - 1.0) * min(semi))


def _render_neck(value: np.ndarray, neck: Neck, t: Intensities, x, y, z, surface: np.ndarray,
                 origin: np.ndarray, affine_inv: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Neck soft tissue below the brain's floor, then the skull base and cervical spine as bone (in place)."""
    (cx, cy), (ax, ay) = neck.centre_xy, neck.semi_xy
    column = (np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1.0) * ((ax + ay) / 2.0)
    in_neck = _ramp(column) * _ramp(z - neck.top_z)
    below_floor = _ramp(z - neck.brain_floor_z) * _ramp(surface)
    soft = np.maximum(in_neck, below_floor)
    value += (t.soft - value) * soft
    xb, yb, zb = (np.broadcast_to(a, shape) for a in (x, y, z))
    for centre, semi in neck.bones:
        reach = np.asarray(semi) + 2.0 * _EDGE_MM
        box = _index_box(origin, affine_inv, np.asarray(centre) - reach, np.asarray(centre) + reach, shape)
        if box is None:
            continue
        value[box] += (t.skull - value[box]) * _ellipsoid_membership(xb[box], yb[box], zb[box], centre, semi)


def _render_chunk(anatomy: Anatomy, acq: Acquisition, k0: int, k1: int, modality: str, vessel_level: float,
                  blob_contrast: float) -> np.ndarray:
    t = MODALITY_INTENSITIES[modality]
    x, y, z = acq.pixel_coordinates(slice(k0, k1))  # broadcastable, often (k,1,1), (1,rows,1), (1,1,cols)
    shape = (k1 - k0, acq.rows, acq.cols)
    origin, affine = acq.index_affine()
    origin = origin + affine[:, 0] * k0
    affine_inv = np.linalg.inv(affine)

    cx, cy, cz = anatomy.head_centre
    ax, ay, az = anatomy.head_semi_axes
    rho = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
    surface = (rho - 1.0) * ((ax + ay + az) / 3.0)  # approximate signed distance to the head surface
    value = np.full(shape, t.air, dtype=np.float64)
    value += (t.scalp - value) * _ramp(surface)
    value += (t.skull - value) * _ramp(surface + anatomy.scalp_mm)
    px, py, pz = anatomy.texture_phase
    texture = 1.0 + 0.06 * np.sin(x / 7.0 + px) * np.sin(y / 9.0 + py) * np.sin(z / 8.0 + pz)
    value += (t.brain * texture - value) * _ramp(surface + anatomy.scalp_mm + anatomy.skull_mm)
    if anatomy.neck is not None:
        _render_neck(value, anatomy.neck, t, x, y, z, surface, origin, affine_inv, shape)
    del rho, surface, texture
    x, y, z = (np.broadcast_to(a, shape) for a in (x, y, z))  # read-only views for the sub-box lookups
    for centre, semi in anatomy.ventricles:
        reach = np.asarray(semi) * 1.25 + _EDGE_MM  # the ramp ends at r = 1 + 0.5 mm / min(semi) <= 1.1
        box = _index_box(origin, affine_inv, np.asarray(centre) - reach, np.asarray(centre) + reach, shape)
        if box is None:
            continue
        r = np.sqrt(((x[box] - centre[0]) / semi[0]) ** 2 + ((y[box] - centre[1]) / semi[1]) ** 2
                    + ((z[box] - centre[2]) / semi[2]) ** 2)
        value[box] += (t.csf - value[box]) * _ramp((r - 1.0) * min(semi))

    vessel = np.zeros(shape)
    sheath = np.zeros(shape) if t.vessel_sheath_mm > 0 else None
    margin = t.vessel_sheath_mm + _EDGE_MM
    for v in anatomy.vessels:
        pts = np.asarray(v.points, dtype=float)
        for a, b in zip(pts[:-1], pts[1:]):
            box = _index_box(origin, affine_inv, np.minimum(a, b) - v.radius - margin,
                             np.maximum(a, b) + v.radius + margin, shape)
            if box is None:
                continue
            d = _segment_distance(x[box], y[box], z[box], a, b)
            np.maximum(vessel[box], _ramp(d - v.radius), out=vessel[box])
            if sheath is not None:
                np.maximum(sheath[box], _ramp(d - v.radius - t.vessel_sheath_mm), out=sheath[box])

    blob = np.zeros(shape)
    for an in anatomy.aneurysms:
        c = np.asarray(an.centre)
        outer = an.radius + t.blob_rim_mm + _EDGE_MM
        box = _index_box(origin, affine_inv, c - outer, c + outer, shape)
        if box is None:
            continue
        d = np.sqrt((x[box] - c[0]) ** 2 + (y[box] - c[1]) ** 2 + (z[box] - c[2]) ** 2)
        np.maximum(blob[box], _ramp(d - an.radius), out=blob[box])
        if sheath is not None:
            np.maximum(sheath[box], _ramp(d - an.radius - t.blob_rim_mm), out=sheath[box])

    if sheath is not None:
        value += (t.csf - value) * sheath
    value += (vessel_level - value) * vessel
    value += (blob_level(modality, blob_contrast, vessel_level) - value) * blob
    return value


def render_volume(anatomy: Anatomy, acq: Acquisition, modality: str, *, vessel_level: float | None = None,
                  blob_contrast: float = 1.6, gain: float = 1.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Render a series in physical units (HU for CTA, scanner units for MR), file order (k, rows, cols).

    Args:
        anatomy: the head.
        acq: the sampling grid; acq.noise scales the modality noise (0: exact, orientation-independent values).
        modality: 'CTA' | 'MRA' | 'MRI T2' | 'MRI T1post'.
        vessel_level: vessel intensity (defaults to the modality's nominal one).
        blob_contrast: 1.0 makes blobs as bright as vessels (as dark, T2); larger is easier.
        gain: MR scanner scale multiplying every intensity (ignored for CT).
        rng: noise source; required when acq.noise > 0.
    Returns:
        float64 array (num_slices, rows, cols).
    Raises:
        ConfigError: noise requested without an rng.
    """
    t = MODALITY_INTENSITIES[modality]
    vessel_level = t.vessel if vessel_level is None else float(vessel_level)
    out = np.empty((acq.num_slices, acq.rows, acq.cols), dtype=np.float64)
    step = max(1, _CHUNK_VOXELS // (acq.rows * acq.cols))
    for k0 in range(0, acq.num_slices, step):
        k1 = min(k0 + step, acq.num_slices)
        out[k0:k1] = _render_chunk(anatomy, acq, k0, k1, modality, vessel_level, blob_contrast)
    is_ct = modality == "CTA"
    if not is_ct:
        out *= gain
    sigma = t.noise * acq.noise * (1.0 if is_ct else gain)
    if sigma > 0:
        if rng is None:
            raise ConfigError("render_volume needs an rng when acq.noise > 0")
        if is_ct:
            out += rng.normal(0.0, sigma, size=out.shape)
        else:  # Rician magnitude noise
            real = out + rng.normal(0.0, sigma, size=out.shape)
            imag = rng.normal(0.0, sigma, size=out.shape)
            out = np.sqrt(real * real + imag * imag)
    return out


def render_vessel_labels(anatomy: Anatomy, acq: Acquisition) -> np.ndarray:
    """The vessel label map of a series (uint8, file order (k, rows, cols)): VESSEL_MASK_LABELS, 0 background.

    A voxel takes the label of the vessel segment it lies inside (centreline distance <= radius, the same
    surface the renderer draws at half membership); where two segments overlap the later one wins.
    """
    shape = (acq.num_slices, acq.rows, acq.cols)
    out = np.zeros(shape, dtype=np.uint8)
    origin, affine = acq.index_affine()
    affine_inv = np.linalg.inv(affine)
    x, y, z = (np.broadcast_to(a, shape) for a in acq.pixel_coordinates())
    for label, a, b, radius in vessel_label_segments(anatomy):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        box = _index_box(origin, affine_inv, np.minimum(a, b) - radius - _EDGE_MM, np.maximum(a, b) + radius + _EDGE_MM,
                         shape)
        if box is None:
            continue
        inside = _segment_distance(x[box], y[box], z[box], a, b) <= radius
        out[box][inside] = label
    return out
