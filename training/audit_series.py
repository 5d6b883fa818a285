"""Audit series from their headers: storage, geometry, what the loader drops, localizers, per-modality summary."""
from __future__ import annotations

import logging
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydicom.uid import UID

from inference.errors import ConfigError, SeriesLoadError
from inference.labels import ID_COLUMN, PRESENT_INDEX
from inference.progress import Progress
from inference.volume import CanonicalTransform, canonical_transform

from .data import TrainTable
from .localizers import parse_coordinates

__all__ = ["SeriesAudit", "LocalizerAudit", "audit_series", "audit_folders", "check_localizers", "summarize",
           "MODALITY_ORDER"]

log = logging.getLogger(__name__)

SERIES_TIMEOUT_S = 120.0  # headers of one series in an audit worker
_STANDARD = {"axial": ((1, 0, 0), (0, 1, 0)), "coronal": ((1, 0, 0), (0, 0, -1)),
             "sagittal": ((0, 1, 0), (0, 0, -1))}  # the usual (row, column) directions of each plane, LPS
_PLANE_BY_AXIS = ("sagittal", "coronal", "axial")  # the slice normal's dominant patient axis: x, y, z
_OBLIQUE_BELOW = 0.8  # |normal . axis| under this (about 37 degrees off): "oblique"
MODALITY_ORDER = ("CTA", "MRA", "MRI T2", "MRI T1post")


@dataclass
class SeriesAudit:
    """What the loader would make of one series, from its headers (small and picklable: it leaves a worker).

    Attributes:
        uid: the folder name (SeriesInstanceUID).
        files, slices: *.dcm files, and frames in the image stack the loader would build.
        voxels, axial_slices: the stack's pixels, and the slices of its canonical (axial) volume.
        transfer_syntaxes: syntax name -> readable files.
        multiframe: a file of the stack holds more than one frame.
        plane: 'axial' | 'coronal' | 'sagittal' (dominant axis of the slice normal), 'oblique' or 'unknown'.
        flipped: image axes stored against the plane's usual display: 'rows', 'cols', or 'transposed'.
        flips: `canonical_transform(...).flips` of the stack (slice, row, col axes reversed), None when unknown.
        pixel_spacing: median (row, col) spacing of the stack in mm, None when absent.
        slice_spacing: from positions (None when they cannot tell; the loader then falls back to the tags).
        modality_tag: the most common DICOM Modality of the stack.
        dropped: (file name, or 'frames' for the stack's choice) and why it would be left out.
        notes: corrections that drop nothing (frame counts inferred, decoder warnings).
        sops: SOPInstanceUID (and file stem) -> (frames, rows, cols, frames chosen for the stack).
        error: why the series cannot be loaded at all ('' when it can).
    """

    uid: str
    files: int = 0
    slices: int = 0
    voxels: int = 0
    axial_slices: int = 0
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)
    multiframe: bool = False
    plane: str = "unknown"
    flipped: tuple[str, ...] = ()
    flips: tuple[bool, bool, bool] | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_spacing: float | None = None
    modality_tag: str = ""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sops: dict[str, tuple[int, int, int, tuple[int, ...]]] = field(default_factory=dict)
    error: str = ""


def _plane_and_flips(orientation: np.ndarray | None) -> tuple[str, tuple[str, ...], CanonicalTransform | None]:
    """(plane, in-plane axes flipped against the plane's usual display, canonical transform) of an orientation."""
    if orientation is None:
        return "unknown", (), None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    axis = int(np.argmax(np.abs(normal)))
    transform = canonical_transform(row, col)
    if abs(normal[axis]) < _OBLIQUE_BELOW:
        return "oblique", (), transform
    plane = _PLANE_BY_AXIS[axis]
    row0, col0 = (np.asarray(v, float) for v in _STANDARD[plane])
    if int(np.argmax(np.abs(row))) != int(np.argmax(np.abs(row0))):
        return plane, ("transposed",), transform
    flipped = tuple(name for name, d, d0 in (("rows", col, col0), ("cols", row, row0)) if float(d @ d0) < 0)
    return plane, flipped, transform


def audit_series(folder: str | Path) -> SeriesAudit:
    """Audit one series folder from its headers (`inference.load.plan_series`; nothing compressed is decoded).

    Args:
        folder: the series folder.
    Returns:
        A SeriesAudit; a folder that cannot be read at all gives one with `error` set (never raises for the data).
    """
    from inference.load import plan_series

    folder = Path(folder)
    with warnings.catch_warnings(record=True) as caught:  # pydicom's warnings on broken files: kept as notes
        warnings.simplefilter("always")
        try:
            plan = plan_series(folder)
        except SeriesLoadError as exc:
            return SeriesAudit(uid=folder.name, error=str(exc))
    images, stack = plan.images, plan.stack
    frames, order = stack.frames, stack.order
    chosen: dict[int, set[int]] = defaultdict(set)
    for i in order:
        chosen[int(frames.image[i])].add(int(frames.frame[i]))
    sops: dict[str, tuple[int, int, int, tuple[int, ...]]] = {}
    for k, image in enumerate(images):
        entry = (image.num_frames, image.rows, image.cols, tuple(sorted(chosen.get(k, ()))))
        sops[image.sop_instance_uid] = entry
        sops.setdefault(Path(image.path).stem, entry)  # the competition's CSV names files by SOPInstanceUID
    plane, flipped, transform = _plane_and_flips(stack.orientation)
    shape = (len(order), *frames.shapes[order[0]]) if len(order) else (0, 0, 0)
    spacing = frames.spacing[order]
    spacing = spacing[np.isfinite(spacing).all(axis=1) & (spacing > 0).all(axis=1)]
    used = [images[k] for k in sorted(chosen)]
    dropped = [(Path(path).name, reason.removeprefix(f"{Path(path).name}: ")) for path, reason in plan.failures]
    dropped += [("frames", note) for note in stack.notes if "dropped" in note]
    notes = [note for note in stack.notes if "dropped" not in note]
    notes += [f"{Path(im.path).name}: {note}" for im in images for note in im.notes]
    notes += [str(w.message).replace(f"{folder}/", "") for w in caught]
    tags = Counter(im.modality for im in used if im.modality)
    return SeriesAudit(
        uid=folder.name, files=plan.files, slices=len(order), voxels=int(np.prod(shape)),
        axial_slices=shape[transform.axes[0]] if transform else shape[0],  # the loader assumes axial without one
        transfer_syntaxes=dict(Counter(_syntax_name(im.transfer_syntax) for im in images)),
        multiframe=any(im.num_frames > 1 for im in used), plane=plane, flipped=flipped,
        flips=tuple(transform.flips) if transform else None,
        pixel_spacing=tuple(float(v) for v in np.median(spacing, axis=0)) if len(spacing) else None,
        slice_spacing=stack.slice_spacing, modality_tag=tags.most_common(1)[0][0] if tags else "",
        dropped=dropped, notes=notes, sops=sops,
        error="" if len(order) else f"no usable image in {plan.files} file(s)")


def _syntax_name(ts: str) -> str:
    return UID(ts).name.replace(" Image Compression", "") if ts else "(none)"


def audit_folders(folders: Mapping[str, Path], *, workers: int = 2, timeout_s: float = SERIES_TIMEOUT_S,
                  progress: bool = True) -> dict[str, SeriesAudit]:
    """`audit_series` over many folders in isolated worker processes (`workers` <= 0: in this process).

    Args:
        folders: series uid -> folder.
        workers: worker processes (`inference.decode_pool.isolated_processes`).
        timeout_s: seconds one series may take; a series that overruns or kills its worker gets that as `error`.
        progress: show a tqdm bar.
    Returns:
        uid -> SeriesAudit, in the order of `folders`.
    """
    audits: dict[str, SeriesAudit] = {}
    bar = Progress(total=len(folders), desc="audit", unit="series", enabled=progress)
    if workers <= 0:
        for uid, folder in folders.items():
            audits[uid] = audit_series(folder)
            bar.update(1)
    elif folders:
        from inference.decode_pool import isolated_processes

        audit = audit_series  # defined in training.audit_series: workers import it by that name
        pool = isolated_processes(workers)
        try:
            futures = {pool.schedule(audit, args=(str(folder),), timeout=timeout_s): uid
                       for uid, folder in folders.items()}
            for future in as_completed(futures):
                uid = futures[future]
                try:
                    audits[uid] = future.result()
                except Exception as exc:  # TimeoutError, ProcessExpired: the worker is gone, the series lost
                    reason = f"timed out after {timeout_s:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
                    audits[uid] = SeriesAudit(uid=uid, error=f"{type(exc).__name__}: {reason}")
                bar.update(1)
        finally:
            pool.close()
            pool.join()
    bar.close()
    return {uid: audits[uid] for uid in folders}


@dataclass
class LocalizerAudit:
    """train_localizers.csv against the audited series.

    Attributes:
        present: the file exists.
        rows, resolved: data rows, and rows that land on a slice of the loaded stack.
        problems: problem -> the rows with it (row index, series, SOPInstanceUID, coordinates, detail).
        positive_without_point: series labelled Aneurysm Present = 1 with no row at all.
        positive_without_usable_point: positive series whose every row has a problem.
    """

    present: bool = True
    rows: int = 0
    resolved: int = 0
    problems: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    positive_without_point: list[str] = field(default_factory=list)
    positive_without_usable_point: list[str] = field(default_factory=list)


def _point_problem(audit: SeriesAudit | None, sop: str, x: float, y: float, frame: int) -> tuple[str, str]:
    """('', '') for a point on a loaded slice, else (problem, detail)."""
    if audit is None:
        return "series not in train.csv", ""
    if audit.error:
        return "series not loadable", audit.error
    if sop not in audit.sops:
        return "unknown SOPInstanceUID", f"not among the {len(audit.sops)} readable files"
    frames, rows, cols, chosen = audit.sops[sop]
    if not 0 <= frame < frames:
        return "frame out of range", f"frame {frame} of a file with {frames} frame(s)"
    if not (0 <= x < cols and 0 <= y < rows):
        return "coordinates outside the image", f"({x}, {y}) outside {cols} x {rows}"
    if frame not in chosen:
        return "slice dropped by the loader", f"frame {frame} is not in the image stack"
    return "", ""


def check_localizers(path: str | Path, table: TrainTable, audits: Mapping[str, SeriesAudit], *,
                     frame_base: int = 0) -> LocalizerAudit:
    """Check that every localizer point resolves to a loaded slice, and that positive series have points.

    Args:
        path: train_localizers.csv (a missing file gives `present=False`).
        table: train.csv.
        audits: uid -> SeriesAudit.
        frame_base: the number the CSV gives the first frame in 'f' (as `training.data.read_localizers`).
    Returns:
        A LocalizerAudit.
    Raises:
        ConfigError: the file lacks the SeriesInstanceUID, SOPInstanceUID or coordinates column.
    """
    path = Path(path)
    if not path.is_file():
        return LocalizerAudit(present=False, positive_without_point=[
            u for u, v in zip(table.uids, table.labels[:, PRESENT_INDEX]) if v == 1])
    frame = pl.read_csv(path, infer_schema_length=10000)
    columns = [ID_COLUMN, "SOPInstanceUID", "coordinates"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks columns {missing}")
    report = LocalizerAudit(rows=frame.height)
    good: Counter[str] = Counter()
    seen: set[str] = set()
    for index, (uid, sop, coords) in enumerate(frame.select(columns).iter_rows()):
        uid, sop = str(uid), str(sop)
        seen.add(uid)
        try:
            x, y, f = parse_coordinates(coords, frame_base=frame_base)
            problem, detail = _point_problem(audits.get(uid), sop, x, y, f)
        except ConfigError as exc:
            problem, detail = "unparsable coordinates", str(exc)
        if problem:
            report.problems.setdefault(problem, []).append(
                {"row": index, "series": uid, "sop": sop, "coordinates": str(coords), "detail": detail})
        else:
            good[uid] += 1
            report.resolved += 1
    positives = [u for u, v in zip(table.uids, table.labels[:, PRESENT_INDEX]) if v == 1]
    report.positive_without_point = [u for u in positives if u not in seen]
    report.positive_without_usable_point = [u for u in positives if u in seen and not good[u]]
    return report


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.percentile(np.asarray(values, float), [0, 25, 50, 75, 100])
    return dict(zip(("min", "p25", "p50", "p75", "max"), (round(float(v), 4) for v in q)))


def _normal_reason(reason: str) -> str:
    """A drop reason with its numbers masked, so equal causes count together."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:160]


def _group(audits: Sequence[SeriesAudit]) -> dict[str, Any]:
    ok = [a for a in audits if not a.error]
    syntax_files: Counter[str] = Counter()
    for a in audits:
        syntax_files.update(a.transfer_syntaxes)
    reasons: dict[str, dict[str, Any]] = {}
    for a in audits:
        for name, reason in a.dropped:
            entry = reasons.setdefault(_normal_reason(reason), {"count": 0, "example": f"{a.uid}/{name}: {reason}"})
            entry["count"] += 1
    spacing = [a.pixel_spacing for a in ok if a.pixel_spacing]
    return {
        "series": len(audits), "unloadable": len(audits) - len(ok),
        "total_slices": sum(a.slices for a in ok), "slices": _quantiles([a.slices for a in ok]),
        "transfer_syntax_files": dict(syntax_files.most_common()),
        "transfer_syntax_series": dict(Counter(s for a in audits for s in a.transfer_syntaxes).most_common()),
        "multiframe": sum(a.multiframe for a in ok), "planes": dict(Counter(a.plane for a in ok).most_common()),
        "flipped": {k: sum(k in a.flipped for a in ok) for k in ("rows", "cols", "transposed")},
        "flipped_any": sum(bool(a.flipped) for a in ok),
        "pixel_spacing_mm": _quantiles([(r + c) / 2 for r, c in spacing]),
        "non_square_pixels": sum(abs(r - c) > 1e-3 for r, c in spacing),
        "slice_spacing_mm": _quantiles([a.slice_spacing for a in ok if a.slice_spacing is not None]),
        "slice_spacing_unknown": sum(a.slice_spacing is None for a in ok),
        "files_dropped": sum(name != "frames" for a in audits for name, _ in a.dropped),
        "series_with_drops": sum(bool(a.dropped) for a in audits),
        "drop_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["count"])),
        "modality_tags": dict(Counter(a.modality_tag for a in ok).most_common()),
    }


def summarize(audits: Mapping[str, SeriesAudit], table: TrainTable) -> dict[str, dict[str, Any]]:
    """Per train.csv Modality (known ones first) and 'all': counts, quantiles, syntaxes, planes, drops."""
    groups: dict[str, list[SeriesAudit]] = defaultdict(list)
    for uid, modality in zip(table.uids, table.modality):
        if uid in audits:
            groups[modality].append(audits[uid])
    names = [m for m in MODALITY_ORDER if m in groups] + sorted(set(groups) - set(MODALITY_ORDER))
    out = {m: _group(groups[m]) for m in names}
    out["all"] = _group([a for m in names for a in groups[m]])
    return out
