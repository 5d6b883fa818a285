"""The whole-run time budget: project the run from the calls so far, and degrade in declared steps when it overruns."""
from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import BudgetConfig
from .errors import ConfigError

__all__ = ["DEGRADE_STEPS", "Degradation", "RunBudget", "degradation"]

log = logging.getLogger(__name__)

# What each step changes; the manifest's budget.degrade_steps chooses which ones, in which order.
DEGRADE_STEPS = {
    "tta_off": "left-right flip TTA off",
    "stride_2": "every second centre slice (window stride x 2)",
    "half_folds": "half of the folds",
}
_ASSUMED_STEP_SPEEDUP = 1.8  # until a level has been timed: what one step is expected to save


@dataclass(frozen=True)
class Degradation:
    """The speed-ups in force at one level: the first `level` steps of the declared order."""

    level: int = 0
    steps: tuple[str, ...] = ()

    @property
    def tta_off(self) -> bool:
        return "tta_off" in self.steps

    @property
    def stride_factor(self) -> int:
        return 2 if "stride_2" in self.steps else 1

    @property
    def half_folds(self) -> bool:
        return "half_folds" in self.steps

    @property
    def tta(self) -> bool | None:
        """The `tta` argument of `FoldEnsemble.predict_windows`: False with tta_off, else None (the manifest's)."""
        return False if self.tta_off else None

    def folds(self, available: int) -> int | None:
        """The `folds` argument of `FoldEnsemble.predict_windows`: half of `available`, rounded up, with
        half_folds, else None (all)."""
        return -(-available // 2) if self.half_folds else None

    def describe(self) -> str:
        return "full" if not self.steps else "+".join(self.steps)


def degradation(order: Sequence[str], level: int) -> Degradation:
    """The Degradation of `level` under the declared step `order`.

    Raises:
        ConfigError: an unknown step name, or a level outside 0..len(order).
    """
    unknown = [s for s in order if s not in DEGRADE_STEPS]
    if unknown:
        raise ConfigError(f"unknown degrade steps {unknown}; known: {sorted(DEGRADE_STEPS)}")
    if not 0 <= level <= len(order):
        raise ConfigError(f"degrade level {level} outside 0..{len(order)}")
    return Degradation(level, tuple(order[:level]))


class RunBudget:
    """Keeps a running projection of the whole run and picks the degradation level for the next series.

    The projection is the time spent so far plus the series still expected times the recent time per series at
    the current level (the median of its last `window` series: one slow series moves it little). Past `margin` x
    the run limit the level goes up one step (each change logged once); when the projection at the level below
    (its own recent time when it ran, else the current time x an assumed saving per step) is back under `margin` x
    `recover` x the limit, it comes down again. No step is taken before `min_series` series have finished at the
    current level: the first series (with the GPU's warm-up) or one decoder hang is no evidence.

    Args:
        config: the run's limits and the declared steps.
        clock: seconds, monotonic (a fake one in tests).
        started_at: the clock's value when the run started (default: now).
    """

    def __init__(self, config: BudgetConfig, *, clock: Callable[[], float] = time.monotonic,
                 started_at: float | None = None) -> None:
        degradation(config.degrade_steps, 0)  # validates the step names
        self.config = config
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.level = 0
        self.done = 0
        self.decisions: list[tuple[int, int, float]] = []  # (series done, new level, projection in seconds)
        self._recent: dict[int, deque[float]] = {}

    @property
    def current(self) -> Degradation:
        return degradation(self.config.degrade_steps, self.level)

    def _estimate(self, level: int) -> float | None:
        """Seconds per series at `level`: the median of its recent series (None before any)."""
        times = self._recent.get(level)
        return float(statistics.median(times)) if times else None

    def projection(self, level: int | None = None) -> float:
        """Projected total run time (seconds) if the remaining series ran at `level` (default: the current one)."""
        level = self.level if level is None else level
        per_series = self._estimate(level)
        if per_series is None:
            known = self._estimate(self.level)
            if known is None:
                return self.clock() - self.started_at
            per_series = known * _ASSUMED_STEP_SPEEDUP ** (self.level - level)
        remaining = max(0, self.config.expected_series - self.done)
        return (self.clock() - self.started_at) + remaining * per_series

    def record(self, seconds: float) -> Degradation:
        """Note one more series (its time at the current level); return the level for the next one."""
        self.done += 1
        recent = self._recent.setdefault(self.level, deque(maxlen=self.config.window))
        recent.append(float(seconds))
        if len(recent) < self.config.min_series:  # not enough evidence at this level yet
            return self.current
        limit = self.config.run_hours * 3600.0
        projected = self.projection()
        top = len(self.config.degrade_steps)
        if projected > self.config.margin * limit and self.level < top:
            self._change(self.level + 1, projected, limit)
        elif self.level > 0 and self.projection(self.level - 1) < self.config.margin * self.config.recover * limit:
            self._change(self.level - 1, projected, limit)
        return self.current

    def _change(self, level: int, projected: float, limit: float) -> None:
        going = "up" if level > self.level else "down"
        self.level = level
        self.decisions.append((self.done, level, projected))
        log.warning("run budget: %d series done, projected %.2f h of %.0f h: degrade level %s to %d (%s)",
                    self.done, projected / 3600, limit / 3600, going, level, self.current.describe())

    def summary(self) -> dict[str, object]:
        """JSON-ready: the level changes and the current projection."""
        return {"level": self.level, "series": self.done, "projected_s": round(self.projection(), 1),
                "decisions": [{"after_series": d, "level": lvl,
                               "steps": degradation(self.config.degrade_steps, lvl).describe(),
                               "projected_h": round(p / 3600, 3)} for d, lvl, p in self.decisions],
                "limit_h": self.config.run_hours, "expected_series": self.config.expected_series,
                "margin": self.config.margin}

