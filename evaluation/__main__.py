"""Score a kernel run: `python -m evaluation --run working/gateway_run.json --labels test_labels.csv`.

Reads what the bundled kernel left in its working folder (submission.parquet and the kit's gateway_run.json),
prints the competition score (overall, per label, per modality) and the timing projection onto the hidden test
set, and writes gateway_summary.json (and a PNG with --report). The projection says plainly when the series were
smaller than the competition's (about 250 slices of 512 px a series; `--series-dir` reads their image size).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from inference.labels import LABELS

from .metric import MetricError
from .report import write_report
from .submission import SubmissionError, read_labels, score_submission
from .timing import HIDDEN_TEST_SERIES, summarize_timing

__all__ = ["summarize_run", "main"]

log = logging.getLogger("evaluation")
SUMMARY_NAME = "gateway_summary.json"


def series_pixels(series_dir: str | Path, uids: Sequence[str]) -> list[int]:
    """Each series' larger image side (Rows, Columns of its first readable file's header); unreadable ones left out."""
    import pydicom

    out = []
    for uid in uids:
        for path in sorted((Path(series_dir) / uid).glob("*.dcm"))[:3]:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
                out.append(int(max(ds.Rows, ds.Columns)))
                break
            except Exception:  # noqa: BLE001 - a header that cannot be read: try the next file
                continue
    return out


def summarize_run(run_record: str | Path, *, labels_csv: str | Path | None = None,
                  projected_series: int = HIDDEN_TEST_SERIES, report_png: str | Path | None = None,
                  series_dir: str | Path | None = None) -> dict[str, Any]:
    """Timing (and, with labels, the score) of one kernel run, as a JSON-ready dict.

    Args:
        run_record: the gateway_run.json the kernel wrote next to submission.parquet.
        labels_csv: train.csv-style labels of the test series.
        projected_series: series count of the timing projection.
        report_png: also write the PNG report there.
        series_dir: the test series folder: their image size goes into the scale check of the projection.
    """
    record = json.loads(Path(run_record).read_text())
    order = record["order"]
    series = record.get("series", {})
    durations = [record["durations_s"][uid] for uid in order]
    slices = [int(series.get(uid, {}).get("slices") or record["files"].get(uid, 0)) for uid in order]
    startup = record["first_answer_at"] - record.get("process_started_at", record["gateway_started_at"])
    pixels = series_pixels(series_dir, order) if series_dir is not None else None
    timing = summarize_timing(durations, slices, startup_s=startup, projected_series=projected_series,
                              pixels=pixels)
    answers = dict(Counter(report["answer"] for report in series.values()))
    degraded = dict(Counter(report.get("degraded", "full") for report in series.values()))
    out: dict[str, Any] = {"timing": asdict(timing), "answers": answers, "degraded": degraded,
                           "run_budget": record.get("run_budget"), "submission": record["submission"]}
    submission = labels = score = None
    if labels_csv is not None:
        submission, labels = pl.read_parquet(record["submission"]), read_labels(labels_csv)
        try:
            score, per_modality = score_submission(submission, labels)
            out["score"] = {"score": score.score, "present_auc": score.present_auc,
                            "mean_location_auc": score.mean_location_auc, "per_label": score.per_label,
                            "per_modality": per_modality}
        except MetricError as exc:  # the submission stands; only its local score is undefined
            out["score_error"] = str(exc)
    member_names = sorted({name for report in series.values() for name in report.get("member_probs", {})})
    if member_names:  # a blend: each member's share of the time, and (with labels) each member's own score
        total = sum(durations) or 1.0
        out["members"] = {name: {"seconds": round(sum(r.get("members_s", {}).get(name, 0.0)
                                                      for r in series.values()), 3)} for name in member_names}
        for name in member_names:
            out["members"][name]["time_share"] = round(out["members"][name]["seconds"] / total, 4)
        if submission is not None and labels is not None:
            for name in member_names:
                frame = pl.DataFrame({"SeriesInstanceUID": list(series), **{
                    label: [series[u]["member_probs"][name][j] for u in series] for j, label in enumerate(LABELS)}})
                try:
                    member_score, _ = score_submission(frame, labels)
                    out["members"][name]["score"] = member_score.score
                except MetricError as exc:
                    out["members"][name]["score_error"] = str(exc)
    if report_png is not None:
        out["report"] = str(write_report(report_png, durations_s=durations, timing=timing, submission=submission,
                                         labels=labels, score=score))
    return out


def _print(summary: dict[str, Any], timing_lines: list[str]) -> None:
    for line in timing_lines:
        print(f"timing: {line}")
    print(f"answers: {summary['answers']}  (model: every window; partial: the budget ran out; priors: failed)")
    print(f"speed-ups in force (series per level): {summary['degraded']}")
    budget = summary.get("run_budget") or {}
    for decision in budget.get("decisions", []):
        print(f"  after {decision['after_series']} series the run projected {decision['projected_h']:.2f} h of "
              f"{budget['limit_h']:.0f} h: level {decision['level']} ({decision['steps']})")
    for name, member in (summary.get("members") or {}).items():
        own = f", score {member['score']:.4f}" if "score" in member else ""
        print(f"member {name}: {member['seconds']:.1f} s ({100 * member['time_share']:.0f}% of the calls){own}")
    score = summary.get("score")
    if score is not None:
        print(f"score: {score['score']:.4f} (Aneurysm Present AUC {score['present_auc']:.4f}, "
              f"mean location AUC {score['mean_location_auc']:.4f})")
        for name, auc in score["per_label"].items():
            print(f"  {name:<45} {auc:.4f}")
        for modality, value in score["per_modality"].items():
            text = f"{value:.4f}" if isinstance(value, float) else value
            print(f"  modality {modality:<10} {text}")
    elif "score_error" in summary:
        print(f"score: undefined ({summary['score_error']})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the kernel's gateway_run.json")
    parser.add_argument("--labels", type=Path, default=None, help="train.csv-style labels: score the submission")
    parser.add_argument("--projected-series", type=int, default=HIDDEN_TEST_SERIES,
                        help=f"series count of the timing projection (default {HIDDEN_TEST_SERIES})")
    parser.add_argument("--report", type=Path, default=None, help="write a PNG (ROC per label, time histogram)")
    parser.add_argument("--series-dir", type=Path, default=None,
                        help="the test series/ folder: read each series' image size for the scale check")
    parser.add_argument("--summary", type=Path, default=None,
                        help=f"where the JSON summary goes (default: {SUMMARY_NAME} beside the run record)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = summarize_run(args.run, labels_csv=args.labels, projected_series=args.projected_series,
                                report_png=args.report, series_dir=args.series_dir)
    except (OSError, KeyError, ValueError, SubmissionError) as exc:
        log.error("cannot summarize %s: %s", args.run, exc)
        return 1
    from .timing import TimingSummary

    _print(summary, TimingSummary(**summary["timing"]).lines())
    path = args.summary or args.run.parent / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
