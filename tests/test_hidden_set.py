"""What competitors found in the hidden test set, loaded: several series in one folder, rescale tags missing on
some files, a file that hangs its decoder, a header declaring an impossible size (issue 18).

Every folder is generated here (tests/hostile_dicom.py builders on phantom series); nothing is stored.
"""
from __future__ import annotations

import logging
import resource
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from inference import dicom_io, memory, stack
from inference.decode_pool import DecodeBatch, DecodeJob, DecodeLimits, DecodePool
from inference.dicom_io import DicomFileError, read_dicom
from inference.errors import SeriesLoadError
from inference.load import load_series, plan_series
from tests.hostile_dicom import (
    add_second_series,
    declare_size,
    drop_rescale,
    write_hostile_series,
    write_valid_series,
)

N_GOOD = 8  # the first series: N_GOOD + 1 slices
UID = "1.2.826.0.1.3680043.8.498.18"


@pytest.fixture
def first_series(tmp_path):
    """A valid 9-slice CTA series (intercept -1024) in a folder named after its SeriesInstanceUID, and its volume
    loaded alone."""
    spec, files = write_valid_series(tmp_path / "alone" / UID, N_GOOD + 1)
    series = SimpleNamespace(spec=spec, files=files, folder=files[0].parent)
    return series, load_series(series.folder)


def _moved(series: SimpleNamespace, folder: Path) -> Path:
    """The series' files copied into another folder (another name: the folder's name decides ties)."""
    folder.mkdir(parents=True)
    for path in series.files:
        shutil.copy(path, folder / path.name)
    return folder


# --------------------------------------------------------------------------------- several series in one folder


def test_two_series_in_one_folder_are_separated_and_the_other_is_reported(tmp_path, first_series):
    series, alone = first_series
    folder = _moved(series, tmp_path / "mixed")  # not named after either series: the largest wins
    added = add_second_series(folder, like=series.spec, num_slices=N_GOOD - 2,
                              shift_mm=series.spec.acquisition.slice_spacing / 2, seed=5)
    volume = load_series(folder)
    assert volume.stack_shape == alone.stack_shape  # 9 slices, not 9 + 6 interleaved
    np.testing.assert_array_equal(volume.pixels, alone.pixels)
    assert volume.spacing == alone.spacing  # the slice spacing is not halved
    assert not any(Path(s.path).name in {p.name for p in added} for s in volume.sources)
    note = next(n for n in volume.dropped if "another series" in n)
    assert f"dropped {len(added)} frames" in note and series.spec.series_uid in note and "the most frames" in note


def test_the_folder_s_own_series_wins_even_when_smaller(tmp_path, first_series):
    series, _ = first_series
    other = tmp_path / "other"
    added = add_second_series(other, like=series.spec, num_slices=N_GOOD - 2, shift_mm=1.5, seed=5)
    own_uid = pydicom.dcmread(added[0], stop_before_pixels=True).SeriesInstanceUID
    folder = _moved(series, tmp_path / own_uid)
    for path in added:
        shutil.copy(path, folder / path.name)
    volume = load_series(folder)
    assert volume.stack_shape[0] == len(added)
    assert {Path(s.path).name for s in volume.sources} == {p.name for p in added}
    assert any("the folder's own series" in note for note in volume.dropped)


def test_a_second_series_at_the_same_positions_replaces_nothing(tmp_path, first_series):
    series, alone = first_series
    folder = tmp_path / UID
    _moved(series, folder)
    add_second_series(folder, like=series.spec, num_slices=N_GOOD + 1, shift_mm=0.0, seed=5)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, alone.pixels)
    assert [s.path for s in volume.sources] == [str(folder / Path(s.path).name) for s in alone.sources]
    assert not any("duplicate positions" in note for note in volume.dropped)
    assert any("another series" in note and "the folder's own series" in note for note in volume.dropped)


def test_without_series_uids_the_frame_of_reference_separates_them(tmp_path, first_series):
    series, alone = first_series
    folder = _moved(series, tmp_path / "no-series-uid")
    add_second_series(folder, like=series.spec, num_slices=N_GOOD - 2, shift_mm=1.5, seed=5)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.save_as(path, enforce_file_format=True)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, alone.pixels)
    assert any("another frame of reference" in note for note in volume.dropped)


def test_a_file_without_identity_joins_the_series_and_one_series_is_left_as_it_was(tmp_path, first_series):
    series, alone = first_series
    folder = _moved(series, tmp_path / "stripped-one")
    ds = pydicom.dcmread(folder / series.files[3].name)
    del ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.StudyInstanceUID
    ds.save_as(folder / series.files[3].name, enforce_file_format=True)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, alone.pixels)
    assert volume.dropped == alone.dropped == []  # one series: nothing to say, exactly as before


# ------------------------------------------------------------------------------------------------ rescale


def test_missing_rescale_takes_the_stack_s_majority_and_says_so(tmp_path, first_series):
    series, alone = first_series
    assert pydicom.dcmread(series.files[0]).RescaleIntercept == -1024  # a CT stored as HU + 1024
    folder = _moved(series, tmp_path / "half-rescale")
    stripped = drop_rescale(folder, start=1, every=2)
    assert len(stripped) == N_GOOD // 2 and "RescaleIntercept" not in pydicom.dcmread(stripped[0])
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, alone.pixels)  # no slice 1024 HU too high
    note = next(n for n in volume.dropped if n.startswith("RescaleIntercept"))
    assert f"missing on {len(stripped)} of {N_GOOD + 1} frames" in note and "-1024" in note


def test_a_series_without_any_rescale_keeps_the_stored_values(tmp_path, first_series):
    series, alone = first_series
    folder = _moved(series, tmp_path / "no-rescale")
    drop_rescale(folder, start=0, every=1)
    volume = load_series(folder)
    np.testing.assert_array_equal(volume.pixels, alone.pixels + 1024)  # today's rule: slope 1, intercept 0
    assert not any("Rescale" in note for note in volume.dropped)
    assert np.isnan(read_dicom(next(folder.iterdir()), decode=False).intercepts).all()  # absent, not 0


# --------------------------------------------------------------------------------- impossible declared sizes


def test_a_header_declaring_65535_pixels_a_side_is_refused_before_decoding(tmp_path, monkeypatch):
    series = write_hostile_series("declared_65535", tmp_path / UID, position="middle", n_good=N_GOOD, size=32)
    bad = series.bad[0]
    decoded: list[str] = []
    real = dicom_io.decode_with_plugins
    monkeypatch.setattr(dicom_io, "decode_with_plugins", lambda source, *a, **k: decoded.append("x") or
                        real(source, *a, **k))
    with pytest.raises(DicomFileError, match="declares 65535 x 65535 pixels.*refused before decoding"):
        read_dicom(bad)
    assert decoded == []  # refused from the header
    volume = load_series(series.folder, in_process=True)
    assert volume.stack_shape == (N_GOOD, 32, 32)  # the file cost itself only
    assert any(bad.name in note and "65535 x 65535" in note for note in volume.dropped)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(bad, alone / bad.name)
    with pytest.raises(SeriesLoadError, match="65535 x 65535"):
        load_series(alone, in_process=True)


def test_a_size_beyond_the_memory_left_is_refused(tmp_path, monkeypatch):
    series = write_hostile_series("declared_65535", tmp_path / UID, position="middle", n_good=1, size=32)
    declare_size(series.bad[0], 4096, 4096)  # a possible side, but 4096 x 4096 x 6 bytes = 96 MiB once read
    monkeypatch.setattr(dicom_io, "memory_left", lambda: 16 << 20)
    with pytest.raises(DicomFileError, match="more than the 16 MiB of memory left"):
        read_dicom(series.bad[0], decode=False)
    monkeypatch.setattr(dicom_io, "memory_left", lambda: 64 << 30)
    assert read_dicom(series.bad[0], decode=False).rows == 4096


def test_a_stack_beyond_the_memory_left_is_refused_before_decoding(tmp_path, monkeypatch):
    _, files = write_valid_series(tmp_path / UID, 4)
    monkeypatch.setattr(stack, "memory_left", lambda: 1000)  # bytes: less than 4 slices of 32 x 32
    monkeypatch.setattr(stack, "_STACK_CHECK_FROM", 0)
    with pytest.raises(SeriesLoadError, match=r"image stack \(4 frames of 32 x 32\) needs .* memory left"):
        plan_series(files[0].parent)


def test_memory_readings_are_plausible():
    total, left = memory.total_memory(), memory.memory_left()
    assert total is None or total > 256 << 20
    assert left is None or total is None or 0 <= left <= total
    assert memory.format_bytes(656 << 30) == "656 GiB" and memory.format_bytes(1536 << 20) == "1.5 GiB"


# ------------------------------------------------------------------------------------------- a hanging file


@pytest.fixture(scope="module")
def jpegls_files(tmp_path_factory) -> list[Path]:
    """12 valid JPEG-LS slices and, as the 6th, one whose SOF55 says 0 lines (pylibjpeg loops on it)."""
    series = write_hostile_series("jpegls_zero_lines", tmp_path_factory.mktemp("hang") / UID, position="first",
                                  n_good=11, size=32)
    files = list(series.files)
    files.insert(5, files.pop(0))  # the hanging file: second of the second task (tasks of 4 files, one worker)
    return files


def test_a_hanging_file_costs_itself_once_and_its_task_mates_are_kept(jpegls_files, monkeypatch, caplog):
    headers = [read_dicom(p, decode=False) for p in jpegls_files]
    jobs = [DecodeJob(h.path, h.num_frames, h.rows, h.cols, h.pixel_dtype) for h in headers]
    scheduled: list[list[int]] = []
    schedule = DecodeBatch._schedule

    def recording(batch, indices):
        scheduled.append(list(indices))
        return schedule(batch, indices)

    monkeypatch.setattr(DecodeBatch, "_schedule", recording)
    limits = DecodeLimits(workers=1, timeout_s=2.0, timeout_s_per_mb=0.0, memory_mb=1024, files_per_task=4)
    with DecodePool(limits) as pool, caplog.at_level(logging.INFO, logger="inference.decode_pool"):
        pool.start(wait_s=60)
        with pool.decode(jobs) as batch:
            results = {index: (result.error, None if result.pixels is None else result.pixels.copy())
                       for index, result in batch}
    assert sorted(results) == list(range(len(jobs)))
    assert [5] not in scheduled[:3] and [4, 5, 6, 7] in scheduled  # it hung inside a task of four files
    assert sum(5 in task for task in scheduled) == 1  # ... and was never decoded again
    assert sum(4 in task for task in scheduled) == 1  # its task mate finished before it: kept from the block
    assert [6] in scheduled and [7] in scheduled  # the ones it had not reached: decoded again, one per task
    error, pixels = results[5]
    assert pixels is None and jpegls_files[5].name in error and "took over 2 s" in error
    for index, (error, pixels) in results.items():
        if index != 5:
            assert error == "", error
            np.testing.assert_array_equal(pixels, read_dicom(jpegls_files[index]).pixels)
    assert "not retried" in caplog.text and "one by one" not in caplog.text


def test_worker_memory_is_capped_to_a_share_of_the_machine(monkeypatch):
    import inference.decode_pool as decode_pool

    monkeypatch.setattr(decode_pool, "total_memory", lambda: 30 << 30)  # Kaggle: about 30 GiB, 4 workers
    kaggle = DecodeLimits(workers=4)
    assert kaggle.worker_memory_mb == 3072 and 4 * kaggle.worker_memory_mb <= 0.4 * 30 * 1024
    assert DecodeLimits(workers=2).worker_memory_mb == 4096  # the plain cap where the share is larger
    monkeypatch.setattr(decode_pool, "total_memory", lambda: 2 << 30)
    assert DecodeLimits(workers=4).worker_memory_mb == 1024  # never below what a decoder needs
    assert DecodeLimits(workers=4, memory_mb=0).worker_memory_mb == 0  # switched off


def test_the_cap_is_what_the_workers_run_under():
    limits = DecodeLimits(workers=1, memory_mb=1536)
    with DecodePool(limits) as pool:
        soft, _ = pool._executor().schedule(resource.getrlimit, args=(resource.RLIMIT_AS,)).result(timeout=60)
    assert soft == limits.worker_memory_mb * 1024 * 1024
