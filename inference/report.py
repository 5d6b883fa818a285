"""The report of one series: what it cost stage by stage and how it was answered; its one-row answer frame."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .labels import LABELS
from .runners import Answer

__all__ = ["SeriesReport", "probabilities_frame"]


def probabilities_frame(probs: Sequence[float] | np.ndarray) -> pl.DataFrame:
    """One row, 14 Float64 columns named `LABELS` in order."""
    values = [float(p) for p in probs]
    return pl.DataFrame([values], schema={name: pl.Float64 for name in LABELS}, orient="row")


@dataclass
class SeriesReport:
    """What one series cost and how it was answered (built once, from the runner's `Answer`).

    `answer` is "model" (every window scored), "partial" (the budget ran out: the windows scored so far; or a blend
    member failed) or "priors" (nothing could be scored: `error` says why).
    """

    series_uid: str
    slices: int = 0
    modality: str = ""
    windows: int = 0  # windows scored
    windows_total: int = 0  # windows the series has
    load_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    aggregate_s: float = 0.0
    total_s: float = 0.0
    overlapped: bool = False  # preprocessing ran in a thread under the model's work (infer_s includes it)
    degraded: str = "full"  # the run budget's speed-ups in force for this series (see inference.budget)
    members_s: dict[str, float] = field(default_factory=dict)  # a blend: seconds per member
    member_probs: dict[str, list[float]] = field(default_factory=dict)  # a blend: each member's answer
    answer: str = "priors"
    error: str = ""
    region: str = ""  # the region scored ("region ..."), or why the whole volume was ("whole volume: ..."); "" none
    locate_s: float = 0.0  # the region locator's seconds (coarse copy + model)

    @classmethod
    def of(cls, uid: str, answer: Answer | None, *, total_s: float, degraded: str, error: str = "") -> SeriesReport:
        """The report of a runner's answer (None: the priors, for `error`)."""
        if answer is None:
            return cls(series_uid=uid, total_s=total_s, degraded=degraded, error=error)
        return cls(series_uid=uid, slices=answer.slices, modality=answer.modality, windows=answer.windows,
                   windows_total=answer.windows_total, load_s=answer.load_s, preprocess_s=answer.preprocess_s,
                   infer_s=answer.infer_s, aggregate_s=answer.aggregate_s, total_s=total_s,
                   overlapped=answer.overlapped, degraded=degraded, members_s=answer.members_s,
                   member_probs=answer.member_probs, answer="partial" if answer.partial else "model",
                   error=answer.error, region=answer.region, locate_s=answer.locate_s)

    def line(self) -> str:
        how = " (overlapped with infer)" if self.overlapped else ""
        scored = f"{self.windows} windows" if self.windows == self.windows_total else \
            f"{self.windows} of {self.windows_total} windows"
        level = "" if self.degraded == "full" else f" [{self.degraded}]"
        text = (f"series {self.series_uid}: {self.slices} slices {self.modality}, {scored}{level} | "
                f"load {self.load_s:.3f}s preprocess {self.preprocess_s:.3f}s{how} infer {self.infer_s:.3f}s "
                f"aggregate {self.aggregate_s:.4f}s | total {self.total_s:.3f}s | answer: {self.answer}")
        text += f" | {self.region} (locator {self.locate_s:.3f}s)" if self.region else ""
        return text + (f" ({self.error})" if self.error else "")
