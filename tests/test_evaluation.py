"""Scoring a kernel run: the submission against labels (overall, per modality), the timing projection, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evaluation.__main__ import main as evaluation_main
from evaluation.metric import competition_score
from evaluation.submission import SubmissionError, score_submission
from evaluation.timing import summarize_timing
from inference.labels import ID_COLUMN, LABELS

N_SERIES = 12
MODALITIES = ("CTA", "MRA")


@pytest.fixture()
def scored(tmp_path: Path) -> dict:
    """Labels with both classes per label (and per modality half), random predictions, a run record."""
    rng = np.random.default_rng(0)
    ids = [f"1.2.826.0.{i}" for i in range(N_SERIES)]
    truth = np.zeros((N_SERIES, len(LABELS)), dtype=np.int64)
    for j in range(len(LABELS)):
        truth[rng.permutation(N_SERIES)[: 2 + j % 3], j] = 1
    for m in range(len(MODALITIES)):
        rows = slice(m * N_SERIES // 2, (m + 1) * N_SERIES // 2)
        truth[rows][0, :], truth[rows][1, :] = 1, 0
    labels = pl.DataFrame({ID_COLUMN: ids, "Modality": [MODALITIES[i * 2 // N_SERIES] for i in range(N_SERIES)],
                           **{name: truth[:, j] for j, name in enumerate(LABELS)}})
    preds = rng.uniform(0.0, 1.0, (N_SERIES, len(LABELS)))
    order = list(rng.permutation(ids))
    submission = pl.DataFrame({ID_COLUMN: order, **{n: [float(preds[ids.index(u), j]) for u in order]
                                                   for j, n in enumerate(LABELS)}})
    submission.write_parquet(tmp_path / "submission.parquet")
    labels.write_csv(tmp_path / "labels.csv")
    record = {"process_started_at": 100.0, "gateway_started_at": 101.0, "first_answer_at": 104.0, "order": order,
              "durations_s": {u: 1.0 + i for i, u in enumerate(order)}, "files": {u: 10 for u in order},
              "series": {u: {"slices": 20, "answer": "model" if i else "priors"} for i, u in enumerate(order)},
              "submission": str(tmp_path / "submission.parquet")}
    (tmp_path / "gateway_run.json").write_text(json.dumps(record))
    return {"ids": ids, "labels": labels, "truth": truth, "preds": preds, "submission": submission,
            "root": tmp_path}


def test_submission_score_matches_the_metric_overall_and_per_modality(scored):
    report, per_modality = score_submission(scored["submission"], scored["labels"])
    expected = competition_score(scored["truth"], scored["preds"])
    assert report.score == pytest.approx(expected.score, abs=1e-12)
    assert report.per_label == pytest.approx(expected.per_label, abs=1e-12)
    modalities = scored["labels"]["Modality"].to_numpy()
    for modality in MODALITIES:
        rows = modalities == modality
        assert per_modality[modality] == pytest.approx(
            competition_score(scored["truth"][rows], scored["preds"][rows]).score, abs=1e-12)


def test_a_modality_with_a_one_class_label_reports_present_auc(scored):
    labels = scored["labels"].with_columns(
        pl.when(pl.col("Modality") == "MRA").then(0).otherwise(pl.col(LABELS[0])).alias(LABELS[0]))
    assert labels[LABELS[0]].sum() > 0
    report, per_modality = score_submission(scored["submission"], labels)
    assert isinstance(per_modality["CTA"], float)
    assert per_modality["MRA"].startswith("Aneurysm Present AUC") and LABELS[0] in per_modality["MRA"]
    assert 0.0 <= report.score <= 1.0


def test_unlabelled_series_or_missing_columns_are_refused(scored):
    with pytest.raises(SubmissionError, match="have no labels"):
        score_submission(scored["submission"], scored["labels"].head(N_SERIES - 1))
    with pytest.raises(SubmissionError, match="lacks columns"):
        score_submission(scored["submission"].drop(LABELS[2]), scored["labels"])


def test_timing_projection_warns_over_limit():
    fast = summarize_timing([1.0, 2.0, 3.0, 10.0], [10, 20, 30, 40], startup_s=5.0)
    assert fast.p50_s == pytest.approx(2.5) and fast.max_s == 10.0
    assert fast.slices_per_s == pytest.approx(100 / 16)
    assert fast.projected_total_s == pytest.approx(5.0 + 2500 * 4.0)
    assert not fast.over_limit
    slow = summarize_timing([20.0, 20.0], [100, 100], startup_s=0.0)
    assert slow.projected_total_s == pytest.approx(50000.0) and slow.over_limit
    assert "OVER THE LIMIT" in " ".join(slow.lines())


def test_cli_scores_a_run_and_writes_the_summary_and_png(scored, capsys):
    pytest.importorskip("matplotlib")
    root = scored["root"]
    assert evaluation_main(["--run", str(root / "gateway_run.json"), "--labels", str(root / "labels.csv"),
                            "--report", str(root / "report.png")]) == 0
    summary = json.loads((root / "gateway_summary.json").read_text())
    expected = competition_score(scored["truth"], scored["preds"]).score
    assert summary["score"]["score"] == pytest.approx(expected, abs=1e-12)
    assert summary["timing"]["series"] == N_SERIES and summary["timing"]["startup_s"] == pytest.approx(4.0)
    assert summary["timing"]["slices"] == 20 * N_SERIES  # the predictor's slice counts, not the file counts
    assert summary["answers"] == {"model": N_SERIES - 1, "priors": 1}
    assert (root / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"score: {expected:.4f}" in out and "projection:" in out
