"""The kernel's settings: a bad environment value is logged loudly and its default used, never a dead runtime; the
consumed series is removed whatever else failed (issue 18)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from inference import kernel, settings
from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.decode_pool import DecodeLimits
from inference.labels import LABELS
from inference.settings import DEFAULT_BUDGET_S, ENV, KernelConfig
from tests.hostile_dicom import run_predict_in_subprocess, write_valid_series
from tests.onnx_models import PlantedModel, export_onnx, write_bundle

REPO = Path(__file__).resolve().parents[1]
PRIORS = tuple([0.01] * len(LABELS))

BAD = {  # one typo or out-of-range value per variable that has a value to check
    "RSNA_DECODE_WORKERS": "abc", "RSNA_DECODE_TIMEOUT_S": "nan", "RSNA_DECODE_MEMORY_MB": "-1",
    "RSNA_CALL_BUDGET_S": "-3", "RSNA_RUN_HOURS": "0", "RSNA_EXPECTED_SERIES": "0", "RSNA_GATEWAY_SEED": "1.5",
    "RSNA_GATEWAY": "remote", "RSNA_FOLDS": "0,x", "RSNA_PROVIDERS": "CUDAExecutionProviderr",
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=32)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=32), windows=WindowConfig(),
                 aggregation=AggregationConfig(), priors=PRIORS)
    return folder


def test_every_variable_read_has_a_checked_value():
    assert set(ENV) == set(settings._PARSERS)  # nothing is read without a check
    assert {ENV[key] for key in ENV} >= set(BAD) | {"KAGGLE_IS_COMPETITION_RERUN"}


def test_bad_values_are_logged_loudly_and_their_defaults_used(caplog):
    with caplog.at_level(logging.ERROR, logger="inference.settings"):
        config = KernelConfig.from_env(BAD)
    defaults = KernelConfig.from_env({})
    assert config == defaults  # every field at its default
    assert config.decode == DecodeLimits() and config.budget_s == DEFAULT_BUDGET_S and config.gateway == "auto"
    assert len(config.problems) == len(BAD)
    for name, value in BAD.items():
        line = next(line for line in config.problems if line.startswith(f"{name}="))
        assert repr(value) in line and "using the default" in line
        assert name in caplog.text
    assert caplog.text.count("!!! setting") == len(BAD)
    with pytest.raises(ValueError, match="RSNA_DECODE_WORKERS='abc' ignored"):
        KernelConfig.from_env(BAD, strict=True)


def test_good_values_are_taken():
    config = KernelConfig.from_env({"RSNA_DECODE_WORKERS": " 3 ", "RSNA_DECODE_TIMEOUT_S": "7.5",
                                    "RSNA_DECODE_MEMORY_MB": "0", "RSNA_PROVIDERS": "CPUExecutionProvider",
                                    "RSNA_FOLDS": "2, 0", "RSNA_GATEWAY": "LOCAL", "RSNA_GATEWAY_SEED": "-4",
                                    "KAGGLE_IS_COMPETITION_RERUN": "True", "RSNA_EXPECTED_SERIES": "10"})
    assert config.problems == ()
    assert config.decode == DecodeLimits(workers=3, timeout_s=7.5, memory_mb=0)
    assert config.providers == ("CPUExecutionProvider",) and config.folds == (2, 0) and config.gateway == "local"
    assert config.seed == -4 and config.rerun and config.expected_series == 10


def test_a_missing_weights_folder_gives_way_to_the_bundle_s_own(tmp_path, monkeypatch, weights):
    monkeypatch.setattr(settings, "_bundle_root", lambda: weights.parent)
    (weights.parent / "weights").mkdir(exist_ok=True)
    (weights.parent / "weights" / "manifest.json").write_text((weights / "manifest.json").read_text())
    config = KernelConfig.from_env({"RSNA_WEIGHTS_DIR": str(tmp_path / "wieghts")})
    assert config.weights_dir == weights.parent / "weights" and "no such folder" in config.problems[0]


def test_folds_the_manifest_lacks_fall_back_to_every_fold(weights, caplog):
    config = KernelConfig.from_env({"RSNA_WEIGHTS_DIR": str(weights), "RSNA_FOLDS": "0,7"})
    assert config.folds == (0, 7)
    with caplog.at_level(logging.ERROR, logger="inference.kernel"):
        runtime = kernel.KernelRuntime(config, providers=["CPUExecutionProvider"])
    try:
        assert runtime.config.folds is None and runtime.predictor.load()  # the model loads: every fold
        assert "RSNA_FOLDS=0,7 ignored" in caplog.text
    finally:
        runtime.close()


def test_a_typo_in_a_setting_still_installs_the_runtime_and_cleans_up(tmp_path, weights):
    """In a fresh kernel process: RSNA_DECODE_WORKERS=abc, a series in the share folder (as Kaggle's gateway)."""
    share = tmp_path / "shared"
    _, files = write_valid_series(share / "1.2.826.0.1.3680043.8.498.19", 6)
    series = files[0].parent
    run = run_predict_in_subprocess(series, weights, cwd=REPO, timeout_s=90,
                                    env={"RSNA_DECODE_WORKERS": "abc", "RSNA_SHARE_DIR": str(share)})
    assert run.returncode == 0 and run.result is not None, run.log[-3000:]
    assert run.result["answer"] == "model" and run.result["slices"] == 6  # the runtime was installed and ran
    assert "RSNA_DECODE_WORKERS='abc' ignored (not a whole number): using the default" in run.log
    assert "the kernel failed" not in run.log
    assert not series.exists() and share.is_dir()  # the consumed series left the disk, the share folder stays


def test_the_consumed_series_is_removed_even_when_the_runtime_cannot_be_built(tmp_path, monkeypatch, caplog):
    share = tmp_path / "shared"
    _, files = write_valid_series(share / "1.2.3", 2)
    outside = tmp_path / "data" / "1.2.4"
    outside.mkdir(parents=True)

    def broken(self, config, *, providers=None):
        raise RuntimeError("no runtime today")

    monkeypatch.setattr(kernel.KernelRuntime, "__init__", broken)
    monkeypatch.setattr(kernel, "_RUNTIME", None)
    monkeypatch.setattr(kernel, "_CONFIG", KernelConfig.from_env({"RSNA_SHARE_DIR": str(share),
                                                                   "RSNA_PROVIDERS": "CPUExecutionProvider"}))
    with caplog.at_level(logging.ERROR, logger="inference.kernel"):
        frame = kernel.predict(str(files[0].parent))
        kernel.predict(str(outside))
    assert frame.columns == list(LABELS) and np.allclose(frame.row(0), 0.5)  # the priors: nothing was loaded
    assert "no runtime today" in caplog.text
    assert not files[0].parent.exists() and share.is_dir()
    assert outside.is_dir()  # never anything outside the share folder
