"""The ONNX fold ensemble: onnxruntime sessions built once, fold averaging and the left-right flip TTA."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InferenceError, ManifestError
from .labels import LABELS, LR_SWAP_INDEX
from .manifest import Manifest

__all__ = ["FoldEnsemble", "load_ensemble", "choose_providers", "sigmoid", "session_options"]

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_providers() -> list[str]:
    """CUDA first when this onnxruntime build can use it, CPU always as the fallback (logged loudly).

    onnxruntime-gpu does not ship the CUDA libraries: `onnxruntime.preload_dlls()` (onnxruntime >= 1.21) loads the
    ones pip-installed with torch (nvidia-* wheels), which Kaggle's image has. The one place the kit decides which
    providers the fold sessions ask for.
    """
    available = ort.get_available_providers()
    log.info("onnxruntime %s, providers available: %s", ort.__version__, ", ".join(available))
    if "CUDAExecutionProvider" not in available:
        log.warning("!!! onnxruntime has no CUDAExecutionProvider (CPU build or no GPU): RUNNING ON CPU !!!")
        return ["CPUExecutionProvider"]
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()  # prints each library it cannot load, and does not raise for them
            log.info("onnxruntime.preload_dlls() done (any 'Failed to load' lines above name missing CUDA/cuDNN "
                     "libraries: onnxruntime-gpu %s must match the image's CUDA major version)", ort.__version__)
        except Exception as exc:  # a missing library shows up later as a CPU fallback
            log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", exc)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def session_options(*, threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimization, intra-op threads = cores (or `threads`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or _cpu_count()
    options.log_severity_level = 3
    return options


def _check_session(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if manifest.input_name not in inputs:
        raise ManifestError(f"{path}: no input named {manifest.input_name!r} (graph inputs: {sorted(inputs)})")
    if manifest.output_name not in outputs:
        raise ManifestError(f"{path}: no output named {manifest.output_name!r} (graph outputs: {sorted(outputs)})")
    node = inputs[manifest.input_name]
    if len(node.shape) != len(manifest.input_shape):
        raise ManifestError(f"{path}: input shape {node.shape} has another rank than the manifest's "
                            f"{list(manifest.input_shape)}")
    for axis, (got, want) in enumerate(zip(node.shape, manifest.input_shape)):
        if isinstance(got, int) and isinstance(want, int) and got != want:
            raise ManifestError(f"{path}: input dimension {axis} is {got}, manifest says {want} "
                                f"(graph {node.shape} vs manifest {list(manifest.input_shape)})")
    dtype = _ORT_DTYPES.get(node.type)
    if dtype != manifest.input_dtype:
        raise ManifestError(f"{path}: input type {node.type} but manifest input_dtype is {manifest.input_dtype!r}")
    out_shape = outputs[manifest.output_name].shape
    if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != len(LABELS):
        raise ManifestError(f"{path}: output {manifest.output_name!r} has {out_shape[-1]} values per window, "
                            f"expected {len(LABELS)}")


@dataclass
class FoldEnsemble:
    """Fold sessions of one bundle; `predict_windows` maps model input (N, C, S, S) to probabilities (N, 14)."""

    manifest: Manifest
    sessions: list[ort.InferenceSession]
    fold_ids: list[int]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.manifest.input_dtype)

    @property
    def providers(self) -> list[str]:
        """The providers the first session actually runs on."""
        return list(self.sessions[0].get_providers()) if self.sessions else []

    def _run(self, session: ort.InferenceSession, fold: int, batch: np.ndarray) -> np.ndarray:
        try:
            (logits,) = session.run([self.manifest.output_name], {self.manifest.input_name: batch})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"fold {fold}: onnxruntime failed on a batch of shape {batch.shape}: {exc}") from exc
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (batch.shape[0], len(LABELS)):
            raise InferenceError(f"fold {fold}: output shape {logits.shape}, "
                                 f"expected ({batch.shape[0]}, {len(LABELS)})")
        if not np.isfinite(logits).all():
            raise InferenceError(f"fold {fold}: non-finite logits on a batch of {batch.shape[0]} windows")
        return logits

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits per member (M, N, 14): M = folds, times two with the flip TTA (flipped outputs swapped back)."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise InferenceError(f"expected a (N, C, S, S) batch, got shape {batch.shape}")
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        n = batch.shape[0]
        tta = self.manifest.aggregation.tta_flip
        if tta:  # plain and mirrored windows in one run; the patient's left/right swap with the columns
            batch = np.concatenate([batch, np.ascontiguousarray(batch[..., ::-1])], axis=0)
        members = []
        for session, fold in zip(self.sessions, self.fold_ids):
            logits = self._run(session, fold, np.ascontiguousarray(batch))
            members.append(logits[:n])
            if tta:
                members.append(logits[n:][:, list(LR_SWAP_INDEX)])
        return np.stack(members)

    def predict_windows(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 14) of a batch of windows.

        fold_average "prob": mean over members of sigmoid(logits); "logit": sigmoid of the mean logits. Members
        are the folds and, with `tta_flip`, each fold's mirrored pass (labels swapped back).

        Raises:
            InferenceError: a session failed or returned a wrong shape or non-finite values.
        """
        members = self.predict_logits(batch)
        if self.manifest.aggregation.fold_average == "logit":
            return sigmoid(members.mean(axis=0))
        return sigmoid(members).mean(axis=0)


def load_ensemble(bundle_dir: str | Path, *, providers: Sequence[str] | None = None,
                  folds: Sequence[int] | None = None, manifest: Manifest | None = None,
                  threads: int | None = None) -> FoldEnsemble:
    """Verify a bundle's manifest and build one onnxruntime session per fold.

    Args:
        bundle_dir: folder holding manifest.json and the fold ONNX files.
        providers: onnxruntime execution providers; default CUDA first when available, else CPU.
        folds: fold ids to use (default: all in the manifest).
        manifest: an already read manifest (it is verified against the files again).
        threads: intra-op threads (default: the cores this process may use).
    Returns:
        A FoldEnsemble.
    Raises:
        ManifestError: manifest/file mismatch, unknown fold, or a graph whose inputs/outputs disagree.
    Example:
        >>> ensemble = load_ensemble("weights")
        >>> probs = ensemble.predict_windows(batch)  # (N, 14)
    """
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = Manifest.read(bundle_dir, verify=True)
    else:
        manifest.verify(bundle_dir)
    entries = list(manifest.folds)
    if folds is not None:
        wanted = [int(f) for f in folds]
        known = {e.fold for e in entries}
        unknown = [f for f in wanted if f not in known]
        if unknown or not wanted:
            raise ManifestError(f"folds {wanted} requested; the manifest has folds {sorted(known)}")
        entries = [e for e in entries if e.fold in wanted]
    chosen = list(providers) if providers is not None else choose_providers()
    options = session_options(threads=threads)
    sessions = []
    for entry in entries:
        path = bundle_dir / entry.file
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:
            raise ManifestError(f"fold {entry.fold}: onnxruntime cannot load {path}: {exc}") from exc
        _check_session(session, manifest, path)
        sessions.append(session)
    actual = sessions[0].get_providers()
    if "CUDAExecutionProvider" in chosen and "CUDAExecutionProvider" not in actual:
        log.warning("onnxruntime: CUDA was requested but the sessions run on %s; RUNNING ON CPU", actual)
    log.info("loaded %d fold(s) %s from %s on %s", len(sessions), [e.fold for e in entries], bundle_dir, actual)
    return FoldEnsemble(manifest=manifest, sessions=sessions, fold_ids=[e.fold for e in entries])
