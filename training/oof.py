"""Out-of-fold scores through the kernel's own Predictor: each exported fold on its held-out series."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evaluation.metric import score_by_modality, score_predictions
from inference.labels import LABELS

__all__ = ["predict_series", "oof_report", "OOF_REPORT_NAME"]

log = logging.getLogger(__name__)

OOF_REPORT_NAME = "oof_report.json"


def predict_series(bundle_dir: str | Path, folders: list[Path], *, folds: list[int] | None = None,
                   progress: bool = True, desc: str = "predict") -> tuple[np.ndarray, list[str]]:
    """(n, 14) probabilities of each series folder from `inference.predict.Predictor` (the kernel path).

    Series the predictor cannot read get the manifest priors (as in the kernel) and are listed in the second value.
    """
    from inference.predict import Predictor

    predictor = Predictor(bundle_dir, folds=folds)
    out, failed = [], []
    for folder in tqdm(folders, desc=desc, unit="series", disable=not progress):
        try:
            out.append(predictor.predict_probabilities(folder))
        except Exception as exc:  # the kernel answers the priors for a series it cannot read
            log.warning("series %s: %s: %s (priors used)", Path(folder).name, type(exc).__name__, exc)
            out.append(np.asarray(predictor.priors, dtype=np.float64))
            failed.append(Path(folder).name)
    return np.stack(out) if out else np.zeros((0, len(LABELS))), failed


def oof_report(bundle_dir: str | Path, held_out: dict[int, list[str]], *, labels: dict[str, np.ndarray],
               modality: dict[str, str], folder_of, progress: bool = True) -> dict[str, Any]:
    """Score every fold's ONNX file on its held-out series through the Predictor; write the JSON report.

    Args:
        bundle_dir: the weights folder (manifest + folds).
        held_out: fold -> its validation series uids.
        labels: uid -> (14,) truth.
        modality: uid -> Modality.
        folder_of: uid -> series folder.
    Returns:
        {"per_fold": {...}, "overall": scores of all out-of-fold predictions, "by_modality": {...}}, also written
        to `bundle_dir/oof_report.json`.
    """
    per_fold, uids_all, preds_all = {}, [], []
    for fold, uids in sorted(held_out.items()):
        probs, failed = predict_series(bundle_dir, [folder_of(u) for u in uids], folds=[fold], progress=progress,
                                       desc=f"oof fold {fold}")
        truth = np.stack([labels[u] for u in uids])
        per_fold[str(fold)] = {**score_predictions(truth, probs), "failed_series": failed}
        uids_all += uids
        preds_all.append(probs)
    truth_all = np.stack([labels[u] for u in uids_all])
    preds = np.concatenate(preds_all) if preds_all else np.zeros((0, len(LABELS)))
    report = {
        "note": "each fold's ONNX file scored on its own held-out series by inference.predict.Predictor",
        "per_fold": per_fold,
        "overall": score_predictions(truth_all, preds),
        "by_modality": score_by_modality(truth_all, preds, [modality[u] for u in uids_all]),
    }
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
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
