"""scripts/demo.py end to end: phantom -> train (2 folds) -> export -> bundle -> bundled kernel -> score."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from inference.labels import ID_COLUMN, LABELS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo.py"


def _run_demo(out: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), "--out", str(out), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_runs_the_whole_chain_at_small_size(tmp_path):
    """The smallest run that still trains two folds and scores every label (about 20 s on 2 cores)."""
    proc = _run_demo(tmp_path / "demo", "--series", "24", "--test-series", "8", "--size", "48", "64",
                     "--slices", "12", "24", "--epochs", "2", "--set", "train.windows_per_epoch=256", timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for step in ("[1/5] phantom", "[2/5] train", "[3/5] build", "[4/5] run the bundled kernel", "[5/5] score"):
        assert step in log
    out = tmp_path / "demo"
    weights = json.loads((out / "weights" / "manifest.json").read_text())
    assert len(weights["folds"]) == 2
    assert (out / "dist" / "kernel" / "rsna-aneurysm-kit-submission.ipynb").is_file()
    submission = pl.read_parquet(out / "kaggle" / "working" / "submission.parquet")
    expected = pl.read_csv(out / "data" / "test" / "test.csv")[ID_COLUMN].to_list()
    assert submission.columns == [ID_COLUMN, *LABELS]
    assert sorted(submission[ID_COLUMN].to_list()) == sorted(expected)
    summary = json.loads((out / "demo_summary.json").read_text())
    score = summary["gateway"]["score"]
    assert 0.0 <= score["score"] <= 1.0 and f"score: {score['score']:.4f}" in log
    assert "projection: 2500 series" in log and "wall time:" in log


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KIT_SLOW_TESTS") != "1", reason="full-size demo (~5 min): KIT_SLOW_TESTS=1")
def test_full_demo_meets_the_trainer_bar(tmp_path):
    """`make demo` at its default size: the score must meet the trainer issue's bar (--strict)."""
    proc = _run_demo(tmp_path / "demo", "--strict", timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "trainer bar" in proc.stdout and "MET" in proc.stdout
