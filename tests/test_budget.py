"""The whole-run budget (fake clock), the degradation steps in the predictor, and folds spread over devices."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from inference.budget import RunBudget, degradation
from inference.config import AggregationConfig, BudgetConfig, PreprocessConfig, WindowConfig
from inference.ensemble import load_ensemble, plan_devices
from inference.errors import ConfigError
from inference.labels import LABELS
from inference.predict import Predictor
from tests.onnx_models import PlantedModel, export_onnx, write_bundle, write_ct_series

SIZE = 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(budget: RunBudget, clock: FakeClock, seconds_at_level: dict[int, float], series: int) -> list[int]:
    """Play `series` calls whose duration depends on the level in force; return the level each one ran at."""
    levels = []
    for _ in range(series):
        levels.append(budget.level)
        seconds = seconds_at_level[budget.level]
        clock.now += seconds
        budget.record(seconds)
    return levels


def test_the_budget_degrades_step_by_step_and_logs_each_change_once(caplog):
    clock = FakeClock()
    config = BudgetConfig(run_hours=1.0, expected_series=100, margin=0.85, recover=0.8, window=5)
    budget = RunBudget(config, clock=clock)
    with caplog.at_level(logging.WARNING, logger="inference.budget"):
        levels = _run(budget, clock, {0: 60.0, 1: 40.0, 2: 20.0, 3: 10.0}, series=30)
    # 100 series x 60 s = 6000 s > 0.85 x 3600: up at once; 40 s/series still projects ~4000 s: up again; at
    # 20 s/series the projection fits (60 + 40 + 28 x 20 + ... < 3060 s)
    assert levels[:3] == [0, 1, 2] and set(levels[2:]) == {2}
    assert budget.current.steps == ("tta_off", "stride_2")
    changes = [r for r in caplog.records if "degrade level" in r.getMessage()]
    assert len(changes) == len(budget.decisions) == 2
    assert [d[1] for d in budget.decisions] == [1, 2]
    summary = budget.summary()
    assert summary["level"] == 2 and summary["decisions"][0]["steps"] == "tta_off"


def test_the_budget_recovers_when_there_is_room_again():
    clock = FakeClock()
    config = BudgetConfig(run_hours=1.0, expected_series=60, margin=0.85, recover=0.8, window=3)
    budget = RunBudget(config, clock=clock)
    levels = _run(budget, clock, {0: 90.0, 1: 10.0, 2: 5.0, 3: 5.0}, series=3)  # a slow start: 90 s per series
    assert budget.level >= 1
    levels += _run(budget, clock, {0: 20.0, 1: 10.0, 2: 5.0, 3: 5.0}, series=40)  # level 0 turns out cheaper
    assert budget.level == 0 and levels[-1] == 0
    assert [d[1] for d in budget.decisions][-1] == 0  # the last decision went back down


def test_an_on_time_run_never_degrades():
    clock = FakeClock()
    budget = RunBudget(BudgetConfig(run_hours=12.0, expected_series=2500), clock=clock)
    assert set(_run(budget, clock, {0: 5.0}, series=200)) == {0} and not budget.decisions


def test_degradation_steps_follow_the_declared_order():
    assert degradation(("stride_2", "tta_off"), 1).steps == ("stride_2",)
    level = degradation(("tta_off", "stride_2", "half_folds"), 3)
    assert level.tta_off and level.stride_factor == 2 and level.half_folds
    assert degradation((), 0).describe() == "full"
    with pytest.raises(ConfigError, match="unknown degrade steps"):
        degradation(("fewer_slices",), 0)
    with pytest.raises(ConfigError, match="repeats"):
        BudgetConfig(degrade_steps=("tta_off", "tta_off"))


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    files = [export_onnx(PlantedModel(5, gain=6.0 + i), folder / f"fold{i}.onnx", channels=5, size=SIZE)
             for i in range(2)]
    write_bundle(folder, files, preprocess=PreprocessConfig(image_size=SIZE), windows=WindowConfig(batch_size=4),
                 aggregation=AggregationConfig(tta_flip=True, method="topk_mean", top_k=100))
    return folder


def test_the_predictor_applies_each_step(two_folds, tmp_path, monkeypatch):
    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(0).uniform(0, 400, size=(9, 40, 40)))
    predictor = Predictor(two_folds, providers=["CPUExecutionProvider"])
    calls = []
    real = predictor.ensemble.predict_windows

    def spy(batch, **options):
        calls.append(options)
        return real(batch, **options)

    monkeypatch.setattr(predictor.ensemble, "predict_windows", spy)
    full, report = predictor.predict_series(series)
    assert report.windows == 9 and report.degraded == "full" and all(c == {"tta": None, "folds": None} for c in calls)
    calls.clear()
    cheap, report = predictor.predict_series(series, degradation=degradation(("tta_off", "stride_2", "half_folds"), 3))
    assert report.windows == math.ceil(9 / 2) and report.degraded == "tta_off+stride_2+half_folds"
    assert all(c == {"tta": False, "folds": 1} for c in calls)
    assert not np.allclose(full, cheap)


def test_fold_sessions_are_spread_over_the_devices(two_folds):
    assert plan_devices(5, [0, 1]) == [0, 1, 0, 1, 0] and plan_devices(2, [3]) == [3, 3]
    with pytest.raises(ValueError):
        plan_devices(2, [])
    cpu = load_ensemble(two_folds, providers=["CPUExecutionProvider"], devices=[0, 1])
    assert cpu.devices == [None, None]  # CUDA not requested: no device plan
    batch = np.random.default_rng(1).uniform(size=(3, 5, SIZE, SIZE)).astype(np.float32)
    sequential = cpu.predict_logits(batch)
    cpu.devices = [0, 1]  # as on two GPUs: one thread per device, run concurrently
    assert len(cpu._groups(2)) == 2
    np.testing.assert_array_equal(cpu.predict_logits(batch), sequential)
    assert cpu.predict_logits(batch, folds=1, tta=False).shape == (1, 3, len(LABELS))


def test_the_gpu_batch_size_applies_when_the_folds_run_on_cuda(tmp_path, monkeypatch):
    from inference.ensemble import FoldEnsemble

    folder = tmp_path / "bundle"
    folder.mkdir()
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=SIZE)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=SIZE),
                 windows=WindowConfig(batch_size=2, gpu_batch_size=8))
    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(0).uniform(0, 400, size=(16, 40, 40)))
    sizes = []
    real = FoldEnsemble.predict_windows

    def spy(self, batch, **options):
        sizes.append(len(batch))
        return real(self, batch, **options)

    monkeypatch.setattr(FoldEnsemble, "predict_windows", spy)
    Predictor(folder, providers=["CPUExecutionProvider"]).predict_series(series)
    assert sizes == [2] * 8
    sizes.clear()
    monkeypatch.setattr(FoldEnsemble, "providers", property(lambda self: ["CUDAExecutionProvider"]))
    Predictor(folder, providers=["CPUExecutionProvider"]).predict_series(series)
    assert sizes == [8, 8]
