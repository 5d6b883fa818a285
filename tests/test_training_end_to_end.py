"""A tiny end-to-end run: phantom -> cache -> train one fold -> ONNX + manifest -> the kernel's Predictor; resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.labels import LABELS, PRESENT_INDEX

ROOT = Path(__file__).resolve().parent.parent
import phantom  # noqa: E402 - a broken phantom package must fail these tests, not skip them

TINY_RUN = ["train.epochs=1", "train.windows_per_epoch=64", "train.batch_size=16", "train.num_folds=3",
            "train.val_every=1", "train.warmup_steps=2", "export.parity_windows=4", "cache.workers=1",
            "train.threads=1", "preprocess.image_size=32"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    phantom.make_dataset(root, series=9, test_series=0, seed=5, slices=(12, 16), size=(40, 48),
                         positive_fraction=0.5, workers=1)
    return root


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> dict:
    import train_minimal

    work = tmp_path_factory.mktemp("run")
    argv = ["--data-dir", str(tiny_dataset), "--config", str(ROOT / "configs" / "tiny.yaml"), "--folds", "0",
            "--out", str(work / "weights"), "--cache-dir", str(work / "cache"), "--checkpoint-dir",
            str(work / "ckpt"), "--quiet"]
    for item in TINY_RUN:
        argv += ["--set", item]
    assert train_minimal.main(argv) == 0
    return {"work": work, "data": tiny_dataset, "argv": argv}


def test_trained_bundle_has_a_verified_manifest_and_the_predictor_runs_it(trained):
    from inference.manifest import Manifest
    from inference.predict import Predictor

    weights = trained["work"] / "weights"
    manifest = Manifest.read(weights, verify=True)
    assert [f.fold for f in manifest.folds] == [0] and manifest.folds[0].file == "fold_0.onnx"
    assert tuple(manifest.input_shape[1:]) == (5, 32, 32)
    assert manifest.provenance["config"]["train"]["folds"] == [0]
    assert manifest.provenance["parity"]["0"] <= 1e-4
    train_csv = (trained["data"] / "train.csv").read_text().splitlines()
    positives = sum(int(line.rsplit(",", 1)[1]) for line in train_csv[1:])
    assert manifest.priors[PRESENT_INDEX] == pytest.approx(positives / (len(train_csv) - 1))
    uid = train_csv[1].split(",")[0]
    probs = Predictor(weights).predict_probabilities(trained["data"] / "series" / uid)
    assert probs.shape == (len(LABELS),) and np.all((probs >= 0) & (probs <= 1))
    report = json.loads((weights / "oof_report.json").read_text())
    assert set(report["per_fold"]) == {"0"} and report["overall"]["series"] == 3
    assert (weights / "train_config.yaml").is_file()


def test_cache_is_keyed_by_the_preprocessing_config_and_reused(trained):
    cache = trained["work"] / "cache"
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("preprocess-")
    assert len(list(folders[0].glob("*.npy"))) == 9
    assert json.loads((folders[0] / "failures.json").read_text()) == {}
    from inference.config import PreprocessConfig
    from training.cache import build_cache, cache_dir_for
    from training.data import read_localizers, series_folder

    cfg = PreprocessConfig(image_size=32)
    assert cache_dir_for(cache, cfg) == folders[0]
    assert cache_dir_for(cache, PreprocessConfig(image_size=48)) != folders[0]
    uids = [p.stem for p in folders[0].glob("*.npy")]
    folder_map = {u: series_folder(trained["data"], u) for u in uids}
    folder_map["missing.series"] = trained["data"] / "series" / "missing.series"
    mtimes = {p: p.stat().st_mtime_ns for p in folders[0].glob("*.npy")}
    report = build_cache(folder_map, read_localizers(trained["data"] / "train_localizers.csv"), cfg, cache,
                         workers=1, progress=False)
    assert set(report.entries) == set(uids)  # resumed: nothing recomputed ...
    assert {p: p.stat().st_mtime_ns for p in folders[0].glob("*.npy")} == mtimes
    assert list(report.failures) == ["missing.series"]  # ... and a bad series is reported, not fatal
    assert "missing.series" in json.loads((folders[0] / "failures.json").read_text())
    from training.cache import cached_entries

    listed = cached_entries(folders[0])  # what benchmarks read back after a run: the same entries, preprocess.json
    assert set(listed) == set(uids)  # and failures.json are not series
    assert all(listed[u].shape == report.entries[u].shape and listed[u].points == report.entries[u].points
               for u in uids)
