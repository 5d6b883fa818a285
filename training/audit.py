"""Audit a competition data folder before training: `python -m training.audit --data-dir DATA`.

Reads headers only (in worker processes, with a progress bar; nothing compressed is decoded) and reports per
modality what the data holds (storage, geometry, what the loader would drop and why), checks the localizers, and
projects the cache's time and disk for a preset from real cache work on a few series, and counts the vessel masks
(segmentations/), checking that each lies on its series' DICOM geometry. The pieces: `training.audit_series`
(the per-series audit, localizers, summary), `training.audit_cost` (the projection), `training.audit_masks`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.errors import ConfigError

from .audit_cost import CostProjection, pick_sample, project_cache_cost
from .audit_masks import MaskAudit, audit_masks
from .audit_series import (
    LocalizerAudit,
    SeriesAudit,
    audit_folders,
    check_localizers,
    summarize,
)
from .data import read_train_table, series_folder

__all__ = ["AuditReport", "run_audit", "format_report", "main"]

log = logging.getLogger(__name__)


@dataclass
class AuditReport:
    """Everything the audit found; `to_dict()` is the JSON report."""

    data_dir: str
    seconds: float
    series: dict[str, SeriesAudit]
    modalities: dict[str, dict[str, Any]]
    localizers: LocalizerAudit
    projection: CostProjection | None = None
    masks: MaskAudit | None = None

    def to_dict(self) -> dict[str, Any]:
        series = [{k: v for k, v in asdict(a).items() if k != "sops"} for a in self.series.values()]
        return {"data_dir": self.data_dir, "seconds": round(self.seconds, 2), "modalities": self.modalities,
                "localizers": asdict(self.localizers),
                "masks": None if self.masks is None else asdict(self.masks),
                "projection": None if self.projection is None else asdict(self.projection), "series": series}


def _resolve_preset(path: str | Path) -> Path:
    path = Path(path)
    beside = Path(__file__).resolve().parents[1] / path
    return beside if not path.is_absolute() and not path.exists() and beside.exists() else path


def run_audit(data_dir: str | Path, *, config_path: str | Path | None = "configs/competition.yaml", sample: int = 8,
              workers: int = 2, frame_base: int = 0, progress: bool = True) -> AuditReport:
    """Audit every series of train.csv, its localizers, and project the cache's cost for a preset.

    Args:
        data_dir: the competition layout (train.csv, train_localizers.csv, series/<uid>/).
        config_path: the trainer preset whose cache is projected (relative paths also tried beside the kit).
        sample: series measured for the projection (0: no projection).
        workers: audit worker processes (0: in this process).
        frame_base: the CSV's number for a file's first frame ('f').
        progress: show tqdm bars.
    Returns:
        An AuditReport.
    Raises:
        ConfigError: an unreadable layout (train.csv missing or lacking columns, no series/ folder, a localizer
            file without its columns) or preset.
    """
    from .config import load_config

    started = time.perf_counter()
    data_dir = Path(data_dir)
    table = read_train_table(data_dir / "train.csv")
    if not (data_dir / "series").is_dir():
        raise ConfigError(f"{data_dir / 'series'} is not a folder: --data-dir must hold series/<SeriesInstanceUID>/")
    config = load_config(_resolve_preset(config_path)) if sample > 0 and config_path else None
    folders = {uid: series_folder(data_dir, uid) for uid in table.uids}
    audits = audit_folders(folders, workers=workers, progress=progress)
    localizers = check_localizers(data_dir / "train_localizers.csv", table, audits, frame_base=frame_base)
    report = AuditReport(str(data_dir), 0.0, audits, summarize(audits, table), localizers)
    report.masks = audit_masks(data_dir, folders, dict(zip(table.uids, table.modality)))
    if config is not None:
        loadable = {uid: f for uid, f in folders.items() if not audits[uid].error}
        report.projection = project_cache_cost(loadable, pick_sample(audits, table, sample), audits,
                                               dict(zip(table.uids, table.modality)), config=config,
                                               preset=str(config_path), progress=progress)
    report.seconds = time.perf_counter() - started
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _span(q: dict[str, float] | None, keys: Sequence[str] = ("min", "p50", "max")) -> str:
    return "-" if q is None else "/".join(_fmt(q[k]) for k in keys)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def format_report(report: AuditReport, *, examples: int = 3) -> str:
    """The terminal table: one column per modality and 'all', then drops, localizers and the cache projection."""
    groups = report.modalities
    overall = groups["all"]
    rows: list[tuple[str, list[str]]] = [
        ("series", [str(g["series"]) for g in groups.values()]),
        ("not loadable", [str(g["unloadable"]) for g in groups.values()]),
        ("slices min/25/50/75/max", [_span(g["slices"], ("min", "p25", "p50", "p75", "max")) for g in groups.values()]),
        ("multi-frame", [f"{g['multiframe']} ({g['multiframe'] / max(g['series'] - g['unloadable'], 1):.0%})"
                         for g in groups.values()])]
    rows += [(f"plane {p}", [str(g["planes"].get(p, 0)) for g in groups.values()]) for p in overall["planes"]]
    rows += [(f"flipped {k}", [str(g["flipped"][k]) for g in groups.values()]) for k in ("rows", "cols", "transposed")
             if k != "transposed" or overall["flipped"][k]]
    rows += [("pixel spacing mm min/50/max", [_span(g["pixel_spacing_mm"]) for g in groups.values()]),
             ("slice spacing mm min/50/max", [_span(g["slice_spacing_mm"]) for g in groups.values()])]
    if overall["slice_spacing_unknown"]:
        rows.append(("slice spacing unknown", [str(g["slice_spacing_unknown"]) for g in groups.values()]))
    rows += [("files dropped", [str(g["files_dropped"]) for g in groups.values()]),
             ("series with drops", [str(g["series_with_drops"]) for g in groups.values()])]
    rows += [(f"{name} (series)", [str(g["transfer_syntax_series"].get(name, 0)) for g in groups.values()])
             for name in overall["transfer_syntax_series"]]
    label_w = max(len(label) for label, _ in rows) + 2
    col_w = max(max(len(v) for _, values in rows for v in values), *(len(m) for m in groups)) + 2
    lines = [f"Data audit of {report.data_dir}: {overall['series']} series in train.csv, {overall['unloadable']} "
             f"not loadable ({report.seconds:.1f} s)", "",
             " " * label_w + "".join(m.rjust(col_w) for m in groups)]
    lines += [label.ljust(label_w) + "".join(v.rjust(col_w) for v in values) for label, values in rows]
    if overall["drop_reasons"]:
        lines += ["", "Drop reasons (a file, or frames the stack choice left out):"]
        lines += [f"  {r['count']:5d}  {reason}\n         e.g. {r['example'][:150]}"
                  for reason, r in list(overall["drop_reasons"].items())[:8]]
    errors = [(a.uid, a.error) for a in report.series.values() if a.error]
    if errors:
        lines += ["", f"Series that cannot be loaded: {len(errors)}"]
        lines += [f"  {uid}: {error[:150]}" for uid, error in errors[:examples]]
    loc = report.localizers
    lines += ["", "Localizers: train_localizers.csv missing" if not loc.present else
              f"Localizers: {loc.rows} rows, {loc.resolved} resolve to a loaded slice"]
    for problem, items in loc.problems.items():
        lines.append(f"  {problem}: {len(items)}")
        lines += [f"      row {i['row']} {i['series']} {i['sop']} {i['coordinates']} {i['detail']}"
                  for i in items[:examples]]
    for name, uids in (("positive without a point", loc.positive_without_point),
                       ("positive without a usable point", loc.positive_without_usable_point)):
        lines.append(f"  {name}: {len(uids)}" + (f"  e.g. {', '.join(uids[:examples])}" if uids else ""))
    lines += _mask_lines(report.masks, examples)
    p = report.projection
    if p is not None:
        lines += ["", f"Cache projection for {p.preset} (image_size {p.image_size}): {len(p.sample)} sample series "
                  f"loaded + preprocessed + saved in one worker, {len(p.failures)} failed"]
        for key, rate in p.ms_per_mvoxel.items():
            n = sum(1 for m in p.sample.values() if key in ("all", m["modality"]))
            lines.append(f"  {key:<12} {rate:8.1f} ms per million stack voxels  "
                         f"{p.bytes_per_slice[key] / 1024:8.1f} KiB per axial slice  ({n} series)")
        if p.ms_per_mvoxel:
            lines.append(f"  -> {p.total_voxels / 1e9:.2f} G voxels: {_duration(p.projected_seconds)} on one worker, "
                         f"{_duration(p.projected_wall_seconds)} with cache.workers={p.cache_workers} (if it scales "
                         f"linearly); {p.total_slices} axial slices: {p.projected_bytes / 2**30:.2f} GiB of .npy")
    return "\n".join(lines)


def _mask_lines(masks: MaskAudit | None, examples: int) -> list[str]:
    if masks is None:
        return []
    if not masks.found:
        return ["", "Vessel masks: none (no segmentations/<uid>/<uid>_cowseg.nii)"]
    share = masks.found / max(masks.train_series, 1)
    lines = ["", f"Vessel masks: {masks.found} found ({share:.1%} of the train series), {masks.usable} usable "
                 f"(on their series' DICOM grid): " + ", ".join(f"{m} {n}" for m, n in masks.by_modality.items()),
             "  usable masks holding each label: " + " ".join(f"{k}:{v}" for k, v in masks.label_series.items())]
    if masks.problems:
        lines.append(f"  not used: {len(masks.problems)}")
        lines += [f"      {uid}: {problem[:150]}" for uid, problem in list(masks.problems.items())[:examples]]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.audit", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", required=True, help="competition layout: train.csv, train_localizers.csv, series/")
    p.add_argument("--config", default="configs/competition.yaml", help="trainer preset whose cache is projected")
    p.add_argument("--sample", type=int, default=8, help="series timed through the cache's real work (0: none)")
    p.add_argument("--workers", type=int, default=2, help="header-reading worker processes (0: in this process)")
    p.add_argument("--frame-base", type=int, default=0, help="the localizer CSV's number for a file's first frame")
    p.add_argument("--json", default="audit.json", help="where to write the full report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit, print the table, write the JSON. Returns 0, or 2 when the layout cannot be read."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_audit(args.data_dir, config_path=args.config, sample=args.sample, workers=args.workers,
                           frame_base=args.frame_base, progress=not args.quiet)
    except ConfigError as exc:  # an unreadable layout or preset: nothing was audited
        print(f"audit: {exc}")
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    print(format_report(report))
    print(f"\nFull report: {args.json}")
    return 0


if __name__ == "__main__":
    # run the module's importable twin, so worker processes unpickle `training.audit.*`, never `__main__.*`
    raise SystemExit(importlib.import_module("training.audit").main())
