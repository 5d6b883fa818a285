"""Project the trainer cache's time and disk for a preset from real cache work on a sample of series."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.progress import Progress

from .audit_series import SeriesAudit
from .data import TrainTable

__all__ = ["CostProjection", "pick_sample", "project_cache_cost", "SAMPLE_TIMEOUT_S"]

SAMPLE_TIMEOUT_S = 900.0  # one sample series through the cache's real work


def pick_sample(audits: Mapping[str, SeriesAudit], table: TrainTable, n: int, *, seed: int = 0) -> list[str]:
    """Up to `n` loadable series, taken in turn from each modality (a seeded shuffle within each): deterministic."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for uid, modality in zip(table.uids, table.modality):
        if uid in audits and not audits[uid].error:
            groups[modality].append(uid)
    queues = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(groups.items())]
    picked: list[str] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def _cache_work(folder: str, cfg_dict: dict[str, Any]) -> tuple[float, int]:
    """What the cache does to one series (load in-process, preprocess, save the uint8 stack): (seconds, bytes)."""
    import tempfile

    from inference.config import PreprocessConfig, from_dict
    from inference.load import load_series
    from inference.normalize import preprocess_volume

    cfg = from_dict(PreprocessConfig, cfg_dict)
    start = time.perf_counter()
    prepared = preprocess_volume(load_series(folder, in_process=True), cfg)
    pixels = np.ascontiguousarray(prepared.pixels, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "stack.npy", pixels)
    return time.perf_counter() - start, int(pixels.nbytes)


@dataclass
class CostProjection:
    """The cache's time and disk for the whole dataset, extrapolated from a sample of real work.

    Time is extrapolated by stack voxels (decoding and resizing grow with them), disk by axial slices (the cache
    holds one image_size^2 uint8 image per slice of the canonical volume, times any slice resampling).

    Attributes:
        preset, image_size, cache_workers: the preset measured and what it sets.
        sample: uid -> {modality, voxels, axial_slices, seconds, bytes} of each measured series.
        failures: uid -> why a sample series could not be cached.
        ms_per_mvoxel, bytes_per_slice: per modality (from its sample series) and 'all'.
        total_voxels, total_slices: stack voxels and axial slices of every series projected for.
        projected_seconds: one worker; projected_wall_seconds: divided by cache_workers (ideal scaling).
        projected_bytes: the uint8 stacks (.npy payload; each series adds a 128-byte header and a small .json).
    """

    preset: str
    image_size: int
    cache_workers: int
    sample: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    ms_per_mvoxel: dict[str, float] = field(default_factory=dict)
    bytes_per_slice: dict[str, float] = field(default_factory=dict)
    total_voxels: int = 0
    total_slices: int = 0
    projected_seconds: float = 0.0
    projected_wall_seconds: float = 0.0
    projected_bytes: int = 0


def project_cache_cost(folders: Mapping[str, Path], sample: Sequence[str], audits: Mapping[str, SeriesAudit],
                       modality_of: Mapping[str, str], *, config: Any, preset: str = "",
                       timeout_s: float = SAMPLE_TIMEOUT_S, progress: bool = True) -> CostProjection:
    """Time the cache's real work on `sample` (one isolated worker, after one untimed warm-up) and extrapolate.

    Args:
        folders: uid -> folder of every series to project for (loadable ones).
        sample: the uids measured (see `pick_sample`).
        audits: uid -> SeriesAudit (voxels and axial slices of each series).
        modality_of: uid -> train.csv Modality (each modality's rates apply to its series, where sampled).
        config: a `training.config.TrainConfig` (its preprocess section and cache.workers).
        preset: the preset's name, for the report.
        timeout_s: seconds one sample series may take.
        progress: show a tqdm bar.
    Returns:
        A CostProjection (no rates, zero projections when no sample series could be measured).
    """
    from inference.config import to_dict
    from inference.decode_pool import isolated_processes

    out = CostProjection(preset=preset, image_size=config.preprocess.image_size, cache_workers=config.cache.workers)
    work = _cache_work
    cfg_dict = to_dict(config.preprocess)
    pool = isolated_processes(1)
    try:
        if sample:  # imports and decoder plugins load once in a long-lived cache worker: not timed
            pool.schedule(work, args=(str(folders[sample[0]]), cfg_dict), timeout=timeout_s).exception()
        for uid in Progress(sample, desc="cache sample", unit="series", enabled=progress):
            try:
                seconds, size = pool.schedule(work, args=(str(folders[uid]), cfg_dict), timeout=timeout_s).result()
            except Exception as exc:  # the series' own error, TimeoutError, ProcessExpired
                out.failures[uid] = f"{type(exc).__name__}: {exc}"
                continue
            out.sample[uid] = {"modality": modality_of[uid], "voxels": audits[uid].voxels,
                               "axial_slices": audits[uid].axial_slices, "seconds": round(seconds, 4), "bytes": size}
    finally:
        pool.close()
        pool.join()
    measured = [m for m in out.sample.values() if m["voxels"] and m["axial_slices"]]
    for key in sorted({m["modality"] for m in measured}) + (["all"] if measured else []):
        group = [m for m in measured if key in ("all", m["modality"])]
        out.ms_per_mvoxel[key] = 1e9 * sum(m["seconds"] for m in group) / sum(m["voxels"] for m in group)
        out.bytes_per_slice[key] = sum(m["bytes"] for m in group) / sum(m["axial_slices"] for m in group)
    for uid in folders if measured else ():
        key = modality_of[uid] if modality_of[uid] in out.ms_per_mvoxel else "all"
        audit = audits[uid]
        out.total_voxels += audit.voxels
        out.total_slices += audit.axial_slices
        out.projected_seconds += out.ms_per_mvoxel[key] * audit.voxels / 1e9
        out.projected_bytes += round(out.bytes_per_slice[key] * audit.axial_slices)
    out.projected_wall_seconds = out.projected_seconds / max(out.cache_workers, 1)
    return out
