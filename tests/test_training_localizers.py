"""Localizer strings and their placement in the prepared stack through the loader's canonical mapping."""
from __future__ import annotations

import numpy as np
import pytest

from inference.config import PreprocessConfig
from inference.errors import ConfigError
from inference.labels import LABELS
from training.localizers import LocalizerRow, parse_coordinates, place_points, rows_hash


def test_parse_coordinates_with_and_without_frame():
    assert parse_coordinates("{'x': 258.36, 'y': 261.36}") == (258.36, 261.36, 0)
    assert parse_coordinates("{'x': 1.5, 'y': 2, 'f': 12}") == (1.5, 2.0, 12)
    assert parse_coordinates("{'x': 1.5, 'y': 2, 'f': 12}", frame_base=1) == (1.5, 2.0, 11)
    for bad in ("", "{'x': 1}", "[1, 2]", "x=1,y=2"):
        with pytest.raises(ConfigError, match="coordinates"):
            parse_coordinates(bad)


def test_rows_hash_ignores_order_but_not_values():
    a = LocalizerRow("s", "1", 1.0, 2.0, 0, "Basilar Tip")
    b = LocalizerRow("s", "2", 3.0, 4.0, 1, "Basilar Tip")
    assert rows_hash([a, b]) == rows_hash([b, a])
    assert rows_hash([a]) != rows_hash([LocalizerRow("s", "1", 1.0, 2.5, 0, "Basilar Tip")])


import phantom  # noqa: E402 - a broken phantom package must fail these tests, not skip them


def _placed(tmp_path, name: str, **acq):
    from inference.load import load_series
    from inference.normalize import preprocess_volume

    acquisition = phantom.Acquisition(rows=64, cols=64, num_slices=36, pixel_spacing=(3.0, 3.0), slice_spacing=3.0,
                                      noise=0.0, **acq)
    spec = phantom.series_spec(3, modality="CTA", positive_locations=["Left Middle Cerebral Artery"],
                               acquisition=acquisition, series_uid=f"1.2.3.{len(name)}")
    folder = tmp_path / name
    rows = phantom.write_series(spec, folder)
    assert len(rows) == 1
    ours = [LocalizerRow(series_uid=spec.series_uid, sop_uid=r.sop_instance_uid, x=r.x, y=r.y,
                         frame=r.frame or 0, location=r.location) for r in rows]
    volume = load_series(folder, in_process=True)
    prepared = preprocess_volume(volume, PreprocessConfig(image_size=64))
    points, problems = place_points(volume, prepared, ours)
    assert problems == [] and len(points) == 1
    return prepared, points[0]


def test_points_land_on_the_blob_and_agree_across_storage_orientations(tmp_path):
    reference, ref_point = _placed(tmp_path, "plain")
    assert LABELS[ref_point.location] == "Left Middle Cerebral Artery"
    assert ref_point.col > 32  # the patient's left lies at high column indices
    z, r, c = (int(round(v)) for v in (ref_point.z, ref_point.row, ref_point.col))
    value = reference.pixels[z, r, c]
    assert value >= np.percentile(reference.pixels[z], 95) and value > 2 * reference.pixels[z].mean()  # on the blob
    variants = {"flipped": dict(flip_cols=True, flip_rows=True), "reversed": dict(reverse_slices=True),
                "multiframe": dict(multiframe=True, reverse_slices=True)}
    for name, acq in variants.items():
        prepared, point = _placed(tmp_path, name, **acq)
        assert prepared.pixels.shape == reference.pixels.shape
        assert abs(point.z - ref_point.z) <= 1.0, name
        assert abs(point.row - ref_point.row) <= 1.0 and abs(point.col - ref_point.col) <= 1.0, name


def test_unknown_sop_or_location_is_reported_not_fatal(tmp_path):
    from inference.load import load_series
    from inference.normalize import preprocess_volume

    spec = phantom.series_spec(4, acquisition=phantom.Acquisition(rows=32, cols=32, num_slices=20, noise=0.0))
    phantom.write_series(spec, tmp_path / "s")
    volume = load_series(tmp_path / "s", in_process=True)
    prepared = preprocess_volume(volume, PreprocessConfig(image_size=32))
    rows = [LocalizerRow("s", "9.9.9", 1.0, 1.0, 0, "Basilar Tip"),
            LocalizerRow("s", volume.sources[0].sop_instance_uid, 1.0, 1.0, 0, "Nowhere Artery")]
    points, problems = place_points(volume, prepared, rows)
    assert points == [] and len(problems) == 2
