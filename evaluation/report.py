"""A PNG of a gateway run: ROC curves per label (when labels were given) and the per-series time histogram."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inference.labels import ID_COLUMN, LABELS

from .metric import ScoreReport
from .timing import TimingSummary

__all__ = ["roc_curve", "write_report"]


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct score, from (0, 0)."""
    order = np.argsort(-y_score, kind="mergesort")
    y_true, y_score = y_true[order].astype(bool), y_score[order]
    last = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tps = np.cumsum(y_true)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / max(int(y_true.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((~y_true).sum()), 1)]
    return fpr, tpr


def write_report(path: str | Path, *, durations_s: Sequence[float], timing: TimingSummary,
                 submission: pl.DataFrame | None = None, labels: pl.DataFrame | None = None,
                 score: ScoreReport | None = None) -> Path:
    """Write the PNG; ROC curves only when the submission, its labels and its score are given.

    matplotlib is a development dependency, imported here only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_roc = submission is not None and labels is not None and score is not None
    fig, axes = plt.subplots(1, 2 if with_roc else 1, figsize=(13 if with_roc else 6, 5.5), squeeze=False)
    if with_roc:
        ax = axes[0, 0]
        truth = labels.with_columns(pl.col(ID_COLUMN).cast(pl.String)).select([ID_COLUMN, *LABELS])
        joined = submission.join(truth, on=ID_COLUMN, suffix="__true")
        for name in LABELS:
            y_true = joined[f"{name}__true"].to_numpy()
            if y_true.min() == y_true.max():
                continue
            fpr, tpr = roc_curve(y_true, joined[name].to_numpy())
            ax.plot(fpr, tpr, lw=2.5 if name == LABELS[-1] else 1.0, label=f"{name} ({score.per_label[name]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC per label, score {score.score:.4f}")
        ax.legend(fontsize=6, loc="lower right")
    ax = axes[0, -1]
    ax.hist(list(durations_s), bins=min(30, max(5, len(durations_s) // 2)))
    ax.set(xlabel="seconds per series", ylabel="series",
           title=f"p50 {timing.p50_s:.2f} s, p95 {timing.p95_s:.2f} s; "
                 f"projected {timing.projected_total_s / 3600:.2f} h")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
