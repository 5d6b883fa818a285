"""The series loader: every transfer syntax, frame layouts, orientations, localizer mapping and broken files."""
from __future__ import annotations

import ast
import csv
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

import phantom
from inference.decode_pool import DecodeJob, DecodeLimits, DecodePool
from inference.dicom_io import DicomFileError, read_dicom
from inference.dicom_pixels import count_encapsulated_frames
from inference.errors import SeriesLoadError
from inference.load import load_series


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def _single(tmp_path: Path, name: str, **kwargs):
    """Load one pydicom test file as a one-file series."""
    folder = tmp_path / Path(name).stem
    folder.mkdir()
    shutil.copy(_testfile(name), folder / name)
    return load_series(folder, **kwargs)


def _modality_lut(name: str) -> np.ndarray:
    ds = pydicom.dcmread(_testfile(name))
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


# --------------------------------------------------------------------------------- one image, every syntax

SAME_IMAGE = {
    "emri_small.dcm": [
        "emri_small_big_endian.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],
    "MR_small.dcm": [
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
    "693_UNCR.dcm": ["693_J2KR.dcm"],
    "MR2_UNCR.dcm": ["MR2_J2KR.dcm"],
    "RG1_UNCR.dcm": ["RG1_J2KR.dcm"],
    "JPEG2000_UNC.dcm": ["JPEG2000.dcm"],
    "SC_rgb.dcm": ["SC_rgb_rle.dcm", "SC_rgb_expb.dcm"],
    "US1_UNCR.dcm": ["US1_J2KR.dcm"],  # RGB vs YBR_RCT colour
    "OBXXXX1A.dcm": ["OBXXXX1A_rle.dcm"],  # PALETTE COLOR
}


@pytest.mark.parametrize("reference, variant", [(r, v) for r, vs in SAME_IMAGE.items() for v in vs])
def test_lossless_transfer_syntaxes_decode_to_the_same_array(tmp_path, reference, variant):
    expected = _single(tmp_path, reference).pixels
    got = _single(tmp_path, variant).pixels
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_deflated_syntax_matches_uncompressed(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    folder = tmp_path / "deflated"
    folder.mkdir()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(folder / "ct.dcm", enforce_file_format=True)
    assert pydicom.dcmread(folder / "ct.dcm").file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(load_series(folder).pixels, _single(tmp_path, "CT_small.dcm").pixels)


@pytest.mark.parametrize(
    "lossy, reference", [("693_J2KI.dcm", "693_UNCR.dcm"), ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm")]
)
def test_lossy_syntaxes_stay_close_to_the_original(tmp_path, lossy, reference):
    got = _single(tmp_path, lossy).pixels
    expected = _single(tmp_path, reference).pixels
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).mean()) < 0.1 * float(expected.std())


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGExtended.dcm"])
def test_jpeg_lossless_and_extended_decode(tmp_path, name):
    volume = _single(tmp_path, name)
    np.testing.assert_array_equal(volume.pixels[0], _modality_lut(name))


def test_ct_is_rescaled_to_hounsfield_units(tmp_path):
    volume = _single(tmp_path, "CT_small.dcm")
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    assert volume.modality == "CT"
    assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_array_equal(volume.pixels[0], ds.pixel_array * 1.0 - 1024.0)
    assert volume.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert volume.sources[0].sop_instance_uid == ds.SOPInstanceUID


def test_fractional_slope_follows_apply_modality_lut(tmp_path):
    volume = _single(tmp_path, "MR2_UNCR.dcm")
    assert volume.modality == "MR"
    expected = volume.transform.apply(_modality_lut("MR2_UNCR.dcm")[None])  # a sagittal slice
    np.testing.assert_allclose(volume.pixels, expected, rtol=1e-6, atol=1e-4)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_testfile("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    volume = _single(tmp_path, "RG1_UNCR.dcm")
    top = 2 ** int(ds.BitsStored) - 1
    np.testing.assert_array_equal(volume.pixels[0], (top - ds.pixel_array.astype(np.int64)).astype(np.float32))
    assert volume.modality in ("CT", "MR")  # CR is neither: best guess, never an error


def test_colour_is_reduced_to_luminance(tmp_path):
    rgb = pydicom.dcmread(_testfile("SC_rgb.dcm")).pixel_array.astype(np.float64)
    volume = _single(tmp_path, "SC_rgb.dcm")
    assert volume.pixels.shape == (1, 100, 100)
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(volume.pixels[0], luminance, atol=1e-3)
    ybr = _single(tmp_path, "SC_ybr_full_uncompressed.dcm").pixels
    assert float(np.abs(ybr - volume.pixels).mean()) < 2.0


def test_dicomsdl_backend_gives_identical_arrays(tmp_path):
    pytest.importorskip("dicomsdl")
    for name in ["693_UNCR.dcm", "emri_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm", "eCT_Supplemental.dcm"]:
        fast = read_dicom(_testfile(name), backends=("dicomsdl", "pydicom"))
        slow = read_dicom(_testfile(name), backends=("pydicom",))
        assert fast.backend == "dicomsdl" and slow.backend == "pydicom"
        assert fast.pixels.dtype == slow.pixels.dtype
        np.testing.assert_array_equal(fast.pixels, slow.pixels)
        for attr in ("positions", "orientations", "slopes", "intercepts", "pixel_spacing"):
            np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr))
        assert (fast.sop_instance_uid, fast.instance_number) == (slow.sop_instance_uid, slow.instance_number)


# ------------------------------------------------------------------------------------------ multi-frame files


def test_enhanced_multiframe_uses_functional_groups(tmp_path):
    volume = _single(tmp_path, "eCT_Supplemental.dcm")
    ds = pydicom.dcmread(_testfile("eCT_Supplemental.dcm"))
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert volume.stack_shape == (2, 512, 512)
    assert volume.spacing[0] == pytest.approx(abs(z[1] - z[0]))
    # sorted along the slice normal, each slice named by its frame
    normal = np.cross(*np.reshape(
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, (2, 3)))
    frames_sorted = sorted(range(2), key=lambda f: z[f] * normal[2])
    assert [s.frame for s in volume.sources] == frames_sorted


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_RLE.dcm"])
@pytest.mark.parametrize("frames_tag", [None, "", 3, 40])
def test_frame_count_comes_from_the_pixel_data(tmp_path, name, frames_tag):
    expected = pydicom.dcmread(_testfile(name)).pixel_array
    ds = pydicom.dcmread(_testfile(name))
    if frames_tag is None:
        del ds.NumberOfFrames
    else:
        ds.NumberOfFrames = frames_tag
    folder = tmp_path / "stripped"
    folder.mkdir()
    ds.save_as(folder / "multi.dcm")
    volume = load_series(folder)
    assert volume.stack_shape == (10, 64, 64)
    np.testing.assert_array_equal(volume.pixels, expected.astype(np.float32))  # no positions: file frame order
    assert [s.frame for s in volume.sources] == list(range(10))
    assert any("10 frames" in note for note in volume.dropped)


def test_count_encapsulated_frames_without_offset_table():
    ds = pydicom.dcmread(_testfile("emri_small_jpeg_2k_lossless.dcm"))
    assert count_encapsulated_frames(ds.PixelData, ds.file_meta.TransferSyntaxUID, hint=1) == 10


# ------------------------------------------------------------------------------- synthetic series (own writer)

SPACING_XYZ = (0.5, 0.6, 1.5)  # mm along patient x, y, z: all different so a wrong permutation shows
ORIGIN = np.array([-10.0, -20.0, 30.0])


def _anatomy() -> np.ndarray:
    """(z, y, x) HU volume in LPS with a unique value per voxel and a bright blob on the patient's left (+x)."""
    z, y, x = 6, 8, 10
    hu = (np.arange(z * y * x).reshape(z, y, x) * 3 - 200).astype(np.float32)
    hu[2:4, 3:5, 7:9] = 3000.0  # left blob: high x = patient left
    return hu


BLOBS = {"left": (2.5, 3.5, 7.5), "centre": (1.0, 4.0, 5.0)}  # canonical (z, y, x) voxels used as localizers


def _axis(vector) -> tuple[int, int]:
    a = int(np.argmax(np.abs(vector)))
    return a, int(np.sign(vector[a]))


def _acquire(hu: np.ndarray, row_dir, col_dir):
    """Slices of `hu` as seen by an acquisition with these IOP directions (axis-aligned), sorted along the normal.

    Returns (images, positions, index maps (z, y, x) per slice, pixel spacing, iop).
    """
    dims = (hu.shape[2], hu.shape[1], hu.shape[0])
    r, c = np.asarray(row_dir, float), np.asarray(col_dir, float)
    (ar, sr), (ac, sc), (an, sn) = _axis(r), _axis(c), _axis(np.cross(r, c))
    rows, cols, slices = dims[ac], dims[ar], dims[an]
    J, I = np.meshgrid(np.arange(cols), np.arange(rows))  # noqa: E741 - the image index names of the DICOM standard
    images, positions, index_maps = [], [], []
    for k in range(slices):
        idx = [None, None, None]
        idx[ar] = J if sr > 0 else cols - 1 - J
        idx[ac] = I if sc > 0 else rows - 1 - I
        idx[an] = np.full_like(J, k if sn > 0 else slices - 1 - k)
        images.append(hu[idx[2], idx[1], idx[0]])
        positions.append([ORIGIN[a] + idx[a][0, 0] * SPACING_XYZ[a] for a in range(3)])
        index_maps.append((idx[2], idx[1], idx[0]))
    pixel_spacing = [SPACING_XYZ[ac], SPACING_XYZ[ar]]
    return images, positions, index_maps, pixel_spacing, list(r) + list(c)


def _base_dataset(sop: str, rows: int, cols: int, modality: str = "CT") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, modality
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _write_slices(folder: Path, hu, row_dir, col_dir, *, reverse=False, shuffle_names=False, syntax=None,
                  modality="CT") -> dict[str, tuple]:
    """One file per slice; returns {sop: index map} so tests can place localizers."""
    folder.mkdir(parents=True, exist_ok=True)
    images, positions, maps, pixel_spacing, iop = _acquire(hu, row_dir, col_dir)
    n = len(images)
    out = {}
    names = [f"{i:03d}" for i in range(n)]
    if shuffle_names:
        random.Random(0).shuffle(names)
    for k in range(n):
        sop = generate_uid()
        ds = _base_dataset(sop, *images[k].shape, modality)
        ds.InstanceNumber = n - k if reverse else k + 1
        ds.ImagePositionPatient = [round(v, 4) for v in positions[k]]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = 1.0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        stored = (images[k] + 1024).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if syntax in (ExplicitVRBigEndian, ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = stored.astype(">u2" if syntax == ExplicitVRBigEndian else "<u2").tobytes()
        elif syntax not in (None, ExplicitVRLittleEndian):
            ds.compress(syntax)
        ds.save_as(folder / f"{names[k]}.dcm", enforce_file_format=True)
        out[sop] = (0, maps[k])
    return out


def _write_enhanced(folder: Path, hu, row_dir, col_dir, *, strip_frames=False) -> dict[str, tuple]:
    """One enhanced multi-frame file, frames stored in reverse, per-frame position and per-frame intercept."""
    folder.mkdir(parents=True, exist_ok=True)
    images, positions, maps, pixel_spacing, iop = _acquire(hu, row_dir, col_dir)
    order = list(range(len(images)))[::-1]
    sop = generate_uid()
    ds = _base_dataset(sop, *images[0].shape)
    ds.InstanceNumber = 1
    if not strip_frames:
        ds.NumberOfFrames = len(order)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = pixel_spacing
    shared.PixelMeasuresSequence[0].SliceThickness = 1.0
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, data, frame_maps = [], [], {}
    for f, k in enumerate(order):
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [round(v, 4) for v in positions[k]]
        item.PixelValueTransformationSequence = Sequence([Dataset()])
        intercept = -1024 - 7 * f  # differs per frame: a shared rescale would show as wrong HU
        item.PixelValueTransformationSequence[0].RescaleSlope = 1
        item.PixelValueTransformationSequence[0].RescaleIntercept = intercept
        per_frame.append(item)
        data.append((images[k] - intercept).astype(np.uint16))
        frame_maps[f] = maps[k]
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(data).tobytes()
    ds.save_as(folder / "enhanced.dcm", enforce_file_format=True)
    return {sop: frame_maps}


ACQUISITIONS = {
    "axial": ([1, 0, 0], [0, 1, 0]),
    "axial_flipped_rows": ([1, 0, 0], [0, -1, 0]),
    "axial_flipped_cols": ([-1, 0, 0], [0, 1, 0]),
    "axial_feet_first": ([-1, 0, 0], [0, -1, 0]),
    "coronal": ([1, 0, 0], [0, 0, -1]),
    "coronal_flipped": ([-1, 0, 0], [0, 0, -1]),
    "sagittal": ([0, 1, 0], [0, 0, -1]),
    "sagittal_flipped": ([0, -1, 0], [0, 0, 1]),
}


def _localizer_check(volume, written: dict, hu: np.ndarray) -> None:
    """Every blob voxel, found in its source file and frame, maps back to the same canonical voxel."""
    for z, y, x in [(int(a), int(b), int(c)) for a, b, c in BLOBS.values()]:
        hits = 0
        for sop, frames in written.items():
            items = frames.items() if isinstance(frames, dict) else [frames]
            for frame, (mz, my, mx) in items:
                where = np.argwhere((mz == z) & (my == y) & (mx == x))
                for i, j in where:
                    got = volume.to_canonical(sop, frame, float(j), float(i))
                    assert got == (z, y, x)
                    assert volume.pixels[z, y, x] == hu[z, y, x]
                    hits += 1
        assert hits == 1


@pytest.fixture(scope="module")
def anatomy() -> np.ndarray:
    return _anatomy()


@pytest.mark.parametrize("name", list(ACQUISITIONS))
@pytest.mark.parametrize("reverse", [False, True])
def test_every_orientation_gives_the_same_canonical_volume(tmp_path, anatomy, name, reverse):
    row_dir, col_dir = ACQUISITIONS[name]
    written = _write_slices(tmp_path / name, anatomy, row_dir, col_dir, reverse=reverse, shuffle_names=reverse)
    volume = load_series(tmp_path / name)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert volume.pixels.flags.c_contiguous
    assert volume.spacing == pytest.approx(SPACING_XYZ[::-1])
    assert volume.series_uid == name and volume.modality == "CT"
    # the left blob (+x, patient left) sits at high column indices
    assert volume.pixels[2, 3, 8] == 3000.0 and volume.pixels[2, 3, 1] != 3000.0
    _localizer_check(volume, written, anatomy)
    assert len(volume.sources) == volume.stack_shape[0]


@pytest.mark.parametrize("name", ["axial", "coronal", "sagittal_flipped"])
def test_enhanced_multiframe_with_per_frame_rescale(tmp_path, anatomy, name):
    written = _write_enhanced(tmp_path / name, anatomy, *ACQUISITIONS[name], strip_frames=name != "axial")
    volume = load_series(tmp_path / name)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert volume.spacing == pytest.approx(SPACING_XYZ[::-1])
    _localizer_check(volume, written, anatomy)


def _shared_memory_segments() -> set[str]:
    root = Path("/dev/shm")
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def _pooled_series(folder: Path, anatomy, syntax) -> np.ndarray:
    hu = np.tile(anatomy, (2, 1, 1)).repeat(8, axis=1).repeat(8, axis=2)  # large enough for the J2K encoder
    _write_slices(folder, hu, *ACQUISITIONS["axial_flipped_rows"], syntax=syntax)
    return hu


@pytest.fixture(scope="module")
def decode_pool():
    """Two decoding workers for this module's tests (closed afterwards: no segment left in /dev/shm)."""
    with DecodePool(DecodeLimits(workers=2)) as pool:
        yield pool


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=["jpeg2000", "jpegls", "rle"])
def test_compressed_series_reads_the_same_in_the_pool_and_in_process(tmp_path, anatomy, syntax):
    folder = tmp_path / "pooled"
    hu = _pooled_series(folder, anatomy, syntax)
    with DecodePool(DecodeLimits(workers=2)) as pool:
        pooled = load_series(folder, pool=pool)
        assert pool.started and pool.block_bytes > 0  # the files went through the workers and the shared block
        block = pool._block.name
        assert block in _shared_memory_segments()
    single = load_series(folder, in_process=True)
    np.testing.assert_array_equal(pooled.pixels, hu)
    np.testing.assert_array_equal(pooled.pixels, single.pixels)
    assert pooled.sources == single.sources
    assert block not in _shared_memory_segments()  # the shared block was unlinked


def test_pool_returns_frames_through_one_shared_block_reused_by_the_next_series(tmp_path, anatomy, decode_pool):
    folder = tmp_path / "pooled"
    _pooled_series(folder, anatomy, JPEGLSLossless)
    paths = [str(p) for p in sorted(folder.iterdir())]
    headers = [read_dicom(p, decode=False) for p in paths]
    assert all(h.pixels is None and h.encapsulated for h in headers)  # headers only: nothing decoded here
    jobs = [DecodeJob(h.path, h.num_frames, h.rows, h.cols, h.pixel_dtype) for h in headers]
    with decode_pool.decode(jobs) as batch:
        results = dict(batch)
        assert sorted(results) == list(range(len(jobs)))
        bases = {id(np.asarray(r.pixels).base) for r in results.values()}
        assert len(bases) == 1  # views of one block, not pickled arrays
        pixels = {k: r.pixels.copy() for k, r in results.items()}  # the views die with the batch
        name = decode_pool._block.name
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(pixels[k], read_dicom(path).pixels)
    again = load_series(folder, pool=decode_pool)  # the block is reused by the next series
    assert decode_pool._block.name == name
    np.testing.assert_array_equal(again.pixels, load_series(folder, in_process=True).pixels)


def test_pool_ships_misfits_and_a_broken_file_costs_only_itself(tmp_path, anatomy, decode_pool, monkeypatch):
    folder = tmp_path / "pooled"
    hu = _pooled_series(folder, anatomy, JPEGLSLossless)
    paths = sorted(folder.iterdir())
    full = load_series(folder, in_process=True)
    headers = [read_dicom(p, decode=False) for p in paths]
    wrong = DecodeJob(str(paths[4]), 1, 16, 24, headers[4].pixel_dtype)  # a job whose frames do not fit its slot
    with decode_pool.decode([wrong]) as batch:
        ((_, misfit),) = list(batch)
        assert misfit.pixels.base is None or misfit.pixels.base is not decode_pool._block  # pickled, not a view
        np.testing.assert_array_equal(misfit.pixels, read_dicom(paths[4]).pixels)
    _break(paths[6], "truncated")
    volume = load_series(folder, pool=decode_pool)
    gone = {round(full.to_canonical(source.sop_instance_uid, 0, 0, 0)[0]) for source in full.sources
            if Path(source.path).name == paths[6].name}
    np.testing.assert_array_equal(volume.pixels, np.delete(hu, sorted(gone), axis=0))
    assert any(paths[6].name in note for note in volume.dropped)
    with DecodePool(DecodeLimits(workers=1)) as no_shm:
        monkeypatch.setattr(no_shm, "_block_for", lambda nbytes: None)  # /dev/shm too small: pixels pickled
        np.testing.assert_array_equal(load_series(folder, pool=no_shm).pixels, volume.pixels)


def test_uncompressed_series_never_start_the_pool(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "plain", anatomy)
    with DecodePool(DecodeLimits(workers=1)) as pool:
        np.testing.assert_array_equal(load_series(folder, pool=pool).pixels, anatomy)
        assert not pool.started


def test_a_block_larger_than_the_retained_size_is_released_after_its_series(tmp_path, anatomy):
    folder = tmp_path / "pooled"
    _pooled_series(folder, anatomy, JPEGLSLossless)
    names = []
    release = DecodePool._release_block

    def recording_release(pool):  # the names of the blocks the pool lets go of
        if pool._block is not None:
            names.append(pool._block.name)
        release(pool)

    with DecodePool(DecodeLimits(workers=1, retain_mb=0)) as small, DecodePool(DecodeLimits(workers=1)) as large:
        small._release_block = lambda: recording_release(small)
        load_series(folder, pool=small)
        assert small.block_bytes == 0 and len(names) == 1  # released right after its series
        assert names[0] not in _shared_memory_segments()  # and gone from /dev/shm
        load_series(folder, pool=large)
        assert large.block_bytes > 0  # a usual series keeps its block for the next one


def test_other_transfer_syntaxes_of_a_series(tmp_path, anatomy):
    reference = load_series(_folder_with(tmp_path / "le", anatomy)).pixels
    for syntax in (ExplicitVRBigEndian, ImplicitVRLittleEndian):
        folder = tmp_path / str(syntax)
        _write_slices(folder, anatomy, *ACQUISITIONS["sagittal"], syntax=syntax)
        assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(load_series(folder).pixels, reference)


def _folder_with(folder: Path, hu: np.ndarray, name: str = "axial") -> Path:
    _write_slices(folder, hu, *ACQUISITIONS[name])
    return folder


# ------------------------------------------------------------------------------------ mixed and broken series


def test_majority_size_is_kept_and_the_scout_reported(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "mixed", anatomy)
    scout = _base_dataset(generate_uid(), 16, 20)
    scout.ImagePositionPatient, scout.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 0, -1]
    scout.PixelData = np.zeros((16, 20), np.uint16).tobytes()
    scout.save_as(folder / "scout.dcm", enforce_file_format=True)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert any("16x20" in note for note in volume.dropped)


def test_other_orientation_of_the_same_size_is_dropped(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "mixed_plane", anatomy)
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    ds.SOPInstanceUID = generate_uid()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal localizer of the same size
    ds.save_as(folder / "localizer.dcm")
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert any("orientation" in note for note in volume.dropped)


def test_a_non_image_object_never_outvotes_the_image_stack(tmp_path, anatomy):
    hu = anatomy[:4].repeat(8, axis=1).repeat(8, axis=2)  # 4 CT slices of 64x80
    folder = _folder_with(tmp_path / "with_dose", hu)
    dose = _base_dataset(generate_uid(), 10, 10, "RTDOSE")  # 15 frames of 10x10 against 4 image frames
    dose.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"  # RT Dose Storage
    dose.file_meta.MediaStorageSOPClassUID = dose.SOPClassUID
    dose.NumberOfFrames = 15
    dose.ImagePositionPatient, dose.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    dose.PixelData = np.arange(15 * 100, dtype=np.uint16).tobytes()
    dose.save_as(folder / "dose.dcm", enforce_file_format=True)
    raw = (folder / "dose.dcm").read_bytes().replace(b"15", b"1A", 1)  # NumberOfFrames '1A': not even a number
    assert b"1A" in raw
    (folder / "dose.dcm").write_bytes(raw)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, hu)
    assert volume.modality == "CT"
    assert any("non-image" in note for note in volume.dropped)


@pytest.mark.parametrize("damage", ["zero_orientation", "parallel_vectors", "same_position"])
def test_degenerate_geometry_falls_back_to_instance_order_and_keeps_every_slice(tmp_path, anatomy, damage):
    folder = _folder_with(tmp_path / damage, anatomy)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if damage == "zero_orientation":
            ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
        elif damage == "parallel_vectors":
            ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        else:
            ds.ImagePositionPatient = [12.5, -3.0, 40.0]
        ds.save_as(path)
    volume = load_series(folder)
    assert volume.stack_shape[0] == anatomy.shape[0]  # no slice collapsed away
    np.testing.assert_array_equal(volume.pixels, anatomy)  # InstanceNumber follows +z in these files
    assert any("InstanceNumber" in note for note in volume.dropped)


def test_a_file_without_orientation_keeps_its_slice_when_its_position_fits(tmp_path, anatomy):
    folder = tmp_path / "partial_iop"
    _write_slices(folder, anatomy, *ACQUISITIONS["axial_feet_first"], shuffle_names=True)
    for path in sorted(folder.iterdir())[::3]:
        ds = pydicom.dcmread(path)
        del ds.ImageOrientationPatient
        ds.save_as(path)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert any("placed by their position" in note for note in volume.dropped)


def test_duplicate_positions_keep_one_slice(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "dup", anatomy)
    first = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(folder / "zz_duplicate.dcm")
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, anatomy)
    assert all(s.path != str(folder / "zz_duplicate.dcm") for s in volume.sources)
    assert any("duplicate" in note for note in volume.dropped)


def test_missing_positions_fall_back_to_instance_number(tmp_path, anatomy):
    folder = tmp_path / "nopos"
    _write_slices(folder, anatomy, *ACQUISITIONS["axial"], reverse=True, shuffle_names=True)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient, ds.PixelSpacing
        ds.SpacingBetweenSlices = 2.5
        ds.save_as(path)
    volume = load_series(folder)
    # InstanceNumber counts downwards along +z here, so the stack comes out reversed
    np.testing.assert_array_equal(volume.pixels, anatomy[::-1])
    assert volume.spacing == (2.5, 1.0, 1.0)
    assert any("InstanceNumber" in note for note in volume.dropped)
    assert any("PixelSpacing" in note for note in volume.dropped)


def test_without_positions_or_instance_numbers_file_names_order_the_slices(tmp_path, anatomy):
    folder = tmp_path / "names"
    _write_slices(folder, anatomy, *ACQUISITIONS["axial"], reverse=True)  # InstanceNumber against the names
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient, ds.InstanceNumber
        ds.save_as(path)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, anatomy)  # names 000..005 follow +z
    assert [Path(s.path).name for s in volume.sources] == sorted(p.name for p in folder.iterdir())


def test_single_slice_spacing_falls_back_to_slice_thickness(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "one", anatomy[:1])
    assert load_series(folder).spacing[0] == 1.0  # SliceThickness written by _write_slices
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SliceThickness = 3.0
        ds.save_as(path)
    assert load_series(folder).spacing[0] == 3.0


def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "zero-byte":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) - 37])
    elif how == "corrupt":
        path.write_bytes(bytes(b ^ 0x5A for b in data[:400]) + data[400:])
    elif how == "not-dicom":
        path.write_text("series,notes\n1,this is a csv file\n")
    else:  # header-only (no pixel data)
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)


@pytest.mark.parametrize("how", ["zero-byte", "truncated", "corrupt", "not-dicom", "no-pixels"])
def test_one_broken_file_costs_only_that_file(tmp_path, anatomy, how, caplog):
    folder = _folder_with(tmp_path / how, anatomy)
    victim = sorted(folder.iterdir())[3]
    _break(victim, how)
    with caplog.at_level(logging.WARNING, logger="inference.load"):
        volume = load_series(folder)
    assert volume.stack_shape[0] == anatomy.shape[0] - 1
    assert all(s.path != str(victim) for s in volume.sources)
    assert any(victim.name in note for note in volume.dropped)
    assert victim.name in caplog.text
    kept = [k for k in range(anatomy.shape[0]) if k != 3]
    np.testing.assert_array_equal(volume.pixels, anatomy[kept])


def test_nothing_usable_raises_series_load_error(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "all_broken", anatomy[:3])
    for path, how in zip(sorted(folder.iterdir()), ["zero-byte", "not-dicom", "truncated"]):
        _break(path, how)
    with pytest.raises(SeriesLoadError) as info:
        load_series(folder)
    message = str(info.value)
    assert str(folder) in message and "000.dcm" in message and "empty" in message
    with pytest.raises(SeriesLoadError, match="no \\*.dcm"):
        load_series(_empty(tmp_path / "empty"))
    with pytest.raises(SeriesLoadError, match="does not exist"):
        load_series(tmp_path / "missing")


def _empty(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dicom")
    return folder


def test_only_dcm_files_directly_in_the_folder_are_read(tmp_path, anatomy):
    folder = _folder_with(tmp_path / "flat", anatomy)
    _folder_with(folder / "nested", anatomy[:2])
    (folder / "readme.txt").write_text("ignored")
    assert load_series(folder).stack_shape[0] == anatomy.shape[0]


def test_unknown_modality_is_guessed(tmp_path, anatomy, caplog):
    folder = tmp_path / "ot"
    _write_slices(folder, anatomy, *ACQUISITIONS["axial"], modality="OT")
    with caplog.at_level(logging.WARNING, logger="inference.load"):
        assert load_series(folder).modality == "CT"  # air at -200 HU and below
    assert "OT" in caplog.text


# ------------------------------------------------------------------------------------ fast header scan backend


def _fast_vs_pydicom(path: Path) -> None:
    fast = read_dicom(path, backends=("fast",))
    slow = read_dicom(path, backends=("pydicom",))
    assert fast.backend == "fast" and slow.backend == "pydicom"
    assert fast.pixels.dtype == slow.pixels.dtype
    np.testing.assert_array_equal(fast.pixels, slow.pixels)
    for attr in ("positions", "orientations", "slopes", "intercepts", "pixel_spacing"):
        np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr))
    for attr in ("sop_instance_uid", "instance_number", "modality", "slice_thickness", "spacing_between_slices"):
        assert getattr(fast, attr) == getattr(slow, attr), attr


@pytest.mark.parametrize("name", [
    "693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm",
    "emri_small.dcm", "MR_small_padded.dcm",  # native
    "693_J2KR.dcm", "MR_small_jpeg_ls_lossless.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
    "JPEG-LL.dcm", "J2K_pixelrep_mismatch.dcm",  # encapsulated
])
def test_fast_scan_matches_pydicom_on_real_files(name):
    _fast_vs_pydicom(_testfile(name))


def test_fast_scan_declines_what_it_does_not_handle():
    for name in ["eCT_Supplemental.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb.dcm",
                 "MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"]:
        with pytest.raises(DicomFileError, match="fast: "):
            read_dicom(_testfile(name), backends=("fast",))


def test_unused_high_bits_are_ignored_like_pydicom(tmp_path):
    """BitsStored 12 in 16 allocated bits with garbage above bit 11: both readers mask / sign-extend."""
    rng = np.random.default_rng(0)
    for signed in (False, True):
        values = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, (8, 8))
        garbage = rng.integers(0, 16, (8, 8)) << 12
        stored = ((values & 0xFFF) | garbage).astype(np.uint16)
        ds = _base_dataset(generate_uid(), 8, 8)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.PixelData = stored.tobytes()
        path = tmp_path / f"bits_{signed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        expected = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(expected, values)
        for backend in ("fast", "pydicom"):
            np.testing.assert_array_equal(read_dicom(path, backends=(backend,)).pixels[0], values)


def test_synthetic_files_read_the_same_by_both_backends(tmp_path, anatomy):
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        folder = tmp_path / str(syntax)
        _write_slices(folder, anatomy, *ACQUISITIONS["coronal"], syntax=syntax)
        for path in sorted(folder.iterdir())[:3]:
            _fast_vs_pydicom(path)


def test_truncated_multiframe_keeps_its_whole_frames(tmp_path):
    source = _testfile("emri_small.dcm")
    data = source.read_bytes()
    folder = tmp_path / "cut"
    folder.mkdir()
    frame_bytes = 64 * 64 * 2
    (folder / "cut.dcm").write_bytes(data[: len(data) - 3 * frame_bytes - 100])  # 6 whole frames remain
    volume = load_series(folder)
    assert volume.stack_shape == (6, 64, 64)
    np.testing.assert_array_equal(volume.pixels, pydicom.dcmread(source).pixel_array[:6].astype(np.float32))
    assert any("6 frames" in note for note in volume.dropped)


# ---------------------------------------------------------------------------------------- the phantom package

CUBE = 32
VARIANTS = {
    "axial_flips": dict(plane="axial", flip_rows=True, flip_cols=True),
    "axial_reversed": dict(plane="axial", reverse_slices=True),
    "coronal": dict(plane="coronal"),
    "coronal_flipped_reversed": dict(plane="coronal", flip_cols=True, reverse_slices=True),
    "sagittal": dict(plane="sagittal"),
    "sagittal_flipped": dict(plane="sagittal", flip_rows=True),
    "multiframe_coronal": dict(plane="coronal", multiframe=True, reverse_slices=True),
    "multiframe_stripped": dict(plane="sagittal", multiframe=True, stripped=True),
    "jpegls": dict(plane="axial", compression="jpegls", flip_cols=True),
    "jpeg2000_stripped": dict(plane="coronal", compression="jpeg2000", stripped=True),
    "rle_multiframe": dict(plane="axial", compression="rle", multiframe=True),
    "signed": dict(plane="sagittal", signed=True),
}


def _cube_spec(**options):
    acquisition = phantom.Acquisition.cube(CUBE, 3.0, **options)  # spans both blobs
    positives = ("Left Middle Cerebral Artery", "Right Infraclinoid Internal Carotid Artery")
    return phantom.series_spec(3, modality="CTA", acquisition=acquisition, positive_locations=positives)


@pytest.fixture(scope="module")
def phantom_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cube") / "axial"
    phantom.write_series(_cube_spec(plane="axial"), folder)
    return load_series(folder)


def _patient_point(volume, canonical) -> np.ndarray:
    """Patient mm of a canonical (slice, row, col), from the source file's own header (read with pydicom)."""
    t = volume.transform
    stack = [0.0, 0.0, 0.0]
    for cax in range(3):
        a = t.axes[cax]
        stack[a] = volume.stack_shape[a] - 1 - canonical[cax] if t.flips[cax] else canonical[cax]
    k, i, j = stack
    source = volume.sources[int(round(k))]
    ds = pydicom.dcmread(source.path)
    ipp = _group_value(ds, source.frame, "PlanePositionSequence", "ImagePositionPatient")
    iop = _group_value(ds, source.frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _group_value(ds, source.frame, "PixelMeasuresSequence", "PixelSpacing")
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return np.asarray(ipp, float) + j * float(spacing[1]) * r + i * float(spacing[0]) * c


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_phantom_orientations_give_the_same_canonical_volume(tmp_path, phantom_reference, variant):
    spec = _cube_spec(**VARIANTS[variant])
    rows = phantom.write_series(spec, tmp_path / variant)
    volume = load_series(tmp_path / variant)
    np.testing.assert_array_equal(volume.pixels, phantom_reference.pixels)
    assert volume.spacing == pytest.approx(phantom_reference.spacing)
    assert volume.modality == "CT"
    blobs = {an.location: an for an in spec.anatomy.aneurysms}
    assert {row.location for row in rows} == set(blobs)
    for row in rows:  # every localizer lands inside its own blob, left ones on the high-column side
        canonical = volume.to_canonical(row.sop_instance_uid, row.frame or 0, row.x, row.y)
        voxel = tuple(int(round(v)) for v in canonical)
        blob = blobs[row.location]
        assert np.linalg.norm(_patient_point(volume, voxel) - np.asarray(blob.centre)) <= blob.radius
        assert (voxel[2] > (CUBE - 1) / 2) == row.location.startswith("Left")


def test_phantom_monochrome1_mr_matches_monochrome2(tmp_path):
    specs = {m1: phantom.series_spec(5, modality="MRA", acquisition=phantom.Acquisition.cube(
        16, 2.0, plane="coronal", monochrome1=m1)) for m1 in (False, True)}
    volumes = {}
    for m1, spec in specs.items():
        phantom.write_series(spec, tmp_path / str(m1))
        volumes[m1] = load_series(tmp_path / str(m1))
    assert pydicom.dcmread(next((tmp_path / "True").iterdir())).PhotometricInterpretation == "MONOCHROME1"
    assert volumes[True].modality == "MR"
    np.testing.assert_allclose(volumes[True].pixels, volumes[False].pixels, rtol=1e-6, atol=1e-3)


def test_every_phantom_dataset_localizer_maps_onto_its_own_pixel(phantom_dataset):
    """Across the shared phantom dataset (all file varieties), the canonical voxel of each localizer holds the
    value of the localizer's pixel in its own file (rescaled), and a blob is brighter/darker than the tissue."""
    with open(phantom_dataset / "train_localizers.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    volumes = {}
    for row in rows:
        uid = row["SeriesInstanceUID"]
        if uid not in volumes:
            volumes[uid] = load_series(phantom_dataset / "series" / uid)
        volume = volumes[uid]
        point = ast.literal_eval(row["coordinates"])
        frame = int(point.get("f", 0))
        canonical = volume.to_canonical(row["SOPInstanceUID"], frame, point["x"], point["y"])
        voxel = tuple(int(round(v)) for v in canonical)
        source = volume.sources[volume.stack_index_of(row["SOPInstanceUID"], frame)]
        ds = pydicom.dcmread(source.path)
        pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)[frame]
        raw = float(pixels[int(round(point["y"])), int(round(point["x"]))])
        if ds.PhotometricInterpretation == "MONOCHROME1":
            raw = 2 ** int(ds.BitsStored) - 1 - raw
        slope, intercept = _frame_rescale(ds, frame)
        assert volume.pixels[voxel] == pytest.approx(raw * slope + intercept, rel=1e-6, abs=1e-3)
    assert len(volumes) >= 3


def _group_value(ds, frame: int, group: str, keyword: str):
    """A frame's value: PerFrameFunctionalGroups item, then SharedFunctionalGroups, then the top level."""
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if sequence in ds:
            item = ds[sequence].value[frame if sequence.startswith("Per") else 0]
            if group in item and keyword in item[group].value[0]:
                return item[group].value[0][keyword].value
    return ds[keyword].value


def _frame_rescale(ds, frame: int) -> tuple[float, float]:
    for group in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if group in ds:
            items = ds[group].value
            item = items[frame] if group.startswith("Per") else items[0]
            if "PixelValueTransformationSequence" in item:
                t = item.PixelValueTransformationSequence[0]
                return float(t.RescaleSlope), float(t.RescaleIntercept)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
