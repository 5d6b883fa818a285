"""The bundled kernel against Kaggle's own `kaggle_evaluation` package, when a copy is at hand.

Kaggle's package ships inside the competition data, not on PyPI, and the kit never copies it. Point
KAGGLE_EVALUATION_DIR at a `kaggle_evaluation/` folder (the competition's, or a public copy of it) to run these
tests; they need grpcio, protobuf and pandas (in requirements.txt). Without it they are skipped.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inference.labels import ID_COLUMN, LABELS
from tests.kernel_env import clean_kernel_env

REAL = os.environ.get("KAGGLE_EVALUATION_DIR", "")
pytestmark = pytest.mark.skipif(not (REAL and Path(REAL, "rsna_inference_server.py").is_file()),
                                reason="KAGGLE_EVALUATION_DIR does not point at Kaggle's kaggle_evaluation/ folder")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    """A competition folder: Kaggle's package beside a small phantom test split."""
    from phantom import make_dataset

    root = tmp_path_factory.mktemp("competition")
    shutil.copytree(REAL, root / "kaggle_evaluation", ignore=shutil.ignore_patterns("__pycache__"))
    make_dataset(root / "data", series=0, test_series=4, seed=11, size=(40, 56), slices=(10, 16))
    return root


def _server_class(competition: Path):
    sys.path.insert(0, str(competition))
    try:
        from kaggle_evaluation.rsna_inference_server import RSNAInferenceServer
    finally:
        sys.path.remove(str(competition))
    return RSNAInferenceServer


def test_kaggles_server_refuses_what_the_kits_stand_in_refuses(competition):
    from inference import kernel
    from inference.gateway import LocalInferenceServer

    real = _server_class(competition)

    class CallableObject:
        def __call__(self, path):
            return None

    for endpoint, error in ((CallableObject(), AttributeError), (functools.partial(kernel.predict), AttributeError),
                            (lambda path: None, ValueError)):
        with pytest.raises(error):
            real(endpoint)
        with pytest.raises(error):
            LocalInferenceServer(endpoint)
    real(kernel.predict)  # the kernel's endpoint constructs in both
    LocalInferenceServer(kernel.predict)


def test_bundled_kernel_runs_under_kaggles_gateway(competition, tmp_path):
    import build_kernel
    from inference.config import PreprocessConfig, WindowConfig
    from tests.onnx_models import PlantedModel, export_onnx, write_bundle

    weights = tmp_path / "weights"
    weights.mkdir()
    onnx = export_onnx(PlantedModel(5), weights / "fold0.onnx", channels=5, size=32)
    write_bundle(weights, [onnx], preprocess=PreprocessConfig(image_size=32), windows=WindowConfig())
    assert build_kernel.main(["--weights", str(weights), "--out", str(tmp_path / "dist"), "--username", "t"]) == 0
    test_dir = competition / "data" / "test"
    working = tmp_path / "working"
    working.mkdir()
    env = clean_kernel_env(tmp_path, tmp_path / "dist" / "dataset", test_dir, RSNA_COMPETITION_DIR=str(competition))
    env["PYTHONPATH"] = ""
    script = tmp_path / "dist" / "kernel" / "rsna-aneurysm-kit-submission.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=working, env=env, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Kaggle's local gateway" in log
    submission = pl.read_parquet(working / "submission.parquet")  # written by Kaggle's gateway
    expected = pl.read_csv(test_dir / "test.csv")[ID_COLUMN].to_list()
    assert submission.columns == [ID_COLUMN, *LABELS] and sorted(submission[ID_COLUMN]) == sorted(expected)
    values = submission.select(LABELS).to_numpy()
    assert np.isfinite(values).all() and log.count("answer: model") == len(expected)
    assert not any(p.is_symlink() for p in Path(env["RSNA_SHARE_DIR"]).rglob("*"))  # consumed series removed
