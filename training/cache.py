"""Series -> preprocessed uint8 volume cache (the kernel's own preprocess_volume), parallel, resumable."""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.config import PreprocessConfig, config_hash, to_dict
from inference.progress import Progress

from .localizers import LocalizerRow, PreparedPoint, place_points, rows_hash

__all__ = ["CacheEntry", "CacheReport", "cache_dir_for", "build_cache", "cached_entries", "load_pixels"]

log = logging.getLogger(__name__)

SERIES_TIMEOUT_S = 1800.0  # one series in a cache worker (a decoder stuck in a loop loses its series, not the run)
_PLACEMENT_VERSION = 2  # bump when localizer placement changes, so cached points are recomputed


def _points_key(rows: list[LocalizerRow], box: dict[str, Any] | None = None) -> str:
    key = f"{rows_hash(rows)}-v{_PLACEMENT_VERSION}"
    return key if box is None else f"{key}-box{json.dumps(box, sort_keys=True)}"  # issue 21: region box


@dataclass(frozen=True)
class CacheEntry:
    """One cached series: its uint8 stack file and what was learnt while preparing it."""

    uid: str
    pixels_path: str
    modality: str
    shape: tuple[int, int, int]
    points: tuple[PreparedPoint, ...]
    notes: tuple[str, ...] = ()  # localizers that could not be placed, files the loader dropped


@dataclass
class CacheReport:
    """The cache after `build_cache`: usable entries and the series that failed (uid -> reason)."""

    root: Path
    entries: dict[str, CacheEntry] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def cache_dir_for(cache_dir: str | Path, cfg: PreprocessConfig) -> Path:
    """The cache folder of one preprocessing config: a config change never reuses stale volumes."""
    return Path(cache_dir) / f"preprocess-{config_hash(cfg)}"


def _entry_from_meta(root: Path, meta: dict[str, Any]) -> CacheEntry:
    return CacheEntry(uid=meta["uid"], pixels_path=str(root / f"{meta['uid']}.npy"), modality=meta["modality"],
                      shape=tuple(meta["shape"]), points=tuple(PreparedPoint(**p) for p in meta["points"]),
                      notes=tuple(meta.get("notes", ())))


def _read_valid(root: Path, uid: str, loc_hash: str | None) -> CacheEntry | None:
    """The cached entry of `uid`, or None when it is missing, unreadable or built with other localizers
    (`loc_hash` None: any localizers)."""
    meta_path, pixels_path = root / f"{uid}.json", root / f"{uid}.npy"
    if not (meta_path.is_file() and pixels_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if loc_hash is not None and meta.get("localizer_hash") != loc_hash:
            return None
        return _entry_from_meta(root, meta)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def cached_entries(root: str | Path) -> dict[str, CacheEntry]:
    """Every readable entry of one cache folder (`cache_dir_for`), whatever localizers it was built with: for
    looking at a finished run's series (benchmarks), never for training (build_cache checks the localizers)."""
    root = Path(root)
    entries = {path.stem: _read_valid(root, path.stem, None) for path in sorted(root.glob("*.npy"))}
    return {uid: entry for uid, entry in entries.items() if entry is not None}


def _cache_one(folder: str, uid: str, rows: list[LocalizerRow], cfg_dict: dict[str, Any], root: str,
               in_process: bool = False, box: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load, preprocess (inference.normalize), place localizers, write pixels + meta atomically.

    Inside a cache worker process `in_process` is True: the worker is isolated already (a decoder crash costs
    its series), and a decoding pool per worker would multiply processes.
    """
    from inference.config import from_dict
    from inference.load import load_series
    from inference.normalize import preprocess_volume

    cfg = from_dict(PreprocessConfig, cfg_dict)
    volume = load_series(folder, in_process=in_process)
    if box is None:
        prepared = preprocess_volume(volume, cfg)
        points, problems = place_points(volume, prepared, rows)
    else:  # issue 21: the series cropped to its region box by the kernel's own crop (inference.region)
        from inference.region import Box, prepare_region

        from .region import place_in_region

        region, prepared = prepare_region(volume, Box.from_dict(box), cfg)
        points, problems = place_in_region(volume, region, prepared, rows)
    out = Path(root)
    tmp = out / f".{uid}.{os.getpid()}.npy"
    np.save(tmp, np.ascontiguousarray(prepared.pixels, dtype=np.uint8))
    os.replace(tmp, out / f"{uid}.npy")
    meta = {"uid": uid, "modality": str(volume.modality), "shape": list(prepared.pixels.shape),
            "points": [asdict(p) for p in points], "localizer_hash": _points_key(rows, box),
            "notes": problems + [f"dropped: {d}" for d in getattr(volume, "dropped", [])]}
    tmp_meta = out / f".{uid}.{os.getpid()}.json"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, out / f"{uid}.json")
    return meta


def build_cache(folders: dict[str, Path], localizers: dict[str, list[LocalizerRow]], cfg: PreprocessConfig,
                cache_dir: str | Path, *, workers: int = 2, progress: bool = True,
                read_only: bool = False, boxes: dict[str, Any] | None = None) -> CacheReport:
    """Cache every series once (skipping those already cached with the same localizers) and report failures.

    Args:
        folders: series uid -> DICOM folder.
        localizers: series uid -> its localizer rows (missing = none).
        cfg: preprocessing config (its hash names the cache folder).
        cache_dir: cache root.
        workers: worker processes (<= 1: in this process, compressed files decoded by the loader's pool). In
            worker processes a series that crashes or hangs its worker (over SERIES_TIMEOUT_S) costs that series.
        progress: show a tqdm bar.
        read_only: only collect what is cached (other torchrun ranks, after rank 0 built the cache).
        boxes: series uid -> its region box (`inference.region.Box`; None or missing: the whole volume).
    Returns:
        A CacheReport; failures are also written to `<root>/failures.json`. A failed series is skipped, not fatal.
    """
    root = cache_dir_for(cache_dir, cfg)
    report = CacheReport(root=root)
    box_of = {u: b.to_dict() for u, b in (boxes or {}).items() if b is not None}  # issue 21: region boxes
    if read_only:
        for uid, rows in ((u, localizers.get(u, [])) for u in folders):
            entry = _read_valid(root, uid, _points_key(rows, box_of.get(uid)))
            if entry is not None:
                report.entries[uid] = entry
        return report
    root.mkdir(parents=True, exist_ok=True)
    (root / "preprocess.json").write_text(json.dumps(to_dict(cfg), indent=2))
    todo = []
    for uid, folder in folders.items():
        rows = localizers.get(uid, [])
        entry = _read_valid(root, uid, _points_key(rows, box_of.get(uid)))
        if entry is None:
            todo.append((str(folder), uid, rows))
        else:
            report.entries[uid] = entry
    if todo:
        log.info("caching %d series (%d already cached) in %s", len(todo), len(report.entries), root)
    cfg_dict = to_dict(cfg)
    bar = Progress(total=len(todo), desc="cache", unit="series", enabled=progress and bool(todo))

    def _done(uid: str, meta: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:
            report.failures[uid] = f"{type(error).__name__}: {error}"
            log.warning("series %s skipped: %s", uid, report.failures[uid])
        else:
            report.entries[uid] = _entry_from_meta(root, meta)
        bar.update(1)

    if workers <= 1:
        for folder, uid, rows in todo:
            try:
                _done(uid, _cache_one(folder, uid, rows, cfg_dict, str(root), box=box_of.get(uid)), None)
            except Exception as exc:  # one bad series must not stop the cache
                _done(uid, None, exc)
        from inference.decode_pool import shared_pool

        shared_pool().close()  # the loader's decoding workers must not outlive the cache
    elif todo:
        from inference.decode_pool import isolated_processes

        # fork+exec workers (the parent may hold torch threads: never fork it); a series that kills its worker
        # or overruns costs that series, not the cache
        pool = isolated_processes(workers)
        try:
            futures = {pool.schedule(_cache_one, args=(folder, uid, rows, cfg_dict, str(root), True,
                                                       box_of.get(uid)),
                                     timeout=SERIES_TIMEOUT_S): uid for folder, uid, rows in todo}
            for future in as_completed(futures):
                try:
                    _done(futures[future], future.result(), None)
                except Exception as exc:  # TimeoutError, ProcessExpired, or the series' own error
                    _done(futures[future], None, exc)
        finally:
            pool.close()
            pool.join()
    bar.close()
    (root / "failures.json").write_text(json.dumps(report.failures, indent=2, sort_keys=True))
    if report.failures:
        log.warning("%d series failed to cache; see %s", len(report.failures), root / "failures.json")
    return report


def load_pixels(entry: CacheEntry, *, mmap: bool = True) -> np.ndarray:
    """The cached uint8 (Z, S, S) stack (memory-mapped by default, so many series fit)."""
    return np.load(entry.pixels_path, mmap_mode="r" if mmap else None)
