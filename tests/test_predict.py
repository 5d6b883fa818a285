"""Predictor: a DICOM series -> 1-row frame of 14 probabilities; wiring proved with a planted model; never raises."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.ensemble import sigmoid
from inference.labels import LABELS, PRESENT_INDEX
from inference.manifest import MANIFEST_NAME
from inference.predict import UNIFORM_PRIOR, Predictor
from tests.onnx_models import PlantedModel, export_onnx, raising_model, write_bundle, write_ct_series

SIZE = 32
PRIORS = tuple(round(0.01 * (i + 1), 2) for i in range(len(LABELS)))
ROOT = Path(__file__).resolve().parents[1]
# the planted model's left/right features are means over column halves: keep columns aligned with the resize
PRE = PreprocessConfig(image_size=SIZE, ct_window=(0.0, 255.0))
# the mean over all windows (top_k >= slices) makes the channel features depend on each channel's clamping
ALL_WINDOWS = AggregationConfig(method="topk_mean", top_k=100)


def _assert_frame(frame: pl.DataFrame) -> np.ndarray:
    assert isinstance(frame, pl.DataFrame) and frame.shape == (1, 14)
    assert frame.columns == list(LABELS)
    assert all(dtype == pl.Float64 for dtype in frame.dtypes)
    values = frame.row(0)
    assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in values)
    return np.asarray(values)


@pytest.fixture(scope="module")
def planted_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {"planted": export_onnx(PlantedModel(5), folder / "planted.onnx", channels=5, size=SIZE),
            "raises": raising_model(folder / "raises.onnx", size=SIZE)}


def _bundle(folder: Path, onnx_file: Path, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_file, folder / "fold0.onnx")
    kwargs.setdefault("preprocess", PRE)
    write_bundle(folder, [folder / "fold0.onnx"], priors=PRIORS, **kwargs)
    return folder


@pytest.fixture(scope="module")
def bundle(planted_onnx, tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle"), planted_onnx["planted"], aggregation=ALL_WINDOWS)


# canonical test volume: 6 slices; patient's right half (low columns) 0 HU, left half 50 * slice HU
SLICE_VALUES = np.array([0, 50, 100, 150, 200, 250], dtype=np.float32)


def _canonical_volume() -> np.ndarray:
    canonical = np.zeros((6, 64, 64), dtype=np.float32)
    canonical[:, :, 32:] = SLICE_VALUES[:, None, None]
    return canonical


def _expected_planted() -> np.ndarray:
    """The series probabilities the planted model must give on `_canonical_volume` (mean over every window)."""
    n, offsets = len(SLICE_VALUES), WindowConfig().offsets
    v = SLICE_VALUES / 255.0
    out = np.full(14, sigmoid(-6.0))
    out[0] = np.mean(sigmoid(8 * v - 4))  # "Left ..." label: mean of the centre slice's left half
    out[1] = sigmoid(-4.0)  # "Right ...": the right half is black
    for c, offset in enumerate(offsets):  # channel c: half of slice centre+offset is bright
        idx = np.clip(np.arange(n) + offset, 0, n - 1)
        out[2 + c] = np.mean(sigmoid(8 * 0.5 * v[idx] - 4))
    out[PRESENT_INDEX] = out[:PRESENT_INDEX].max()
    return out


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0)], ids=["axial", "mirrored"])
def test_planted_model_proves_windows_channels_left_right_and_aggregation(bundle, tmp_path, orientation, caplog):
    canonical = _canonical_volume()
    # a row direction of -x runs toward the patient's right and a normal of -z toward the feet: store the stack
    # mirrored and upside down so the loader must undo both
    stack = canonical if orientation[0] > 0 else canonical[::-1, :, ::-1]
    series = tmp_path / "1.2.3.4"
    write_ct_series(series, stack, spacing=(1.0, 0.5, 0.5), orientation=orientation)
    predictor = Predictor(bundle, providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="inference.predict"):
        probs, report = predictor.predict_series(str(series))
    np.testing.assert_array_equal(probs, predictor.predict_probabilities(str(series)))
    assert report.answer == "model"
    expected = _expected_planted()
    np.testing.assert_allclose(probs, expected, atol=2e-3)
    assert probs[0] > 0.4 > 0.05 > probs[1]  # the bright patient-left half drives the Left label only
    assert len(set(np.round(probs[2:7], 3))) == 5  # the five channels are distinguishable, and in order
    line = caplog.text
    assert "1.2.3.4" in line and "6 slices CT" in line and "6 windows" in line
    assert all(stage in line for stage in ("load", "preprocess", "infer", "aggregate"))
    _assert_frame(predictor.predict(str(series)))


def test_predict_returns_a_valid_frame(bundle, tmp_path):
    series = tmp_path / "series"
    write_ct_series(series, np.random.default_rng(0).uniform(-100, 600, size=(9, 40, 48)))
    values = _assert_frame(Predictor(bundle, providers=["CPUExecutionProvider"]).predict(str(series)))
    assert not np.allclose(values, PRIORS)


def test_construction_is_lazy(planted_onnx, tmp_path):
    folder = _bundle(tmp_path / "b", planted_onnx["planted"])
    (folder / "fold0.onnx").unlink()  # a broken bundle does not stop the predictor from being built
    predictor = Predictor(folder)
    assert predictor.runner is not None and not predictor.runner.loaded
    np.testing.assert_allclose(predictor.priors, PRIORS)


@pytest.mark.parametrize("case", ["empty", "garbage", "missing"])
def test_unusable_series_get_the_priors_and_a_log_line(bundle, tmp_path, case, caplog):
    series = tmp_path / f"series_{case}"
    if case != "missing":
        series.mkdir()
    if case == "garbage":
        (series / "a.dcm").write_bytes(b"not a dicom file" * 100)
        (series / "b.dcm").write_bytes(b"")
        (series / "notes.txt").write_text("hello")
    predictor = Predictor(bundle, providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        values = _assert_frame(predictor.predict(str(series)))
    np.testing.assert_allclose(values, PRIORS)
    assert f"series series_{case}: prediction failed" in caplog.text
    assert "returning priors" in caplog.text


def test_a_model_that_raises_gives_the_priors(planted_onnx, tmp_path, caplog):
    folder = _bundle(tmp_path / "b", planted_onnx["raises"])
    series = tmp_path / "s"
    write_ct_series(series, np.zeros((3, 32, 32)))
    predictor = Predictor(folder, providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        values = _assert_frame(predictor.predict(str(series)))
    np.testing.assert_allclose(values, PRIORS)
    assert "InferenceError" in caplog.text and "onnxruntime failed" in caplog.text


def test_a_bundle_that_fails_verification_gives_the_priors_every_time(planted_onnx, tmp_path, caplog):
    folder = _bundle(tmp_path / "b", planted_onnx["planted"])
    (folder / "fold0.onnx").write_bytes(b"tampered")
    series = tmp_path / "s"
    write_ct_series(series, np.zeros((3, 32, 32)))
    predictor = Predictor(folder, providers=["CPUExecutionProvider"])
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        for _ in range(2):
            np.testing.assert_allclose(_assert_frame(predictor.predict(str(series))), PRIORS)
    failures = [r.getMessage() for r in caplog.records if "prediction failed" in r.getMessage()]
    assert len(failures) == 2 and all("ManifestError" in m and "sha256" in m for m in failures)
    assert "failed to load earlier" in failures[1]  # the second series does not hash the files again


def test_unreadable_manifest_gives_the_uniform_prior(planted_onnx, tmp_path, caplog):
    folder = _bundle(tmp_path / "b", planted_onnx["planted"])
    (folder / MANIFEST_NAME).write_text("{")
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        predictor = Predictor(folder)
        values = _assert_frame(predictor.predict(str(tmp_path / "whatever")))
    np.testing.assert_allclose(values, UNIFORM_PRIOR)
    assert "cannot read the weights manifest" in caplog.text and "whatever" in caplog.text


def test_no_torch_in_the_runtime_after_a_full_predict(bundle, tmp_path):
    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(0).uniform(0, 400, size=(5, 32, 32)))
    code = textwrap.dedent(f"""
        import json, sys
        from inference.predict import Predictor
        import inference.kernel, inference.gateway  # the whole runtime package
        frame = Predictor({str(bundle)!r}, providers=["CPUExecutionProvider"]).predict({str(series)!r})
        print(json.dumps({{"torch": "torch" in sys.modules, "timm": "timm" in sys.modules, "row": frame.row(0)}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False and report["timm"] is False
    assert not np.allclose(report["row"], PRIORS)  # a real prediction, not the fallback


def test_every_phantom_test_series_gets_a_valid_frame(bundle, phantom_dataset, tmp_path):
    series_dirs = sorted(p for p in (Path(phantom_dataset) / "test" / "series").iterdir() if p.is_dir())
    assert series_dirs
    predictor = Predictor(bundle, providers=["CPUExecutionProvider"])
    for folder in series_dirs:
        values, report = predictor.predict_series(str(folder))
        assert report.error == "" and report.answer == "model", report.line()
        assert not np.allclose(values, PRIORS)


def test_planted_model_on_phantom_series_in_every_plane(planted_onnx, write_phantom_series, tmp_path):
    from phantom import Acquisition

    # a wide CT window so the bright aneurysm stands out from the vessels instead of saturating with them
    wide = _bundle(tmp_path / "wide", planted_onnx["planted"], aggregation=ALL_WINDOWS,
                   preprocess=PreprocessConfig(image_size=SIZE, ct_window=(0.0, 3000.0)))
    predictor = Predictor(wide, providers=["CPUExecutionProvider"])
    results = {}
    for side in ("Left", "Right"):
        for plane, flips in [("axial", {}), ("coronal", {"flip_cols": True}), ("sagittal", {"reverse_slices": True})]:
            folder = write_phantom_series(seed=3, positive_locations=(f"{side} Middle Cerebral Artery",),
                                          blob_contrast=8.0, acquisition=Acquisition.cube(24, 4.0, plane, **flips))
            results[side, plane] = predictor.predict_probabilities(str(folder))
        # the same patient points in every plane: the canonical stacks, hence the answers, are the same
        np.testing.assert_allclose(results[side, "coronal"], results[side, "axial"], atol=1e-6)
        np.testing.assert_allclose(results[side, "sagittal"], results[side, "axial"], atol=1e-6)
    # same anatomy (seed 3), only the aneurysm (a few voxels, far brighter than vessels in this window) moves from
    # one side to the other: the planted left-minus-right feature must move with it
    lean = {side: results[side, "axial"][0] - results[side, "axial"][1] for side in ("Left", "Right")}
    assert lean["Left"] > lean["Right"], lean


def test_streamed_and_sequential_preprocessing_give_the_same_answer(planted_onnx, tmp_path):
    from inference.volume import Volume

    rng = np.random.default_rng(5)
    pixels = rng.uniform(-200, 700, size=(37, 40, 56)).astype(np.float32)  # more slices than one stream chunk
    volume = Volume(pixels=pixels, spacing=(1.0, 0.7, 0.5), modality="CT", series_uid="streamed")
    answers = {}
    for name, spacing in [("streamed", None), ("sequential", 1.0)]:  # resampling to the native spacing: no-op
        folder = _bundle(tmp_path / name, planted_onnx["planted"], aggregation=ALL_WINDOWS,
                         windows=WindowConfig(batch_size=4),
                         preprocess=PreprocessConfig(image_size=SIZE, slice_spacing_mm=spacing))
        predictor = Predictor(folder, providers=["CPUExecutionProvider"], loader=lambda _: volume)
        answers[name], report = predictor.predict_series("streamed")
        assert report.overlapped == (spacing is None)
        assert report.windows == report.windows_total == 37
    np.testing.assert_array_equal(answers["streamed"], answers["sequential"])


def test_a_failure_while_preparing_slices_reaches_predict(bundle, tmp_path, monkeypatch, caplog):
    from inference import prepare
    from inference.volume import Volume

    def broken(*args, **kwargs):
        raise RuntimeError("cv2 exploded")

    monkeypatch.setattr(prepare, "prepare_slices", broken)
    volume = Volume(pixels=np.zeros((40, 32, 32), np.float32), spacing=(1.0, 1.0, 1.0), modality="CT")
    predictor = Predictor(bundle, providers=["CPUExecutionProvider"], loader=lambda _: volume)
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        np.testing.assert_allclose(_assert_frame(predictor.predict("x")), PRIORS)
    assert "cv2 exploded" in caplog.text and "(unexpected)" in caplog.text


def test_past_the_budget_the_answer_comes_from_the_windows_already_scored(planted_onnx, tmp_path, monkeypatch):
    from inference import predict as predict_module
    from inference.volume import Volume

    folder = _bundle(tmp_path / "b", planted_onnx["planted"], aggregation=ALL_WINDOWS,
                     windows=WindowConfig(batch_size=4))
    volume = Volume(pixels=np.tile(SLICE_VALUES.repeat(4)[:, None, None], (1, 32, 32)), spacing=(1.0, 1.0, 1.0),
                    modality="CT", series_uid="slow")
    clock = {"now": 0.0}
    monkeypatch.setattr(predict_module.time, "monotonic", lambda: clock["now"])
    full = Predictor(folder, providers=["CPUExecutionProvider"], loader=lambda _: volume)
    expected, _ = full.predict_series("slow")
    predictor = Predictor(folder, providers=["CPUExecutionProvider"], loader=lambda _: volume, budget_s=100.0)
    real_predict_windows = predictor.ensemble.predict_windows

    def slow_windows(batch, **options):  # every batch costs 30 s of the fake clock: batches 1-4 start in 100 s
        clock["now"] += 30.0
        return real_predict_windows(batch, **options)

    monkeypatch.setattr(predictor.ensemble, "predict_windows", slow_windows)
    probs, report = predictor.predict_series("slow")
    assert report.answer == "partial" and report.windows == 16 and report.windows_total == 24
    assert not np.allclose(probs, PRIORS) and not np.allclose(probs, expected)  # the first 16 windows only
    clock["now"] = 0.0
    late = Predictor(folder, providers=["CPUExecutionProvider"], budget_s=100.0,
                     loader=lambda _: (clock.update(now=101.0), volume)[1])  # loading alone uses the budget
    probs, report = late.predict_series("late")
    assert report.answer == "priors" and "budget ran out" in report.error
    np.testing.assert_allclose(probs, PRIORS)


def test_work_stuck_past_budget_and_grace_is_left_behind_with_the_priors(bundle, tmp_path, caplog):
    import threading
    import time

    release = threading.Event()

    def stuck_loader(_):  # native code that never looks at the deadline
        release.wait(30)
        raise RuntimeError("released")

    predictor = Predictor(bundle, providers=["CPUExecutionProvider"], loader=stuck_loader, budget_s=0.2,
                          watchdog_grace_s=0.3)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="inference.predict"):
        values = _assert_frame(predictor.predict("stuck"))
    elapsed = time.monotonic() - start
    release.set()
    np.testing.assert_allclose(values, PRIORS)
    assert elapsed < 10  # answered at budget + grace, not when the loader returned (30 s)
    assert "left running in the background" in caplog.text


def test_a_stage_before_the_windows_hands_the_window_runner_a_changed_volume(bundle):
    """The seam a region-of-interest stage uses: `WindowRunner.answer_volume` answers a cropped volume exactly as
    a series that held only those voxels."""
    from inference.budget import Degradation
    from inference.runners import WindowRunner
    from inference.volume import Volume

    pixels = np.random.default_rng(1).uniform(-100, 600, size=(12, 40, 48)).astype(np.float32)
    whole = Volume(pixels=pixels, spacing=(1.0, 1.0, 1.0), modality="CT", series_uid="whole")
    cropped = Volume(pixels=pixels[2:10, 4:36, 8:40].copy(), spacing=(1.0, 1.0, 1.0), modality="CT",
                     series_uid="box")
    runner = Predictor(bundle, providers=["CPUExecutionProvider"], loader=lambda _: whole).runner
    assert isinstance(runner, WindowRunner)
    answer = runner.answer_volume(cropped, None, Degradation())
    alone = Predictor(bundle, providers=["CPUExecutionProvider"], loader=lambda _: cropped).answer("box")
    np.testing.assert_allclose(answer.probs, alone.probs)
    assert answer.slices == 8 and answer.windows == answer.windows_total == alone.windows
    assert not np.allclose(answer.probs, runner.answer_volume(whole, None, Degradation()).probs)
