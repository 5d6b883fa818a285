"""Kernel entry: the `predict` endpoint Kaggle's server calls, the models loaded in the background, serving at once."""
from __future__ import annotations

# Every module that a background thread of the kernel uses is imported here, on the main thread, before any thread
# starts. onnxruntime's extension imports numpy's C core while it loads; when the model-load thread did that while
# the main thread was half-way through `import numpy` (kaggle_evaluation imports numpy, pandas, polars and grpc
# right after the thread starts), Python handed one thread the half-built module and the kernel died with
# "cannot import name '__cpu_features__' from partially initialized module".
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401 - imported now, on the main thread (see above)
import polars as pl

from . import ensemble, gateway, load, normalize  # noqa: F401 - imported now, on the main thread (see above)
from .budget import RunBudget
from .config import BudgetConfig
from .decode_pool import DecodePool
from .labels import LABELS
from .predict import UNIFORM_PRIOR, Predictor, SeriesReport, probabilities_frame
from .settings import COMPETITION_DIR_DEFAULT, DEFAULT_BUDGET_S, ENV, KernelConfig

__all__ = ["predict", "main", "KernelConfig", "KernelRuntime", "install_runtime", "import_kaggle_server", "ENV",
           "COMPETITION_DIR_DEFAULT", "DEFAULT_BUDGET_S", "RUN_RECORD_NAME", "remove_consumed"]

log = logging.getLogger(__name__)

RUN_RECORD_NAME = "gateway_run.json"  # what the kit's local gateway did, for `python -m evaluation`
RERUN_ENV = gateway.RERUN_ENV


class KernelRuntime:
    """The kernel's side of the evaluation API: the Predictor, its decoding pool, the share-folder cleanup.

    `start()` starts the decoding workers and the model load in the background and returns at once, so the server
    starts serving within Kaggle's startup limit; the first series waits for the load if it is still running.
    """

    def __init__(self, config: KernelConfig, *, providers: Sequence[str] | None = None) -> None:
        self.config = config
        self.pool = DecodePool(config.decode)
        self.predictor = Predictor(config.weights_dir, providers=providers, folds=config.folds,
                                   decode_pool=self.pool, budget_s=config.budget_s)
        known = {f.fold for f in self.predictor.manifest.folds} if self.predictor.manifest is not None else None
        if config.folds and known is not None and not set(config.folds) <= known:
            log.error("!!! setting %s=%s ignored (the manifest has folds %s): using every fold !!!", ENV["folds"],
                      ",".join(map(str, config.folds)), sorted(known))
            self.config = config = replace(config, folds=None)
            self.predictor = Predictor(config.weights_dir, providers=providers, decode_pool=self.pool,
                                       budget_s=config.budget_s)
        budget = self.predictor.manifest.budget if self.predictor.manifest is not None else BudgetConfig()
        changes: dict[str, Any] = {k: v for k, v in (("run_hours", config.run_hours),
                                                      ("expected_series", config.expected_series)) if v is not None}
        self.budget = RunBudget(replace(budget, **changes))
        self.reports: dict[str, SeriesReport] = {}
        self._loader: threading.Thread | None = None

    def start(self) -> KernelRuntime:
        """Start the decoding workers and load the fold ensemble in a daemon thread."""
        try:
            self.pool.start()
        except Exception as exc:  # no pebble/loky: the loader decodes in-process (and says so loudly)
            log.warning("!!! decoding workers unavailable (%s) !!!", exc)
        self._loader = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._loader.start()
        return self

    def _load(self) -> None:
        t0 = time.perf_counter()
        if self.predictor.load(warm_up=True):
            providers = self.predictor.ensemble.providers
            if "CUDAExecutionProvider" not in providers:
                log.warning("!!! the fold ensemble runs on %s, not on CUDA: expect CPU speed !!!", providers)
            log.info("models loaded in %.1f s", time.perf_counter() - t0)

    def answer(self, series_path: str) -> pl.DataFrame:
        """The 1-row answer of one series (`predict` removes the consumed series afterwards, whatever happened)."""
        probs, report = self.predictor.predict_series(series_path, degradation=self.budget.current)
        self.reports[report.series_uid] = report
        self.budget.record(report.total_s)
        return probabilities_frame(probs)

    def close(self) -> None:
        self.pool.close()


def remove_consumed(series_path: str, share_dir: str | Path | None) -> None:
    """Delete a consumed series folder under the share folder (Kaggle's gateway leaves it: the disk would fill up).

    Only a real folder strictly inside `share_dir` (default: Kaggle's /kaggle/shared/ on Kaggle) is removed, never
    a symlink or what a symlink points to. Never raises.
    """
    try:
        share = share_dir if share_dir is not None else gateway.default_share_dir()
        # absolute, not resolved: the shared series folders hold symlinks to the data, never follow them
        root = Path(os.path.abspath(share)) if share is not None else None
        path = Path(os.path.abspath(str(series_path)))
        if root is None or root not in path.parents or not path.is_dir() or path.is_symlink():
            return
        try:
            shutil.rmtree(path)
        except PermissionError:  # an unreadable folder: make it ours first
            os.chmod(path, 0o700)
            shutil.rmtree(path)
    except Exception as exc:  # noqa: BLE001 - cleanup never costs the answer
        log.warning("could not remove consumed series %s: %s", series_path, exc)


_RUNTIME: KernelRuntime | None = None
_RUNTIME_LOCK = threading.Lock()
_CONFIG: KernelConfig | None = None  # the settings, read from the environment once


def _settings(*, fresh: bool = False) -> KernelConfig:
    """The kernel's settings: the environment is read (and checked) on the first call only (or when `fresh`)."""
    global _CONFIG
    if _CONFIG is None or fresh:
        try:
            _CONFIG = KernelConfig.from_env()
        except Exception as exc:  # noqa: BLE001 - never expected (bad values fall back); then every default
            log.error("!!! the settings could not be read (%s: %s): every default used !!!", type(exc).__name__, exc)
            _CONFIG = KernelConfig.defaults()
    return _CONFIG


def install_runtime(config: KernelConfig | None = None) -> KernelRuntime:
    """Build and start the runtime `predict` answers with (from the environment when `config` is None)."""
    global _RUNTIME, _CONFIG
    with _RUNTIME_LOCK:
        if config is not None:
            _CONFIG = config
        config = _settings()
        providers = list(config.providers) if config.providers else _safe_providers()
        _RUNTIME = KernelRuntime(config, providers=providers).start()
        return _RUNTIME


def _safe_providers() -> list[str]:
    try:
        return ensemble.choose_providers()
    except Exception as exc:  # noqa: BLE001
        log.warning("!!! cannot prepare onnxruntime (%s): RUNNING ON CPU !!!", exc)
        return ["CPUExecutionProvider"]


def predict(series_path: str) -> pl.DataFrame:
    """The endpoint handed to Kaggle's server: one series folder -> a 1-row frame of the 14 labels. Never raises.

    Kaggle's server registers endpoints by `__name__` and its gateway calls the one named `predict`, from a server
    thread, once per series. Any exception there fails the whole submission, so every failure ends here as a row
    of priors (the manifest's, else 0.5) and a log line.
    """
    try:
        runtime = _RUNTIME if _RUNTIME is not None else install_runtime()
        return runtime.answer(series_path)
    except Exception as exc:  # noqa: BLE001 - the run must go on
        log.error("series %s: the kernel failed (%s: %s); returning priors", series_path, type(exc).__name__, exc)
        priors = getattr(getattr(_RUNTIME, "predictor", None), "priors", None)
        try:
            return probabilities_frame(priors if priors is not None else [UNIFORM_PRIOR] * len(LABELS))
        except Exception:  # noqa: BLE001
            return probabilities_frame([UNIFORM_PRIOR] * len(LABELS))
    finally:  # whatever failed above (the runtime itself included), the consumed series leaves the disk
        config = _RUNTIME.config if _RUNTIME is not None else _CONFIG
        remove_consumed(series_path, config.share_dir if config is not None else None)


def import_kaggle_server(competition_dir: str | Path) -> type | None:
    """`kaggle_evaluation.rsna_inference_server.RSNAInferenceServer` from the competition folder, or None."""
    import importlib

    folder = str(Path(competition_dir))
    added = False
    if Path(folder, "kaggle_evaluation").is_dir() and folder not in sys.path:
        sys.path.insert(0, folder)
        added = True
    try:
        module = importlib.import_module("kaggle_evaluation.rsna_inference_server")
        return module.RSNAInferenceServer
    except Exception as exc:  # ImportError, or a broken package: the kit's own gateway takes over
        log.info("kaggle_evaluation is not importable from %s (%s: %s)", folder, type(exc).__name__, exc)
        if added:
            sys.path.remove(folder)
        return None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.kernel",
        description="The Kaggle kernel entry. Configuration comes from environment variables: "
                    + ", ".join(ENV.values()) + f", and Kaggle's {RERUN_ENV}.")
    parser.add_argument("--log-level", default="INFO", help="logging level when logging is not yet configured")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the scoring rerun with Kaggle's server, or run a gateway locally (Kaggle's when importable, else the
    kit's stand-in); returns the exit status."""
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _settings(fresh=True)  # a bad value is logged loudly and its default used: never a reason to stop
    log.info("kernel: inference package %s, weights %s, competition data %s, budget %.0f s per series",
             Path(__file__).resolve().parent, config.weights_dir, config.competition_dir, config.budget_s)
    install_runtime(config)
    server_cls = None if config.gateway == "local" else import_kaggle_server(config.competition_dir)
    if server_cls is None and config.gateway == "kaggle":
        log.error("%s=kaggle but kaggle_evaluation cannot be imported from %s", ENV["gateway"], config.competition_dir)
        return 2
    rerun = config.rerun
    if server_cls is None and rerun:
        log.error("%s is set but kaggle_evaluation is missing from %s: cannot serve the scoring run",
                  RERUN_ENV, config.competition_dir)
        return 2
    server = (server_cls or gateway.LocalInferenceServer)(predict)
    if rerun:
        log.info("kernel: competition rerun: serving")
        server.serve()
        return 0
    return _run_local_gateway(server, config, kaggle=server_cls is not None)


def _run_local_gateway(server: Any, config: KernelConfig, *, kaggle: bool) -> int:
    """One local gateway run over the test data; off Kaggle the share folder is always passed (Kaggle's needs it)."""
    share, temporary = config.share_dir, None
    if share is None and gateway.default_share_dir() is None:
        temporary = Path(tempfile.mkdtemp(prefix="rsna_shared_"))
        share = temporary
    data_paths = None
    if config.explicit_test_data or not kaggle:  # absolute: the gateway builds predict's path from it
        data_paths = (str(config.test_csv.absolute()), str(config.series_dir.absolute()))
    share_arg = None if share is None else str(share)
    try:
        if kaggle:
            log.info("kernel: Kaggle's local gateway on %s", data_paths or "the competition's own test data")
            server.run_local_gateway(data_paths=data_paths, file_share_dir=share_arg)
            return 0
        log.info("kernel: kaggle_evaluation unavailable: the kit's local gateway on %s", config.test_csv)
        try:
            run = server.run_local_gateway(data_paths=data_paths, file_share_dir=share_arg, seed=config.seed,
                                           out_dir=config.output_dir, progress=True)
        except gateway.GatewayError as exc:
            log.error("kernel: the local gateway stopped the run (Kaggle would fail the submission): %s", exc)
            return 1
        _write_run_record(run, config)
        return 0
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        if _RUNTIME is not None:
            _RUNTIME.close()


def _write_run_record(run: gateway.GatewayRun, config: KernelConfig) -> Path:
    """gateway_run.json: the visiting order, each call's time and each series' report, for `python -m evaluation`."""
    reports = _RUNTIME.reports if _RUNTIME is not None else {}
    record = {
        "process_started_at": _process_start_time(),
        "gateway_started_at": run.started_at,
        "first_answer_at": run.first_answer_at,
        "order": run.order,
        "durations_s": run.durations_s,
        "files": run.files,
        "series": {uid: asdict(report) for uid, report in reports.items()},
        "budget_s": config.budget_s,
        "run_budget": _RUNTIME.budget.summary() if _RUNTIME is not None else None,
        "submission": str(run.submission_path),
    }
    path = config.output_dir / RUN_RECORD_NAME
    path.write_text(json.dumps(record, indent=1) + "\n")
    log.info("kernel: run record written to %s", path)
    return path


def _process_start_time() -> float:
    """Wall-clock time (epoch seconds) at which this process started (now, when /proc cannot tell)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as handle:
            stat = handle.read()
        start_ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + start_ticks / ticks
    except (OSError, ValueError, IndexError):
        return time.time()


_ = np  # numpy is imported above on purpose (the import race), not otherwise used here


if __name__ == "__main__":
    raise SystemExit(main())
