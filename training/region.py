"""The region locator's training: coarse copies and localizer points, K-fold fit, out-of-fold box size, ONNX.

The locator learns from what the real data offers: the localizer points of positive series and their location
names (negatives have no point and do not train it). A tiny CNN reads the coarse copy's six projections
(`inference.region.locator_input`) and regresses a reference point of the circle of Willis as a fraction of the
extent along each canonical axis; 13 learned site offsets (mm, one per location, mean zero) carry it to each
location, and the loss is each localizer point's distance from its own location's site. A series' points thus pin
down the reference even though they lie at different sites (the mean of the points, regressed directly, is off by
the spread of the sites: 20-25 mm on the phantom). The box is then set from the out-of-fold offsets between the
points and the predicted reference (per axis and side, the quantile that keeps `recall` of them inside, plus a
margin): it holds every site and the locator's own error, and is not centred on the reference (the sites span
more below it than above). The 2.5D model then trains inside the boxes the locator gives each training series
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from inference.errors import ConfigError, KitError
from inference.labels import LOCATION_LABELS, LR_SWAP_INDEX
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

__all__ = ["LocatorSample", "LocatorFit", "TinyLocator", "collect_samples", "fit_locator", "view", "site_loss",
           "export_locator", "fit_region", "RegionFit", "CanonicalPlacement", "place_in_region", "box_key", "box_for",
           "write_boxes", "read_boxes", "write_locator_section", "bundle_locator"]

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
    locations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) LOCATION_LABELS indices

    def __post_init__(self) -> None:
        self.points_mm = np.asarray(self.points_mm, dtype=np.float64).reshape(-1, 3)
        self.locations = np.asarray(self.locations, dtype=np.int64).reshape(-1)
        if len(self.locations) != len(self.points_mm):
            raise ValueError(f"series {self.uid}: {len(self.points_mm)} points but {len(self.locations)} locations")

    @property
    def extent_mm(self) -> np.ndarray:
        """The coarse copy's extent along each axis (mm): what a fraction of 1 means."""
        return np.array([max(m - 1, 1) * sp for m, sp in zip(self.coarse.shape, self.coarse_spacing)])


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
    locations = np.array([p.location for p in points], dtype=np.int64)
    path = Path(out) / f"{uid}.npz"
    tmp = Path(out) / f".{uid}.{os.getpid()}.npz"
    np.savez(tmp, coarse=coarse, coarse_spacing=np.asarray(coarse_spacing), shape=np.asarray(volume.pixels.shape),
             spacing=spacing, points_mm=mm, locations=locations)
    os.replace(tmp, path)
    return str(path)


def _load_sample(uid: str, path: Path) -> LocatorSample:
    with np.load(path) as data:
        return LocatorSample(uid=uid, coarse=data["coarse"], coarse_spacing=tuple(data["coarse_spacing"].tolist()),
                             shape=tuple(int(v) for v in data["shape"]), spacing=tuple(data["spacing"].tolist()),
                             points_mm=data["points_mm"].reshape(-1, 3), locations=data["locations"])


def collect_samples(folders: dict[str, Path], localizers: dict[str, list[LocalizerRow]], spec: RegionSpec,
                    cache_dir: str | Path, *, workers: int = 2, progress: bool = True) -> dict[str, LocatorSample]:
    """Every series' coarse copy and points, cached under `cache_dir/locator-<hash>/` (a failed series is skipped,
    as in the volume cache)."""
    key = json.dumps({"version": 2, "spec": [spec.input_size, spec.max_slices, spec.max_side, list(spec.ct_window),
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


# a left/right mirror of the volume swaps each location with its partner
_MIRRORED_LOCATION = np.array(LR_SWAP_INDEX[:len(LOCATION_LABELS)], dtype=np.int64)


class TinyLocator(nn.Module):
    """Six 0..1 projections (6, S, S) -> the reference point's three fractions (no sigmoid: it may lie outside).

    `site_offsets` (13, 3, in cm; trained, not exported) carry the reference to each location's site: the loss of a
    localizer point is its distance from its own site. The ONNX graph is the reference alone.
    """

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        layers, channels = [], 6
        for width in (16, 32, 48, 64):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        cells = max(1, size // 16)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * cells * cells, 64), nn.ReLU(), nn.Linear(64, 3))
        self.site_offsets = nn.Parameter(torch.zeros(len(LOCATION_LABELS), 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) + 0.5

    def sites_mm(self) -> torch.Tensor:
        """(13, 3) each location's offset from the reference (mm), mean zero (the reference is the sites' centre)."""
        return (self.site_offsets - self.site_offsets.mean(dim=0, keepdim=True)) * 10.0


@dataclass
class _Views:
    """Augmented views of the positives: inputs, and per view its points (mm from the view's origin), their
    locations, a mask of the padded points and the view's extent (mm)."""

    inputs: np.ndarray  # (V, 6, S, S)
    points: np.ndarray  # (V, P, 3)
    locations: np.ndarray  # (V, P)
    mask: np.ndarray  # (V, P)
    extents: np.ndarray  # (V, 3)


def view(sample: LocatorSample, lo: np.ndarray, hi: np.ndarray,
         mirror: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coarse copy's voxels [lo, hi) (mirrored left/right if asked: the locations swap with it) and its points.
    Returns (crop, points mm from the crop's origin, locations, extent mm)."""
    spacing = np.asarray(sample.coarse_spacing, dtype=np.float64)
    crop = sample.coarse[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    extent = np.maximum(np.array(crop.shape) - 1, 1) * spacing
    points, locations = sample.points_mm - np.asarray(lo) * spacing, sample.locations
    if mirror:
        crop, points = crop[:, :, ::-1], points.copy()
        points[:, 2] = extent[2] - points[:, 2]
        locations = _MIRRORED_LOCATION[locations]
    return np.ascontiguousarray(crop), points, locations, extent


def _augmented(sample: LocatorSample, rng: np.random.Generator, spec: RegionSpec,
               copies: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`copies` views of one positive: the whole copy, then random sub-crops holding the points' centre (a shorter
    or narrower acquisition), every second one mirrored left/right.
    Returns [(locator input, points mm from the view's origin, locations, extent mm)]."""
    shape = sample.coarse.shape
    centre = sample.points_mm.mean(axis=0) / np.asarray(sample.coarse_spacing)  # coarse voxels
    views = []
    for j in range(copies):
        lo, hi = np.zeros(3, int), np.array(shape)
        if j > 0:
            for a in range(3):
                n = shape[a]
                keep = int(round(n * rng.uniform(0.6, 1.0)))
                c = int(np.clip(round(centre[a]), 0, n - 1))
                start_min, start_max = max(0, c - keep + 2), min(c - 1, n - keep)
                start = int(rng.integers(start_min, start_max + 1)) if start_max >= start_min else 0
                lo[a], hi[a] = start, min(n, start + keep)
        crop, points, locations, extent = view(sample, lo, hi, mirror=j % 2 == 1)
        views.append((locator_input(crop, spec), points, locations, extent))
    return views


def _stack_views(views: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> _Views:
    width = max(1, max(len(v[1]) for v in views))
    points = np.zeros((len(views), width, 3), np.float32)
    locations = np.zeros((len(views), width), np.int64)
    mask = np.zeros((len(views), width), np.float32)
    for i, (_, p, loc, _) in enumerate(views):
        points[i, :len(p)], locations[i, :len(p)], mask[i, :len(p)] = p, loc, 1.0
    return _Views(inputs=np.stack([v[0] for v in views]), points=points, locations=locations, mask=mask,
                  extents=np.stack([v[3] for v in views]).astype(np.float32))


def site_loss(net: TinyLocator, x: torch.Tensor, points: torch.Tensor, locations: torch.Tensor, mask: torch.Tensor,
              extents: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (in cm) of each localizer point's distance from its location's site (reference + site offset)."""
    reference = net(x) * extents  # (B, 3) mm from the view's origin
    sites = reference[:, None, :] + net.sites_mm()[locations]  # (B, P, 3)
    per_point = nn.functional.smooth_l1_loss(sites / 10.0, points / 10.0, reduction="none").sum(dim=-1)
    return (per_point * mask).sum() / mask.sum().clamp(min=1.0)


def _train_one(samples: list[LocatorSample], cfg: RegionTrainConfig, spec: RegionSpec, seed: int) -> TinyLocator:
    """One locator fitted on these positives (`site_loss`; the site offsets learn 20x faster than the network)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    views = _stack_views([v for s in samples for v in _augmented(s, rng, spec, cfg.augment_copies)])
    x, points, locations = (torch.from_numpy(a) for a in (views.inputs, views.points, views.locations))
    mask, extents = torch.from_numpy(views.mask), torch.from_numpy(views.extents)
    net = TinyLocator(spec.input_size)
    others = [p for name, p in net.named_parameters() if name != "site_offsets"]
    opt = torch.optim.AdamW([{"params": others, "lr": cfg.lr},
                             {"params": [net.site_offsets], "lr": cfg.lr * 20.0, "weight_decay": 0.0}],
                            lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.lr * 20.0], total_steps=cfg.steps,
                                                pct_start=0.1)
    net.train()
    for _ in range(cfg.steps):
        idx = torch.from_numpy(rng.integers(0, len(x), min(cfg.batch_size, len(x))))
        loss = site_loss(net, x[idx], points[idx], locations[idx], mask[idx], extents[idx])
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
    """The K-fold fit: the final model, out-of-fold fractions of the positives, the box (half-size and the shift
    of its centre from the reference, mm) and its figures."""

    net: TinyLocator
    oof: dict[str, np.ndarray]
    half_size_mm: tuple[float, float, float]
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stats: dict[str, Any] = field(default_factory=dict)


def _reference_mm(sample: LocatorSample, fraction: np.ndarray) -> np.ndarray:
    return np.asarray(fraction) * sample.extent_mm


def fit_locator(samples: dict[str, LocatorSample], cfg: RegionTrainConfig, *, num_folds: int, seed: int = 0,
                progress: bool = True) -> LocatorFit:
    """K-fold fit on the positives, the out-of-fold box, then the final model on every positive.

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
    site_errors = []
    for k in Progress(range(num_folds), desc="locator folds", enabled=progress):
        net = _train_one([s for s, f in zip(positives, folds) if f != k], cfg, spec, seed + 1 + k)
        held = [s for s, f in zip(positives, folds) if f == k]
        sites = net.sites_mm().detach().numpy().astype(np.float64)
        for s, frac in zip(held, _predict(net, held, spec)):
            oof[s.uid] = frac
            site_errors.append(np.linalg.norm(s.points_mm - _reference_mm(s, frac)[None] - sites[s.locations], axis=1))
    offsets = np.concatenate([s.points_mm - _reference_mm(s, oof[s.uid])[None] for s in positives])
    lo, hi = _box_sides(offsets, cfg)
    half, shift = (hi - lo) / 2.0, (hi + lo) / 2.0
    inside = np.all((offsets >= shift - half) & (offsets <= shift + half), axis=1)
    errors = np.concatenate(site_errors)
    final = _train_one(positives, cfg, spec, seed)
    stats = {"positives": len(positives), "points": int(len(offsets)), "folds": num_folds,
             "oof_recall": round(float(inside.mean()), 4),
             "oof_site_error_mm": {"median": round(float(np.median(errors)), 2),
                                   "p95": round(float(np.quantile(errors, 0.95)), 2),
                                   "max": round(float(errors.max()), 2)},
             "half_size_mm": [round(float(v), 2) for v in half], "shift_mm": [round(float(v), 2) for v in shift],
             "sites_mm": {name: [round(float(v), 1) for v in row]
                          for name, row in zip(LOCATION_LABELS, final.sites_mm().detach().numpy())}}
    log.info("region locator out of fold: %s", {k: v for k, v in stats.items() if k != "sites_mm"})
    return LocatorFit(net=final, oof=oof, half_size_mm=tuple(float(v) for v in half),  # type: ignore[arg-type]
                      shift_mm=tuple(float(v) for v in shift), stats=stats)  # type: ignore[arg-type]


def _box_sides(offsets: np.ndarray, cfg: RegionTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (low, high) offsets from the reference holding at least `cfg.recall` of the (N, 3) point offsets (all
    three axes at once), each widened by the margin and to at least 2 x min_half_mm: the same quantile on each side
    of each axis (taken at a data value), raised until the joint share is reached."""
    q = 1.0 - (1.0 - cfg.recall) / 6.0  # six sides' misses add up to at most 1 - recall
    while True:
        lo = np.quantile(offsets, 1.0 - q, axis=0, method="lower") - cfg.margin_mm
        hi = np.quantile(offsets, q, axis=0, method="higher") + cfg.margin_mm
        grow = np.maximum(0.0, 2.0 * cfg.min_half_mm - (hi - lo)) / 2.0
        lo, hi = lo - grow, hi + grow
        if np.mean(np.all((offsets >= lo[None]) & (offsets <= hi[None]), axis=1)) >= cfg.recall or q >= 1.0:
            return lo, hi
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


def write_locator_section(folder: str | Path, spec: RegionSpec) -> None:
    """Name the locator in the manifest of the bundle in `folder`: its region section (file, hash, box)."""
    from inference.manifest import Manifest

    manifest = Manifest.read(folder, verify=False)
    replace(manifest, region=spec.to_dict()).write(folder)


def bundle_locator(folder: str | Path, net: TinyLocator, spec: RegionSpec, examples: np.ndarray) -> RegionSpec:
    """Export `net` into the bundle in `folder` and name it in the manifest (a full-frame bundle becomes a region
    one); returns the spec with the locator's hash. The bundle is read back with every hash checked."""
    from inference.manifest import Manifest, sha256_file

    folder = Path(folder)
    export_locator(net, folder / spec.file, spec, examples)
    spec = replace(spec, sha256=sha256_file(folder / spec.file))
    write_locator_section(folder, spec)
    Manifest.read(folder, verify=True)
    return spec


BOXES_FILE = "boxes.json"


def write_boxes(folder: str | Path, boxes: dict[str, Box | None]) -> Path:
    """Write each training series' box to `folder/boxes.json` (uid -> box or null), atomically.

    Under torchrun only the main rank fits the locator; the other ranks read its boxes back (`read_boxes`) to find
    the series it cached inside them (a cached entry's validity key holds its box).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BOXES_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({uid: None if box is None else box.to_dict() for uid, box in boxes.items()},
                              sort_keys=True))
    os.replace(tmp, folder / BOXES_FILE)
    return folder / BOXES_FILE


def read_boxes(folder: str | Path) -> dict[str, Box | None]:
    """The boxes `write_boxes` left in `folder`: uid -> its box (None: the whole volume).

    Raises:
        KitError: no readable boxes file there (the main rank has not fitted the region into this folder).
    """
    path = Path(folder) / BOXES_FILE
    try:
        data = json.loads(path.read_text())
        return {uid: None if box is None else Box.from_dict(box) for uid, box in data.items()}
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError, KitError) as exc:
        raise KitError(f"{path}: the region boxes of the main rank are unreadable: {type(exc).__name__}: {exc}") \
            from exc


def box_for(sample: LocatorSample, fraction: np.ndarray, spec: RegionSpec) -> tuple[Box | None, str]:
    """The kernel's box rule on a training series: the locator's box, or None with the reason."""
    problem = check_box(sample.shape, sample.spacing, fraction, spec)
    if problem:
        return None, problem
    return box_from_fraction(fraction, sample.coarse.shape, sample.coarse_spacing, spec.half_size_mm,
                             spec.shift_mm), ""


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
                    shift_mm=fit.shift_mm, stats={**fit.stats, "parity_max_abs_diff": parity})
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
