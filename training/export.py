"""Export a fold's inference graph to ONNX, check torch/onnxruntime parity, write the weights manifest."""
from __future__ import annotations

import copy
import logging
import subprocess
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from inference.errors import ConfigError, KitError, ManifestError
from inference.kinds import VOLUME_32, WINDOW_25D, model_kind
from inference.labels import LABELS
from inference.manifest import FoldEntry, Manifest

from .config import TrainConfig
from .model import DualStreamNet, InferenceGraph

__all__ = ["ExportError", "ParityReport", "export_fold", "check_parity", "write_manifest", "git_commit",
           "INPUT_NAME", "VOLUME_INPUT_NAME", "OUTPUT_NAME"]

log = logging.getLogger(__name__)

INPUT_NAME = WINDOW_25D.input_name  # the 2.5D model's input
VOLUME_INPUT_NAME = VOLUME_32.input_name  # the volume model's input
OUTPUT_NAME = "logits"


def _graph_and_input(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The exported graph of a trained network and its input's name: the 2.5D model's one-input inference
    regime, or the volume model itself."""
    if isinstance(net, DualStreamNet):
        return InferenceGraph(net), INPUT_NAME
    return net, VOLUME_INPUT_NAME


class ExportError(KitError):
    """The ONNX export failed or its outputs differ from torch's beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """torch vs onnxruntime on the same windows."""

    windows: int
    max_abs_diff: float
    tolerance: float


def check_parity(graph: torch.nn.Module, onnx_path: str | Path, windows: np.ndarray, *, tolerance: float,
                 dtype: np.dtype = np.float32, input_name: str = INPUT_NAME) -> ParityReport:
    """Run `windows` through the torch graph (float32) and the ONNX file (CPU); raise when they differ.

    Raises:
        ExportError: the largest absolute logit difference exceeds `tolerance`.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = graph(torch.from_numpy(windows.astype(np.float32))).float().numpy()
    actual = session.run([OUTPUT_NAME], {input_name: windows.astype(dtype)})[0].astype(np.float32)
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    report = ParityReport(windows=int(windows.shape[0]), max_abs_diff=diff, tolerance=tolerance)
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(f"{onnx_path}: onnxruntime differs from torch by {diff:.3g} on {windows.shape[0]} "
                          f"windows (tolerance {tolerance:g}); the export is not trustworthy")
    return report


def export_fold(net: torch.nn.Module, path: str | Path, *, parity_windows: np.ndarray, opset: int = 17,
                fp16: bool = False, tolerance: float = 1e-4, fp16_tolerance: float = 5e-2) -> ParityReport:
    """Export the one-input inference graph of `net` to ONNX with a dynamic batch and check parity.

    Args:
        net: the trained network, either kind (moved to CPU, eval mode, for the export).
        path: the .onnx file to write.
        parity_windows: (N, C, S, S) real validation windows (uint8 * scale) for the parity check.
        opset: ONNX opset (>= 17).
        fp16: export float16 weights and input (parity then at `fp16_tolerance`, against the float32 graph).
    Returns:
        The parity report.
    Raises:
        ExportError: export failure or parity above the tolerance.
        ConfigError: opset below 17 or windows of the wrong rank.
    """
    if opset < 17:
        raise ConfigError(f"ONNX opset must be >= 17, got {opset}")
    if parity_windows.ndim != 4 or parity_windows.shape[0] < 1:
        raise ConfigError(f"parity windows must be (N>=1, C, S, S), got {parity_windows.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference, input_name = _graph_and_input(copy.deepcopy(net).cpu().float().eval())
    graph, _ = _graph_and_input(copy.deepcopy(net).cpu().eval())
    reference, graph = reference.eval(), graph.eval()
    dtype = np.float16 if fp16 else np.float32
    if fp16:
        graph = graph.half()
    example = torch.from_numpy(parity_windows[:2].astype(dtype))
    tmp = path.with_suffix(".onnx.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(tmp), input_names=[input_name], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        report = check_parity(reference, tmp, parity_windows, tolerance=fp16_tolerance if fp16 else tolerance,
                              dtype=dtype, input_name=input_name)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    log.info("exported %s (opset %d, %s): parity max |diff| %.2e on %d windows", path.name, opset,
             "float16" if fp16 else "float32", report.max_abs_diff, report.windows)
    return report


def git_commit(repo: str | Path | None = None) -> str | None:
    """The current git commit of the code (with '-dirty' when the tree has changes), None outside git."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def write_manifest(out_dir: str | Path, cfg: TrainConfig, folds: list[dict[str, Any]], *, priors: np.ndarray,
                   extra_provenance: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/manifest.json` for the exported folds and read it back with verification.

    Args:
        out_dir: the weights folder holding the .onnx files.
        cfg: the resolved training config (its preprocess/windows/aggregation go to the kernel; all of it to
            provenance).
        folds: one {"fold", "file", "val_score"} per exported fold (file relative to out_dir).
        priors: (14,) training prevalence, the kernel's fallback for series it cannot read.
    Returns:
        The manifest path.
    Raises:
        ManifestError: the written manifest does not verify.
    """
    out_dir = Path(out_dir)
    priors = np.asarray(priors, dtype=np.float64)
    if priors.shape != (len(LABELS),):
        raise ManifestError(f"priors must have {len(LABELS)} values, got shape {priors.shape}")
    entries = tuple(FoldEntry.for_file(out_dir, f["file"], fold=f["fold"], val_score=f.get("val_score"))
                    for f in sorted(folds, key=lambda f: f["fold"]))
    provenance = {"git_commit": git_commit(), "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                  "trainer": "train_minimal.py", "config": cfg.to_dict(), "torch": torch.__version__,
                  "onnxruntime": ort.__version__, **(extra_provenance or {})}
    size = cfg.preprocess.image_size
    kind = model_kind(cfg.model.kind)
    channels = cfg.input_channels
    manifest = Manifest(labels=LABELS, input_name=kind.input_name,
                        output_name=OUTPUT_NAME, input_shape=("batch", channels, size, size),
                        input_dtype="float16" if cfg.export.fp16 else "float32", preprocess=cfg.preprocess,
                        windows=cfg.windows, aggregation=cfg.aggregation, folds=entries,
                        priors=tuple(float(np.clip(p, 0.0, 1.0)) for p in priors), provenance=provenance,
                        kind=kind.name, volume=cfg.volume if kind.needs_volume else None)
    path = manifest.write(out_dir)
    Manifest.read(out_dir, verify=True)
    return path
