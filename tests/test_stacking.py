"""The learned aggregator: its features, fitting it out of fold, storing it in the manifest, and its fallbacks."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.aggregate import (
    FEATURE_NAMES,
    LearnedAggregator,
    aggregate_windows,
    make_aggregator,
    series_features,
)
from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.errors import ConfigError, ManifestError
from inference.labels import LABELS, PRESENT_INDEX
from inference.manifest import Manifest
from inference.predict import Predictor
from tests.onnx_models import PlantedModel, export_onnx, write_bundle
from training.stacking import SeriesWindows, anchor_feature, cross_validated, fit_aggregator, stacking_report

SIZE = 32


def test_series_features_follow_their_definitions():
    windows = np.full((10, len(LABELS)), 0.1)
    windows[7, 4] = 0.95  # one strong window at 7/9 of the series for label 4
    windows[2:5, PRESENT_INDEX] = 0.6
    features = series_features(windows, "CT")
    assert features.shape == (len(LABELS), len(FEATURE_NAMES))
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert features[4, col["max"]] == pytest.approx(logit(0.95))
    assert features[4, col["argmax_position"]] == pytest.approx(7 / 9)
    assert features[4, col["log_above_0.9"]] == pytest.approx(np.log(2))
    assert features[PRESENT_INDEX, col["log_above_0.5"]] == pytest.approx(np.log(4))
    assert np.allclose(features[:, col["location_max"]], logit(0.95))  # context is shared by every label
    assert np.allclose(features[:, col["log_windows"]], np.log(10)) and features[0, col["is_ct"]] == 1.0
    assert series_features(windows, "MR")[0, col["is_ct"]] == 0.0


def _series(n: int, seed: int, *, background: float, run: int, run_levels: tuple[float, float],
            positive_rate: float = 0.06, spurious: bool = True) -> list[SeriesWindows]:
    """Synthetic out-of-fold series: window probabilities uniform up to `background`; a positive label lifts a run
    of `run` windows to `run_levels`; with `spurious`, three strong windows (0.85-0.99) sit in every label of every
    series, so max and the top-3 mean are fooled while a model of the window counts is not."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(20, 60))
        windows = rng.uniform(0.0, background, size=(length, len(LABELS)))
        labels = (rng.random(len(LABELS)) < positive_rate).astype(float)
        labels[PRESENT_INDEX] = float(labels[:PRESENT_INDEX].max())
        for j in range(len(LABELS)):
            if labels[j]:
                start = int(rng.integers(0, length - run))
                windows[start:start + run, j] = rng.uniform(*run_levels, size=run)
            if spurious:
                windows[rng.choice(length, size=3, replace=False), j] = rng.uniform(0.85, 0.99, size=3)
        out.append(SeriesWindows(str(i), i % 3, "CT" if i % 2 else "MR", windows, labels))
    return out


def _synthetic(n: int, seed: int) -> list[SeriesWindows]:
    """Labels show as a run of 8 moderate windows (0.5-0.8) over a background up to 0.3, among spurious strong ones
    (Present: about half the series)."""
    return _series(n, seed, background=0.3, run=8, run_levels=(0.5, 0.8))


def test_the_learned_aggregator_beats_max_where_max_is_fooled():
    series = _synthetic(150, seed=0)
    report = stacking_report(series, top_k=3)
    best_fixed = max(report["max"]["score"], report["topk_mean"]["score"])
    assert report["learned"]["score"] > best_fixed + 0.1  # cross-validated over the 3 folds
    assert report["learned_gain"] == pytest.approx(report["learned"]["score"] - max(
        report["max"]["score"], report["topk_mean"]["score"]))
    answers = cross_validated(series)
    assert answers.shape == (150, len(LABELS)) and ((answers >= 0) & (answers <= 1)).all()


def _noisy_peaks(n: int, seed: int) -> list[SeriesWindows]:
    """A positive label lifts 3 windows to 0.3-0.9 over a background up to 0.6, no spurious windows: the top-3 mean
    ranks well, not perfectly."""
    return _series(n, seed, background=0.6, run=3, run_levels=(0.3, 0.9), positive_rate=0.1, spurious=False)


def test_a_strongly_regularised_aggregator_is_its_anchor_reduction_rescaled():
    from evaluation.metric import roc_auc

    series = _noisy_peaks(120, seed=3)
    windows = [s.windows for s in series]
    topk = np.stack([aggregate_windows(w, AggregationConfig(method="topk_mean", top_k=3)) for w in windows])
    truth = np.stack([s.labels for s in series])
    anchored = fit_aggregator(series, l2=1e9, anchor="top3_mean")
    answers = np.stack([anchored(w, s.modality) for w, s in zip(windows, series)])
    for j in range(len(LABELS)):
        if j != PRESENT_INDEX and 0 < truth[:, j].sum() < len(series):  # Present: the fixed one adds the max rule
            assert roc_auc(truth[:, j], answers[:, j]) == pytest.approx(roc_auc(truth[:, j], topk[:, j]))
    zero = fit_aggregator(series, l2=1e9, anchor=None)  # without an anchor it shrinks to each label's prevalence
    assert np.ptp(np.stack([zero(w, s.modality) for w, s in zip(windows, series)]), axis=0).max() < 1e-3
    # so the fold-wise comparison of a fully shrunk aggregator with the fixed reduction it is anchored on is a tie
    report = stacking_report(series, top_k=3, l2=1e9)
    assert report["anchor"] == anchor_feature(report["best_fixed"], 3)
    assert report["learned"]["mean_location_auc"] == pytest.approx(report[report["best_fixed"]]["mean_location_auc"])
    assert anchor_feature("max", 3) == "max" and anchor_feature("topk_mean", 7) is None
    with pytest.raises(ValueError, match="anchor"):
        fit_aggregator(series, anchor="top7_mean")


def _weak_runs(n: int, seed: int) -> list[SeriesWindows]:
    """Harder series: a positive label is a run of 4 windows at 0.3-0.6 over a background up to 0.45 (plus the
    three spurious strong windows), about 6% positives per location."""
    return _series(n, seed, background=0.45, run=4, run_levels=(0.3, 0.6))


def test_the_locations_share_weights_keep_their_own_bias_and_beat_per_label_fits_on_few_positives():
    from evaluation.metric import score_predictions

    series = _weak_runs(90, seed=0)  # about 4 positives per location in each fold's 60 training series
    pooled = fit_aggregator(series)
    locations = [j for j in range(len(LABELS)) if j != PRESENT_INDEX]
    assert np.allclose(pooled.weights[locations], pooled.weights[locations[0]])
    assert not np.allclose(pooled.weights[PRESENT_INDEX], pooled.weights[locations[0]])
    prevalence = np.stack([s.labels for s in series]).mean(axis=0)
    assert np.corrcoef(pooled.bias[locations], prevalence[locations])[0, 1] > 0.5  # each bias follows its rate
    truth = np.stack([s.labels for s in series])
    shared = score_predictions(truth, cross_validated(series))["mean_location_auc"]
    per_label = score_predictions(truth, cross_validated(series, pooled_locations=False))["mean_location_auc"]
    assert shared > per_label + 0.03  # measured 0.92 against 0.58 (0.22-0.41 over six seeds)


def test_the_aggregator_round_trips_through_the_manifest_form_and_refuses_mismatches():
    aggregator = fit_aggregator(_synthetic(60, seed=1))
    data = json.loads(json.dumps(aggregator.to_dict()))
    again = LearnedAggregator.from_dict(data)
    windows = _synthetic(1, seed=2)[0].windows
    np.testing.assert_allclose(again(windows, "CT"), aggregator(windows, "CT"))
    for change, match in (({"version": 0}, "feature version"), ({"features": ["max"]}, "feature version"),
                          ({"bias": [0.0]}, "shapes"), ({"kind": "trees"}, "kind")):
        with pytest.raises(ManifestError, match=match):
            LearnedAggregator.from_dict({**data, **change})
    with pytest.raises(ManifestError, match="non-finite"):
        LearnedAggregator.from_dict({**data, "scale": [0.0] * len(FEATURE_NAMES)})


def test_a_missing_or_broken_aggregator_falls_back_to_the_top_k_mean(caplog):
    windows = _synthetic(1, seed=3)[0].windows
    top3 = aggregate_windows(windows, AggregationConfig(method="topk_mean", top_k=3))
    with caplog.at_level(logging.ERROR, logger="inference.aggregate"):
        fallback = make_aggregator(AggregationConfig(method="learned", top_k=3), None)
        broken = make_aggregator(AggregationConfig(method="learned", top_k=3), {"kind": "logistic", "version": 99})
    np.testing.assert_allclose(fallback(windows, "CT"), top3)
    np.testing.assert_allclose(broken(windows, "CT"), top3)
    assert caplog.text.count("falling back to the top-3 mean") == 2
    with pytest.raises(ConfigError, match="make_aggregator"):
        aggregate_windows(windows, AggregationConfig(method="learned"))


@pytest.fixture(scope="module")
def learned_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("learned")
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=SIZE)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=SIZE), windows=WindowConfig(),
                 aggregation=AggregationConfig(method="learned"))
    manifest = Manifest.read(folder, verify=False)
    from dataclasses import replace

    replace(manifest, aggregator=fit_aggregator(_synthetic(60, seed=4)).to_dict()).write(folder)
    return folder


def test_the_predictor_answers_with_the_manifest_aggregator(learned_bundle, write_phantom_series):
    series = write_phantom_series(seed=6)
    predictor = Predictor(learned_bundle, providers=["CPUExecutionProvider"])
    assert isinstance(predictor.aggregator, LearnedAggregator)
    windows = predictor.window_probabilities(series)
    probs = predictor.predict_probabilities(series)
    np.testing.assert_allclose(probs, predictor.aggregator(windows, "CT"))
    assert not np.allclose(probs, aggregate_windows(windows, AggregationConfig(method="max")))


def test_laterality_is_exact_a_mirrored_storage_copy_gets_the_same_answer(learned_bundle, tmp_path):
    from phantom import make_dataset, write_mirrored_test_split

    options = dict(size=(40, 48), slices=(10, 14), compressed_fraction=0.0, non_axial_fraction=0.0, noise=0.0)
    make_dataset(tmp_path / "data", series=0, test_series=3, seed=8, **options)
    mirrored = write_mirrored_test_split(tmp_path / "mirrored", test_series=3, seed=8, **options)
    predictor = Predictor(learned_bundle, providers=["CPUExecutionProvider"])
    for folder in sorted((tmp_path / "data" / "test" / "series").iterdir()):
        np.testing.assert_allclose(predictor.predict_probabilities(mirrored / "series" / folder.name),
                                   predictor.predict_probabilities(folder), atol=1e-6)


def test_the_build_refuses_a_learned_method_without_a_usable_aggregator(learned_bundle, tmp_path):
    from bundle import BuildError, BuildOptions, build

    broken = Path(shutil.copytree(learned_bundle, tmp_path / "broken"))
    data = json.loads((broken / "manifest.json").read_text())
    data["aggregator"]["version"] = 0
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BuildError, match="'learned' but aggregator"):
        build(BuildOptions(weights=broken, out=tmp_path / "dist"))


def test_training_installs_the_aggregator_and_uses_it_only_when_it_wins(learned_bundle, tmp_path):
    from training.pipeline import _install_aggregator

    series = _synthetic(90, seed=5)
    for gain, method in ((0.05, "learned"), (-0.01, "topk_mean")):
        folder = Path(shutil.copytree(learned_bundle, tmp_path / f"gain{gain}"))
        manifest = Manifest.read(folder, verify=False)
        from dataclasses import replace

        replace(manifest, aggregation=AggregationConfig(method="topk_mean"), aggregator=None).write(folder)
        stacking = {"learned_gain": gain, "best_fixed": "max", "anchor": "max", "series": 90,
                    **{name: {"score": 0.7} for name in ("max", "topk_mean", "learned")}}
        info = _install_aggregator(folder, series, stacking)
        written = Manifest.read(folder, verify=True)
        assert written.aggregation.method == method == info["used"]
        assert LearnedAggregator.from_dict(written.aggregator) is not None  # stored either way
        assert written.provenance["aggregation"]["learned_gain_cv"] == gain
