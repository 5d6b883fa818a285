"""Runners: how a model answers one series (2.5D windows as the series streams in, the volume model, a blend).

Every runner has one method that matters, `answer(source, deadline, degradation) -> Answer`: the series' 14
probabilities and what it cost (stage seconds, windows scored). `build_runner` picks the runner of a weights folder
from its kind (`inference.kinds`) or its bundle.json (a blend: a runner over runners). The Predictor
(`inference.predict`) adds the per-series contract around it: deadline, watchdog, priors, report.

Where a stage before the model plugs in: a runner receives the series as a `SeriesSource` and may hand a changed
volume on (`WindowRunner.answer_volume`). The region of interest (issue 21) is such a stage: `RegionRunner`, the
runner `inference.kinds` names for a kind when the manifest carries a region locator, reads the whole volume, crops
it to the locator's box (`inference.region`) and scores the crop's windows; its Answer says which region it scored
(or why the whole volume) and what the locator cost.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .aggregate import enforce_present_rule, make_aggregator
from .blend import Blend
from .budget import Degradation
from .config import WindowConfig
from .ensemble import FoldEnsemble, load_ensemble
from .errors import DeadlineError, ManifestError, SeriesLoadError
from .labels import LABELS
from .load import SeriesRestacked, SeriesStream
from .manifest import Manifest
from .normalize import plan_slices, preprocess_volume, sample_slices, volume_model_input, warn_if_constant_ct
from .prepare import PreparedSlices
from .region import BoxAnswer, Locator, RegionAnswer, RegionSpec, box_slices
from .source import SeriesSource
from .volume import Volume
from .windows import iter_window_batches

__all__ = ["Answer", "Runner", "ModelRunner", "WindowRunner", "RegionRunner", "VolumeRunner", "BlendRunner",
           "build_runner"]

log = logging.getLogger(__name__)

Aggregator = Callable[[np.ndarray, str], np.ndarray]  # (window probabilities, modality) -> the series' answer


@dataclass
class Answer:
    """What a runner did for one series: its probabilities and the facts its report shows (seconds per stage)."""

    probs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    slices: int = 0
    modality: str = ""
    windows: int = 0  # windows scored (1 for a volume model)
    windows_total: int = 0  # windows the series has
    load_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    aggregate_s: float = 0.0
    overlapped: bool = False  # preprocessing ran in a thread under the model's work (infer_s includes it)
    partial: bool = False  # the deadline cut the windows short, or a blend member failed
    members_s: dict[str, float] = field(default_factory=dict)  # a blend: seconds per member
    member_probs: dict[str, list[float]] = field(default_factory=dict)  # a blend: each member's answer
    error: str = ""  # a blend: the members that failed (the others answered)
    region: str = ""  # the region scored ("region ..."), or why the whole volume was ("whole volume: ...")
    locate_s: float = 0.0  # the region locator's seconds (coarse copy + model)


class Runner(ABC):
    """Answers a series with one model kind (or a blend of runners)."""

    streams: ClassVar[bool] = False  # answers while the series streams in (a blend runs such a member first)
    manifest: Manifest  # a blend: its first member's (the members share labels, priors and data)

    @abstractmethod
    def answer(self, source: SeriesSource, deadline: float | None, degradation: Degradation) -> Answer:
        """The series' 14 probabilities and what it cost; raises on any failure."""

    @abstractmethod
    def load(self) -> None:
        """Build the onnxruntime sessions now (raises when they cannot be built)."""

    @abstractmethod
    def warm_up(self) -> None:
        """One synthetic batch through every fold session (and member), so the first series does not carry it."""

    @property
    @abstractmethod
    def ensemble(self) -> FoldEnsemble:
        """The fold sessions (a blend: its first member's)."""

    @property
    @abstractmethod
    def aggregator(self) -> Aggregator:
        """Window probabilities -> the series' answer (the manifest's reduction)."""

    @property
    def priors(self) -> np.ndarray:
        """The manifest's 14 fallback probabilities.

        Raises:
            ManifestError: they are not 14 probabilities.
        """
        priors = np.asarray(self.manifest.priors, dtype=np.float64)
        if priors.shape != (len(LABELS),) or not np.all((priors >= 0) & (priors <= 1)):
            raise ManifestError(f"priors in the manifest are not 14 probabilities: {self.manifest.priors}")
        return priors


class ModelRunner(Runner):
    """One model's fold sessions, built on first use; a failed build is remembered and raised again at once."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, *, providers: list[str] | None = None,
                 folds: list[int] | None = None, threads: int | None = None) -> None:
        self.bundle_dir, self.manifest = bundle_dir, manifest
        self.providers, self.folds, self.threads = providers, folds, threads
        self._aggregator = make_aggregator(manifest.aggregation, manifest.aggregator)
        self._ensemble: FoldEnsemble | None = None
        self._ensemble_error: Exception | None = None
        self._lock = threading.Lock()

    @property
    def aggregator(self) -> Aggregator:
        return self._aggregator

    @property
    def loaded(self) -> bool:
        return self._ensemble is not None

    @property
    def ensemble(self) -> FoldEnsemble:
        with self._lock:
            if self._ensemble is None:
                if self._ensemble_error is not None:  # a fresh error each time: no traceback piling up per series
                    err = self._ensemble_error
                    raise ManifestError(f"the fold ensemble failed to load earlier: {type(err).__name__}: {err}")
                try:
                    self._ensemble = load_ensemble(self.bundle_dir, providers=self.providers, folds=self.folds,
                                                   manifest=self.manifest, threads=self.threads)
                except Exception as exc:
                    self._ensemble_error = exc
                    raise
            return self._ensemble

    def load(self) -> None:
        _ = self.ensemble

    def warm_up(self) -> None:
        ensemble = self.ensemble
        ensemble.predict_windows(np.zeros(self.warm_up_shape(ensemble), dtype=ensemble.input_dtype))

    def warm_up_shape(self, ensemble: FoldEnsemble) -> tuple[int, int, int, int]:
        """The shape of the synthetic batch `warm_up` runs (that of a full batch of a series)."""
        size = self.manifest.preprocess.image_size
        return 1, self.manifest.input_channels, size, size


class WindowRunner(ModelRunner):
    """A 2.5D window model: the windows are scored as the series streams in, then reduced by the aggregation."""

    streams = True

    def warm_up_shape(self, ensemble: FoldEnsemble) -> tuple[int, int, int, int]:
        _, channels, size, _ = super().warm_up_shape(ensemble)
        return self._window_config(ensemble, Degradation()).batch_size, channels, size, size

    def answer(self, source: SeriesSource, deadline: float | None, degradation: Degradation) -> Answer:
        return self._aggregated(*self.windows(source, deadline, degradation))

    def answer_volume(self, volume: Volume, deadline: float | None, degradation: Degradation) -> Answer:
        """The answer of an already loaded (or changed: cropped, resampled) volume. The place a stage before the
        windows plugs in: a runner that finds a box reads `source.load(deadline)`, crops, and hands it here."""
        return self._aggregated(*self._windows(self.ensemble, volume, None, deadline, degradation))

    def _aggregated(self, window_probs: np.ndarray, answer: Answer) -> Answer:
        start = time.perf_counter()
        answer.probs = self.aggregator(window_probs, answer.modality)
        answer.aggregate_s = time.perf_counter() - start
        return answer

    def windows(self, source: SeriesSource, deadline: float | None,
                degradation: Degradation) -> tuple[np.ndarray, Answer]:
        """(N, 14) probabilities of the series' windows in slice order (what the aggregation reduces), and the
        facts (`probs` not set)."""
        ensemble = self.ensemble
        preprocess = self.manifest.preprocess
        if not source.can_stream or preprocess.slice_spacing_mm is not None:  # resampling needs every slice
            volume = source.load(deadline)
            window_probs, answer = self._windows(ensemble, volume, None, deadline, degradation)
        else:  # the volume streams in: the model starts on the first slices while later files still decode
            stream = source.stream(deadline, lambda skeleton: list(sample_slices(skeleton, preprocess)))
            try:
                window_probs, answer = self._windows(ensemble, stream.volume, stream, deadline, degradation)
            except SeriesRestacked:  # a file was lost mid-way: score the rebuilt volume from the start
                log.info("series %s: restarted on the volume rebuilt without its lost files", source.uid)
                window_probs, answer = self._windows(ensemble, stream.result(), None, deadline, degradation)
            source.streamed(stream)
        answer.load_s = source.load_s
        return window_probs, answer

    def _window_config(self, ensemble: FoldEnsemble, degradation: Degradation) -> WindowConfig:
        windows = self.manifest.windows
        on_cuda = "CUDAExecutionProvider" in ensemble.providers
        return dataclasses.replace(
            windows, stride=windows.stride * degradation.stride_factor,
            batch_size=windows.gpu_batch_size if on_cuda and windows.gpu_batch_size else windows.batch_size)

    def _windows(self, ensemble: FoldEnsemble, volume: Volume, stream: SeriesStream | None,
                 deadline: float | None, degradation: Degradation) -> tuple[np.ndarray, Answer]:
        """Window probabilities (N, 14) of `volume` (still filling when `stream` is given), and the facts."""
        preprocess = self.manifest.preprocess
        windows = self._window_config(ensemble, degradation)
        t1 = time.perf_counter()
        if stream is not None and not stream.streamable:  # another plane: canonical slices need every file
            volume, stream = stream.result(), None
        if stream is not None:
            stream.wait_slices(stream.first)  # what plan_slices reads
        answer = Answer(slices=volume.num_slices, modality=volume.modality)
        _check_deadline(deadline, "after loading the series")
        slices = None
        if preprocess.slice_spacing_mm is None:  # prepare slices in a thread under the model's work
            plan = plan_slices(volume, preprocess, check_constant=stream is None)
            slices = PreparedSlices(volume.pixels, plan, source=None if stream is None else stream.wait)
            stack, ready = slices.stack, slices.wait
            answer.overlapped = True
        else:  # resampling the slice axis needs every slice first
            stack, ready = preprocess_volume(volume, preprocess).pixels, None
            answer.preprocess_s = time.perf_counter() - t1
        folds = degradation.folds(len(ensemble.sessions))
        try:
            answer.windows_total = len(range(0, stack.shape[0], windows.stride))
            parts = []
            for batch in iter_window_batches(stack, windows, dtype=ensemble.input_dtype, ready=ready):
                if deadline is not None and time.monotonic() > deadline:
                    break
                parts.append(ensemble.predict_windows(batch.inputs, tta=degradation.tta, folds=folds))
        finally:
            if slices is not None:
                slices.close()
                answer.preprocess_s = slices.busy_s
        if stream is not None:
            warn_if_constant_ct(stream.result(), preprocess)
        if not parts:
            raise DeadlineError(f"series {volume.series_uid}: the time budget ran out before any window was scored")
        window_probs = np.concatenate(parts, axis=0)
        spent = time.perf_counter() - t1
        answer.windows = int(window_probs.shape[0])
        answer.infer_s = spent if answer.overlapped else spent - answer.preprocess_s
        answer.partial = answer.windows < answer.windows_total
        return window_probs, answer


class RegionRunner(WindowRunner):
    """A 2.5D window model behind a region locator (issue 21): the windows of the locator's box, or of the whole
    volume when the locator cannot answer (the Answer's `region` says why). The series streams in the coarse
    copy's slices first; the locator runs on them, and only the box's compressed files are decoded after them.
    The windows start once the box is read (they do not stream); in a blend it still runs first, as the member
    that reads the series (a volume read in part is not kept for the others: they read it again). An unusable
    region section (logged) leaves a plain WindowRunner's behaviour."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, *, providers: list[str] | None = None,
                 folds: list[int] | None = None, threads: int | None = None) -> None:
        super().__init__(bundle_dir, manifest, providers=providers, folds=folds, threads=threads)
        self.locator = _make_locator(bundle_dir, manifest)

    def warm_up(self) -> None:
        super().warm_up()
        if self.locator is not None:
            self.locator.warm_up()

    def windows(self, source: SeriesSource, deadline: float | None,
                degradation: Degradation) -> tuple[np.ndarray, Answer]:
        if self.locator is None:
            return super().windows(source, deadline, degradation)
        volume, located = self._located(source, deadline)
        if located.region is not None:
            volume = located.region.volume
        window_probs, answer = self._windows(self.ensemble, volume, None, deadline, degradation)
        answer.load_s, answer.region, answer.locate_s = source.load_s, located.note, located.seconds
        return window_probs, answer

    def _located(self, source: SeriesSource, deadline: float | None) -> tuple[Volume, RegionAnswer]:
        """The series and its region. Streamed, the locator runs as soon as the coarse copy's slices are in, and
        the compressed files outside its box are never decoded (a box that cannot be trusted: every file is)."""
        locator = self.locator
        assert locator is not None
        if not source.can_stream:
            volume = source.load(deadline)
            return volume, locator.locate(volume)
        found: list[BoxAnswer] = []

        def narrow(volume: Volume) -> list[int] | None:
            found.append(locator.find(volume))
            return None if found[0].box is None else box_slices(volume, found[0].box)

        stream = source.stream(deadline, lambda skeleton: locator.coarse_slices(skeleton.num_slices), narrow)
        skeleton = stream.volume
        volume = source.streamed(stream)
        if found and stream.narrowed and volume is skeleton:
            return volume, locator.crop(volume, found[0])
        return volume, locator.locate(volume)  # not streamable, or rebuilt without a lost file: locate it now


def _make_locator(bundle_dir: Path, manifest: Manifest) -> Locator | None:
    """The manifest's region locator; None without one, or (logged) when its section is unusable."""
    if manifest.region is None:
        return None
    try:
        return Locator(bundle_dir, RegionSpec.from_dict(manifest.region))
    except ManifestError as exc:
        log.error("the region section of %s is unusable (%s): every series is scored on its whole volume",
                  bundle_dir, exc)
        return None


class VolumeRunner(ModelRunner):
    """A volume model: the prepared stack resampled to `volume.depth` slices, one input per series."""

    def answer(self, source: SeriesSource, deadline: float | None, degradation: Degradation) -> Answer:
        ensemble = self.ensemble
        volume = source.load(deadline)
        t0 = time.perf_counter()
        prepared = preprocess_volume(volume, self.manifest.preprocess)
        if self.manifest.volume is None:
            raise ManifestError(f"{self.bundle_dir}: kind {self.manifest.kind} needs the manifest's volume section")
        batch = volume_model_input(prepared.pixels, self.manifest.volume, ensemble.input_dtype)[None]
        t1 = time.perf_counter()
        probs = ensemble.predict_windows(batch, tta=degradation.tta, folds=degradation.folds(len(ensemble.sessions)))
        return Answer(probs=enforce_present_rule(probs[0]), slices=volume.num_slices, modality=volume.modality,
                      windows=1, windows_total=1, load_s=source.load_s, preprocess_s=t1 - t0,
                      infer_s=time.perf_counter() - t1)


class BlendRunner(Runner):
    """Several models, blended per label (`inference.blend.Blend`). The series is read once: the first member that
    streams scores it as it comes in (as a single model would); the others then run on the loaded volume. A
    member's failure costs only its share of the blend."""

    def __init__(self, blend: Blend, members: dict[str, Runner]) -> None:
        if not members:
            raise ManifestError("a blend needs at least one member with a weight")
        self.blend, self.members = blend, members
        self.manifest = next(iter(members.values())).manifest

    @property
    def ensemble(self) -> FoldEnsemble:
        return next(iter(self.members.values())).ensemble

    @property
    def aggregator(self) -> Aggregator:
        return next(iter(self.members.values())).aggregator

    def load(self) -> None:
        for member in self.members.values():
            member.load()

    def warm_up(self) -> None:
        for member in self.members.values():
            member.warm_up()

    def answer(self, source: SeriesSource, deadline: float | None, degradation: Degradation) -> Answer:
        start = time.perf_counter()
        streaming = next((name for name, m in self.members.items() if m.streams), None)
        answers: dict[str, Answer] = {}
        failed: dict[str, str] = {}
        seconds: dict[str, float] = {}
        if streaming is not None:
            try:
                answers[streaming] = self.members[streaming].answer(source, deadline, degradation)
            except (SeriesLoadError, DeadlineError):
                raise  # the series itself cannot be read in time: no member can answer
            except Exception as exc:  # this member's failure costs only its share of the blend
                failed[streaming] = f"{type(exc).__name__}: {exc}"
            seconds[streaming] = round(time.perf_counter() - start, 4)
        volume = source.load(deadline)  # read once: the streamed volume, or now
        for name, member in self.members.items():
            if name == streaming:
                continue
            t0 = time.perf_counter()
            try:
                answers[name] = member.answer(source, deadline, degradation)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
            seconds[name] = round(time.perf_counter() - t0, 4)
        for name, why in failed.items():
            log.error("series %s: blend member %s failed (%s); the others answer", source.uid, name, why)
        probs = self.blend.combine({name: answer.probs for name, answer in answers.items()})  # raises: none answered
        answered = list(answers.values())
        windowed = answers.get(streaming or "", answered[0])
        return Answer(probs=probs, slices=volume.num_slices, modality=volume.modality, windows=windowed.windows,
                      windows_total=windowed.windows_total, load_s=source.load_s,
                      preprocess_s=sum(a.preprocess_s for a in answered), infer_s=sum(a.infer_s for a in answered),
                      aggregate_s=sum(a.aggregate_s for a in answered), overlapped=windowed.overlapped,
                      partial=bool(failed) or any(a.partial for a in answered), members_s=seconds,
                      member_probs={name: [float(v) for v in a.probs] for name, a in answers.items()},
                      error="; ".join(f"member {name}: {why}" for name, why in failed.items()))


def build_runner(bundle_dir: str | Path, *, providers: list[str] | None = None, folds: list[int] | None = None,
                 threads: int | None = None) -> Runner:
    """The runner of a weights folder: its kind's (`inference.kinds`), or a blend of its members' (bundle.json).

    Reads the small manifests only; the sessions are built on first use (or by `load()`).

    Raises:
        ManifestError: an unreadable manifest or bundle.json, or an unknown kind.
    """
    bundle_dir = Path(bundle_dir)
    blend = Blend.read(bundle_dir)
    if blend is not None:
        weighted = blend.weighted_members()
        for member in blend.members:
            if member not in weighted:
                log.info("blend member %s has zero weight for every label: not loaded", member.name)
        return BlendRunner(blend, {m.name: build_runner(bundle_dir / m.folder, providers=providers, folds=folds,
                                                        threads=threads) for m in weighted})
    manifest = Manifest.read(bundle_dir, verify=False)
    try:
        runner_class = manifest.kind_spec.runner_class(region=manifest.region is not None)
    except Exception as exc:  # ConfigError: an unknown kind, or a region locator on a kind that takes none
        raise ManifestError(f"{bundle_dir}: {exc}") from exc
    runner = runner_class(bundle_dir, manifest, providers=providers, folds=folds, threads=threads)
    if not isinstance(runner, Runner):
        raise ManifestError(f"{bundle_dir}: the runner of kind {manifest.kind} is not a Runner")
    return runner


def _check_deadline(deadline: float | None, when: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineError(f"the time budget ran out {when}")
