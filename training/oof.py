"""Out-of-fold scores through the kernel's own Predictor: each exported fold on its held-out series."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metric import score_by_modality, score_predictions
from inference.labels import LABELS
from inference.progress import Progress

__all__ = ["predict_series", "predict_windows", "predict_series_from_windows", "oof_report", "OOF_REPORT_NAME"]

log = logging.getLogger(__name__)

OOF_REPORT_NAME = "oof_report.json"


def predict_series(bundle_dir: str | Path, folders: list[Path], *, folds: list[int] | None = None,
                   progress: bool = True, desc: str = "predict") -> tuple[np.ndarray, list[str]]:
    """(n, 14) probabilities of each series folder from `inference.predict.Predictor` (the kernel path).

    Series the predictor cannot read get the manifest priors (as in the kernel) and are listed in the second value.
    """
    from inference.manifest import Manifest

    if not Manifest.read(bundle_dir, verify=False).kind_spec.windowed:  # one answer per series, no windows
        return _predict_whole(bundle_dir, folders, folds, progress, desc)
    windows, failed = predict_windows(bundle_dir, folders, folds=folds, progress=progress, desc=desc)
    return predict_series_from_windows(bundle_dir, windows)[0], failed


def predict_windows(bundle_dir: str | Path, folders: list[Path], *, folds: list[int] | None = None,
                    progress: bool = True, desc: str = "predict"
                    ) -> tuple[list[tuple[np.ndarray | None, str]], list[str]]:
    """Each series' window probabilities (N, 14) and its modality (CT/MR) through the kernel's Predictor.

    A series the predictor cannot read gives (None, "") and is listed in the second value.
    """
    from inference.predict import Predictor

    predictor = Predictor(bundle_dir, folds=folds)
    out, failed = [], []
    for folder in Progress(folders, desc=desc, unit="series", enabled=progress):
        try:
            window_probs, answer = predictor.window_answer(folder)
            out.append((window_probs, answer.modality))
        except Exception as exc:  # the kernel answers the priors for a series it cannot read
            log.warning("series %s: %s: %s (priors used)", Path(folder).name, type(exc).__name__, exc)
            out.append((None, ""))
            failed.append(Path(folder).name)
    return out, failed


def oof_report(bundle_dir: str | Path, held_out: dict[int, list[str]], *, labels: dict[str, np.ndarray],
               modality: dict[str, str], folder_of, progress: bool = True, stack: bool = True) -> dict[str, Any]:
    """Score every fold's ONNX file on its held-out series through the Predictor; write the JSON report.

    With `stack`, the same out-of-fold windows also measure the learned aggregator against the fixed reductions
    (fold-wise cross-validated: `training.stacking.stacking_report`), and the report's "stacking" section holds
    that comparison; the caller fits the final aggregator on every out-of-fold series.

    Args:
        bundle_dir: the weights folder (manifest + folds).
        held_out: fold -> its validation series uids.
        labels: uid -> (14,) truth.
        modality: uid -> Modality.
        folder_of: uid -> series folder.
        stack: also run the stacking comparison.
    Returns:
        {"per_fold": {...}, "overall": scores of all out-of-fold predictions, "by_modality": {...}, "stacking"},
        also written to `bundle_dir/oof_report.json`; the out-of-fold windows are under the "windows" key of the
        returned dict only (not written).
    """
    from inference.manifest import Manifest

    from .stacking import SeriesWindows, stacking_report

    windowed = Manifest.read(bundle_dir, verify=False).kind_spec.windowed  # a volume model answers per series
    per_fold, uids_all, preds_all, windows_all = {}, [], [], []
    for fold, uids in sorted(held_out.items()):
        if windowed:
            windows, failed = predict_windows(bundle_dir, [folder_of(u) for u in uids], folds=[fold],
                                              progress=progress, desc=f"oof fold {fold}")
            probs, _ = predict_series_from_windows(bundle_dir, windows)
        else:
            probs, failed = _predict_whole(bundle_dir, [folder_of(u) for u in uids], [fold], progress,
                                           f"oof fold {fold}")
            windows = []
        truth = np.stack([labels[u] for u in uids])
        per_fold[str(fold)] = {**score_predictions(truth, probs), "failed_series": failed}
        uids_all += uids
        preds_all.append(probs)
        windows_all += [SeriesWindows(u, fold, m, w, labels[u]) for u, (w, m) in zip(uids, windows) if w is not None]
    truth_all = np.stack([labels[u] for u in uids_all])
    preds = np.concatenate(preds_all) if preds_all else np.zeros((0, len(LABELS)))
    report: dict[str, Any] = {
        "note": "each fold's ONNX file scored on its own held-out series by inference.predict.Predictor",
        "per_fold": per_fold,
        "overall": score_predictions(truth_all, preds),
        "by_modality": score_by_modality(truth_all, preds, [modality[u] for u in uids_all]),
    }
    if stack and len(held_out) > 1 and windows_all:
        top_k = Manifest.read(bundle_dir, verify=False).aggregation.top_k
        report["stacking"] = stacking_report(windows_all, top_k=top_k)
    path = Path(bundle_dir) / OOF_REPORT_NAME
    path.write_text(json.dumps(report, indent=2) + "\n")
    overall = report["overall"]
    log.info("OOF (kernel predictor, %d series): score %s, Present AUC %s, mean location AUC %s; report %s",
             overall["series"], _fmt(overall["score"]), _fmt(overall["present_auc"]),
             _fmt(overall["mean_location_auc"]), path)
    for name, value in overall["per_label"].items():
        log.info("  %-45s %s", name, _fmt(value))
    for name, value in report["by_modality"].items():
        log.info("  modality %-10s n=%d score %s", name, value["series"], _fmt(value["score"]))
    if "stacking" in report:
        st = report["stacking"]
        log.info("OOF aggregation (%d series, learned cross-validated over folds): max %s, top-k mean %s, learned "
                 "%s (Present AUC %s / %s / %s)", st["series"], _fmt(st["max"]["score"]),
                 _fmt(st["topk_mean"]["score"]), _fmt(st["learned"]["score"]), _fmt(st["max"]["present_auc"]),
                 _fmt(st["topk_mean"]["present_auc"]), _fmt(st["learned"]["present_auc"]))
    report["windows"] = windows_all
    return report


def _predict_whole(bundle_dir: str | Path, folders: list[Path], folds: list[int] | None, progress: bool, desc: str
                   ) -> tuple[np.ndarray, list[str]]:
    """(n, 14) answers of a volume model (priors where a series fails), and the failed series."""
    from inference.predict import Predictor

    predictor = Predictor(bundle_dir, folds=folds)
    out, failed = [], []
    for folder in Progress(folders, desc=desc, unit="series", enabled=progress):
        probs, report = predictor.predict_series(folder)
        out.append(probs)
        if report.answer == "priors":
            failed.append(Path(folder).name)
    return np.stack(out) if out else np.zeros((0, len(LABELS))), failed


def predict_series_from_windows(bundle_dir: str | Path, windows: list[tuple[np.ndarray | None, str]]
                                ) -> tuple[np.ndarray, list[int]]:
    """(n, 14) answers of the bundle's aggregation for precomputed windows (priors where a series failed)."""
    from inference.predict import Predictor

    predictor = Predictor(bundle_dir)
    probs, missing = [], []
    for i, (w, m) in enumerate(windows):
        if w is None:
            probs.append(np.asarray(predictor.priors, dtype=np.float64))
            missing.append(i)
        else:
            probs.append(predictor.aggregator(w, m))
    return (np.stack(probs) if probs else np.zeros((0, len(LABELS)))), missing


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
