"""The region locator's training: coarse copies and localizer points, K-fold fit, out-of-fold box size, ONNX.

The locator learns from what the real data offers: the localizer points of positive series (negatives have no
point and do not train it). A tiny CNN reads the coarse copy's six projections (`inference.region.locator_input`)
and regresses the centre of the series' points as a fraction of the extent along each canonical axis. The box's
half-size is then set from the out-of-fold distances between the points and the predicted centre (per axis, the
quantile that keeps `recall` of them inside, plus a margin), so the box holds both the spread of the locations
and the locator's own error. The 2.5D model then trains inside the boxes the locator gives each training series
out of fold (its held-out fold model for a positive, the final model for a negative, which never trains it), so
its training crops are distributed like the kernel's, never perfect.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from inference.errors import ConfigError, KitError
from inference.progress import Progress
from inference.region import (
    LOCATOR_INPUT,
    LOCATOR_OUTPUT,
    Box,
    RegionSpec,
    box_from_fraction,
    check_box,
    coarse_volume,
    locator_input,
)

from .config import RegionTrainConfig
from .localizers import LocalizerRow, place_points

__all__ = ["LocatorSample", "LocatorFit", "TinyLocator", "collect_samples", "fit_locator",
           "export_locator", "fit_region", "RegionFit", "CanonicalPlacement", "place_in_region", "box_key", "box_for"]

log = logging.getLogger(__name__)


@dataclass
class LocatorSample:
    """One series for the locator: its coarse uint8 copy and spacing, full shape and spacing, points in mm."""

    uid: str
    coarse: np.ndarray
    coarse_spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    points_mm: np.ndarray  # (N, 3) canonical mm, N = 0 for a negative

    @property
    def target(self) -> np.ndarray:
        """The centre of the points as a fraction of the coarse copy's extent (what the locator regresses)."""
        extent = np.array([max(m - 1, 1) * sp for m, sp in zip(self.coarse.shape, self.coarse_spacing)])
        return self.points_mm.mean(axis=0) / extent


class CanonicalPlacement:
    """`place_points`' prepared-volume side when the points are wanted in canonical voxels."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    @staticmethod
    def canonical_to_prepared(z: float, r: float, c: float) -> tuple[float, float, float]:
        return z, r, c


def _read_one(folder: str, uid: str, rows: list[LocalizerRow], spec_dict: dict[str, Any], in_process: bool,
              out: str) -> str:
    """Load one series, write its coarse copy and its points (canonical mm) to `out/<uid>.npz`."""
    from inference.load import load_series

    spec = RegionSpec.from_dict(spec_dict)
    volume = load_series(folder, in_process=in_process)
    coarse, coarse_spacing = coarse_volume(volume, spec)
    points, _ = place_points(volume, CanonicalPlacement(volume.pixels), rows)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    mm = np.array([[p.z, p.row, p.col] for p in points], dtype=np.float64).reshape(-1, 3) * spacing[None, :]
    path = Path(out) / f"{uid}.npz"
    tmp = Path(out) / f".{uid}.{os.getpid()}.npz"
    np.savez(tmp, coarse=coarse, coarse_spacing=np.asarray(coarse_spacing), shape=np.asarray(volume.pixels.shape),
             spacing=spacing, points_mm=mm)
    os.replace(tmp, path)
    return str(path)


def _load_sample(uid: str, path: Path) -> LocatorSample:
    with np.load(path) as data:
        return LocatorSample(uid=uid, coarse=data["coarse"], coarse_spacing=tuple(data["coarse_spacing"].tolist()),
                             shape=tuple(int(v) for v in data["shape"]), spacing=tuple(data["spacing"].tolist()),
                             points_mm=data["points_mm"].reshape(-1, 3))


def collect_samples(folders: dict[str, Path], localizers: dict[str, list[LocalizerRow]], spec: RegionSpec,
                    cache_dir: str | Path, *, workers: int = 2, progress: bool = True) -> dict[str, LocatorSample]:
    """Every series' coarse copy and points, cached under `cache_dir/locator-<hash>/` (a failed series is skipped,
    as in the volume cache)."""
    key = json.dumps({"spec": [spec.input_size, spec.max_slices, spec.max_side, list(spec.ct_window),
                               list(spec.mr_percentiles)],
                      "rows": sorted(f"{u}:{r}" for u, rs in localizers.items() for r in rs)}, sort_keys=True)
    root = Path(cache_dir) / f"locator-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    todo = [(uid, f) for uid, f in folders.items() if not (root / f"{uid}.npz").is_file()]
    spec_dict = spec.to_dict()
    bar = Progress(total=len(todo), desc="locator data", unit="series", enabled=progress and bool(todo))
    if workers <= 1:
        for uid, folder in todo:
            try:
                _read_one(str(folder), uid, localizers.get(uid, []), spec_dict, False, str(root))
            except Exception as exc:  # one bad series costs itself
                log.warning("locator data: series %s skipped: %s: %s", uid, type(exc).__name__, exc)
            bar.update(1)
    elif todo:
        from inference.decode_pool import isolated_processes

        pool = isolated_processes(workers)
        try:
            futures = {pool.schedule(_read_one, args=(str(folder), uid, localizers.get(uid, []), spec_dict, True,
                                                      str(root)), timeout=1800.0): uid for uid, folder in todo}
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as exc:
                    log.warning("locator data: series %s skipped: %s: %s", futures[future], type(exc).__name__, exc)
                bar.update(1)
        finally:
            pool.close()
            pool.join()
    bar.close()
    return {uid: _load_sample(uid, root / f"{uid}.npz") for uid in folders if (root / f"{uid}.npz").is_file()}


class TinyLocator(nn.Module):
    """Six 0..1 projections (6, S, S) -> the centre's three fractions (no sigmoid: a centre may lie outside)."""

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        layers, channels = [], 6
        for width in (16, 32, 48, 64):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        cells = max(1, size // 16)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * cells * cells, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) + 0.5


def _augmented(sample: LocatorSample, rng: np.random.Generator, spec: RegionSpec,
               copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` inputs of one positive: the whole copy, then random sub-crops holding the points' centre (a
    shorter or narrower acquisition), half of them flipped left/right. Returns (inputs, targets, extents mm)."""
    coarse = sample.coarse
    centre = sample.points_mm.mean(axis=0) / np.asarray(sample.coarse_spacing)  # coarse voxels
    inputs, targets, extents = [], [], []
    for j in range(copies):
        lo, hi = np.zeros(3, int), np.array(coarse.shape)
        if j > 0:
            for a in range(3):
                n = coarse.shape[a]
                keep = int(round(n * rng.uniform(0.6, 1.0)))
                c = int(np.clip(round(centre[a]), 0, n - 1))
                start_min, start_max = max(0, c - keep + 2), min(c - 1, n - keep)
                start = int(rng.integers(start_min, start_max + 1)) if start_max >= start_min else 0
                lo[a], hi[a] = start, min(n, start + keep)
        crop = coarse[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        shape = np.array(crop.shape)
        target = (centre - lo) / np.maximum(shape - 1, 1)
        if j % 2 == 1:
            crop, target = crop[:, :, ::-1], np.array([target[0], target[1], 1.0 - target[2]])
        inputs.append(locator_input(np.ascontiguousarray(crop), spec))
        targets.append(target)
        extents.append(np.maximum(shape - 1, 1) * np.asarray(sample.coarse_spacing))
    return np.stack(inputs), np.stack(targets), np.stack(extents)


def _train_one(samples: list[LocatorSample], cfg: RegionTrainConfig, spec: RegionSpec, seed: int) -> TinyLocator:
    """One locator fitted on these positives (loss: smooth L1 of the centre error in cm)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    parts = [_augmented(s, rng, spec, cfg.augment_copies) for s in samples]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.float32))
    scale = torch.from_numpy((np.concatenate([p[2] for p in parts]) / 10.0).astype(np.float32))
    net = TinyLocator(spec.input_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    net.train()
    for _ in range(cfg.steps):
        idx = torch.from_numpy(rng.integers(0, len(x), min(cfg.batch_size, len(x))))
        loss = nn.functional.smooth_l1_loss((net(x[idx]) - y[idx]) * scale[idx], torch.zeros_like(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _predict(net: TinyLocator, samples: list[LocatorSample], spec: RegionSpec) -> np.ndarray:
    if not samples:
        return np.zeros((0, 3))
    with torch.no_grad():
        x = torch.from_numpy(np.stack([locator_input(s.coarse, spec) for s in samples]))
        return net(x).numpy().astype(np.float64)


@dataclass
class LocatorFit:
    """The K-fold fit: the final model, out-of-fold fractions of the positives, the half-size and its figures."""

    net: TinyLocator
    oof: dict[str, np.ndarray]
    half_size_mm: tuple[float, float, float]
    stats: dict[str, Any] = field(default_factory=dict)


def _centre_mm(sample: LocatorSample, fraction: np.ndarray) -> np.ndarray:
    extent = np.array([max(m - 1, 1) * sp for m, sp in zip(sample.coarse.shape, sample.coarse_spacing)])
    return np.asarray(fraction) * extent


def fit_locator(samples: dict[str, LocatorSample], cfg: RegionTrainConfig, *, num_folds: int, seed: int = 0,
                progress: bool = True) -> LocatorFit:
    """K-fold fit on the positives, out-of-fold half-size, then the final model on every positive.

    Raises:
        ConfigError: fewer positive series with points than folds.
    """
    positives = [s for s in samples.values() if len(s.points_mm)]
    if len(positives) < max(2, num_folds):
        raise ConfigError(f"the region locator needs at least {max(2, num_folds)} positive series with localizer "
                          f"points, found {len(positives)}")
    spec = cfg.spec()
    order = np.random.default_rng(seed).permutation(len(positives))
    folds = np.empty(len(positives), int)
    folds[order] = np.arange(len(positives)) % num_folds
    oof: dict[str, np.ndarray] = {}
    for k in Progress(range(num_folds), desc="locator folds", enabled=progress):
        net = _train_one([s for s, f in zip(positives, folds) if f != k], cfg, spec, seed + 1 + k)
        held = [s for s, f in zip(positives, folds) if f == k]
        for s, frac in zip(held, _predict(net, held, spec)):
            oof[s.uid] = frac
    offsets = np.concatenate([np.abs(s.points_mm - _centre_mm(s, oof[s.uid])[None]) for s in positives])
    centre_err = np.stack([np.linalg.norm(_centre_mm(s, oof[s.uid]) - s.points_mm.mean(axis=0)) for s in positives])
    half = _half_size(offsets, cfg)
    inside = np.all(offsets <= half[None], axis=1)
    stats = {"positives": len(positives), "points": int(len(offsets)), "folds": num_folds,
             "oof_recall": round(float(inside.mean()), 4),
             "oof_centre_error_mm": {"median": round(float(np.median(centre_err)), 2),
                                     "p95": round(float(np.quantile(centre_err, 0.95)), 2),
                                     "max": round(float(centre_err.max()), 2)},
             "oof_point_offset_mm_p50": [round(float(v), 2) for v in np.median(offsets, axis=0)],
             "half_size_mm": [round(float(v), 2) for v in half]}
    log.info("region locator out of fold: %s", stats)
    final = _train_one(positives, cfg, spec, seed)
    return LocatorFit(net=final, oof=oof, half_size_mm=tuple(float(v) for v in half), stats=stats)


def _half_size(offsets: np.ndarray, cfg: RegionTrainConfig) -> np.ndarray:
    """Per-axis half-size holding at least `cfg.recall` of the (N, 3) point offsets (all three axes at once): the
    same quantile of each axis' offsets (taken at a data value), raised until the joint share is reached."""
    q = 1.0 - (1.0 - cfg.recall) / 3.0  # three axes' misses add up to at most 1 - recall
    while True:
        half = np.maximum(np.quantile(offsets, q, axis=0, method="higher") + cfg.margin_mm, cfg.min_half_mm)
        if np.mean(np.all(offsets <= half[None], axis=1)) >= cfg.recall or q >= 1.0:
            return half
        q = min(1.0, 1.0 - (1.0 - q) / 2.0) if q < 1.0 - 1e-9 else 1.0


class _LocatorGraph(nn.Module):
    def __init__(self, net: TinyLocator) -> None:
        super().__init__()
        self.net = net

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        return self.net(coarse)


def export_locator(net: TinyLocator, path: str | Path, spec: RegionSpec, examples: np.ndarray, *,
                   opset: int = 17, tolerance: float = 1e-4) -> float:
    """Write the locator's ONNX file (dynamic batch) and check torch/onnxruntime parity; returns the max diff.

    Raises:
        KitError: the export failed or onnxruntime differs from torch beyond `tolerance`.
    """
    import warnings

    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _LocatorGraph(net).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.from_numpy(examples[:1]),), str(path), input_names=[LOCATOR_INPUT],
                          output_names=[LOCATOR_OUTPUT], opset_version=opset, dynamo=False,
                          dynamic_axes={LOCATOR_INPUT: {0: "batch"}, LOCATOR_OUTPUT: {0: "batch"}})
    with torch.no_grad():
        expected = graph(torch.from_numpy(examples)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([LOCATOR_OUTPUT], {LOCATOR_INPUT: examples})[0]
    diff = float(np.max(np.abs(actual - expected)))
    if not math.isfinite(diff) or diff > tolerance:
        path.unlink(missing_ok=True)
        raise KitError(f"{path}: the locator's onnxruntime output differs from torch by {diff:.3g}")
    return diff


@dataclass
class RegionFit:
    """What the pipeline needs: each training series' box (None: the whole volume), and the manifest section."""

    boxes: dict[str, Box | None]
    spec: RegionSpec
    notes: dict[str, str] = field(default_factory=dict)


def box_for(sample: LocatorSample, fraction: np.ndarray, spec: RegionSpec) -> tuple[Box | None, str]:
    """The kernel's box rule on a training series: the locator's box, or None with the reason."""
    problem = check_box(sample.shape, sample.spacing, fraction, spec)
    if problem:
        return None, problem
    return box_from_fraction(fraction, sample.coarse.shape, sample.coarse_spacing, spec.half_size_mm), ""


def fit_region(cfg: RegionTrainConfig, folders: dict[str, Path], localizers: dict[str, list[LocalizerRow]], *,
               cache_dir: str | Path, out_dir: str | Path, num_folds: int, seed: int = 0,
               progress: bool = True) -> RegionFit:
    """Collect the coarse copies, fit the locator (K folds + final), export it to `out_dir/locator.onnx`, and give
    each training series the box the locator gives it out of fold."""
    base = cfg.spec()
    samples = collect_samples(folders, localizers, base, cache_dir, workers=cfg.workers, progress=progress)
    fit = fit_locator(samples, cfg, num_folds=num_folds, seed=seed, progress=progress)
    examples = np.stack([locator_input(s.coarse, base) for s in list(samples.values())[:4]])
    parity = export_locator(fit.net, Path(out_dir) / base.file, base, examples)
    from inference.manifest import sha256_file

    spec = cfg.spec(sha256=sha256_file(Path(out_dir) / base.file), half_size_mm=fit.half_size_mm,
                    stats={**fit.stats, "parity_max_abs_diff": parity})
    others = [s for s in samples.values() if s.uid not in fit.oof]
    fractions = dict(fit.oof)
    fractions.update(zip([s.uid for s in others], _predict(fit.net, others, spec)))
    boxes: dict[str, Box | None] = {}
    notes: dict[str, str] = {}
    for uid in folders:
        if uid not in samples:
            boxes[uid] = None
            continue
        boxes[uid], note = box_for(samples[uid], fractions[uid], spec)
        if note:
            notes[uid] = note
    log.info("region: %d training series in a box, %d on the whole volume", sum(b is not None for b in boxes.values()),
             sum(b is None for b in boxes.values()))
    return RegionFit(boxes=boxes, spec=spec, notes=notes)


class _InRegion:
    """`place_points`' prepared side for a cropped series: source canonical voxels -> the crop's prepared stack."""

    def __init__(self, region: Any, prepared: Any) -> None:
        self.region, self.prepared, self.pixels = region, prepared, prepared.pixels

    def canonical_to_prepared(self, z: float, r: float, c: float) -> tuple[float, float, float]:
        return self.prepared.canonical_to_prepared(*self.region.to_region(z, r, c))


def place_in_region(volume: Any, region: Any, prepared: Any,
                    rows: list[LocalizerRow]) -> tuple[list[Any], list[str]]:
    """`place_points` for a series cropped to `region`: points outside the crop are dropped (and noted), the
    others land in the crop's prepared stack. With `region` None: `place_points` itself."""
    if region is None:
        return place_points(volume, prepared, rows)
    kept, outside = [], 0
    for row in rows:  # one at a time: a row that cannot be placed is reported by the second call below
        canonical, _ = place_points(volume, CanonicalPlacement(volume.pixels), [row])
        if canonical and not region.holds(canonical[0].z, canonical[0].row, canonical[0].col):
            outside += 1
        else:
            kept.append(row)
    points, problems = place_points(volume, _InRegion(region, prepared), kept)
    if outside:
        problems.append(f"{outside} localizer point(s) outside the region box")
    return points, problems


def box_key(box: Box | None) -> str:
    """A short stable key of a box (part of a cached series' validity key)."""
    if box is None:
        return ""
    return "-box" + hashlib.sha256(json.dumps(box.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
