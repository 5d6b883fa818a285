"""preprocess_volume: CT window and MR percentiles to uint8, physical-square padding, resize, slice resampling."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.config import PreprocessConfig
from inference.errors import InferenceError
from inference.normalize import preprocess_volume, slice_geometry
from inference.volume import Volume


def _volume(pixels, spacing=(1.0, 1.0, 1.0), modality="CT") -> Volume:
    return Volume(pixels=np.asarray(pixels, dtype=np.float32), spacing=spacing, modality=modality, series_uid="s1")


def test_ct_window_maps_hounsfield_units_linearly_and_clips():
    hu = np.array([-1000, 0, 100, 250, 500, 3000], dtype=np.float32)
    pixels = np.broadcast_to(hu[:, None, None], (6, 16, 16))
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=16, ct_window=(0, 500)))
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (6, 16, 16)
    np.testing.assert_array_equal(out.pixels[:, 8, 8], [0, 0, 51, 128, 255, 255])
    assert (out.pixels == out.pixels[:, :1, :1]).all()  # constant slices stay constant
    assert out.series_uid == "s1" and out.modality == "CT"


def test_ct_custom_window():
    pixels = np.full((1, 8, 8), 40.0, dtype=np.float32)
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=8, ct_window=(-40, 120)))
    assert out.pixels[0, 0, 0] == round(80 / 160 * 255)


def test_mr_percentiles_of_a_strided_subsample_match_the_full_percentiles():
    rng = np.random.default_rng(0)
    pixels = rng.gamma(2.0, 100.0, size=(24, 32, 32)).astype(np.float32)
    cfg = PreprocessConfig(image_size=32, percentile_stride=2)
    out = preprocess_volume(_volume(pixels, modality="MR"), cfg)
    low, high = np.percentile(pixels, [1, 99])
    assert out.intensity[0] == pytest.approx(low, rel=0.15)
    assert out.intensity[1] == pytest.approx(high, rel=0.1)
    expected = np.clip((pixels - out.intensity[0]) / (out.intensity[1] - out.intensity[0]) * 255, 0, 255)
    assert np.abs(out.pixels.astype(float) - np.rint(expected)).max() <= 1
    assert (out.pixels == 0).mean() == pytest.approx(0.01, abs=0.01)
    assert (out.pixels == 255).mean() == pytest.approx(0.01, abs=0.01)


def test_constant_mr_volume_warns_and_returns_a_black_stack(caplog):
    pixels = np.full((4, 16, 16), 7.0, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="inference.normalize"):
        out = preprocess_volume(_volume(pixels, modality="MR"), PreprocessConfig(image_size=8))
    assert out.pixels.shape == (4, 8, 8) and (out.pixels == 0).all()
    assert "constant" in caplog.text and "s1" in caplog.text


def test_each_slice_keeps_its_own_values_through_the_resize():
    values = np.array([10, 200, 60, 130, 250], dtype=np.float32)
    pixels = np.broadcast_to(values[:, None, None], (5, 64, 64))
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=16, ct_window=(0, 255)))
    np.testing.assert_array_equal(out.pixels[:, 5, 5], values.astype(np.uint8))


def test_wide_slice_is_padded_to_a_physical_square_not_stretched():
    pixels = np.full((2, 20, 40), 300.0, dtype=np.float32)
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=32))
    g = out.geometry
    assert (g.height, g.width, g.top, g.left) == (16, 32, 8, 0)
    assert (out.pixels[:, :8] == 0).all() and (out.pixels[:, 24:] == 0).all()
    assert (out.pixels[:, 8:24] > 0).all()


def test_anisotropic_reformat_uses_pixel_spacing():
    # a coronal-like reformat: 40 rows of 2 mm, 80 columns of 1 mm is physically square: no padding
    pixels = np.full((3, 40, 80), 300.0, dtype=np.float32)
    out = preprocess_volume(_volume(pixels, spacing=(1.0, 2.0, 1.0)), PreprocessConfig(image_size=32))
    assert (out.geometry.height, out.geometry.width) == (32, 32)
    assert (out.pixels > 0).all()
    assert out.spacing[1] == pytest.approx(2.5) and out.spacing[2] == pytest.approx(2.5)
    # without keep_aspect the same physical square would be stretched the same way; a 1 mm grid would not be
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=32))
    assert (out.geometry.height, out.geometry.width) == (16, 32)
    out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=32, keep_aspect=False))
    assert (out.geometry.height, out.geometry.width) == (32, 32)


@pytest.mark.parametrize("shape,spacing", [((6, 40, 60), (1.0, 1.0, 1.0)), ((6, 50, 30), (1.0, 0.6, 1.3))])
def test_canonical_to_prepared_follows_a_bright_voxel(shape, spacing):
    z, r, c = 3, shape[1] // 3, 2 * shape[2] // 3
    pixels = np.zeros(shape, dtype=np.float32)
    pixels[z, r - 1:r + 2, c - 1:c + 2] = 500.0
    out = preprocess_volume(_volume(pixels, spacing=spacing), PreprocessConfig(image_size=24))
    pz, pr, pc = out.canonical_to_prepared(z, r, c)
    assert pz == z
    peak = np.unravel_index(np.argmax(out.pixels[z]), out.pixels[z].shape)
    assert abs(peak[0] - pr) <= 1.0 and abs(peak[1] - pc) <= 1.0


def test_slice_resampling_interpolates_and_maps_coordinates():
    values = np.array([0, 100, 200, 100], dtype=np.float32)
    pixels = np.broadcast_to(values[:, None, None], (4, 8, 8))
    cfg = PreprocessConfig(image_size=8, ct_window=(0, 255), slice_spacing_mm=1.0)
    out = preprocess_volume(_volume(pixels, spacing=(2.0, 1.0, 1.0)), cfg)
    np.testing.assert_array_equal(out.pixels[:, 0, 0], [0, 50, 100, 150, 200, 150, 100])
    assert out.canonical_to_prepared(2, 0, 0)[0] == pytest.approx(4.0)
    assert out.spacing[0] == pytest.approx(1.0)
    same = preprocess_volume(_volume(pixels, spacing=(1.0, 1.0, 1.0)), cfg)
    assert same.num_slices == 4


def test_bad_volume_raises_inference_error():
    with pytest.raises(InferenceError, match="3D"):
        preprocess_volume(_volume(np.zeros((8, 8))), PreprocessConfig(image_size=8))
    with pytest.raises(InferenceError):
        slice_geometry(0, 4, 1.0, 1.0, size=8)


def test_constant_ct_volume_warns_and_keeps_the_window(caplog):
    pixels = np.full((3, 16, 16), 250.0, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="inference.normalize"):
        out = preprocess_volume(_volume(pixels), PreprocessConfig(image_size=8, ct_window=(0, 500)))
    assert (out.pixels == 128).all()
    assert "constant CT volume" in caplog.text
