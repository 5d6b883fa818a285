"""Vessel segmentations as the competition ships them: segmentations/<uid>/<uid>.nii and <uid>_cowseg.nii (NIfTI).

Layout and names as the 1st-place solution reads them (gunachalla/Intercranial-Aneurysm-Detection:
`src/my_utils/rsna_loader.py` reads `segmentations/<uid>/<uid>_cowseg.nii`; its later
`src/nnUnet_utils/create_nnunet_dataset.py` reads the same two names from a flattened `segmentations/` folder).
The arrays are in dcm2niix's order, the one real files use: voxel axis 0 = the DICOM column, axis 1 = the DICOM
row run backwards, axis 2 = the slices in increasing position along the slice normal; the affine maps voxels to
RAS millimetres (an axial series reads 'LAS' in nibabel's axis codes). Labels: anatomy.VESSEL_MASK_LABELS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .acquisition import Acquisition
from .render import render_vessel_labels
from .spec import SeriesSpec

__all__ = ["SEGMENTATION_DIR", "nifti_affine", "to_nifti_order", "mask_paths", "write_vessel_mask"]

SEGMENTATION_DIR = "segmentations"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def nifti_affine(acq: Acquisition) -> np.ndarray:
    """The 4 x 4 voxel -> RAS (mm) affine of a series' NIfTI in dcm2niix's voxel order (written DICOM geometry)."""
    origin, a = acq.index_affine()  # patient(LPS) = origin + a @ (k_file, row, col)
    step_k, step_row, step_col = a[:, 0], a[:, 1], a[:, 2]
    first = origin if not acq.reverse_slices else origin + step_k * (acq.num_slices - 1)
    step_slice = -step_k if acq.reverse_slices else step_k  # slices ascending along the normal
    corner = first + step_row * (acq.rows - 1)  # NIfTI axis 1 runs the rows backwards
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = step_col, -step_row, step_slice, corner
    out = np.eye(4)
    out[:3, :] = _LPS_TO_RAS @ lps[:3, :]
    return out


def to_nifti_order(volume: np.ndarray, acq: Acquisition) -> np.ndarray:
    """A file-order (k, rows, cols) volume in the NIfTI voxel order of `nifti_affine` (cols, rows reversed, k)."""
    ordered = volume[::-1] if acq.reverse_slices else volume
    return np.ascontiguousarray(ordered[:, ::-1, :].transpose(2, 1, 0))


def mask_paths(root: str | Path, series_uid: str) -> tuple[Path, Path]:
    """(image, label map) paths of a series' segmentation under the dataset root."""
    folder = Path(root) / SEGMENTATION_DIR / series_uid
    return folder / f"{series_uid}.nii", folder / f"{series_uid}_cowseg.nii"


def write_vessel_mask(spec: SeriesSpec, root: str | Path, *, image: np.ndarray) -> tuple[Path, Path]:
    """Write the series' image and its 13-label vessel map as NIfTI under root/segmentations/<uid>/.

    Args:
        spec: the series.
        root: the dataset root.
        image: the series' modality values in file order (k, rows, cols), e.g. dicom_writer.physical_pixels.
    Returns:
        (image path, label map path).
    """
    import nibabel as nib  # phantom tooling only

    acq = spec.acquisition
    affine = nifti_affine(acq)
    labels = render_vessel_labels(spec.anatomy, acq)
    image_path, label_path = mask_paths(root, spec.series_uid)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    for data, path in ((np.rint(image).astype(np.int16), image_path), (labels, label_path)):
        nii = nib.Nifti1Image(to_nifti_order(data, acq), affine)
        nii.set_sform(affine, code=1)
        nii.set_qform(affine, code=1)
        nii.header.set_xyzt_units("mm")
        nib.save(nii, str(path))
    return image_path, label_path
