"""The whole training run: read data, cache, K folds, train, export, manifest, out-of-fold report."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from inference.errors import ConfigError, ManifestError
from inference.labels import PRESENT_INDEX
from inference.manifest import Manifest
from inference.region import Box

from .cache import build_cache, load_pixels
from .config import TrainConfig
from .data import read_localizers, read_train_table, series_folder
from .export import export_fold, write_manifest
from .folds import make_folds
from .kinds import load_best, training_kind
from .loop import init_distributed
from .oof import oof_report
from .pretrained import ensure_pretrained, pretrained_source
from .sampling import CachedSeries
from .stacking import fit_aggregator

if TYPE_CHECKING:  # types only: training.region is imported when the config asks for it
    from .region import RegionFit

__all__ = ["run_training", "series_cache_dir", "parity_windows", "config_fingerprint", "fold_file"]

log = logging.getLogger(__name__)


def fold_file(fold: int) -> str:
    return f"fold_{fold}.onnx"


def config_fingerprint(cfg: TrainConfig) -> str:
    """Hash of everything that shapes a fold's model except which folds run (folds of one run share it)."""
    data = cfg.to_dict()
    data["train"] = {k: v for k, v in data["train"].items() if k not in ("folds", "resume", "num_workers", "threads")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def parity_windows(series: list[CachedSeries], cfg: TrainConfig, count: int) -> np.ndarray:
    """Real validation inputs for the export check: windows at localizer slices and spread through each series,
    or (volume model) whole resampled series (the kind's `parity_inputs`)."""
    return training_kind(cfg.model.kind).parity_inputs(series, cfg, count)


def _previous_folds(out_dir: Path, fingerprint: str, exclude: set[int]) -> list[dict[str, Any]]:
    """Fold entries of an earlier run into the same folder with the same config (so --folds runs add up)."""
    try:
        old = Manifest.read(out_dir, verify=True)
    except ManifestError:
        return []
    if old.provenance.get("config_fingerprint") != fingerprint:
        log.warning("%s holds folds of another config; they are dropped from the new manifest", out_dir)
        return []
    return [{"fold": f.fold, "file": f.file, "val_score": f.val_score} for f in old.folds if f.fold not in exclude]


def _install_aggregator(out_dir: Path, windows: list, stacking: dict[str, Any]) -> dict[str, Any]:
    """Fit the learned aggregator on every out-of-fold series and write it into the manifest; the manifest's method
    becomes "learned" when it beat the best fixed reduction in fold-wise cross-validation (else it stays)."""
    manifest = Manifest.read(out_dir, verify=True)
    aggregator = fit_aggregator(windows, anchor=stacking["anchor"])
    gain = stacking["learned_gain"]
    use = gain is not None and gain > 0
    aggregation = dataclasses.replace(manifest.aggregation, method="learned") if use else manifest.aggregation
    provenance = {**manifest.provenance, "aggregation": {
        "used": aggregation.method, "learned_gain_cv": gain, "best_fixed": stacking["best_fixed"],
        "anchor": stacking["anchor"],
        "scores_cv": {name: stacking[name]["score"] for name in ("max", "topk_mean", "learned")},
        "series": stacking["series"]}}
    dataclasses.replace(manifest, aggregation=aggregation, aggregator=aggregator.to_dict(),
                        provenance=provenance).write(out_dir)
    log.info("aggregation: %s (learned %s vs best fixed %s = %s in fold-wise cross-validation on %d OOF series)",
             aggregation.method, stacking["learned"]["score"], stacking["best_fixed"],
             stacking[stacking["best_fixed"]]["score"] if stacking["best_fixed"] else None, stacking["series"])
    return provenance["aggregation"]


def series_cache_dir(cfg: TrainConfig, cache_dir: str | Path) -> str | Path:
    """Where the series are cached: `cache_dir`, or with the region stage its `region/` folder (the series cropped
    to their boxes, issue 21)."""
    return Path(cache_dir) / "region" if cfg.region.enabled else cache_dir


def _fit_region(cfg: TrainConfig, folders: dict[str, Path], localizers: dict[str, Any], *, cache_dir: str | Path,
                out_dir: str | Path, progress: bool) -> RegionFit | None:
    """The region locator fitted on the series (issue 21; `training.region.fit_region`), its boxes also written to
    the region cache folder for the other torchrun ranks (`_main_rank_boxes`); None without a region stage."""
    if not cfg.region.enabled:
        return None
    from .region import fit_region, write_boxes

    region = fit_region(cfg.region, folders, localizers, cache_dir=cache_dir, out_dir=out_dir,
                        num_folds=cfg.train.num_folds, seed=cfg.train.seed, progress=progress)
    write_boxes(series_cache_dir(cfg, cache_dir), region.boxes)
    return region


def _main_rank_boxes(cfg: TrainConfig, cache_dir: str | Path) -> dict[str, Box | None] | None:
    """On a torchrun rank other than the main one: the boxes the main rank's `_fit_region` wrote (issue 21), so
    that this rank finds the series cached inside them; None without a region stage."""
    if not cfg.region.enabled:
        return None
    from .region import read_boxes

    return read_boxes(series_cache_dir(cfg, cache_dir))


def _write_region(out_dir: Path, region: RegionFit | None) -> None:
    """The manifest in `out_dir` names the locator and its box (issue 21; nothing without a region)."""
    if region is not None:
        from .region import write_locator_section

        write_locator_section(out_dir, region.spec)


def run_training(cfg: TrainConfig, *, data_dir: str | Path, out_dir: str | Path, cache_dir: str | Path,
                 checkpoint_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train the configured folds on the competition layout in `data_dir` and export them to `out_dir`.

    Returns:
        A summary: manifest path, per-fold best validation scores and seconds, cache failures, OOF report.
    Raises:
        ConfigError: unusable data folder or too few usable series for the folds.
    """
    info = init_distributed()
    # pretrained weights are checked first: a missing file stops the run before the cache and the first epoch
    start_weights = (ensure_pretrained(cfg.model.arch, in_chans=cfg.input_channels) if cfg.model.pretrained
                     else pretrained_source(cfg.model.arch, pretrained=False))
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    elif info.world_size > 1 and "cuda" not in info.device:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = read_train_table(data_dir / "train.csv")
    localizers = read_localizers(data_dir / "train_localizers.csv")
    folders = {uid: series_folder(data_dir, uid) for uid in table.uids}
    missing = {uid: "series folder missing" for uid, folder in folders.items() if not folder.is_dir()}
    folders = {uid: f for uid, f in folders.items() if uid not in missing}
    # issue 21: the main rank fits the region locator first; every rank's 2.5D model then trains inside its boxes
    # (cached apart). The other ranks wait, then read what the main rank cached.
    series_cache = series_cache_dir(cfg, cache_dir)
    region = None
    if info.is_main:
        region = _fit_region(cfg, folders, localizers, cache_dir=cache_dir, out_dir=out_dir, progress=progress)
        report = build_cache(folders, localizers, cfg.preprocess, series_cache, workers=cfg.cache.workers,
                             progress=progress, boxes=None if region is None else region.boxes)
    info.wait_for_main()
    if not info.is_main:
        report = build_cache(folders, localizers, cfg.preprocess, series_cache, workers=0, progress=False,
                             read_only=True, boxes=_main_rank_boxes(cfg, cache_dir))
    failures = {**missing, **report.failures}
    uids = [u for u in table.uids if u in report.entries]
    if len(uids) < cfg.train.num_folds:
        raise ConfigError(f"only {len(uids)} usable series in {data_dir} for {cfg.train.num_folds} folds "
                          f"({len(failures)} failed, see {report.root / 'failures.json'})")
    rows = [table.index(u) for u in uids]
    labels = {u: table.labels[i] for u, i in zip(uids, rows)}
    modality = {u: table.modality[i] for u, i in zip(uids, rows)}
    assignment = make_folds([int(labels[u][PRESENT_INDEX] > 0.5) for u in uids], [modality[u] for u in uids],
                            num_folds=cfg.train.num_folds, seed=cfg.train.seed)
    series = {u: CachedSeries(uid=u, modality=modality[u], pixels=load_pixels(report.entries[u]),
                              points=list(report.entries[u].points), labels=labels[u]) for u in uids}
    selected = cfg.train.folds or list(range(cfg.train.num_folds))
    fingerprint = config_fingerprint(cfg)
    results, exported = {}, []
    trainer = training_kind(cfg.model.kind)
    for fold in selected:
        train = [series[u] for u, f in zip(uids, assignment) if f != fold]
        val = [series[u] for u, f in zip(uids, assignment) if f == fold]
        if info.is_main:
            log.info("fold %d: %d training series (%d positive), %d validation series (%d positive)", fold,
                     len(train), sum(s.positive for s in train), len(val), sum(s.positive for s in val))
        result = trainer.train_fold(cfg, fold, train, val, checkpoint_dir=checkpoint_dir, dist_info=info,
                                    progress=progress)
        results[fold] = result
        if info.is_main:
            net = load_best(result.best_path, cfg)
            parity = export_fold(net, out_dir / fold_file(fold), opset=cfg.export.opset, fp16=cfg.export.fp16,
                                 parity_windows=parity_windows(val, cfg, cfg.export.parity_windows),
                                 tolerance=cfg.export.parity_tol, fp16_tolerance=cfg.export.fp16_tol)
            exported.append({"fold": fold, "file": fold_file(fold), "val_score": result.best_score,
                             "parity_max_abs_diff": parity.max_abs_diff})
        info.barrier()
    summary: dict[str, Any] = {"folds": {}, "cache_failures": failures}
    if info.is_main:
        previous = _previous_folds(out_dir, fingerprint, {e["fold"] for e in exported})
        held_out = {f: [u for u, a in zip(uids, assignment) if a == f] for f in selected}
        extra = {"config_fingerprint": fingerprint, "data_dir": str(data_dir), "world_size": info.world_size,
                 "start_weights": {**start_weights.to_dict(), "description": start_weights.describe()},
                 "device": info.device, "fold_assignment": dict(zip(uids, assignment.tolist())),
                 "folds": {str(f): {"best_epoch": r.best_epoch, "best_val_score": r.best_score,
                                    "seconds": round(r.seconds, 1), "history": r.history,
                                    "validation_series": len(r.val_uids)} for f, r in results.items()},
                 "parity": {str(e["fold"]): e["parity_max_abs_diff"] for e in exported},
                 "cache_failures": failures}
        priors = np.mean(np.stack([labels[u] for u in uids]), axis=0)
        manifest = write_manifest(out_dir, cfg, exported + previous, priors=priors, extra_provenance=extra)
        _write_region(out_dir, region)
        (out_dir / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary["manifest"] = str(manifest)
        summary["folds"] = {f: {"best_val_score": r.best_score, "best_epoch": r.best_epoch,
                                "seconds": round(r.seconds, 1)} for f, r in results.items()}
        if cfg.export.oof:
            summary["oof"] = oof_report(out_dir, held_out, labels=labels, modality=modality,
                                        folder_of=lambda u: folders[u], progress=progress, stack=cfg.export.stack)
            windows = summary["oof"].pop("windows")
            if cfg.export.stack and "stacking" in summary["oof"]:
                summary["aggregation"] = _install_aggregator(out_dir, windows, summary["oof"]["stacking"])
    info.wait_for_main()
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return summary


