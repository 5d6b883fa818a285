"""Local stand-in for Kaggle's evaluation server and gateway: the same endpoint rules, threads, share folder and checks.

It behaves as `kaggle_evaluation`'s `RSNAInferenceServer` does (see ../shared/KAGGLE-API-FACTS.md and the kit's
guide), so a kernel that runs here runs there, and a kernel that Kaggle would refuse is refused here:

- the server takes its endpoints at construction and registers them by `__name__`: an object without one (a
  callable instance, a `functools.partial`) raises AttributeError, a lambda raises ValueError, and a function of
  another name fails at the first call ("Server did not register a listener for predict").
- `predict` runs in the server's worker thread (gRPC, one worker), never the main thread, one call at a time.
- `run_local_gateway(data_paths, file_share_dir)`: off Kaggle (no /kaggle) a missing `file_share_dir` fails the
  run; an existing share folder must be empty at the first share; every `<series>/*.dcm` is exposed by symlink at
  `<share>/<series folder path without its root>/`, and predict gets that folder as a `str`. Series are visited
  in a shuffled order (time-seeded unless `seed` is given). The gateway never deletes what it shared.
- each call after the first has a deadline (30 minutes); an exception in predict, a timeout or an answer that is
  not exactly one row of a polars/pandas DataFrame or Series (or a scalar) fails the whole run.
- on success `submission.parquet` (SeriesInstanceUID first, then the answer's columns) goes to the working folder.

Kaggle checks no column; with `strict` (the default) this stand-in also requires the 14 label columns in
order, finite and within [0, 1], since a wrong answer would otherwise only show when the submission is scored.
Scoring and timing reports live in the `evaluation` package (not bundled).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import KitError
from .labels import ID_COLUMN, LABELS
from .progress import Progress

__all__ = ["GatewayError", "LocalInferenceServer", "GatewayRun", "check_answer", "default_share_dir",
           "STARTUP_LIMIT_S", "CALL_LIMIT_S",
           "RERUN_ENV", "SUBMISSION_NAME"]

log = logging.getLogger(__name__)

STARTUP_LIMIT_S = 15 * 60.0  # the server must answer its first connection within this
CALL_LIMIT_S = 30 * 60.0  # one predict call, from the second call on
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
SUBMISSION_NAME = "submission.parquet"
_KAGGLE_SHARE_DIR = "/kaggle/shared/"


def default_share_dir() -> str | None:
    """Where Kaggle's gateway shares series when no file_share_dir is given: /kaggle/shared/ on Kaggle, None off it."""
    return _KAGGLE_SHARE_DIR if os.path.exists("/kaggle") else None


class GatewayError(KitError):
    """The gateway stopped the run: on Kaggle the same answer, timing or setup fails the submission."""


@dataclass
class GatewayRun:
    """What one local gateway run did: the visiting order, each call's duration and the submission written."""

    order: list[str]
    durations_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # .dcm files shared per series
    submission_path: Path | None = None
    started_at: float = 0.0  # time.time() when the gateway started
    first_answer_at: float = 0.0  # time.time() of the first answer


class LocalInferenceServer:
    """Kaggle's `RSNAInferenceServer`, played locally: `LocalInferenceServer(predict).run_local_gateway(...)`.

    Args:
        endpoints: the functions the gateway may call, registered by `__name__` (the gateway calls `predict`).
    Raises:
        ValueError: no endpoint, a non-callable endpoint, or a lambda (as Kaggle's server).
        AttributeError: an endpoint without `__name__` (a callable object, a functools.partial), as Kaggle's.
    """

    def __init__(self, *endpoints: Callable[..., Any]) -> None:
        if not endpoints:
            raise ValueError("Must pass at least one endpoint listener, e.g. `predict`")
        for func in endpoints:
            if not callable(func):
                raise ValueError(f"Endpoint listeners passed to `serve` must be functions, got {type(func)}")
            if func.__name__ == "<lambda>":  # an object without __name__ raises AttributeError here, as on Kaggle
                raise ValueError("Functions passed as endpoint listeners must be named")
        self.listeners = {func.__name__: func for func in endpoints}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def _serve_requests(self) -> None:
        while True:
            func, args, future = self._requests.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func(*args))
                except BaseException as exc:  # handed to the gateway, as gRPC hands it over
                    future.set_exception(exc)

    def serve(self) -> None:
        """On Kaggle this serves the scoring rerun; the local stand-in has no gateway to serve."""
        raise GatewayError("the kit's local gateway cannot serve a competition rerun: kaggle_evaluation is needed")

    def _call(self, name: str, *args: Any, timeout: float | None) -> Any:
        """Run endpoint `name` in the server's single worker thread, as the gRPC server does."""
        if name not in self.listeners:
            raise GatewayError(f"Server did not register a listener for {name}")
        if self._worker is None:  # a daemon thread: a call stuck past its deadline never blocks the exit
            self._worker = threading.Thread(target=self._serve_requests, name="grpc-server-worker", daemon=True)
            self._worker.start()
        future: Future = Future()
        self._requests.put((self.listeners[name], args, future))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise GatewayError(f"{name} took over {timeout:.0f} s (GRPC_DEADLINE_EXCEEDED)") from None
        except Exception as exc:
            raise GatewayError(f"{name} raised {type(exc).__name__}: {exc} (SERVER_RAISED_EXCEPTION)") from exc

    def run_local_gateway(self, data_paths: Sequence[str] | None = None, file_share_dir: str | None = None, *,
                          seed: int | None = None, call_limit_s: float = CALL_LIMIT_S, strict: bool = True,
                          out_dir: str | Path | None = None, progress: bool = False) -> GatewayRun:
        """Drive `predict` over a test set as Kaggle's gateway does and write submission.parquet.

        Args:
            data_paths: (test.csv, series folder). Kaggle's default is the competition folder beside its package;
                this stand-in has no such folder and needs them.
            file_share_dir: where the series are exposed; required off Kaggle (where /kaggle does not exist).
            seed: visiting order seed (None: time-based, as Kaggle's).
            call_limit_s: the deadline of each call after the first (lower it in tests).
            strict: also require the 14 label columns, finite values in [0, 1] (Kaggle checks only the row count).
            out_dir: where submission.parquet goes (default: the working folder, as Kaggle's).
            progress: show a tqdm bar when tqdm is installed.
        Returns:
            A GatewayRun.
        Raises:
            GatewayError: whatever would fail the run on Kaggle (or, with `strict`, make its submission unscorable).
        """
        run = GatewayRun(order=[], started_at=time.time())
        if not data_paths:
            raise GatewayError("the local gateway needs data_paths=(test.csv, series folder)")
        test_csv, series_root = (str(p) for p in data_paths)
        share = file_share_dir or default_share_dir()
        if share is None:  # Kaggle's gateway fails with a TypeError while sharing the first series
            raise GatewayError("file_share_dir is required off Kaggle (where /kaggle does not exist): the gateway "
                               "cannot share the first series (Kaggle's raises TypeError)")
        frame = pl.read_csv(test_csv)
        if ID_COLUMN not in frame.columns:
            raise GatewayError(f"{test_csv} has no {ID_COLUMN} column")
        ids = [str(v) for v in frame[ID_COLUMN].unique(maintain_order=True).to_list()]
        run.order = random.Random(time.time() if seed is None else seed).sample(ids, len(ids))
        answers: list[Any] = []
        iterator = Progress(run.order, desc="gateway", unit="series", enabled=progress)
        try:
            first = True
            for series_id in iterator:
                series_dir = Path(series_root) / series_id
                files = [str(p) for p in series_dir.glob("*.dcm")]
                _share_files(files, share, first_share=first)
                run.files[series_id] = len(files)
                shared = Path(share) / series_dir.relative_to(series_dir.anchor)  # as Kaggle's: relative stays relative
                t0 = time.perf_counter()
                answer = self._call("predict", str(shared), timeout=None if first else call_limit_s)
                run.durations_s[series_id] = time.perf_counter() - t0
                if first:
                    run.first_answer_at = time.time()
                first = False
                _validate(answer, series_id, strict=strict)
                answers.append(answer)
        finally:
            if hasattr(iterator, "close"):
                iterator.close()
        run.submission_path = _write_submission(answers, run.order, Path(out_dir) if out_dir else Path.cwd())
        log.info("gateway: wrote %s (%d rows)", run.submission_path, len(answers))
        return run


def _share_files(paths: list[str], share: str, *, first_share: bool) -> None:
    """Symlink each file at <share>/<its absolute path>, with the checks of Kaggle's `share_files`."""
    if first_share and os.path.exists(share):
        if not os.path.isdir(share):
            raise GatewayError(f"`file_share_dir` {share} must be a directory.")
        if os.listdir(share):
            raise GatewayError(f"`file_share_dir` must be an empty directory, instead found {os.listdir(share)[:5]}")
    os.makedirs(share, exist_ok=True)
    if not paths:
        raise GatewayError("share_files requires at least one input path")
    for path in paths:
        if os.path.basename(path).startswith("."):
            raise GatewayError(f"Cannot share hidden files: {path}")
    root = share if share.endswith(os.path.sep) else share + os.path.sep
    for path in paths:
        source = os.path.abspath(path)
        target = os.path.normpath(root + source)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(source, target)


def _is_frame_like(answer: Any) -> bool:
    if isinstance(answer, (pl.DataFrame, pl.Series)):
        return True
    module = type(answer).__module__.split(".")[0]
    return module == "pandas" and type(answer).__name__ in ("DataFrame", "Series")


def _validate(answer: Any, series_id: str, *, strict: bool) -> None:
    """Kaggle's check of one answer (one row, an allowed type), then the stricter column check."""
    if answer is None:
        raise GatewayError(f"predict({series_id!r}): No prediction received (INVALID_SUBMISSION)")
    if isinstance(answer, (int, float, str, bool, np.int_)):
        rows = 1
    elif _is_frame_like(answer):
        rows = len(answer)
    else:
        raise GatewayError(f"predict({series_id!r}): Invalid prediction data type, received: {type(answer)}")
    if rows != 1:
        raise GatewayError(f"predict({series_id!r}): Invalid predictions: expected 1 rows but received {rows}")
    if strict:
        check_answer(answer, series_id)


def check_answer(answer: Any, series_id: str) -> np.ndarray:
    """The 14 probabilities of a 1-row answer with exactly the label columns in order, finite, within [0, 1].

    Kaggle does not check this at the call; a submission without these columns fails when it is scored.

    Raises:
        GatewayError: naming the series and the violation.
    """
    where = f"predict({series_id!r})"
    if isinstance(answer, pl.Series) or (_is_frame_like(answer) and type(answer).__name__ == "Series"):
        answer = answer.to_frame()
    if not _is_frame_like(answer):
        raise GatewayError(f"{where} returned a {type(answer).__name__}; a 1-row DataFrame of the "
                           f"{len(LABELS)} labels is needed to score the submission")
    columns = [str(c) for c in answer.columns]
    if columns != list(LABELS):
        missing = [c for c in LABELS if c not in columns]
        extra = [c for c in columns if c not in LABELS]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same names in another order"
        raise GatewayError(f"{where} returned columns {columns}; expected the {len(LABELS)} labels in competition "
                           f"order ({detail})")
    try:
        values = np.asarray(answer.to_numpy(), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise GatewayError(f"{where} returned non-numeric values: {exc}") from None
    if not np.isfinite(values).all():
        names = [c for c, v in zip(columns, values) if not math.isfinite(v)]
        raise GatewayError(f"{where} returned non-finite values (NaN/inf) in {names}")
    if ((values < 0.0) | (values > 1.0)).any():
        names = [f"{c}={v:g}" for c, v in zip(columns, values) if not 0.0 <= v <= 1.0]
        raise GatewayError(f"{where} returned values outside [0, 1]: {names}")
    return values


def _write_submission(answers: list[Any], order: list[str], out_dir: Path) -> Path:
    """submission.parquet: the id column first, then the answers' columns (polars answers, as the kit returns)."""
    if answers and all(isinstance(a, pl.DataFrame) for a in answers):
        try:
            frame = pl.concat(answers, how="vertical_relaxed")
        except (pl.exceptions.SchemaError, pl.exceptions.ComputeError) as exc:
            raise GatewayError(f"Inconsistent prediction columns or types: {exc} (INVALID_SUBMISSION)") from None
    else:
        frame = pl.DataFrame({"prediction": [a if not _is_frame_like(a) else a.to_numpy().ravel()[0]
                                             for a in answers]})
    frame = frame.with_columns(pl.Series(ID_COLUMN, order, dtype=pl.String)).select(
        [ID_COLUMN, *[c for c in frame.columns if c != ID_COLUMN]])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SUBMISSION_NAME
    frame.write_parquet(path)
    return path


