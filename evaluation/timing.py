"""Per-series times of a gateway run and their projection onto the hidden test set (about 2,500 series, 12 h)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.config import BudgetConfig
from inference.gateway import CALL_LIMIT_S, STARTUP_LIMIT_S

__all__ = ["TimingSummary", "summarize_timing", "RUN_LIMIT_S", "HIDDEN_TEST_SERIES", "STARTUP_LIMIT_S",
           "CALL_LIMIT_S"]

RUN_LIMIT_S = BudgetConfig().run_hours * 3600.0  # the whole hidden test set
HIDDEN_TEST_SERIES = BudgetConfig().expected_series  # about the size of the hidden test set


@dataclass(frozen=True)
class TimingSummary:
    """Per-series timings and their projection onto the hidden test set."""

    series: int
    startup_s: float
    total_s: float
    p50_s: float
    p95_s: float
    max_s: float
    mean_s: float
    slices: int
    slices_per_s: float
    projected_series: int
    projected_total_s: float
    limit_s: float
    over_limit: bool

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        verdict = "OVER THE LIMIT" if self.over_limit else "within the limit"
        return [
            f"series: {self.series}, startup (process start -> first answer): {self.startup_s:.1f} s "
            f"(limit {STARTUP_LIMIT_S / 60:.0f} min)",
            f"per series: p50 {self.p50_s:.2f} s, p95 {self.p95_s:.2f} s, max {self.max_s:.2f} s "
            f"(limit per call {CALL_LIMIT_S / 60:.0f} min), mean {self.mean_s:.2f} s",
            f"throughput: {self.slices_per_s:.1f} slices/s ({self.slices} slices)",
            f"projection: {self.projected_series} series x {self.mean_s:.2f} s + startup = "
            f"{self.projected_total_s / 3600:.2f} h against {self.limit_s / 3600:.0f} h: {verdict}",
        ]


def summarize_timing(durations_s: Sequence[float], slices: Sequence[int], *, startup_s: float,
                     projected_series: int = HIDDEN_TEST_SERIES, limit_s: float = RUN_LIMIT_S) -> TimingSummary:
    """Percentiles of the per-series times and the projected total for `projected_series` series.

    The projection is startup + projected_series x mean time per series: it is only as good as the likeness of the
    local series to the hidden ones (slice counts above all).

    Raises:
        ValueError: no series was timed.
    """
    times = np.asarray(durations_s, dtype=np.float64)
    if times.size == 0:
        raise ValueError("no series were timed")
    total = float(times.sum())
    mean = float(times.mean())
    projected = startup_s + projected_series * mean
    n_slices = int(sum(slices))
    return TimingSummary(
        series=int(times.size), startup_s=float(startup_s), total_s=total,
        p50_s=float(np.percentile(times, 50)), p95_s=float(np.percentile(times, 95)), max_s=float(times.max()),
        mean_s=mean, slices=n_slices, slices_per_s=n_slices / total if total > 0 else float("inf"),
        projected_series=int(projected_series), projected_total_s=float(projected), limit_s=float(limit_s),
        over_limit=bool(projected > limit_s),
    )
