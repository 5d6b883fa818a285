"""The volume streams in while the model starts: the same voxels, the same answers, and a lost file is handled."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.decode_pool import DecodeLimits, DecodePool
from inference.labels import LABELS
from inference.load import load_series, stream_series
from inference.predict import Predictor
from phantom import Acquisition
from tests.hostile_dicom import write_hostile_series
from tests.onnx_models import PlantedModel, export_onnx, write_bundle

SIZE = 32
CASES = {  # name -> (modality, acquisition changes)
    "ct_axial": ("CTA", {}),
    "ct_axial_feet_first_jpegls": ("CTA", {"reverse_slices": True, "compression": "jpegls"}),
    "mr_axial_jpeg2000": ("MRA", {"compression": "jpeg2000"}),
    "mr_coronal": ("MRI T2", {"plane": "coronal"}),  # canonical slices need every file: no streaming
    "ct_multiframe_rle": ("CTA", {"multiframe": True, "compression": "rle"}),
}


@pytest.fixture(scope="module")
def pool():
    with DecodePool(DecodeLimits(workers=2)) as decode_pool:
        yield decode_pool


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=SIZE)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=SIZE), windows=WindowConfig(batch_size=4),
                 aggregation=AggregationConfig(method="topk_mean", top_k=100), priors=tuple([0.01] * len(LABELS)))
    return folder


def _series(write_phantom_series, name: str) -> Path:
    modality, changes = CASES[name]
    acquisition = Acquisition(rows=40, cols=48, num_slices=30, pixel_spacing=(3.0, 3.0), slice_spacing=3.0,
                              centre=(0.0, 0.0, -15.0))
    return write_phantom_series(seed=7, modality=modality, acquisition=acquisition, **changes)


@pytest.mark.parametrize("name", list(CASES))
def test_the_streamed_volume_is_the_loaded_one_voxel_for_voxel(write_phantom_series, pool, name, monkeypatch):
    import time

    from inference import load

    folder = _series(write_phantom_series, name)
    expected = load_series(folder, in_process=True)
    rescale = load._rescale_into

    def slow(*args):  # each frame lands 5 ms after the previous one: the consumer really runs ahead
        time.sleep(0.005)
        rescale(*args)

    monkeypatch.setattr(load, "_rescale_into", slow)
    stream = stream_series(folder, pool=pool, first=[0, 9, 18, 27])
    prefixes = {}
    for count in (1, 5, 17, expected.num_slices):  # what `wait` promised must already be the final voxels
        stream.wait(count)
        prefixes[count] = stream.volume.pixels[:count].copy()
    volume = stream.result()
    np.testing.assert_array_equal(volume.pixels, expected.pixels)
    for count, prefix in prefixes.items():
        np.testing.assert_array_equal(prefix, expected.pixels[:count])
    assert volume.sources == expected.sources and volume.spacing == expected.spacing
    assert volume.modality == expected.modality and stream.streamable == (name != "mr_coronal")


def test_stream_series_fills_first_the_slices_a_function_of_the_skeleton_names(write_phantom_series, pool,
                                                                                monkeypatch):
    """`first` may be a function of the volume still to fill (shape and modality known from the headers): what
    the predictor's intensity plan reads (`sample_slices`), computed once, filled before the rest."""
    from inference import load
    from inference.normalize import sample_slices

    folder = write_phantom_series(seed=7, modality="MRA", reverse_slices=True, acquisition=Acquisition(
        rows=40, cols=48, num_slices=30, pixel_spacing=(3.0, 3.0), slice_spacing=3.0, centre=(0.0, 0.0, -15.0)))
    cfg = PreprocessConfig(image_size=SIZE)
    seen, filled = [], []
    put = load.SeriesStream._put
    monkeypatch.setattr(load.SeriesStream, "_put", lambda self, k, *args: (filled.append(k), put(self, k, *args)))

    def first(skeleton):
        seen.append((skeleton.pixels.shape, skeleton.modality))
        return sample_slices(skeleton, cfg)

    stream = stream_series(folder, pool=pool, first=first)
    volume = stream.result()
    assert seen == [(volume.pixels.shape, "MR")]  # called once, on the skeleton
    assert stream.first == list(sample_slices(volume, cfg)) and 1 < len(stream.first) < volume.num_slices
    n = volume.num_slices
    stack_index = [n - 1 - c if volume.transform.flips[0] else c for c in stream.first]
    assert filled[:len(stack_index)] == stack_index and sorted(filled) == list(range(n))


@pytest.mark.parametrize("name", list(CASES))
def test_the_streamed_prediction_is_the_sequential_one(write_phantom_series, bundle, pool, name):
    folder = _series(write_phantom_series, name)
    streamed, report = Predictor(bundle, providers=["CPUExecutionProvider"], decode_pool=pool).predict_series(folder)
    sequential = Predictor(bundle, providers=["CPUExecutionProvider"],
                           loader=lambda path: load_series(path, in_process=True)).predict_probabilities(folder)
    np.testing.assert_array_equal(streamed, sequential)
    assert report.answer == "model" and report.slices == load_series(folder, in_process=True).num_slices


def test_a_file_lost_while_streaming_restarts_on_the_rebuilt_volume(bundle, pool, tmp_path):
    series = write_hostile_series("jpegls_zero_width", tmp_path / "1.2.826.0.1.3680043.8.498.5", position="middle",
                                  n_good=24, size=SIZE)
    without = tmp_path / "without" / series.folder.name
    shutil.copytree(series.folder, without)
    (without / series.bad[0].name).unlink()
    probs, report = Predictor(bundle, providers=["CPUExecutionProvider"], decode_pool=pool).predict_series(
        series.folder)
    expected = Predictor(bundle, providers=["CPUExecutionProvider"],
                         loader=lambda path: load_series(path, in_process=True)).predict_probabilities(without)
    np.testing.assert_array_equal(probs, expected)
    assert report.answer == "model" and report.slices == 24


def _count_decodes(monkeypatch) -> list[int]:
    from inference import load

    decoded: list[int] = []
    decode = load.SeriesStream._decode

    def counting(self, needed):
        decoded.extend(needed)
        return decode(self, needed)

    monkeypatch.setattr(load.SeriesStream, "_decode", counting)
    return decoded


def test_narrowing_decodes_only_the_files_of_the_slices_asked_for(write_phantom_series, pool, monkeypatch):
    """The region locator's stream: the `first` slices are in when `narrow` is asked; afterwards only the files of
    the slices it names are decoded, the others stay zero and are listed."""
    folder = _series(write_phantom_series, "ct_axial_feet_first_jpegls")
    expected = load_series(folder, in_process=True)
    decoded = _count_decodes(monkeypatch)
    first, box = [0, 9, 18, 27], [10, 11, 12, 13]
    seen = []

    def narrow(volume):
        seen.append(volume.pixels[first].copy())
        return box

    stream = stream_series(folder, pool=pool, first=first, narrow=narrow)
    volume = stream.result()
    np.testing.assert_array_equal(seen[0], expected.pixels[first])  # what the locator reads was in
    kept = first + box
    np.testing.assert_array_equal(volume.pixels[kept], expected.pixels[kept])
    skipped = sorted(set(range(expected.num_slices)) - set(kept))
    assert stream.partial and stream.narrowed and stream.skipped == skipped and not np.any(volume.pixels[skipped])
    assert len(decoded) == len(kept) and any(f"decoded {len(kept)} of 30 slices" in n for n in volume.dropped)


@pytest.mark.parametrize("answer", ["all", "raises"])
def test_a_narrow_that_wants_everything_or_fails_decodes_every_file(write_phantom_series, pool, monkeypatch, answer):
    folder = _series(write_phantom_series, "mr_axial_jpeg2000")
    expected = load_series(folder, in_process=True)

    def narrow(volume):
        if answer == "raises":
            raise RuntimeError("locator broke")
        return None

    stream = stream_series(folder, pool=pool, first=[0, 15], narrow=narrow)
    np.testing.assert_array_equal(stream.result().pixels, expected.pixels)
    assert not stream.partial and stream.narrowed == (answer == "all")


def test_a_file_lost_after_narrowing_decodes_the_skipped_files_and_rebuilds(pool, tmp_path):
    series = write_hostile_series("jpegls_zero_width", tmp_path / "1.2.826.0.1.3680043.8.498.6", position="middle",
                                  n_good=24, size=SIZE)
    without = tmp_path / "without" / series.folder.name
    shutil.copytree(series.folder, without)
    (without / series.bad[0].name).unlink()
    stream = stream_series(series.folder, pool=pool, first=[0], narrow=lambda volume: list(range(8, 17)))
    volume = stream.result()  # the bad file (the middle one) was in the box: lost, so every file is needed
    np.testing.assert_array_equal(volume.pixels, load_series(without, in_process=True).pixels)
    assert not stream.partial and volume.num_slices == 24
