"""The ONNX fold ensemble: onnxruntime sessions built once, fold averaging and the left-right flip TTA."""
from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InferenceError, ManifestError
from .labels import LABELS, LR_SWAP_INDEX
from .manifest import Manifest

__all__ = ["FoldEnsemble", "load_ensemble", "choose_providers", "cuda_devices", "plan_devices", "sigmoid",
           "session_options"]

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


def cuda_devices() -> list[int]:
    """The CUDA devices this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else [0]."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return list(range(len(entries)))
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return [0]
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return list(range(count)) if count else [0]


def plan_devices(sessions: int, devices: Sequence[int]) -> list[int]:
    """The device of each fold session: round-robin over `devices`, so every GPU gets folds (2 GPUs, 5 folds:
    0, 1, 0, 1, 0)."""
    if not devices:
        raise ValueError("plan_devices needs at least one device")
    return [devices[i % len(devices)] for i in range(sessions)]


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
    """Fold sessions of one bundle; `predict_windows` maps model input (N, C, S, S) to probabilities (N, 14).

    `devices[i]` is the GPU of session i (None: the session's default device). Sessions on different GPUs run
    concurrently (onnxruntime releases the GIL); sessions on one device run one after the other.
    """

    manifest: Manifest
    sessions: list[ort.InferenceSession]
    fold_ids: list[int]
    devices: list[int | None] = field(default_factory=list)
    _threads: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def _groups(self, count: int) -> list[list[int]]:
        """Indices of the first `count` sessions, grouped by device (one group per GPU)."""
        devices = self.devices or [None] * len(self.sessions)
        groups: dict[int | None, list[int]] = {}
        for index in range(count):
            groups.setdefault(devices[index], []).append(index)
        return list(groups.values())

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

    def predict_logits(self, batch: np.ndarray, *, tta: bool | None = None,
                       folds: int | None = None) -> np.ndarray:
        """Raw logits per member (M, N, 14): M = folds, times two with the flip TTA (flipped outputs swapped back).

        Args:
            batch: (N, C, S, S) model input.
            tta: the left-right flip TTA (None: the manifest's aggregation.tta_flip).
            folds: use the first `folds` sessions only (None: all; the run budget's "half_folds").
        """
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise InferenceError(f"expected a (N, C, S, S) batch, got shape {batch.shape}")
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        n = batch.shape[0]
        tta = self.manifest.aggregation.tta_flip if tta is None else tta
        if tta:  # plain and mirrored windows in one run; the patient's left/right swap with the columns
            batch = np.concatenate([batch, np.ascontiguousarray(batch[..., ::-1])], axis=0)
        batch = np.ascontiguousarray(batch)
        count = len(self.sessions) if folds is None else max(1, min(len(self.sessions), folds))
        groups = self._groups(count)
        if len(groups) > 1:  # one thread per GPU
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="fold-device")
            futures = [self._threads.submit(self._run_group, group, batch) for group in groups]
            logits = {i: out for future in futures for i, out in future.result().items()}
        else:
            logits = self._run_group(groups[0], batch)
        members = []
        for index in range(count):
            members.append(logits[index][:n])
            if tta:
                members.append(logits[index][n:][:, list(LR_SWAP_INDEX)])
        return np.stack(members)

    def _run_group(self, indices: list[int], batch: np.ndarray) -> dict[int, np.ndarray]:
        return {i: self._run(self.sessions[i], self.fold_ids[i], batch) for i in indices}

    def predict_windows(self, batch: np.ndarray, *, tta: bool | None = None, folds: int | None = None) -> np.ndarray:
        """Probabilities (N, 14) of a batch of windows.

        fold_average "prob": mean over members of sigmoid(logits); "logit": sigmoid of the mean logits. Members
        are the folds and, with the flip TTA, each fold's mirrored pass (labels swapped back). `tta` and `folds`
        as in `predict_logits`.

        Raises:
            InferenceError: a session failed or returned a wrong shape or non-finite values.
        """
        members = self.predict_logits(batch, tta=tta, folds=folds)
        if self.manifest.aggregation.fold_average == "logit":
            return sigmoid(members.mean(axis=0))
        return sigmoid(members).mean(axis=0)


def load_ensemble(bundle_dir: str | Path, *, providers: Sequence[str] | None = None,
                  folds: Sequence[int] | None = None, manifest: Manifest | None = None,
                  threads: int | None = None, devices: Sequence[int] | None = None) -> FoldEnsemble:
    """Verify a bundle's manifest and build one onnxruntime session per fold.

    Args:
        bundle_dir: folder holding manifest.json and the fold ONNX files.
        providers: onnxruntime execution providers; default CUDA first when available, else CPU.
        folds: fold ids to use (default: all in the manifest).
        manifest: an already read manifest (it is verified against the files again).
        threads: intra-op threads (default: the cores this process may use).
        devices: the GPUs to spread the fold sessions over when CUDA is among the providers (default: every
            visible one, `cuda_devices()`); one GPU or none: today's single device.
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
    on_cuda = "CUDAExecutionProvider" in chosen
    gpus = list(devices) if devices is not None else (cuda_devices() if on_cuda else [])
    plan: list[int | None] = [None] * len(entries)
    if on_cuda and len(gpus) > 1:
        plan = list(plan_devices(len(entries), gpus))
    sessions = []
    for entry, device in zip(entries, plan):
        path = bundle_dir / entry.file
        session_providers: list = chosen if device is None else [
            ("CUDAExecutionProvider", {"device_id": device}) if p == "CUDAExecutionProvider" else p for p in chosen]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=session_providers)
        except Exception as exc:
            raise ManifestError(f"fold {entry.fold}: onnxruntime cannot load {path}: {exc}") from exc
        _check_session(session, manifest, path)
        sessions.append(session)
    actual = sessions[0].get_providers()
    if "CUDAExecutionProvider" in chosen and "CUDAExecutionProvider" not in actual:
        log.warning("onnxruntime: CUDA was requested but the sessions run on %s; RUNNING ON CPU", actual)
    where = actual if all(d is None for d in plan) else f"{actual}, GPUs {plan}"
    log.info("loaded %d fold(s) %s from %s on %s", len(sessions), [e.fold for e in entries], bundle_dir, where)
    return FoldEnsemble(manifest=manifest, sessions=sessions, fold_ids=[e.fold for e in entries], devices=plan)
