"""Local simulation of the competition's evaluation gateway: serve series, check answers, time, write and score."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import KitError
from .labels import ID_COLUMN, LABELS, PRESENT_INDEX
from .metric import MetricError, ScoreReport, competition_score, roc_auc

__all__ = [
    "GatewayError",
    "STARTUP_LIMIT_S",
    "CALL_LIMIT_S",
    "RUN_LIMIT_S",
    "HIDDEN_TEST_SERIES",
    "SUBMISSION_NAME",
    "SUMMARY_NAME",
    "TimingSummary",
    "GatewayResult",
    "process_start_time",
    "read_test_ids",
    "share_series",
    "remove_shared",
    "check_answer",
    "summarize_timing",
    "score_submission",
    "run_gateway",
    "write_report",
    "main",
]

log = logging.getLogger(__name__)

STARTUP_LIMIT_S = 15 * 60.0  # process start -> first answer
CALL_LIMIT_S = 30 * 60.0  # one predict call
RUN_LIMIT_S = 12 * 3600.0  # the whole hidden test set
HIDDEN_TEST_SERIES = 2500  # about the size of the hidden test set, for the projection
SUBMISSION_NAME = "submission.parquet"
SUMMARY_NAME = "gateway_summary.json"

_MODULE_IMPORTED_AT = time.time()


class GatewayError(KitError):
    """The gateway stopped the run: on Kaggle the same answer or timing fails the submission."""


@dataclass(frozen=True)
class TimingSummary:
    """Per-series timings and their projection onto the hidden test set."""

    series: int
    startup_s: float
    total_s: float
    p50_s: float
    p95_s: float
    max_s: float
    mean_s: float
    slices: int
    slices_per_s: float
    projected_series: int
    projected_total_s: float
    limit_s: float
    over_limit: bool

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        verdict = "OVER THE LIMIT" if self.over_limit else "within the limit"
        return [
            f"series: {self.series}, startup (process start -> first answer): {self.startup_s:.1f} s "
            f"(limit {STARTUP_LIMIT_S / 60:.0f} min)",
            f"per series: p50 {self.p50_s:.2f} s, p95 {self.p95_s:.2f} s, max {self.max_s:.2f} s "
            f"(limit per call {CALL_LIMIT_S / 60:.0f} min), mean {self.mean_s:.2f} s",
            f"throughput: {self.slices_per_s:.1f} slices/s ({self.slices} slices: the predictor's count, else one per "
            ".dcm file)",
            f"projection: {self.projected_series} series x {self.mean_s:.2f} s + startup = "
            f"{self.projected_total_s / 3600:.2f} h against {self.limit_s / 3600:.0f} h: {verdict}",
        ]


@dataclass
class GatewayResult:
    """What one gateway run produced."""

    submission: pl.DataFrame
    submission_path: Path
    durations_s: dict[str, float]
    slices: dict[str, int]  # slices per series (the predictor's count when it reports one, else .dcm files)
    timing: TimingSummary
    score: ScoreReport | None = None
    modality_scores: dict[str, float | str] = field(default_factory=dict)
    labels: pl.DataFrame | None = None
    score_error: str | None = None

    def summary_dict(self) -> dict[str, Any]:
        """JSON-ready summary (timing, score, per-label and per-modality scores)."""
        out: dict[str, Any] = {"timing": asdict(self.timing), "submission": str(self.submission_path)}
        if self.score_error is not None:
            out["score_error"] = self.score_error
        if self.score is not None:
            out["score"] = {
                "score": self.score.score,
                "present_auc": self.score.present_auc,
                "mean_location_auc": self.score.mean_location_auc,
                "per_label": dict(self.score.per_label),
                "per_modality": dict(self.modality_scores),
            }
        return out


def process_start_time() -> float:
    """Wall-clock time (epoch seconds) at which this process started; the module's import time if unknown."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as handle:
            stat = handle.read()
        start_ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + start_ticks / ticks
    except (OSError, ValueError, IndexError):
        return _MODULE_IMPORTED_AT


def read_test_ids(test_csv: str | Path) -> list[str]:
    """The series ids of a test csv (column SeriesInstanceUID, unique, non-empty).

    Raises:
        GatewayError: missing file or column, empty, or duplicated ids.
    """
    try:
        frame = pl.read_csv(test_csv, infer_schema_length=0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise GatewayError(f"cannot read test csv {test_csv}: {exc}") from exc
    if ID_COLUMN not in frame.columns:
        raise GatewayError(f"test csv {test_csv} has no {ID_COLUMN!r} column (columns: {frame.columns})")
    ids = [str(v) for v in frame[ID_COLUMN].to_list() if v is not None and str(v) != ""]
    if not ids:
        raise GatewayError(f"test csv {test_csv} lists no series")
    duplicated = sorted({v for v in ids if ids.count(v) > 1}) if len(set(ids)) != len(ids) else []
    if duplicated:
        raise GatewayError(f"test csv {test_csv} repeats series ids: {duplicated[:5]}")
    return ids


def _shared_path(series_folder: Path, share_root: Path) -> Path:
    folder = series_folder.absolute()
    return share_root / folder.relative_to(folder.anchor)


def share_series(series_folder: str | Path, share_root: str | Path) -> tuple[Path, int]:
    """Expose a series' *.dcm files as symlinks at `<share_root>/<series folder path without its root>`.

    Returns:
        The shared folder (what predict receives) and the number of files linked.
    Raises:
        GatewayError: the series folder does not exist.
    """
    series_folder = Path(series_folder)
    if not series_folder.is_dir():
        raise GatewayError(f"series folder {series_folder} does not exist")
    target = _shared_path(series_folder, Path(share_root))
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    count = 0
    for path in sorted(series_folder.glob("*.dcm")):
        (target / path.name).symlink_to(path.absolute())
        count += 1
    return target, count


def remove_shared(shared: Path, share_root: Path) -> bool:
    """Remove a shared series folder and its now-empty parents up to (not including) share_root.

    Returns:
        True when the folder was still there (predict did not remove it).
    """
    existed = shared.exists()
    if existed:
        shutil.rmtree(shared, ignore_errors=True)
    parent = shared.parent
    root = share_root.absolute()
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return existed


def _is_pandas(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "pandas"


def check_answer(answer: Any, series_id: str) -> np.ndarray:
    """Check one predict answer as the competition does, and stricter; return its 14 probabilities.

    The competition requires a polars or pandas DataFrame or Series with one row. We also require exactly the
    14 label columns in `LABELS` order, numeric, finite and within [0, 1].

    Raises:
        GatewayError: naming the series and the violation.
    """
    where = f"predict({series_id!r})"
    if answer is None:
        raise GatewayError(f"{where} returned None; it must return a 1-row DataFrame with the {len(LABELS)} labels")
    if isinstance(answer, pl.Series):
        answer = answer.to_frame()
    elif _is_pandas(answer) and type(answer).__name__ == "Series":
        answer = answer.to_frame()
    if isinstance(answer, pl.DataFrame):
        columns = list(answer.columns)
        numeric = [dtype.is_numeric() for dtype in answer.dtypes]
        rows = answer.height
    elif _is_pandas(answer) and type(answer).__name__ == "DataFrame":
        columns = [str(c) for c in answer.columns]
        numeric = [np.dtype(d).kind in "iuf" if isinstance(d, np.dtype) else False for d in answer.dtypes]
        rows = len(answer)
    else:
        raise GatewayError(f"{where} returned a {type(answer).__module__}.{type(answer).__name__}; "
                           "it must return a polars or pandas DataFrame with one row")
    if rows != 1:
        raise GatewayError(f"{where} returned {rows} rows; exactly one row per series is required")
    if columns != list(LABELS):
        missing = [c for c in LABELS if c not in columns]
        extra = [c for c in columns if c not in LABELS]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same names in another order"
        raise GatewayError(f"{where} returned columns {columns}; expected the {len(LABELS)} labels in competition "
                           f"order ({detail})")
    bad = [c for c, ok in zip(columns, numeric) if not ok]
    if bad:
        raise GatewayError(f"{where} returned non-numeric columns {bad}")
    values = np.asarray(answer.to_numpy(), dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        names = [c for c, v in zip(columns, values) if not math.isfinite(v)]
        raise GatewayError(f"{where} returned non-finite values (NaN/inf) in {names}")
    if ((values < 0.0) | (values > 1.0)).any():
        names = [f"{c}={v:g}" for c, v in zip(columns, values) if not 0.0 <= v <= 1.0]
        raise GatewayError(f"{where} returned values outside [0, 1]: {names}")
    return values


def summarize_timing(durations_s: Sequence[float], slices: Sequence[int], *, startup_s: float,
                     projected_series: int = HIDDEN_TEST_SERIES, limit_s: float = RUN_LIMIT_S) -> TimingSummary:
    """Percentiles of the per-series times and the projected total for `projected_series` series.

    The projection is startup + projected_series x mean time per series: it is only as good as the likeness of the
    local series to the hidden ones (slice counts above all).
    """
    times = np.asarray(durations_s, dtype=np.float64)
    if times.size == 0:
        raise GatewayError("no series were timed")
    total = float(times.sum())
    mean = float(times.mean())
    projected = startup_s + projected_series * mean
    n_slices = int(sum(slices))
    return TimingSummary(
        series=int(times.size), startup_s=float(startup_s), total_s=total,
        p50_s=float(np.percentile(times, 50)), p95_s=float(np.percentile(times, 95)), max_s=float(times.max()),
        mean_s=mean, slices=n_slices, slices_per_s=n_slices / total if total > 0 else float("inf"),
        projected_series=int(projected_series), projected_total_s=float(projected), limit_s=float(limit_s),
        over_limit=bool(projected > limit_s),
    )


def score_submission(submission: pl.DataFrame, labels: pl.DataFrame) -> tuple[ScoreReport, dict[str, float | str]]:
    """Competition score of a submission against train.csv-style labels, overall and per Modality.

    Returns:
        The overall ScoreReport and {modality: score, or the reason it is undefined}.
    Raises:
        GatewayError: series of the submission missing from the labels, or label columns missing.
        MetricError: a label with one class in the overall set.
    """
    missing_cols = [c for c in (ID_COLUMN, *LABELS) if c not in labels.columns]
    if missing_cols:
        raise GatewayError(f"labels lack columns {missing_cols}")
    keep = [ID_COLUMN, *LABELS] + (["Modality"] if "Modality" in labels.columns else [])
    truth = labels.select(keep).with_columns(pl.col(ID_COLUMN).cast(pl.String))
    joined = submission.join(truth, on=ID_COLUMN, how="left", suffix="__true")
    lacking = joined.filter(pl.col(f"{LABELS[0]}__true").is_null())[ID_COLUMN].to_list()
    if lacking:
        raise GatewayError(f"{len(lacking)} submitted series have no labels, e.g. {lacking[:3]}")
    y_pred = joined.select(LABELS).to_numpy().astype(np.float64)
    y_true = joined.select([f"{c}__true" for c in LABELS]).to_numpy().astype(np.float64)
    report = competition_score(y_true, y_pred)
    per_modality: dict[str, float | str] = {}
    if "Modality" in joined.columns:
        modalities = joined["Modality"].to_numpy()
        for modality in sorted({str(m) for m in modalities}):
            rows = modalities == modality
            try:
                per_modality[modality] = competition_score(y_true[rows], y_pred[rows]).score
            except MetricError as exc:
                reason = str(exc).split(": AUC", 1)[0]
                text = f"score undefined on {int(rows.sum())} series ({reason} has one class)"
                try:
                    present = roc_auc(y_true[rows, PRESENT_INDEX], y_pred[rows, PRESENT_INDEX])
                    text = f"Aneurysm Present AUC {present:.4f}; {text}"
                except MetricError:
                    pass
                per_modality[modality] = text
    return report, per_modality


def _serve_all(predict: Callable[[str], Any], order: Any, series_dir: Path, share_root: Path, started_at: float,
               startup_limit_s: float, call_limit_s: float, rows: dict[str, np.ndarray],
               durations: dict[str, float], slices: dict[str, int]) -> float:
    """The gateway loop: share, call, time, clean, check; fills rows, durations and slices in visiting order.

    Returns:
        The startup time: process start to the first answer, in seconds.
    """
    startup_s = math.nan
    for series_id in order:
        shared, slices[series_id] = share_series(series_dir / series_id, share_root)
        t0 = time.perf_counter()
        try:
            answer = predict(str(shared))
        except Exception as exc:
            remove_shared(shared, share_root)
            raise GatewayError(f"predict({series_id!r}) raised {type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - t0
        if math.isnan(startup_s):
            startup_s = time.time() - started_at
            log.info("gateway: first answer %.1f s after the process started", startup_s)
            if startup_s > startup_limit_s:
                remove_shared(shared, share_root)
                raise GatewayError(f"startup took {startup_s:.1f} s from process start to the first answer; "
                                   f"the limit is {startup_limit_s:.0f} s")
        if remove_shared(shared, share_root):
            log.debug("gateway: removed %s (predict left it)", shared)
        if elapsed > call_limit_s:
            raise GatewayError(f"predict({series_id!r}) took {elapsed:.1f} s; the limit per call is "
                               f"{call_limit_s:.0f} s")
        rows[series_id] = check_answer(answer, series_id)
        durations[series_id] = elapsed
        slices[series_id] = _reported_slices(predict) or slices[series_id]
    return startup_s


def run_gateway(
    predict: Callable[[str], Any],
    *,
    test_csv: str | Path,
    series_dir: str | Path,
    share_dir: str | Path,
    out_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
    seed: int | None = 0,
    started_at: float | None = None,
    startup_limit_s: float = STARTUP_LIMIT_S,
    call_limit_s: float = CALL_LIMIT_S,
    projected_series: int = HIDDEN_TEST_SERIES,
    progress: bool = True,
) -> GatewayResult:
    """Drive `predict` over a test set as the competition's gateway does, then write and score the submission.

    Args:
        predict: called once per series with the shared series folder (str); returns a 1-row frame.
        test_csv: csv with a unique SeriesInstanceUID column.
        series_dir: folder holding one sub-folder of *.dcm files per series id.
        share_dir: where series are exposed through symlinks (Kaggle: /kaggle/shared).
        out_dir: where submission.parquet and gateway_summary.json go (default: the working folder).
        labels_csv: train.csv-style labels; when given, the submission is scored.
        seed: seed of the random visiting order (None: not reproducible).
        started_at: epoch seconds of the process start (default: read from the OS).
        startup_limit_s, call_limit_s: the competition's limits (lower them in tests).
        projected_series: series count of the timing projection.
        progress: show a progress bar (tqdm when installed).
    Returns:
        A GatewayResult.
    Raises:
        GatewayError: a wrong answer, an exception in predict, or a limit exceeded (the run stops there).
    """
    ids = read_test_ids(test_csv)
    series_dir, share_root = Path(series_dir), Path(share_dir).absolute()
    out_dir = Path(out_dir) if out_dir is not None else Path.cwd()
    labels = (pl.read_csv(labels_csv, infer_schema_length=10000, schema_overrides={ID_COLUMN: pl.String})
              if labels_csv is not None else None)
    stale = out_dir / SUBMISSION_NAME
    if stale.exists():  # a failed run must not leave an older submission looking like its result
        stale.unlink()
        log.info("gateway: removed the previous %s", stale)
    started_at = process_start_time() if started_at is None else started_at
    order = list(ids)
    random.Random(seed).shuffle(order)
    log.info("gateway: %d series from %s, visiting order seed %s, share folder %s", len(order), test_csv, seed,
             share_root)
    rows: dict[str, np.ndarray] = {}
    durations: dict[str, float] = {}
    slices: dict[str, int] = {}
    iterator: Any = order
    if progress:
        try:
            from tqdm.auto import tqdm
            iterator = tqdm(order, desc="gateway", unit="series")
        except ImportError:
            pass
    try:
        startup_s = _serve_all(predict, iterator, series_dir, share_root, started_at, startup_limit_s,
                               call_limit_s, rows, durations, slices)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    submission = pl.DataFrame(
        {ID_COLUMN: order, **{name: [float(rows[s][i]) for s in order] for i, name in enumerate(LABELS)}},
        schema={ID_COLUMN: pl.String, **{name: pl.Float64 for name in LABELS}},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    submission_path = out_dir / SUBMISSION_NAME
    submission.write_parquet(submission_path)
    timing = summarize_timing([durations[s] for s in order], [slices[s] for s in order], startup_s=startup_s,
                              projected_series=projected_series)
    result = GatewayResult(submission=submission, submission_path=submission_path, durations_s=durations,
                           slices=slices, timing=timing, labels=labels)
    if labels is not None:
        try:
            result.score, result.modality_scores = score_submission(submission, labels)
        except MetricError as exc:  # the submission stands; only its local score is undefined
            result.score_error = str(exc)
            log.warning("score: undefined on these series: %s", exc)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(result.summary_dict(), indent=2) + "\n")
    _log_result(result)
    return result


def _reported_slices(predict: Callable[[str], Any]) -> int:
    """Slices of the last series when the predict callable (or its owner) keeps a `last_report` with `slices`."""
    owner = getattr(predict, "__self__", predict)
    report = getattr(owner, "last_report", None)
    slices = getattr(report, "slices", 0)
    return int(slices) if isinstance(slices, int) and slices > 0 else 0


def _log_result(result: GatewayResult) -> None:
    log.info("gateway: wrote %s (%d rows)", result.submission_path, result.submission.height)
    for line in result.timing.lines():
        log.info("timing: %s", line)
    if result.timing.over_limit:
        log.warning("timing: the projected run (%.2f h) passes the %.0f h limit: raise the window stride, use fewer "
                    "folds or switch TTA off", result.timing.projected_total_s / 3600, result.timing.limit_s / 3600)
    if result.score is not None:
        report = result.score
        log.info("score: %.4f (Aneurysm Present AUC %.4f, mean location AUC %.4f)", report.score,
                 report.present_auc, report.mean_location_auc)
        for name, auc in report.per_label.items():
            log.info("score: %-45s %.4f", name, auc)
        for modality, value in result.modality_scores.items():
            text = f"{value:.4f}" if isinstance(value, float) else value
            log.info("score: modality %-10s %s", modality, text)


def _roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-y_score, kind="mergesort")
    y_true, y_score = y_true[order].astype(bool), y_score[order]
    last = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tps = np.cumsum(y_true)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / max(int(y_true.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((~y_true).sum()), 1)]
    return fpr, tpr


def write_report(result: GatewayResult, path: str | Path) -> Path:
    """A PNG with per-label ROC curves (when labels were given) and the per-series time histogram.

    matplotlib is a development dependency, imported here only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_roc = result.labels is not None and result.score is not None
    fig, axes = plt.subplots(1, 2 if with_roc else 1, figsize=(13 if with_roc else 6, 5.5), squeeze=False)
    if with_roc:
        ax = axes[0, 0]
        truth = result.labels.with_columns(pl.col(ID_COLUMN).cast(pl.String))
        joined = result.submission.join(truth.select([ID_COLUMN, *LABELS]), on=ID_COLUMN, suffix="__true")
        for name in LABELS:
            y_true = joined[f"{name}__true"].to_numpy()
            if y_true.min() == y_true.max():
                continue
            fpr, tpr = _roc_curve(y_true, joined[name].to_numpy())
            ax.plot(fpr, tpr, lw=2.5 if name == LABELS[-1] else 1.0,
                    label=f"{name} ({result.score.per_label[name]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC per label, score {result.score.score:.4f}")
        ax.legend(fontsize=6, loc="lower right")
    ax = axes[0, -1]
    ax.hist(list(result.durations_s.values()), bins=min(30, max(5, len(result.durations_s) // 2)))
    t = result.timing
    ax.set(xlabel="seconds per series", ylabel="series",
           title=f"p50 {t.p50_s:.2f} s, p95 {t.p95_s:.2f} s; projected {t.projected_total_s / 3600:.2f} h")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.gateway",
        description="Run a weights bundle over a test set as Kaggle's evaluation gateway does; write "
                    "submission.parquet, print the timing projection and, with labels, the competition score.")
    parser.add_argument("--bundle", required=True, type=Path, help="folder with manifest.json and the ONNX folds")
    parser.add_argument("--test-csv", required=True, type=Path, help="csv with a SeriesInstanceUID column")
    parser.add_argument("--series-dir", required=True, type=Path, help="folder of <SeriesInstanceUID>/*.dcm")
    parser.add_argument("--labels", type=Path, default=None, help="train.csv-style labels: score the submission")
    parser.add_argument("--out-dir", type=Path, default=Path.cwd(), help="where submission.parquet goes (default: .)")
    parser.add_argument("--share-dir", type=Path, default=None,
                        help="share folder for the series symlinks (default: <out-dir>/shared)")
    parser.add_argument("--report", type=Path, default=None, help="write a PNG report (ROC per label, time histogram)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the visiting order (default 0)")
    parser.add_argument("--folds", default=None, help="comma-separated fold ids to use (default: all)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated onnxruntime providers (default: CUDA when available, else CPU)")
    parser.add_argument("--projected-series", type=int, default=HIDDEN_TEST_SERIES,
                        help=f"series count of the timing projection (default {HIDDEN_TEST_SERIES})")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: python -m inference.gateway --bundle DIR --test-csv CSV --series-dir DIR [--labels CSV]."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .predict import Predictor

    share_dir = args.share_dir or args.out_dir / "shared"
    predictor = Predictor(
        args.bundle,
        providers=args.providers.split(",") if args.providers else None,
        folds=[int(f) for f in args.folds.split(",")] if args.folds else None,
        shared_root=share_dir,
    )
    try:
        result = run_gateway(predictor.predict, test_csv=args.test_csv, series_dir=args.series_dir,
                             share_dir=share_dir, out_dir=args.out_dir, labels_csv=args.labels, seed=args.seed,
                             projected_series=args.projected_series)
    except GatewayError as exc:
        log.error("gateway: the run failed (Kaggle would fail the submission): %s", exc)
        return 1
    if args.report is not None:
        log.info("gateway: report written to %s", write_report(result, args.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
