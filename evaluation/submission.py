"""Score a submission.parquet against train.csv-style labels, overall and per modality."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from inference.errors import KitError
from inference.labels import ID_COLUMN, LABELS, PRESENT_INDEX

from .metric import MetricError, ScoreReport, competition_score, roc_auc

__all__ = ["SubmissionError", "read_labels", "score_submission"]


class SubmissionError(KitError):
    """A submission cannot be scored against these labels (missing series or columns)."""


def read_labels(path: str | Path) -> pl.DataFrame:
    """train.csv-style labels (SeriesInstanceUID as text)."""
    return pl.read_csv(path, infer_schema_length=10000, schema_overrides={ID_COLUMN: pl.String})


def score_submission(submission: pl.DataFrame, labels: pl.DataFrame) -> tuple[ScoreReport, dict[str, float | str]]:
    """Competition score of a submission, overall and per Modality.

    Returns:
        The overall ScoreReport and {modality: score, or the reason it is undefined}.
    Raises:
        SubmissionError: series of the submission missing from the labels, or columns missing.
        MetricError: a label with one class in the overall set.
    """
    missing_cols = [c for c in (ID_COLUMN, *LABELS) if c not in labels.columns]
    if missing_cols:
        raise SubmissionError(f"labels lack columns {missing_cols}")
    missing_pred = [c for c in (ID_COLUMN, *LABELS) if c not in submission.columns]
    if missing_pred:
        raise SubmissionError(f"the submission lacks columns {missing_pred}")
    keep = [ID_COLUMN, *LABELS] + (["Modality"] if "Modality" in labels.columns else [])
    truth = labels.select(keep).with_columns(pl.col(ID_COLUMN).cast(pl.String))
    joined = submission.with_columns(pl.col(ID_COLUMN).cast(pl.String)).join(truth, on=ID_COLUMN, how="left",
                                                                              suffix="__true")
    lacking = joined.filter(pl.col(f"{LABELS[0]}__true").is_null())[ID_COLUMN].to_list()
    if lacking:
        raise SubmissionError(f"{len(lacking)} submitted series have no labels, e.g. {lacking[:3]}")
    y_pred = joined.select(LABELS).to_numpy().astype(np.float64)
    y_true = joined.select([f"{c}__true" for c in LABELS]).to_numpy().astype(np.float64)
    report = competition_score(y_true, y_pred)
    per_modality: dict[str, float | str] = {}
    if "Modality" in joined.columns:
        modalities = joined["Modality"].to_numpy()
        for modality in sorted({str(m) for m in modalities}):
            rows = modalities == modality
            try:
                per_modality[modality] = competition_score(y_true[rows], y_pred[rows]).score
            except MetricError as exc:
                reason = str(exc).split(": AUC", 1)[0]
                text = f"score undefined on {int(rows.sum())} series ({reason} has one class)"
                try:
                    present = roc_auc(y_true[rows, PRESENT_INDEX], y_pred[rows, PRESENT_INDEX])
                    text = f"Aneurysm Present AUC {present:.4f}; {text}"
                except MetricError:
                    pass
                per_modality[modality] = text
    return report, per_modality
