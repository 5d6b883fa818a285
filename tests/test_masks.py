"""Vessel masks as the competition ships them: NIfTI on the series' DICOM grid, labels on the phantom's vessels."""
from __future__ import annotations

import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pydicom
import pytest

from phantom import (
    MODALITY_INTENSITIES,
    VESSEL_MASK_LABELS,
    PhantomConfig,
    draw_split,
    make_dataset,
    mask_paths,
    nifti_affine,
    physical_pixels,
    stored_pixels,
    write_series,
    write_vessel_mask,
)
from training.audit import format_report, run_audit
from training.audit_masks import find_masks

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _dicom_sampler(folder):
    """Physical values at patient points, from the DICOM headers and pixels alone (single-frame files)."""
    files = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in files])
    iop = np.array([float(v) for v in files[0].ImageOrientationPatient])
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    ps_row, ps_col = (float(v) for v in files[0].PixelSpacing)
    pixels = np.stack([ds.pixel_array * float(getattr(ds, "RescaleSlope", 1.0))
                       + float(getattr(ds, "RescaleIntercept", 0.0)) for ds in files])

    def sample(points):
        points = np.atleast_2d(points)
        k = np.argmin(np.abs((points[:, None, :] - ipp[None]) @ n), axis=1)
        d = points - ipp[k]
        rows = np.rint(d @ c / ps_row).astype(int)
        cols = np.rint(d @ r / ps_col).astype(int)
        inside = (rows >= 0) & (rows < pixels.shape[1]) & (cols >= 0) & (cols < pixels.shape[2])
        return pixels[k[inside], rows[inside], cols[inside]], inside

    return sample


def _labelled_points(label_path):
    nii = nib.load(str(label_path))
    data = np.asanyarray(nii.dataobj)
    ijk = np.argwhere(data > 0)
    ras = ijk @ nii.affine[:3, :3].T + nii.affine[:3, 3]
    return ras @ RAS_TO_LPS.T, data[tuple(ijk.T)], nii


@pytest.mark.parametrize("modality, storage, codes", [
    ("CTA", dict(flip_rows=False, flip_cols=False, reverse_slices=False), ("L", "A", "S")),
    ("MRA", dict(flip_rows=True, flip_cols=True, reverse_slices=True), ("R", "P", "S")),
])
def test_mask_labels_sit_on_the_series_vessels(tmp_path, modality, storage, codes):
    config = PhantomConfig.competition(downscale=8, modality_weights=((modality, 1.0),))
    spec = draw_split(1, seed=11, split="train", config=config)[0]
    spec = spec.with_acquisition(noise=0.0, compression=None, multiframe=False, plane="axial", **storage)
    pixels = stored_pixels(spec)
    write_series(spec, tmp_path / "series" / spec.series_uid, storage=pixels)
    image_path, label_path = write_vessel_mask(spec, tmp_path, image=physical_pixels(pixels))
    assert (image_path, label_path) == mask_paths(tmp_path, spec.series_uid)
    assert label_path.name == f"{spec.series_uid}_cowseg.nii" and image_path.name == f"{spec.series_uid}.nii"

    points, labels, nii = _labelled_points(label_path)
    acq = spec.acquisition
    assert nii.shape == (acq.cols, acq.rows, acq.num_slices)
    assert nib.aff2axcodes(nii.affine) == codes  # dcm2niix's order: DICOM columns, rows reversed, slices upwards
    assert set(labels.tolist()) == set(VESSEL_MASK_LABELS.values())  # all 13 vessels labelled

    # every labelled voxel is vessel-bright in the DICOM series (the vessel drawn at >= half membership there)
    t = MODALITY_INTENSITIES[modality]
    gain = 1.0 if modality == "CTA" else spec.gain
    floor = min(t.csf, t.skull, t.soft, 0.9 * t.brain)
    threshold = (floor + 0.5 * (spec.vessel_level - floor)) * gain - 2.0
    values, inside = _dicom_sampler(tmp_path / "series" / spec.series_uid)(points)
    assert inside.all()
    assert np.mean(values >= threshold) >= 0.99, (np.mean(values >= threshold), threshold)

    # left labels lie on the patient's left (+x in LPS) of their right twins
    for name, label in VESSEL_MASK_LABELS.items():
        if name.startswith("Left"):
            twin = VESSEL_MASK_LABELS[name.replace("Left", "Right")]
            assert np.median(points[labels == label, 0]) > np.median(points[labels == twin, 0]) + 2.0, name
    for name in ("Left Middle Cerebral Artery", "Left Infraclinoid Internal Carotid Artery"):
        assert np.median(points[labels == VESSEL_MASK_LABELS[name], 0]) > 10.0, name
    # the voxel nearest each location's site carries that location's label (or a neighbour where vessels meet)
    for name in ("Left Middle Cerebral Artery", "Right Anterior Cerebral Artery", "Basilar Tip",
                 "Left Infraclinoid Internal Carotid Artery"):
        site = np.asarray(spec.anatomy.site(name))
        nearest = labels[np.argmin(np.linalg.norm(points - site, axis=1))]
        assert nearest == VESSEL_MASK_LABELS[name], (name, nearest)


def test_storage_order_changes_the_voxel_order_not_the_grid():
    """Reversed slices and flipped rows reorder the NIfTI's voxels; its corners stay on the same patient points."""
    config = PhantomConfig.competition(downscale=8, modality_weights=(("MRI T1post", 1.0),))
    acq = draw_split(1, seed=2, split="train", config=config)[0].acquisition
    plain = replace(acq, reverse_slices=False, flip_rows=False, flip_cols=False)
    stored = replace(acq, reverse_slices=True, flip_rows=True, flip_cols=True)
    corners = np.array([[i, j, k, 1.0] for i in (0, acq.cols - 1) for j in (0, acq.rows - 1)
                        for k in (0, acq.num_slices - 1)])

    def points(a):
        return np.sort((corners @ nifti_affine(a).T)[:, :3], axis=0)

    assert np.allclose(points(plain), points(stored), atol=0.02)  # positions are written to 4 decimals
    assert not np.allclose(nifti_affine(plain)[:3, :3], nifti_affine(stored)[:3, :3])


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks") / "data"
    config = PhantomConfig.competition(downscale=8, modality_weights=(("MRI T1post", 1.0),), mask_fraction=0.5)
    summary = make_dataset(root, series=6, test_series=0, seed=3, config=config)
    assert summary.masks == 3
    return root


def test_audit_counts_masks_and_reports_the_ones_off_their_series(masked_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(masked_dataset, root)
    found = find_masks(root)
    assert len(found) == 3
    uids = sorted(found)
    # plant: one mask's affine moved 10 mm, one labelled under another series' name, one with no series
    label_path, image_path = found[uids[0]]
    for path in (label_path, image_path):
        nii = nib.load(str(path))
        data, affine = np.asanyarray(nii.dataobj).copy(), nii.affine.copy()  # copied: the file is rewritten in place
        affine[0, 3] += 10.0
        nib.save(nib.Nifti1Image(data, affine), str(path))
    series = sorted(p.name for p in (root / "series").iterdir())
    other = next(u for u in series if u not in found)
    moved = root / "segmentations" / other
    moved.mkdir()
    shutil.copy(found[uids[1]][0], moved / f"{other}_cowseg.nii")
    orphan = root / "segmentations" / "1.2.3.4.5"
    orphan.mkdir()
    shutil.copy(found[uids[2]][0], orphan / "1.2.3.4.5_cowseg.nii")

    report = run_audit(root, sample=0, workers=0, progress=False)
    masks = report.masks
    assert masks.found == 5 and masks.usable == 2
    assert set(masks.problems) == {uids[0], other, "1.2.3.4.5"}
    assert "mm off" in masks.problems[uids[0]]
    assert "not in train.csv" in masks.problems["1.2.3.4.5"]
    assert masks.by_modality == {"MRI T1post": 2}
    assert set(masks.label_series) <= set(range(1, 14)) and max(masks.label_series.values()) == 2
    # at 3-4 mm pixels the 1 mm communicating arteries may fall between voxels; the large vessels never do
    assert {label for label, n in masks.label_series.items() if n == 2} >= {1, 2, 5, 6, 7, 8, 9, 10}
    text = format_report(report)
    assert "Vessel masks: 5 found" in text and "2 usable" in text
    assert report.to_dict()["masks"]["usable"] == 2


def test_audit_without_masks_says_so(masked_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(masked_dataset, root, ignore=shutil.ignore_patterns("segmentations"))
    report = run_audit(root, sample=0, workers=0, progress=False)
    assert report.masks.found == 0 and "Vessel masks: none" in format_report(report)
