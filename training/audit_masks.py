"""Vessel segmentations (segmentations/): find them, count them and their labels, check each lies on its series.

The competition ships a NIfTI image and a 13-label vessel map for about 4% of the training series:
`segmentations/<uid>/<uid>.nii` and `segmentations/<uid>/<uid>_cowseg.nii` (the layout the 1st-place solution's
`rsna_loader.py` reads; a flattened `segmentations/<uid>_cowseg.nii` is read too, as its later scripts do). A
mask is usable when its voxel grid, mapped through its affine, lands on the corners of its series' DICOM stack
(the one the loader chooses) within half a voxel; one that does not, or whose labels fall outside 0-13, or whose
series is not in train.csv, is reported and not used. nibabel reads the files (headers and label values only).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from inference.load import plan_series

__all__ = ["MASK_FOLDER", "MAX_LABEL", "MaskCheck", "MaskAudit", "find_masks", "check_mask", "audit_masks",
           "usable_masks"]

log = logging.getLogger(__name__)

MASK_FOLDER = "segmentations"
MAX_LABEL = 13  # the 13 vessel labels; 0 is background
_LABEL_SUFFIXES = ("_cowseg.nii", "_cowseg.nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class MaskCheck:
    """One vessel mask and what its check found (`usable` False: `problem` says why)."""

    series_uid: str
    label_path: str
    image_path: str | None
    usable: bool = False
    problem: str = ""
    labels: list[int] = field(default_factory=list)  # label values present (background excluded)
    shape: tuple[int, ...] = ()
    corner_error_mm: float | None = None  # the worst NIfTI corner's distance to the DICOM stack's nearest corner


@dataclass
class MaskAudit:
    """Every mask found under segmentations/ and what the checks made of them."""

    found: int = 0
    usable: int = 0
    train_series: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)  # usable masks per modality
    label_series: dict[int, int] = field(default_factory=dict)  # label -> usable masks holding it
    problems: dict[str, str] = field(default_factory=dict)  # series uid -> why its mask is not used
    checks: list[MaskCheck] = field(default_factory=list)


def find_masks(data_dir: str | Path) -> dict[str, tuple[Path, Path | None]]:
    """series uid -> (label map, image or None), from segmentations/<uid>/ and from a flat segmentations/."""
    root = Path(data_dir) / MASK_FOLDER
    found: dict[str, tuple[Path, Path | None]] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*_cowseg.nii*")) + sorted(root.glob("*/*_cowseg.nii*")):
        suffix = next((s for s in _LABEL_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None:
            continue
        uid = path.name[: -len(suffix)]
        image = next((p for p in (path.parent / f"{uid}.nii", path.parent / f"{uid}.nii.gz") if p.is_file()), None)
        found.setdefault(uid, (path, image))
    return found


def _grid_corners_lps(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(8, 3) LPS millimetres of a NIfTI voxel grid's corner voxel centres."""
    corners = np.array([[i, j, k, 1.0] for i, j, k in product(*[(0, n - 1) for n in shape[:3]])])
    return (corners @ affine.T)[:, :3] @ _RAS_TO_LPS.T


def _stack_corners_lps(series_dir: Path) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """(8, 3) LPS corners of the series' chosen DICOM stack, its (slices, rows, cols), its smallest spacing."""
    stack = plan_series(series_dir).stack
    if stack.orientation is None or len(stack.order) == 0:
        raise ValueError("the series has no stack with a usable orientation")
    frames, order = stack.frames, stack.order
    rows, cols = frames.shapes[int(order[0])]
    r, c = np.asarray(stack.orientation[:3], float), np.asarray(stack.orientation[3:], float)
    ps_row, ps_col = (float(v) for v in frames.spacing[int(order[0])])
    ends = frames.positions[[int(order[0]), int(order[-1])]]
    if not np.all(np.isfinite(ends)) or not np.isfinite(ps_row * ps_col):
        raise ValueError("the series' stack lacks positions or pixel spacing")
    corners = np.array([p + a * (cols - 1) * ps_col * r + b * (rows - 1) * ps_row * c
                        for p, a, b in product(ends, (0, 1), (0, 1))])
    spacing = min(ps_row, ps_col, stack.slice_spacing or np.inf)
    return corners, (len(order), rows, cols), spacing


def check_mask(series_uid: str, label_path: str | Path, image_path: str | Path | None,
               series_dir: str | Path) -> MaskCheck:
    """Check one mask against its series: labels 0-13, image and labels on one grid, that grid on the DICOM's."""
    import nibabel as nib  # development side only

    check = MaskCheck(series_uid, str(label_path), None if image_path is None else str(image_path))
    try:
        nii = nib.load(str(label_path))
        shape = tuple(int(n) for n in nii.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        check.shape = shape
        if len(shape) != 3:
            check.problem = f"the label map has shape {shape}, not 3-D"
            return check
        values = np.unique(np.asanyarray(nii.dataobj))
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 \
                or values.max() > MAX_LABEL:
            check.problem = f"label values {values[:20].tolist()} outside the integers 0-{MAX_LABEL}"
            return check
        check.labels = [int(v) for v in values if v > 0]
        affine = np.asarray(nii.affine, dtype=float)
        if image_path is not None:
            image = nib.load(str(image_path))
            if tuple(image.shape[:3]) != shape or not np.allclose(image.affine, affine, atol=1e-3):
                check.problem = f"the image {Path(image_path).name} is not on the label map's grid"
                return check
        corners, (slices, rows, cols), spacing = _stack_corners_lps(Path(series_dir))
        if sorted(shape) != sorted((slices, rows, cols)):
            check.problem = f"shape {shape} is not the series' {cols} columns x {rows} rows x {slices} slices"
            return check
        nifti = _grid_corners_lps(affine, shape)
        error = float(np.max(np.min(np.linalg.norm(nifti[:, None, :] - corners[None, :, :], axis=2), axis=1)))
        check.corner_error_mm = round(error, 3)
        tolerance = max(0.5 * spacing, 0.05)
        if error > tolerance:
            check.problem = (f"its grid is {error:.1f} mm off the series' DICOM stack (tolerance {tolerance:.2f} mm): "
                             "another series, or a wrong affine")
            return check
        check.usable = True
    except Exception as exc:  # noqa: BLE001 - one unreadable mask costs that mask
        check.problem = f"{type(exc).__name__}: {exc}"
    return check


def audit_masks(data_dir: str | Path, folders: Mapping[str, Path], modality_of: Mapping[str, str]) -> MaskAudit:
    """Check every mask under data_dir/segmentations against the train series (`folders`: uid -> series folder)."""
    audit = MaskAudit(train_series=len(folders))
    found = find_masks(data_dir)
    audit.found = len(found)
    labels: Counter[int] = Counter()
    modalities: Counter[str] = Counter()
    for uid, (label_path, image_path) in found.items():
        if uid not in folders:
            check = MaskCheck(uid, str(label_path), None if image_path is None else str(image_path),
                              problem="its series is not in train.csv")
        else:
            check = check_mask(uid, label_path, image_path, folders[uid])
        audit.checks.append(check)
        if check.usable:
            audit.usable += 1
            labels.update(check.labels)
            modalities[modality_of.get(uid, "?")] += 1
        else:
            audit.problems[uid] = check.problem
            log.warning("vessel mask of %s not used: %s", uid, check.problem)
    audit.label_series = dict(sorted(labels.items()))
    audit.by_modality = dict(sorted(modalities.items()))
    return audit


def usable_masks(audit: MaskAudit) -> dict[str, tuple[Path, Path | None]]:
    """series uid -> (label map, image) of the masks that passed their checks."""
    return {c.series_uid: (Path(c.label_path), None if c.image_path is None else Path(c.image_path))
            for c in audit.checks if c.usable}
