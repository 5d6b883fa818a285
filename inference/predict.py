"""Predictor: one series folder -> a 1-row frame of 14 probabilities for the evaluation API; never raises."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .aggregate import aggregate_windows
from .ensemble import FoldEnsemble, load_ensemble
from .errors import KitError, ManifestError
from .labels import LABELS
from .manifest import Manifest
from .normalize import SlicePlan, plan_slices, prepare_slices, preprocess_volume
from .volume import Volume
from .windows import build_batch, iter_window_batches, window_indices

__all__ = ["Predictor", "SeriesReport", "make_predict", "probabilities_frame", "UNIFORM_PRIOR",
           "SHARED_ROOT_ENV", "DEFAULT_SHARED_ROOT"]

log = logging.getLogger(__name__)

UNIFORM_PRIOR = 0.5  # every label's fallback when even the manifest (and its priors) cannot be read
SHARED_ROOT_ENV = "RSNA_SHARE_DIR"  # the same variable the kernel entry reads
DEFAULT_SHARED_ROOT = "/kaggle/shared"


def probabilities_frame(probs: Sequence[float]) -> pl.DataFrame:
    """One row, 14 Float64 columns named `LABELS` in order."""
    values = [float(p) for p in probs]
    return pl.DataFrame([values], schema={name: pl.Float64 for name in LABELS}, orient="row")


def _default_loader(folder: str) -> Volume:
    from .load import load_series  # the loader module; imported on first use so a broken import costs one series

    return load_series(folder)


@dataclass
class SeriesReport:
    """What one `predict_probabilities` call did and how long each stage took (seconds)."""

    series_uid: str
    slices: int = 0
    modality: str = ""
    windows: int = 0
    load_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    aggregate_s: float = 0.0
    total_s: float = 0.0
    overlapped: bool = False  # preprocessing ran in a thread under the model's work (infer_s includes it)
    error: str = ""

    def line(self) -> str:
        how = " (overlapped with infer)" if self.overlapped else ""
        return (f"series {self.series_uid}: {self.slices} slices {self.modality}, {self.windows} windows | "
                f"load {self.load_s:.3f}s preprocess {self.preprocess_s:.3f}s{how} infer {self.infer_s:.3f}s "
                f"aggregate {self.aggregate_s:.4f}s | total {self.total_s:.3f}s")


class _SliceStream:
    """Prepares the slices of a volume in a background thread, chunk by chunk, into one uint8 stack.

    `wait(n)` blocks until the first n slices are ready, so the model can run on the first windows while the
    rest are prepared (cv2 and onnxruntime both release the GIL). The slices are those of `preprocess_volume`:
    the same `plan_slices` / `prepare_slices` code.
    """

    CHUNK = 16

    def __init__(self, pixels: np.ndarray, plan: SlicePlan) -> None:
        size = plan.geometry.size
        self.pixels, self.plan = pixels, plan
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
    built on the first series.

    Args:
        bundle_dir: folder with manifest.json and the fold ONNX files.
        providers: onnxruntime providers (default: CUDA first when available, else CPU).
        folds: fold ids to use (default all).
        shared_root: folder whose consumed series are deleted after prediction (Kaggle's `/kaggle/shared`);
            default: $RSNA_SHARE_DIR, else /kaggle/shared. Nothing is deleted when that folder does not exist
            or the series is not inside it.
        loader: series folder -> Volume (default `inference.load.load_series`).
        threads: onnxruntime intra-op threads (default: the cores available).
    Example:
        >>> predictor = Predictor("weights")
        >>> frame = predictor.predict("/kaggle/shared/series/1.2.3")  # 1 row, 14 Float64 columns
    """

    def __init__(self, bundle_dir: str | Path, *, providers: Sequence[str] | None = None,
                 folds: Sequence[int] | None = None, shared_root: str | Path | None = None,
                 loader: Callable[[str], Volume] | None = None, threads: int | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.providers = None if providers is None else list(providers)
        self.folds = None if folds is None else list(folds)
        root = shared_root if shared_root is not None else os.environ.get(SHARED_ROOT_ENV, DEFAULT_SHARED_ROOT)
        self.shared_root = Path(root)
        self.loader = loader or _default_loader
        self.threads = threads
        self.last_report: SeriesReport | None = None
        self._ensemble: FoldEnsemble | None = None
        self._ensemble_error: Exception | None = None
        self.manifest: Manifest | None = None
        self.priors = np.full(len(LABELS), UNIFORM_PRIOR)
        try:
            self.manifest = Manifest.read(self.bundle_dir, verify=False)
            self.priors = np.asarray(self.manifest.priors, dtype=np.float64)
            if self.priors.shape != (len(LABELS),) or not np.all((self.priors >= 0) & (self.priors <= 1)):
                raise ManifestError(f"priors in {self.bundle_dir} are not 14 probabilities: {self.manifest.priors}")
        except ManifestError as exc:
            self.priors = np.full(len(LABELS), UNIFORM_PRIOR)
            log.error("cannot read the weights manifest in %s (%s); every series will get the uniform prior %.2f",
                      self.bundle_dir, exc, UNIFORM_PRIOR)

    @property
    def ensemble(self) -> FoldEnsemble:
        """The fold sessions, built on first use; a failed build is remembered and raised again at once."""
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

    def predict_probabilities(self, series_path: str | Path) -> np.ndarray:
        """The series' 14 probabilities; raises on any failure (`predict` is the never-raising wrapper).

        Raises:
            SeriesLoadError, ManifestError, InferenceError, ConfigError, or whatever the failure was.
        """
        series_path = str(series_path)
        report = SeriesReport(series_uid=Path(series_path).name)
        self.last_report = report
        start = time.perf_counter()
        ensemble = self.ensemble
        manifest = ensemble.manifest
        t0 = time.perf_counter()
        volume = self.loader(series_path)
        t1 = time.perf_counter()
        report.load_s, report.slices, report.modality = t1 - t0, volume.num_slices, volume.modality
        if manifest.preprocess.slice_spacing_mm is None:
            window_probs = self._infer_streamed(ensemble, volume, report)
        else:  # resampling the slice axis needs every slice first
            prepared = preprocess_volume(volume, manifest.preprocess)
            report.preprocess_s = time.perf_counter() - t1
            window_probs = np.concatenate(
                [ensemble.predict_windows(batch.inputs) for batch in
                 iter_window_batches(prepared.pixels, manifest.windows, dtype=ensemble.input_dtype)], axis=0)
        del volume  # the float32 volume is the largest array of the run
        t3 = time.perf_counter()
        report.windows = int(window_probs.shape[0])
        report.infer_s = t3 - t1 if report.overlapped else t3 - t1 - report.preprocess_s
        probs = aggregate_windows(window_probs, manifest.aggregation)
        t4 = time.perf_counter()
        report.aggregate_s, report.total_s = t4 - t3, t4 - start
        log.info(report.line())
        return probs

    @staticmethod
    def _infer_streamed(ensemble: FoldEnsemble, volume: Volume, report: SeriesReport) -> np.ndarray:
        """Window probabilities (N, 14), the model starting as soon as a batch's slices are prepared."""
        manifest = ensemble.manifest
        windows = manifest.windows
        stream = _SliceStream(volume.pixels, plan_slices(volume, manifest.preprocess))
        report.overlapped = True
        try:
            indices = window_indices(volume.num_slices, windows.offsets, stride=windows.stride)
            parts = []
            for start in range(0, len(indices), windows.batch_size):
                batch_indices = indices[start:start + windows.batch_size]
                stream.wait(int(batch_indices.max()) + 1)
                batch = build_batch(stream.stack, batch_indices, scale=windows.scale, dtype=ensemble.input_dtype)
                parts.append(ensemble.predict_windows(batch))
        finally:
            stream.close()
            report.preprocess_s = stream.busy_s
        return np.concatenate(parts, axis=0)

    def predict(self, series_path: str | Path) -> pl.DataFrame:
        """1-row polars frame, 14 Float64 columns (`LABELS`); the priors when anything fails. Never raises."""
        start = time.perf_counter()
        try:
            try:
                probs = self.predict_probabilities(series_path)
            except Exception as exc:  # the run must go on: any failure costs this series only
                elapsed = time.perf_counter() - start
                kind = "" if isinstance(exc, KitError) else " (unexpected)"
                log.error("series %s: prediction failed after %.3fs%s: %s: %s; returning priors",
                          Path(str(series_path)).name, elapsed, kind, type(exc).__name__, exc)
                if self.last_report is not None:
                    self.last_report.error = f"{type(exc).__name__}: {exc}"
                probs = self.priors
            return probabilities_frame(probs)
        except Exception as exc:  # building the frame itself failed: last resort, still a valid answer
            log.error("series %s: could not build the answer frame (%s); returning the uniform prior",
                      series_path, exc)
            return probabilities_frame([UNIFORM_PRIOR] * len(LABELS))
        finally:
            self._remove_consumed(series_path)

    __call__ = predict

    def _remove_consumed(self, series_path: str | Path) -> None:
        """On Kaggle, delete a consumed series under the shared folder so the disk does not fill up."""
        try:
            # absolute, not resolved: the gateway's series folders hold symlinks to the data, never follow them
            root = Path(os.path.abspath(self.shared_root))
            if not root.is_dir():
                return
            path = Path(os.path.abspath(str(series_path)))
            if root not in path.parents:
                return
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                return
            log.debug("removed consumed series %s", path)
        except Exception as exc:
            log.warning("could not remove consumed series %s: %s", series_path, exc)


def make_predict(bundle_dir: str | Path, **kwargs) -> Callable[[str], pl.DataFrame]:
    """`Predictor(bundle_dir, **kwargs).predict`: the function handed to the evaluation server."""
    return Predictor(bundle_dir, **kwargs).predict
