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
    config = BudgetConfig(run_hours=1.0, expected_series=100, margin=0.85, recover=0.8, window=5,
                          min_series=1)  # a step on each series' evidence: the stepping itself is under test
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
    config = BudgetConfig(run_hours=1.0, expected_series=60, margin=0.85, recover=0.8, window=3, min_series=1)
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


def test_one_slow_first_series_is_no_evidence():
    """The first series carries the warm-up, or a decoder hang: 108 s of it once does not degrade a run that then
    goes at 10 s a series (the old rule projected 75 h of 12 h from it and degraded at once)."""
    clock = FakeClock()
    budget = RunBudget(BudgetConfig(run_hours=12.0, expected_series=2500), clock=clock)
    clock.now += 108.0
    budget.record(108.0)
    assert budget.projection() > 0.85 * 12 * 3600  # what one series alone would project
    levels = _run(budget, clock, {0: 10.0}, series=100)
    assert set(levels) == {0} and not budget.decisions


def test_a_run_that_stays_slow_degrades_after_min_series():
    clock = FakeClock()
    budget = RunBudget(BudgetConfig(run_hours=12.0, expected_series=2500, min_series=5), clock=clock)
    levels = _run(budget, clock, {0: 60.0, 1: 60.0, 2: 60.0, 3: 60.0}, series=16)
    assert levels[:5] == [0] * 5 and levels[5] == 1  # the first step after the 5th series, not the 1st
    assert [d[0] for d in budget.decisions] == [5, 10, 15]  # each later step waits for 5 series at its level


def test_the_estimate_is_the_median_of_the_window_so_one_outlier_does_not_move_it():
    clock = FakeClock()
    budget = RunBudget(BudgetConfig(run_hours=12.0, expected_series=2500, window=20), clock=clock)
    _run(budget, clock, {0: 10.0}, series=10)
    clock.now += 500.0
    budget.record(500.0)  # a mean of the window would now be 54.5 s a series: 38 h projected
    assert budget.level == 0 and not budget.decisions
    assert budget.projection() == pytest.approx(clock.now - 1000.0 + (2500 - 11) * 10.0)
    with pytest.raises(ConfigError, match="min_series"):
        BudgetConfig(window=3, min_series=5)


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


def _charge_first_runs(ensemble, clock: FakeClock, runs: list, monkeypatch, tag: str = "") -> None:
    """Each session's first run costs 30 s of the fake clock (the CUDA/cuDNN warm-up), later runs 0.01 s."""
    for index, session in enumerate(ensemble.sessions):
        def run(*args, _real=session.run, _key=(tag, index), **kwargs):
            clock.now += 0.01 if _key in runs else 30.0
            runs.append(_key)
            return _real(*args, **kwargs)

        monkeypatch.setattr(session, "run", run)


def test_the_load_warms_every_session_so_the_first_series_does_not_carry_it(two_folds, tmp_path, monkeypatch):
    import time

    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(0).uniform(0, 400, size=(9, 40, 40)))
    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    cold, warm = (Predictor(two_folds, providers=["CPUExecutionProvider"]) for _ in range(2))
    cold_runs: list = []
    warm_runs: list = []
    _charge_first_runs(cold.ensemble, clock, cold_runs, monkeypatch)
    _charge_first_runs(warm.ensemble, clock, warm_runs, monkeypatch)
    assert warm.load(warm_up=True)
    assert sorted(warm_runs) == [("", 0), ("", 1)]  # one synthetic batch through every fold
    _, cold_report = cold.predict_series(series)
    _, warm_report = warm.predict_series(series)
    assert cold_report.answer == warm_report.answer == "model"
    assert cold_report.infer_s >= 60.0  # without the warm-up the first series pays both sessions' first run
    assert warm_report.infer_s < 1.0


def test_a_blend_warms_every_member(two_folds, monkeypatch):
    from inference.blend import Blend, BlendMember
    from inference.runners import BlendRunner, build_runner

    members = {name: build_runner(two_folds, providers=["CPUExecutionProvider"]) for name in ("a", "b")}
    blend = BlendRunner(Blend((BlendMember("a", "a"), BlendMember("b", "b")), np.full((len(LABELS), 2), 0.5)),
                        members)
    clock, runs = FakeClock(), []
    for name, member in members.items():
        _charge_first_runs(member.ensemble, clock, runs, monkeypatch, tag=name)
    blend.warm_up()
    assert sorted(runs) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
