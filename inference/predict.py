"""Predictor: one series folder -> 14 probabilities from the fold ensemble, within a time budget; never raises."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .aggregate import enforce_present_rule, make_aggregator
from .blend import Blend
from .budget import Degradation
from .config import AggregationConfig
from .decode_pool import DecodePool
from .ensemble import FoldEnsemble, load_ensemble
from .errors import DeadlineError, InferenceError, KitError, ManifestError, SeriesLoadError
from .labels import LABELS
from .load import SeriesRestacked, SeriesStream, load_series, plan_series
from .manifest import Manifest
from .normalize import (
    SlicePlan,
    plan_slices,
    prepare_slices,
    preprocess_volume,
    sample_slices,
    volume_model_input,
    warn_if_constant_ct,
)
from .region import Locator, RegionSpec
from .volume import Volume
from .windows import iter_window_batches

__all__ = ["Predictor", "SeriesReport", "probabilities_frame", "UNIFORM_PRIOR", "WATCHDOG_GRACE_S"]

log = logging.getLogger(__name__)

UNIFORM_PRIOR = 0.5  # every label's fallback when even the manifest (and its priors) cannot be read
WATCHDOG_GRACE_S = 60.0  # past budget + this, the call answers without waiting for work stuck in native code


def probabilities_frame(probs: Sequence[float]) -> pl.DataFrame:
    """One row, 14 Float64 columns named `LABELS` in order."""
    values = [float(p) for p in probs]
    return pl.DataFrame([values], schema={name: pl.Float64 for name in LABELS}, orient="row")


@dataclass
class SeriesReport:
    """What one series cost and how it was answered.

    `answer` is "model" (every window scored), "partial" (the budget ran out: the windows scored so far) or
    "priors" (nothing could be scored: `error` says why).
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
    members_s: dict[str, float] = dataclasses.field(default_factory=dict)  # a blend: seconds per member
    member_probs: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # a blend: each member's answer
    answer: str = "priors"
    error: str = ""
    region: str = ""  # issue 21: the region scored ("region ..."), or why the whole volume was ("whole volume: ...")
    locate_s: float = 0.0  # issue 21: the region locator's seconds (coarse copy + model)

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


class _SliceStream:
    """Prepares the slices of a volume in a background thread, chunk by chunk, into one uint8 stack.

    `wait(n)` blocks until the first n slices are ready, so the model can run on the first windows while the
    rest are prepared (cv2 and onnxruntime both release the GIL); `source(n)`, when given, blocks until the
    volume's own first n slices are loaded. The slices are those of `preprocess_volume`: the same
    `plan_slices` / `prepare_slices` code.
    """

    CHUNK = 16

    def __init__(self, pixels: np.ndarray, plan: SlicePlan, *,
                 source: Callable[[int], None] | None = None) -> None:
        size = plan.geometry.size
        self.pixels, self.plan, self.source = pixels, plan, source
        self.stack = np.zeros((pixels.shape[0], size, size), dtype=np.uint8)
        self.ready = 0
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prepare-slices", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start_time = time.perf_counter()
        try:
            total = self.pixels.shape[0]
            for start in range(0, total, self.CHUNK):
                if self._stop.is_set():
                    return
                stop = min(total, start + self.CHUNK)
                if self.source is not None:
                    self.source(stop)
                prepare_slices(self.pixels, self.plan, self.stack, start, stop)
                with self._cond:
                    self.ready = stop
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, which raises it
            with self._cond:
                self.error = exc
                self._cond.notify_all()
        finally:
            self.busy_s = time.perf_counter() - start_time

    def wait(self, count: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.ready >= count or self.error is not None)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Predictor:
    """Series folder -> 14 probabilities with the bundle's fold ensemble.

    Construction is cheap: it reads the small manifest (for the priors) and nothing else; the ONNX sessions are
    built on the first series (or by `load()`).

    Args:
        bundle_dir: folder with manifest.json and the fold ONNX files.
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
        self.providers = None if providers is None else list(providers)
        self.folds = None if folds is None else list(folds)
        self.loader = loader
        self.threads = threads
        self.decode_pool = decode_pool
        self.budget_s = budget_s
        self.watchdog_grace_s = watchdog_grace_s
        self._ensemble: FoldEnsemble | None = None
        self._ensemble_error: Exception | None = None
        self._ensemble_lock = threading.Lock()
        self._stuck: list[threading.Thread] = []
        self.manifest: Manifest | None = None
        self.priors = np.full(len(LABELS), UNIFORM_PRIOR)
        self.aggregator = make_aggregator(AggregationConfig(), None)
        self.blend: Blend | None = None
        self.members: dict[str, Predictor] = {}  # a blend's models, each a one-model Predictor
        self.locator: Locator | None = None  # issue 21: the region locator, when the manifest has one
        try:
            self.blend = Blend.read(self.bundle_dir)
            if self.blend is not None:
                weighted = self.blend.weighted_members()
                for member in self.blend.members:
                    if member not in weighted:
                        log.info("blend member %s has zero weight for every label: not loaded", member.name)
                self.members = {m.name: Predictor(self.bundle_dir / m.folder, providers=providers, folds=folds,
                                                  threads=threads, decode_pool=decode_pool) for m in weighted}
                first = next(iter(self.members.values()))
                self.manifest, self.priors = first.manifest, first.priors  # the members share labels and data
                return
            self.manifest = Manifest.read(self.bundle_dir, verify=False)
            self.aggregator = make_aggregator(self.manifest.aggregation, self.manifest.aggregator)
            self.locator = _make_locator(self.bundle_dir, self.manifest)
            self.priors = np.asarray(self.manifest.priors, dtype=np.float64)
            if self.priors.shape != (len(LABELS),) or not np.all((self.priors >= 0) & (self.priors <= 1)):
                raise ManifestError(f"priors in {self.bundle_dir} are not 14 probabilities: {self.manifest.priors}")
        except ManifestError as exc:
            self.priors = np.full(len(LABELS), UNIFORM_PRIOR)
            log.error("cannot read the weights manifest in %s (%s); every series will get the uniform prior %.2f",
                      self.bundle_dir, exc, UNIFORM_PRIOR)

    @property
    def ensemble(self) -> FoldEnsemble:
        """The fold sessions, built on first use; a failed build is remembered and raised again at once.

        For a blend: the first member's (`members` holds every member's Predictor).
        """
        if self.members:
            return next(iter(self.members.values())).ensemble
        with self._ensemble_lock:
            if self._ensemble is None:
                if self._ensemble_error is not None:  # a fresh error each time: no traceback piling up per series
                    err = self._ensemble_error
                    raise ManifestError(f"the fold ensemble failed to load earlier: {type(err).__name__}: {err}")
                if self.manifest is None:
                    self._ensemble_error = ManifestError(f"no readable weights manifest in {self.bundle_dir}")
                    raise self._ensemble_error
                try:
                    self._ensemble = load_ensemble(self.bundle_dir, providers=self.providers, folds=self.folds,
                                                   manifest=self.manifest, threads=self.threads)
                except Exception as exc:
                    self._ensemble_error = exc
                    raise
            return self._ensemble

    def load(self) -> bool:
        """Build the fold sessions now; False (logged) when they cannot be built: every series gets the priors."""
        try:
            for predictor in self.members.values() or [self]:
                _ = predictor.ensemble
            return True
        except Exception as exc:
            log.error("!!! the fold ensemble failed to load: %s: %s; every series gets the priors !!!",
                      type(exc).__name__, exc)
            return False

    # --- one series ---------------------------------------------------------------------------------------
    def predict_probabilities(self, series_path: str | Path, *, deadline: float | None = None,
                              report: SeriesReport | None = None,
                              degradation: Degradation | None = None) -> np.ndarray:
        """The series' 14 probabilities; raises on any failure (`predict_series` is the never-raising wrapper).

        The window probabilities of `window_probabilities`, reduced by the manifest's aggregation (a fixed
        reduction, or the learned aggregator fitted by the trainer).

        Args:
            series_path: the series folder.
            deadline: `time.monotonic()` past which no new batch of windows starts: the answer then comes from
                the windows scored so far (report.answer "partial").
            report: filled with what the call did (a fresh one when None).
            degradation: the run budget's speed-ups for this series (TTA off, stride x 2, half the folds).
        Raises:
            SeriesLoadError, ManifestError, InferenceError, ConfigError, DeadlineError (the deadline passed
            before any window was scored), or whatever the failure was.
        """
        report = report if report is not None else SeriesReport(series_uid=Path(str(series_path)).name)
        if self.members:
            return self._blend_probabilities(series_path, deadline, report, degradation)
        if self.manifest is not None and self.manifest.kind != "window25d":
            start = time.perf_counter()
            volume = self._load(series_path, deadline)
            report.load_s = time.perf_counter() - start
            probs = self.probabilities_from_volume(volume, report=report, deadline=deadline,
                                                   degradation=degradation)
            report.total_s = time.perf_counter() - start
            return probs
        window_probs = self.window_probabilities(series_path, deadline=deadline, report=report,
                                                 degradation=degradation)
        t0 = time.perf_counter()
        probs = self.aggregator(window_probs, report.modality)
        report.aggregate_s = time.perf_counter() - t0
        report.total_s += report.aggregate_s
        return probs

    def _load(self, series_path: str | Path, deadline: float | None) -> Volume:
        if self.loader is not None:
            return self.loader(str(series_path))
        return load_series(series_path, pool=self.decode_pool, deadline=deadline)

    def _blend_probabilities(self, series_path: str | Path, deadline: float | None, report: SeriesReport,
                             degradation: Degradation | None) -> np.ndarray:
        """A blend's answer: the series is loaded once. The first 2.5D member scores it as it streams in (as a
        single model would); the other members then run on the loaded volume; `report` sums their work."""
        start = time.perf_counter()
        streaming = next((name for name, m in self.members.items() if m.manifest is not None
                          and m.manifest.kind == "window25d"), None)
        answers, parts, failed, volume = {}, {}, {}, None
        if streaming is not None:
            parts[streaming] = SeriesReport(series_uid=report.series_uid)
            try:
                window_probs, volume = self.members[streaming]._window_probabilities(
                    series_path, deadline, parts[streaming], degradation or Degradation())
                answers[streaming] = self.members[streaming].aggregator(window_probs, parts[streaming].modality)
            except (SeriesLoadError, DeadlineError):
                raise  # the series itself cannot be read in time: no member can answer
            except Exception as exc:  # this member's failure costs only its share of the blend
                failed[streaming] = f"{type(exc).__name__}: {exc}"
            report.members_s[streaming] = round(time.perf_counter() - start, 4)
        if volume is None:
            t0 = time.perf_counter()
            volume = self._load(series_path, deadline)
            report.load_s += time.perf_counter() - t0
        else:
            report.load_s = parts[streaming].load_s
        for name, member in self.members.items():
            if name in answers or name in failed:
                continue
            t0 = time.perf_counter()
            parts[name] = SeriesReport(series_uid=report.series_uid)
            try:
                answers[name] = member.probabilities_from_volume(volume, report=parts[name], deadline=deadline,
                                                                 degradation=degradation)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
            report.members_s[name] = round(time.perf_counter() - t0, 4)
        for name, why in failed.items():
            log.error("series %s: blend member %s failed (%s); the others answer", report.series_uid, name, why)
        probs = self.blend.combine(answers)  # raises when every member failed
        for name, answer in answers.items():
            report.member_probs[name] = [float(v) for v in answer]
        answered = [parts[name] for name in answers]
        windowed = parts[streaming] if streaming in answers else answered[0]
        report.slices, report.modality, report.overlapped = volume.num_slices, volume.modality, windowed.overlapped
        report.windows, report.windows_total = windowed.windows, windowed.windows_total
        report.preprocess_s = sum(r.preprocess_s for r in answered)
        report.infer_s = sum(r.infer_s for r in answered)
        report.degraded = (degradation or Degradation()).describe()
        full = not failed and all(r.answer == "model" for r in answered)
        report.answer = "model" if full else "partial"
        report.error = "; ".join(f"member {name}: {why}" for name, why in failed.items())
        report.total_s = time.perf_counter() - start
        return probs

    def probabilities_from_volume(self, volume: Volume, *, report: SeriesReport, deadline: float | None = None,
                                  degradation: Degradation | None = None) -> np.ndarray:
        """The 14 probabilities of an already loaded volume (one model; a blend answers through
        `predict_probabilities`, which loads the series once for every member)."""
        degradation = degradation or Degradation()
        if self.members:
            raise InferenceError("a blend answers through predict_probabilities, not probabilities_from_volume")
        ensemble = self.ensemble
        if ensemble.manifest.kind == "volume32":
            return self._volume_probabilities(ensemble, volume, report, degradation)
        window_probs = self._windows(ensemble, volume, None, report, deadline, degradation)
        return self.aggregator(window_probs, volume.modality)

    @staticmethod
    def _volume_probabilities(ensemble: FoldEnsemble, volume: Volume, report: SeriesReport,
                              degradation: Degradation) -> np.ndarray:
        """A volume model's answer: the prepared stack resampled to `volume.depth` slices, one input."""
        manifest = ensemble.manifest
        t0 = time.perf_counter()
        prepared = preprocess_volume(volume, manifest.preprocess)
        batch = volume_model_input(prepared.pixels, manifest.volume, ensemble.input_dtype)[None]
        t1 = time.perf_counter()
        probs = ensemble.predict_windows(batch, tta=degradation.tta, folds=degradation.folds(len(ensemble.sessions)))[0]
        report.slices, report.modality = volume.num_slices, volume.modality
        report.preprocess_s += t1 - t0
        report.infer_s += time.perf_counter() - t1
        report.windows, report.windows_total, report.answer = 1, 1, "model"
        return enforce_present_rule(probs)

    def window_probabilities(self, series_path: str | Path, *, deadline: float | None = None,
                             report: SeriesReport | None = None,
                             degradation: Degradation | None = None) -> np.ndarray:
        """(N, 14) probabilities of the series' windows, in slice order (what the aggregation reduces).

        Args and raises as `predict_probabilities`.
        """
        report = report if report is not None else SeriesReport(series_uid=Path(str(series_path)).name)
        return self._window_probabilities(series_path, deadline, report, degradation or Degradation())[0]

    def _window_probabilities(self, series_path: str | Path, deadline: float | None, report: SeriesReport,
                              degradation: Degradation) -> tuple[np.ndarray, Volume]:
        """`window_probabilities`, and the volume they were scored on (complete by then)."""
        series_path = str(series_path)
        report.degraded = degradation.describe()
        start = time.perf_counter()
        ensemble = self.ensemble
        preprocess = ensemble.manifest.preprocess
        if (self.loader is not None or preprocess.slice_spacing_mm is not None
                or self.locator is not None):  # resampling and the region locator need every slice
            volume = self._load(series_path, deadline)
            report.load_s = time.perf_counter() - start
            probs = self._windows(ensemble, volume, None, report, deadline, degradation)
        else:  # the volume streams in: the model starts on the first slices while later files still decode
            stream = SeriesStream(plan_series(series_path), pool=self.decode_pool, deadline=deadline)
            stream.first = list(sample_slices(stream.volume, preprocess))  # what plan_slices reads
            stream.start()
            try:
                probs = self._windows(ensemble, stream.volume, stream, report, deadline, degradation)
            except SeriesRestacked:  # a file was lost mid-way: score the rebuilt volume from the start
                log.info("series %s: restarted on the volume rebuilt without its lost files", report.series_uid)
                probs = self._windows(ensemble, stream.result(), None, report, deadline, degradation)
            report.load_s = stream.seconds
            volume = stream.result()
        report.total_s = time.perf_counter() - start
        return probs, volume

    def _windows(self, ensemble: FoldEnsemble, volume: Volume, stream: SeriesStream | None, report: SeriesReport,
                 deadline: float | None, degradation: Degradation) -> np.ndarray:
        """Window probabilities (N, 14) of `volume` (still filling when `stream` is given)."""
        manifest = ensemble.manifest
        windows = manifest.windows
        on_cuda = "CUDAExecutionProvider" in ensemble.providers
        windows = dataclasses.replace(
            windows, stride=windows.stride * degradation.stride_factor,
            batch_size=windows.gpu_batch_size if on_cuda and windows.gpu_batch_size else windows.batch_size)
        tta, folds = degradation.tta, degradation.folds(len(ensemble.sessions))
        t1 = time.perf_counter()
        if stream is not None and not stream.streamable:  # another plane: canonical slices need every file
            volume, stream = stream.result(), None
        if self.locator is not None:  # issue 21: score the locator's box (the whole volume when it cannot)
            answer = self.locator.locate(volume)
            report.region, report.locate_s = answer.note, answer.seconds
            volume = volume if answer.region is None else answer.region.volume
        if stream is not None:
            stream.wait_slices(sample_slices(volume, manifest.preprocess))
        report.slices, report.modality = volume.num_slices, volume.modality
        _check_deadline(deadline, "after loading the series")
        slices = None
        if manifest.preprocess.slice_spacing_mm is None:  # prepare slices in a thread under the model's work
            plan = plan_slices(volume, manifest.preprocess, check_constant=stream is None)
            slices = _SliceStream(volume.pixels, plan, source=None if stream is None else stream.wait)
            stack, ready = slices.stack, slices.wait
            report.overlapped = True
        else:  # resampling the slice axis needs every slice first
            stack, ready = preprocess_volume(volume, manifest.preprocess).pixels, None
            report.preprocess_s = time.perf_counter() - t1
        try:
            report.windows_total = len(range(0, stack.shape[0], windows.stride))
            parts = []
            for batch in iter_window_batches(stack, windows, dtype=ensemble.input_dtype, ready=ready):
                if deadline is not None and time.monotonic() > deadline:
                    break
                parts.append(ensemble.predict_windows(batch.inputs, tta=tta, folds=folds))
        finally:
            if slices is not None:
                slices.close()
                report.preprocess_s = slices.busy_s
        if stream is not None:
            warn_if_constant_ct(stream.result(), manifest.preprocess)
        if not parts:
            raise DeadlineError(f"series {report.series_uid}: the time budget ran out before any window was scored")
        window_probs = np.concatenate(parts, axis=0)
        t3 = time.perf_counter()
        report.windows = int(window_probs.shape[0])
        report.infer_s = t3 - t1 if report.overlapped else t3 - t1 - report.preprocess_s
        report.answer = "model" if report.windows == report.windows_total else "partial"
        return window_probs

    def predict_series(self, series_path: str | Path, *,
                       degradation: Degradation | None = None) -> tuple[np.ndarray, SeriesReport]:
        """The series' 14 probabilities and its report; the priors when anything fails or the budget runs out.

        Never raises. With `budget_s`, the work runs in a thread that the call leaves behind (logged) when it is
        still stuck `watchdog_grace_s` after the budget: native code that ignores the deadline cannot hold the call.
        """
        start = time.monotonic()
        report = SeriesReport(series_uid=Path(str(series_path)).name)
        self._stuck = [t for t in self._stuck if t.is_alive()]
        if self._stuck:
            log.warning("%d earlier series still run in the background (stuck in native code)", len(self._stuck))
        if self.budget_s is None:
            probs = self._answer(series_path, None, report, degradation)
        else:
            deadline = start + self.budget_s
            result: list[np.ndarray] = []
            worker = threading.Thread(target=lambda: result.append(self._answer(series_path, deadline, report,
                                                                                  degradation)),
                                      name=f"series-{report.series_uid[-12:]}", daemon=True)
            worker.start()
            worker.join(self.budget_s + self.watchdog_grace_s)
            if result:
                probs = result[0]
            else:
                self._stuck.append(worker)
                waited = self.budget_s + self.watchdog_grace_s
                report.answer, report.error = "priors", (
                    f"no answer {waited:.0f} s into the call (budget {self.budget_s:.0f} s); the work was left running"
                    " in the background")
                log.error("series %s: %s; returning priors", report.series_uid, report.error)
                probs = self.priors
        report.total_s = time.monotonic() - start
        if report.answer == "partial":
            log.warning("series %s: the %.0f s budget ran out: answered from %d of %d windows",
                        report.series_uid, self.budget_s or 0.0, report.windows, report.windows_total)
        log.info(report.line())
        return probs, report

    def _answer(self, series_path: str | Path, deadline: float | None, report: SeriesReport,
                degradation: Degradation | None) -> np.ndarray:
        try:
            return self.predict_probabilities(series_path, deadline=deadline, report=report, degradation=degradation)
        except Exception as exc:  # the run must go on: any failure costs this series only
            kind = "" if isinstance(exc, KitError) else " (unexpected)"
            report.answer, report.error = "priors", f"{type(exc).__name__}{kind}: {exc}"
            log.error("series %s: prediction failed%s: %s: %s; returning priors", report.series_uid, kind,
                      type(exc).__name__, exc)
            return self.priors

    def predict(self, series_path: str | Path) -> pl.DataFrame:
        """1-row polars frame, 14 Float64 columns (`LABELS`); the priors when anything fails. Never raises."""
        try:
            probs, _ = self.predict_series(series_path)
            return probabilities_frame(probs)
        except Exception as exc:  # building the frame itself failed: last resort, still a valid answer
            log.error("series %s: could not build the answer frame (%s); returning the uniform prior",
                      series_path, exc)
            return probabilities_frame([UNIFORM_PRIOR] * len(LABELS))

    __call__ = predict


def _make_locator(bundle_dir: Path, manifest: Manifest) -> Locator | None:
    """The manifest's region locator (issue 21); None without one, or (logged) when its section is unusable."""
    if manifest.region is None:
        return None
    try:
        return Locator(bundle_dir, RegionSpec.from_dict(manifest.region))
    except ManifestError as exc:
        log.error("the region section of %s is unusable (%s): every series is scored on its whole volume",
                  bundle_dir, exc)
        return None


def _check_deadline(deadline: float | None, when: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineError(f"the time budget ran out {when}")
