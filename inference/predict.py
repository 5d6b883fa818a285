"""Predictor: one series folder -> 14 probabilities from the bundle's runner, within a time budget; never raises."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from .budget import Degradation
from .decode_pool import DecodePool
from .ensemble import FoldEnsemble
from .errors import DeadlineError, InferenceError, KitError, ManifestError
from .labels import LABELS
from .manifest import Manifest
from .report import SeriesReport, probabilities_frame
from .runners import Aggregator, Answer, BlendRunner, Runner, WindowRunner, build_runner
from .source import SeriesSource
from .volume import Volume

__all__ = ["Predictor", "SeriesReport", "probabilities_frame", "UNIFORM_PRIOR", "WATCHDOG_GRACE_S"]

log = logging.getLogger(__name__)

UNIFORM_PRIOR = 0.5  # every label's fallback when even the manifest (and its priors) cannot be read
WATCHDOG_GRACE_S = 60.0  # past budget + this, the call answers without waiting for work stuck in native code


class Predictor:
    """Series folder -> 14 probabilities with the bundle's runner (`inference.runners`).

    Construction is cheap: it reads the small manifests (for the priors) and nothing else; the ONNX sessions are
    built on the first series (or by `load()`).

    Args:
        bundle_dir: folder with manifest.json and the fold ONNX files, or a blend's bundle.json and member folders.
        providers: onnxruntime providers (default: CUDA first when available, else CPU).
        folds: fold ids to use (default all).
        loader: series folder -> Volume (default `inference.load.load_series` with `decode_pool`).
        threads: onnxruntime intra-op threads (default: the cores available).
        decode_pool: the pool that decodes compressed files (default: the loader's process-wide pool).
        budget_s: seconds one `predict_series` call may take (None: no limit). Past it the answer comes from the
            windows scored so far, else the priors; work stuck in native code is abandoned after
            `watchdog_grace_s` more.
    Example:
        >>> predictor = Predictor("weights", budget_s=600)
        >>> frame = predictor.predict("/kaggle/shared/series/1.2.3")  # 1 row, 14 Float64 columns
    """

    def __init__(self, bundle_dir: str | Path, *, providers: Sequence[str] | None = None,
                 folds: Sequence[int] | None = None, loader: Callable[[str], Volume] | None = None,
                 threads: int | None = None, decode_pool: DecodePool | None = None,
                 budget_s: float | None = None, watchdog_grace_s: float = WATCHDOG_GRACE_S) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.loader, self.decode_pool = loader, decode_pool
        self.budget_s, self.watchdog_grace_s = budget_s, watchdog_grace_s
        self.runner: Runner | None = None
        self.priors = np.full(len(LABELS), UNIFORM_PRIOR)
        self._stuck: list[threading.Thread] = []
        try:
            self.runner = build_runner(self.bundle_dir, providers=None if providers is None else list(providers),
                                       folds=None if folds is None else list(folds), threads=threads)
            self.priors = self.runner.priors
        except ManifestError as exc:
            log.error("cannot read the weights manifest in %s (%s); every series will get the uniform prior %.2f",
                      self.bundle_dir, exc, UNIFORM_PRIOR)

    def _runner(self) -> Runner:
        if self.runner is None:
            raise ManifestError(f"no readable weights manifest in {self.bundle_dir}")
        return self.runner

    @property
    def manifest(self) -> Manifest | None:
        return None if self.runner is None else self.runner.manifest

    @property
    def members(self) -> dict[str, Runner]:
        """A blend's runners by member name (empty for one model)."""
        return self.runner.members if isinstance(self.runner, BlendRunner) else {}

    @property
    def ensemble(self) -> FoldEnsemble:
        """The fold sessions, built on first use (a blend: its first member's)."""
        return self._runner().ensemble

    @property
    def aggregator(self) -> Aggregator:
        return self._runner().aggregator

    def load(self, *, warm_up: bool = False) -> bool:
        """Build the fold sessions now (and, with `warm_up`, run one synthetic batch through each); False (logged)
        when they cannot be built: every series then gets the priors."""
        try:
            self._runner().load()
            if warm_up:
                start = time.perf_counter()
                self._runner().warm_up()
                log.info("fold sessions warmed up in %.2f s", time.perf_counter() - start)
            return True
        except Exception as exc:
            log.error("!!! the fold ensemble failed to load: %s: %s; every series gets the priors !!!",
                      type(exc).__name__, exc)
            return False

    # --- one series ---------------------------------------------------------------------------------------
    def answer(self, series_path: str | Path, *, deadline: float | None = None,
               degradation: Degradation | None = None) -> Answer:
        """The runner's answer: the series' 14 probabilities and what they cost; raises on any failure
        (`predict_series` is the never-raising wrapper).

        Args:
            series_path: the series folder.
            deadline: `time.monotonic()` past which no new batch of windows starts: the answer then comes from
                the windows scored so far (`Answer.partial`).
            degradation: the run budget's speed-ups for this series (TTA off, stride x 2, half the folds).
        Raises:
            SeriesLoadError, ManifestError, InferenceError, ConfigError, DeadlineError (the deadline passed
            before any window was scored), or whatever the failure was.
        """
        return self._runner().answer(self._source(series_path), deadline, degradation or Degradation())

    def predict_probabilities(self, series_path: str | Path, *, deadline: float | None = None,
                              degradation: Degradation | None = None) -> np.ndarray:
        """The series' 14 probabilities (`answer`'s); raises on any failure."""
        return self.answer(series_path, deadline=deadline, degradation=degradation).probs

    def window_answer(self, series_path: str | Path, *, deadline: float | None = None,
                      degradation: Degradation | None = None) -> tuple[np.ndarray, Answer]:
        """(N, 14) probabilities of the series' windows in slice order (what the aggregation reduces), and the
        answer's facts (modality, windows, seconds); raises as `answer`, and for a model without windows."""
        runner = self._runner()
        if not isinstance(runner, WindowRunner):
            raise InferenceError(f"{self.bundle_dir}: {type(runner).__name__} answers per series: no windows")
        return runner.windows(self._source(series_path), deadline, degradation or Degradation())

    def window_probabilities(self, series_path: str | Path, *, deadline: float | None = None,
                             degradation: Degradation | None = None) -> np.ndarray:
        """The window probabilities of `window_answer` alone."""
        return self.window_answer(series_path, deadline=deadline, degradation=degradation)[0]

    def _source(self, series_path: str | Path) -> SeriesSource:
        return SeriesSource(series_path, loader=self.loader, decode_pool=self.decode_pool)

    def predict_series(self, series_path: str | Path, *,
                       degradation: Degradation | None = None) -> tuple[np.ndarray, SeriesReport]:
        """The series' 14 probabilities and its report; the priors when anything fails or the budget runs out.

        Never raises. With `budget_s`, the work runs in a thread that the call leaves behind (logged) when it is
        still stuck `watchdog_grace_s` after the budget: native code that ignores the deadline cannot hold the call.
        """
        start = time.monotonic()
        uid, degradation = Path(str(series_path)).name, degradation or Degradation()
        answer: Answer | None = None
        error = ""
        try:
            answer = self._watched(series_path, start, degradation)
            probs = answer.probs
        except Exception as exc:  # the one fallback: any failure costs this series only
            kind = "" if isinstance(exc, KitError) else " (unexpected)"
            error = f"{type(exc).__name__}{kind}: {exc}"
            log.error("series %s: prediction failed: %s; returning priors", uid, error)
            probs = self.priors
        report = SeriesReport.of(uid, answer, total_s=time.monotonic() - start, degraded=degradation.describe(),
                                 error=error)
        if report.windows < report.windows_total:
            log.warning("series %s: the %.0f s budget ran out: answered from %d of %d windows",
                        uid, self.budget_s or 0.0, report.windows, report.windows_total)
        log.info(report.line())
        return probs, report

    def _watched(self, series_path: str | Path, start: float, degradation: Degradation) -> Answer:
        """`answer` under the budget: in a thread left behind when it is still stuck past budget + grace."""
        if self.budget_s is None:
            return self.answer(series_path, degradation=degradation)
        self._stuck = [t for t in self._stuck if t.is_alive()]
        if self._stuck:
            log.warning("%d earlier series still run in the background (stuck in native code)", len(self._stuck))
        deadline = start + self.budget_s
        outcome: list[Answer | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self.answer(series_path, deadline=deadline, degradation=degradation))
            except BaseException as exc:  # handed to the caller, which falls back to the priors
                outcome.append(exc)

        worker = threading.Thread(target=work, name=f"series-{Path(str(series_path)).name[-12:]}", daemon=True)
        worker.start()
        worker.join(self.budget_s + self.watchdog_grace_s)
        if not outcome:
            self._stuck.append(worker)
            raise DeadlineError(f"no answer {self.budget_s + self.watchdog_grace_s:.0f} s into the call (budget "
                                f"{self.budget_s:.0f} s); the work was left running in the background")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def predict(self, series_path: str | Path) -> pl.DataFrame:
        """1-row polars frame, 14 Float64 columns (`LABELS`); the priors when anything fails."""
        return probabilities_frame(self.predict_series(series_path)[0])

    __call__ = predict
