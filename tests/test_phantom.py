"""The synthetic competition dataset: layout, labels, localizers, exact DICOM geometry, file varieties."""
from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import PHANTOM_FIXTURE_OPTIONS, PHANTOM_FIXTURE_SEED, PHANTOM_FIXTURE_SERIES, small_acquisition

from inference.errors import ConfigError
from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX
from inference.volume import canonical_transform
from phantom import (
    MODALITY_INTENSITIES,
    STRIPPED_KEYWORDS,
    TEMPLATE_SITES,
    Acquisition,
    PhantomConfig,
    blob_level,
    draw_split,
    make_dataset,
    random_anatomy,
    series_spec,
    stored_pixels,
)
from phantom.__main__ import main as phantom_main

COMPETITION_TRAIN_COLUMNS = [
    "SeriesInstanceUID", "PatientAge", "PatientSex", "Modality",
    "Left Infraclinoid Internal Carotid Artery", "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery", "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery", "Right Middle Cerebral Artery", "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery", "Right Anterior Cerebral Artery", "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery", "Basilar Tip", "Other Posterior Circulation", "Aneurysm Present",
]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def frames_of(ds: pydicom.Dataset) -> tuple[np.ndarray, list[np.ndarray]]:
    """Physical pixel values (frames, rows, cols) and per-frame ImagePositionPatient, whatever the file kind."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        items = ds.PerFrameFunctionalGroupsSequence
        ds.NumberOfFrames = len(items)  # stripped files lack it
        positions = [np.array(it.PlanePositionSequence[0].ImagePositionPatient, float) for it in items]
        pixels = ds.pixel_array.reshape(len(items), ds.Rows, ds.Columns)
    else:
        positions = [np.array(ds.ImagePositionPatient, float)]
        pixels = ds.pixel_array[None]
    pixels = pixels.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2 ** ds.BitsStored - 1) - pixels
    pixels = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    return pixels, positions


def patient_point(ds: pydicom.Dataset, position: np.ndarray, row: float, col: float) -> np.ndarray:
    """The DICOM pixel -> patient formula, from the file's own tags."""
    iop = np.array(ds.ImageOrientationPatient, float)
    ps = np.array(ds.PixelSpacing, float)
    return position + col * ps[1] * iop[:3] + row * ps[0] * iop[3:]


def load_canonical(folder: Path):
    """A tiny independent stacker: sort along the slice normal, rescale, canonical_transform."""
    slices, sources = [], []
    iop = None
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        iop = np.array(ds.ImageOrientationPatient, float)
        pixels, positions = frames_of(ds)
        for f, (img, pos) in enumerate(zip(pixels, positions)):
            slices.append((float(pos @ np.cross(iop[:3], iop[3:])), img))
            sources.append((ds.SOPInstanceUID, f))
    order = np.argsort([s[0] for s in slices], kind="stable")
    stack = np.stack([slices[k][1] for k in order])
    transform = canonical_transform(iop[:3], iop[3:])
    return transform.apply(stack), transform, stack.shape, [sources[k] for k in order]


# ---- dataset layout and labels ----------------------------------------------------------------------------------
def test_csv_columns_order_and_labels(phantom_dataset):
    assert list(LABELS) == COMPETITION_TRAIN_COLUMNS[4:]
    for path in (phantom_dataset / "train.csv", phantom_dataset / "test" / "test_labels.csv"):
        columns, rows = read_csv(path)
        assert columns == COMPETITION_TRAIN_COLUMNS
        assert len(rows) == PHANTOM_FIXTURE_SERIES
        series_dir = path.parent / "series"
        for row in rows:
            assert row["Modality"] in {"CTA", "MRA", "MRI T2", "MRI T1post"}
            assert row["PatientSex"] in {"Female", "Male"} and 18 <= int(row["PatientAge"]) < 90
            labels = [int(row[name]) for name in LABELS]
            assert set(labels) <= {0, 1}
            assert labels[PRESENT_INDEX] == int(any(labels[:PRESENT_INDEX]))
            assert len(list((series_dir / row["SeriesInstanceUID"]).glob("*.dcm"))) >= 1
    columns, rows = read_csv(phantom_dataset / "test" / "test.csv")
    assert columns == ["SeriesInstanceUID"]
    test_uids = {r["SeriesInstanceUID"] for r in rows}
    assert test_uids == {p.name for p in (phantom_dataset / "test" / "series").iterdir()}
    _, train_rows = read_csv(phantom_dataset / "train.csv")
    assert not test_uids & {r["SeriesInstanceUID"] for r in train_rows}
    for name in ("train_localizers.csv", "test/test_localizers.csv"):
        columns, _ = read_csv(phantom_dataset / name)
        assert columns == ["SeriesInstanceUID", "SOPInstanceUID", "coordinates", "location"]


def test_test_split_has_both_classes_for_every_label(phantom_dataset):
    _, rows = read_csv(phantom_dataset / "test" / "test_labels.csv")
    for name in LABELS:
        assert {int(r[name]) for r in rows} == {0, 1}, name


def test_localizer_rows_match_labels(phantom_dataset):
    for labels_csv, loc_csv in (("train.csv", "train_localizers.csv"),
                                ("test/test_labels.csv", "test/test_localizers.csv")):
        _, label_rows = read_csv(phantom_dataset / labels_csv)
        _, loc_rows = read_csv(phantom_dataset / loc_csv)
        positives = {(r["SeriesInstanceUID"], n) for r in label_rows for n in LOCATION_LABELS if r[n] == "1"}
        assert {(r["SeriesInstanceUID"], r["location"]) for r in loc_rows} == positives
        assert len(loc_rows) == len(positives)


def _fixture_specs():
    config = PhantomConfig(**PHANTOM_FIXTURE_OPTIONS)
    specs = draw_split(PHANTOM_FIXTURE_SERIES, seed=PHANTOM_FIXTURE_SEED, split="train", config=config)
    specs += draw_split(PHANTOM_FIXTURE_SERIES, seed=PHANTOM_FIXTURE_SEED, split="test", config=config,
                        force_coverage=True)
    return {s.series_uid: s for s in specs}


def test_localizers_point_inside_their_blob(phantom_dataset):
    specs = _fixture_specs()
    checked_intensity = total = 0
    for split, loc_csv in (("", "train_localizers.csv"), ("test", "test/test_localizers.csv")):
        _, rows = read_csv(phantom_dataset / loc_csv)
        for row in rows:
            total += 1
            spec = specs[row["SeriesInstanceUID"]]
            blob = next(a for a in spec.anatomy.aneurysms if a.location == row["location"])
            point = ast.literal_eval(row["coordinates"])
            ds = pydicom.dcmread(phantom_dataset / split / "series" / row["SeriesInstanceUID"]
                                 / f"{row['SOPInstanceUID']}.dcm")
            pixels, positions = frames_of(ds)
            multiframe = "PerFrameFunctionalGroupsSequence" in ds
            assert set(point) == ({"x", "y", "f"} if multiframe else {"x", "y"})
            frame = point.get("f", 0)
            p = patient_point(ds, positions[frame], point["y"], point["x"])
            # the centre projected on its nearest slice: within half a slice of it, and inside the blob
            spacing = float(ds.get("SpacingBetweenSlices", spec.acquisition.slice_spacing))
            assert np.linalg.norm(p - np.array(blob.centre)) <= min(spacing / 2 + 0.02, blob.radius)
            # the pixel there shows the blob when its centre lies well inside the blob
            i, j = int(round(point["y"])), int(round(point["x"]))
            if np.linalg.norm(patient_point(ds, positions[frame], i, j) - np.array(blob.centre)) < blob.radius - 0.6:
                checked_intensity += 1
                gain = 1.0 if spec.modality == "CTA" else spec.gain
                expected = blob_level(spec.modality, spec.blob_contrast, spec.vessel_level) * gain
                brain = MODALITY_INTENSITIES[spec.modality].brain * gain
                value = pixels[frame, i, j]
                assert abs(value - expected) < abs(value - brain), (spec.modality, value, expected, brain)
    assert total >= 10 and checked_intensity >= total // 2


def test_left_locations_lie_at_positive_x(phantom_dataset):
    _, rows = read_csv(phantom_dataset / "train_localizers.csv")
    sides = 0
    for row in rows:
        ds = pydicom.dcmread(phantom_dataset / "series" / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm")
        point = ast.literal_eval(row["coordinates"])
        _, positions = frames_of(ds)
        x = patient_point(ds, positions[point.get("f", 0)], point["y"], point["x"])[0]
        if row["location"].startswith("Left "):
            assert x > 0
            sides += 1
        elif row["location"].startswith("Right "):
            assert x < 0
            sides += 1
    assert sides >= 3
    for name, (x, _, _) in TEMPLATE_SITES.items():
        assert x > 5 if name.startswith("Left ") else x < -5 if name.startswith("Right ") else x == 0


def test_fixture_holds_every_file_variety(phantom_dataset):
    seen = set()
    for folder in list((phantom_dataset / "series").iterdir()) + list((phantom_dataset / "test" / "series").iterdir()):
        ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
        iop = [round(float(v)) for v in ds.ImageOrientationPatient]
        normal = tuple(abs(int(v)) for v in np.cross(iop[:3], iop[3:]))
        seen.add({(0, 0, 1): "axial", (0, 1, 0): "coronal", (1, 0, 0): "sagittal"}[normal])
        seen.add(ds.file_meta.TransferSyntaxUID.name)
        seen.add(ds.PhotometricInterpretation)
        if "PerFrameFunctionalGroupsSequence" in ds:
            seen.add("multiframe")
            if "NumberOfFrames" not in ds:
                seen.add("stripped multiframe")
        if "PatientAge" not in ds:
            seen.add("stripped")
        if ds.Modality == "CT":
            seen.add(f"CT signed={ds.PixelRepresentation}")
    assert {"axial", "coronal", "sagittal", "multiframe", "stripped multiframe", "stripped", "MONOCHROME1",
            "CT signed=0", "CT signed=1", "Explicit VR Little Endian", "RLE Lossless",
            "JPEG 2000 Image Compression (Lossless Only)", "JPEG-LS Lossless Image Compression"} <= seen, seen


# ---- files read back -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality,changes", [
    ("CTA", dict(multiframe=True, stripped=True, compression="jpegls")),
    ("CTA", dict(multiframe=True, compression="jpeg2000", signed=True)),
    ("MRA", dict(multiframe=True, stripped=True, rescale_slope=2.5)),
    ("MRI T2", dict(compression="rle", flip_rows=True, monochrome1=True)),
    ("MRI T1post", dict(stripped=True, compression="jpegls", plane="coronal")),
    ("CTA", dict(compression="jpegls", signed=True, reverse_slices=True, plane="sagittal", flip_cols=True)),
])
def test_files_read_back_losslessly(write_phantom_series, modality, changes):
    spec = series_spec(4, modality=modality, positive_locations=["Basilar Tip"],
                       acquisition=small_acquisition(num_slices=10, **changes))
    folder = write_phantom_series(spec)
    expected = stored_pixels(spec).pixels
    files = sorted(folder.glob("*.dcm"))
    assert [p.stem for p in files] == sorted(spec.sop_instance_uids())
    datasets = [pydicom.dcmread(p) for p in files]
    for ds in datasets:
        assert ds.SeriesInstanceUID == spec.series_uid and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        if spec.acquisition.stripped:
            assert {e.keyword for e in ds} <= STRIPPED_KEYWORDS and "NumberOfFrames" not in ds
        else:
            assert ds.PatientAge == f"{spec.age:03d}Y"
    if spec.acquisition.multiframe:
        (ds,) = datasets
        ds.NumberOfFrames = len(ds.PerFrameFunctionalGroupsSequence)
        stored = ds.pixel_array
        positions = [it.PlanePositionSequence[0].ImagePositionPatient for it in ds.PerFrameFunctionalGroupsSequence]
        if not spec.acquisition.stripped:
            shared = ds.SharedFunctionalGroupsSequence[0]
            assert list(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == spec.acquisition.orientation
            assert len(shared.PixelMeasuresSequence[0].PixelSpacing) == 2
    else:
        datasets.sort(key=lambda d: d.InstanceNumber)
        stored = np.stack([d.pixel_array for d in datasets])
        positions = [d.ImagePositionPatient for d in datasets]
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_allclose(np.array(positions, float), spec.acquisition.positions(), atol=1e-9)
    assert datasets[0].file_meta.TransferSyntaxUID.is_compressed == (spec.acquisition.compression is not None)


# ---- geometry ---------------------------------------------------------------------------------------------------
CUBE_VARIANTS = [
    dict(plane="axial"),
    dict(plane="axial", flip_rows=True),
    dict(plane="axial", flip_cols=True),
    dict(plane="axial", reverse_slices=True),
    dict(plane="coronal"),
    dict(plane="sagittal", flip_cols=True),
    dict(plane="coronal", flip_rows=True, reverse_slices=True, multiframe=True, compression="rle"),
    dict(plane="sagittal", reverse_slices=True, multiframe=True, stripped=True),
]


def test_every_orientation_gives_the_same_canonical_volume(write_phantom_series):
    location = "Left Middle Cerebral Artery"
    volumes, points = [], []
    for variant in CUBE_VARIANTS:
        spec = series_spec(1, modality="CTA", positive_locations=[location],
                           acquisition=Acquisition.cube(24, 3.0, centre=(18.0, 0.0, -12.0), **variant))
        folder = write_phantom_series(spec)
        canonical, transform, stack_shape, sources = load_canonical(folder)
        volumes.append(canonical)
        sop, frame, loc = spec.locate(spec.anatomy.aneurysms[0].centre)
        k = sources.index((sop, frame or 0))
        points.append(transform.point((k, loc.row, loc.col), stack_shape))
    for variant, volume in zip(CUBE_VARIANTS[1:], volumes[1:]):
        np.testing.assert_array_equal(volume, volumes[0], err_msg=str(variant))
    # canonical = the plain axial grid: slices inferior->superior, rows anterior->posterior, cols right->left
    axial = series_spec(1, modality="CTA", positive_locations=[location],
                        acquisition=Acquisition.cube(24, 3.0, centre=(18.0, 0.0, -12.0)))
    origin, affine = axial.acquisition.index_affine()
    exact = np.linalg.solve(affine, np.array(axial.anatomy.aneurysms[0].centre) - origin)
    # each localizer sits on its own acquisition's nearest slice: at most half a voxel off along that axis
    assert np.abs(np.array(points) - exact).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(volumes[0], stored_pixels(axial).pixels.astype(np.float64) - 1024)
    s, r, c = (int(round(v)) for v in points[0])
    assert volumes[0][s, r, c] > 400  # the blob (HU)
    assert c > 12  # patient left = high canonical columns (cube centred on x = +18 mm, 3 mm voxels)


def test_locate_inverts_the_pixel_formula():
    acq = Acquisition(plane="sagittal", rows=50, cols=60, num_slices=30, pixel_spacing=(1.3, 1.7),
                      slice_spacing=2.5, flip_rows=True, reverse_slices=True, centre=(3.0, -4.0, -10.0))
    origin, affine = acq.index_affine()
    for k, i, j in [(0, 0, 0), (7, 12.25, 40.5), (29, 49, 59)]:
        p = origin + affine @ np.array([k, i, j], float)
        loc = acq.locate(p)
        assert loc.index == k and abs(loc.row - i) < 1e-6 and abs(loc.col - j) < 1e-6 and loc.distance_mm < 1e-6


# ---- anatomy and options ---------------------------------------------------------------------------------------
def test_anatomy_sites_and_labels():
    sites = np.array(list(TEMPLATE_SITES.values()))
    distances = np.linalg.norm(sites[:, None] - sites[None], axis=-1)
    assert distances[~np.eye(len(sites), dtype=bool)].min() > 8.0
    rng = np.random.default_rng(3)
    anatomy = random_anatomy(rng, positive_locations=["Right Posterior Communicating Artery", "Basilar Tip"])
    labels = anatomy.labels()
    assert labels[PRESENT_INDEX] == 1 and labels.sum() == 3
    assert labels[LABELS.index("Basilar Tip")] == 1
    for a in anatomy.aneurysms:
        assert np.linalg.norm(np.array(a.centre) - np.array(anatomy.site(a.location))) < a.radius  # attached
    assert random_anatomy(rng, positive_locations=[]).labels().sum() == 0
    with pytest.raises(ConfigError):
        random_anatomy(rng, positive_locations=["Nowhere"])
    with pytest.raises(ConfigError):
        PhantomConfig(multiframe_fraction=1.5)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    options = dict(series=2, test_series=2, slices=(6, 8), size=(32, 40), compressed_fraction=0.5,
                   multiframe_fraction=0.5)
    make_dataset(tmp_path / "a", seed=5, **options)
    make_dataset(tmp_path / "b", seed=5, **options)
    make_dataset(tmp_path / "c", seed=6, **options)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 8
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "train.csv").read_text() != (tmp_path / "c" / "train.csv").read_text()
    with pytest.raises(ConfigError):
        make_dataset(tmp_path / "a", seed=5, **options)  # refuses to overwrite silently


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "phantom", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "--test-series" in out.stdout and "--blob-contrast" in out.stdout
    assert phantom_main(["--out", str(tmp_path / "d"), "--series", "2", "--test-series", "1", "--size", "32", "32",
                         "--slices", "5", "6", "--modalities", "MRA", "--quiet"]) == 0
    _, rows = read_csv(tmp_path / "d" / "train.csv")
    assert [r["Modality"] for r in rows] == ["MRA", "MRA"]
    assert (tmp_path / "d" / "test" / "test.csv").exists()


def test_mirrored_test_split_stores_the_same_series_flipped(tmp_path):
    import pydicom

    from inference.load import load_series
    from phantom import make_dataset, write_mirrored_test_split

    options = dict(size=(32, 40), slices=(8, 10), compressed_fraction=0.0, non_axial_fraction=0.0, noise=0.0)
    make_dataset(tmp_path / "data", series=0, test_series=3, seed=2, **options)
    mirrored = write_mirrored_test_split(tmp_path / "mirrored", test_series=3, seed=2, **options)
    assert (mirrored / "test_labels.csv").read_text() == (tmp_path / "data" / "test" / "test_labels.csv").read_text()
    for folder in sorted((tmp_path / "data" / "test" / "series").iterdir()):
        twin = mirrored / "series" / folder.name
        a, b = (pydicom.dcmread(next(f.glob("*.dcm"))) for f in (folder, twin))
        assert a.ImageOrientationPatient != b.ImageOrientationPatient  # stored the other way round
        np.testing.assert_allclose(load_series(twin, in_process=True).pixels,
                                   load_series(folder, in_process=True).pixels, atol=1e-3)  # same canonical volume
