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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401 - imported now, on the main thread (see above)
import polars as pl

from . import ensemble, gateway, load, normalize  # noqa: F401 - imported now, on the main thread (see above)
from .budget import RunBudget
from .config import BudgetConfig
from .decode_pool import DecodeLimits, DecodePool
from .labels import LABELS
from .predict import UNIFORM_PRIOR, Predictor, SeriesReport, probabilities_frame

__all__ = ["predict", "main", "KernelConfig", "KernelRuntime", "install_runtime", "import_kaggle_server", "ENV",
           "COMPETITION_DIR_DEFAULT", "RUN_RECORD_NAME"]

log = logging.getLogger(__name__)

COMPETITION_DIR_DEFAULT = "/kaggle/input/rsna-intracranial-aneurysm-detection"
RUN_RECORD_NAME = "gateway_run.json"  # what the kit's local gateway did, for `python -m evaluation`

# Environment variables read by the kernel (all optional; Kaggle's defaults apply when unset).
ENV = {
    "competition_dir": "RSNA_COMPETITION_DIR",  # competition data (kaggle_evaluation/, test.csv, series/)
    "weights_dir": "RSNA_WEIGHTS_DIR",  # manifest.json + ONNX folds; default <bundle>/weights
    "share_dir": "RSNA_SHARE_DIR",  # the gateway's share folder; default /kaggle/shared on Kaggle, a temp dir off it
    "output_dir": "RSNA_OUTPUT_DIR",  # where the kit's gateway writes submission.parquet; default the working folder
    "test_csv": "RSNA_TEST_CSV",  # the test csv; default <competition>/test.csv
    "series_dir": "RSNA_SERIES_DIR",  # the series folder; default <competition>/series
    "seed": "RSNA_GATEWAY_SEED",  # the kit's gateway visiting order seed; default time-based, as Kaggle's
    "providers": "RSNA_PROVIDERS",  # comma-separated onnxruntime providers; default CUDA if usable, else CPU
    "folds": "RSNA_FOLDS",  # comma-separated fold ids; default all folds of the manifest
    "gateway": "RSNA_GATEWAY",  # "auto" (Kaggle's when importable), "kaggle" (required) or "local" (the kit's)
    "budget": "RSNA_CALL_BUDGET_S",  # seconds one series may take before the kernel answers what it has; default 600
    "decode_workers": "RSNA_DECODE_WORKERS",  # decoding worker processes; default min(4, cores)
    "decode_timeout": "RSNA_DECODE_TIMEOUT_S",  # seconds a compressed file may take (+ per MB); default 20
    "decode_memory": "RSNA_DECODE_MEMORY_MB",  # address-space limit of each decoding worker; default 4096
    "run_hours": "RSNA_RUN_HOURS",  # the whole run's limit for the budget's projection; default the manifest's (12)
    "expected_series": "RSNA_EXPECTED_SERIES",  # series the run is projected for; default the manifest's (2500)
}
RERUN_ENV = gateway.RERUN_ENV
DEFAULT_BUDGET_S = 600.0  # well under Kaggle's 30 minutes per call


def _bundle_root() -> Path:
    """The folder that holds this `inference` package (the dataset root in a built bundle)."""
    return Path(__file__).resolve().parent.parent


def _csv_list(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


@dataclass(frozen=True)
class KernelConfig:
    """Every setting the kernel uses, resolved from the environment with Kaggle's defaults."""

    competition_dir: Path
    weights_dir: Path
    share_dir: Path | None  # None: Kaggle's default on Kaggle, a fresh temporary folder off it
    output_dir: Path
    test_csv: Path
    series_dir: Path
    explicit_test_data: bool  # RSNA_TEST_CSV or RSNA_SERIES_DIR was set
    gateway: str = "auto"
    seed: int | None = None
    providers: tuple[str, ...] | None = None
    folds: tuple[int, ...] | None = None
    budget_s: float = DEFAULT_BUDGET_S
    decode: DecodeLimits = DecodeLimits()
    run_hours: float | None = None  # None: the manifest's budget.run_hours
    expected_series: int | None = None  # None: the manifest's budget.expected_series

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelConfig:
        """Read `ENV` (unset or empty variables take the defaults).

        Raises:
            ValueError: a value that does not parse (a number that is not one, an unknown gateway mode).
        """
        env = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            value = env.get(ENV[key], "").strip()
            return value or None

        competition = Path(get("competition_dir") or COMPETITION_DIR_DEFAULT)
        mode = (get("gateway") or "auto").lower()
        if mode not in ("auto", "kaggle", "local"):
            raise ValueError(f"{ENV['gateway']} must be auto, kaggle or local, got {mode!r}")
        folds = _csv_list(get("folds"))
        providers = _csv_list(get("providers"))
        defaults = DecodeLimits()
        decode = DecodeLimits(
            workers=int(get("decode_workers")) if get("decode_workers") else None,
            timeout_s=float(get("decode_timeout") or defaults.timeout_s),
            memory_mb=int(get("decode_memory") or defaults.memory_mb),
        )
        return cls(
            competition_dir=competition,
            weights_dir=Path(get("weights_dir") or _bundle_root() / "weights"),
            share_dir=Path(get("share_dir")) if get("share_dir") else None,
            output_dir=Path(get("output_dir") or Path.cwd()),
            test_csv=Path(get("test_csv") or competition / "test.csv"),
            series_dir=Path(get("series_dir") or competition / "series"),
            explicit_test_data=bool(get("test_csv") or get("series_dir")),
            gateway=mode,
            seed=int(get("seed")) if get("seed") else None,
            providers=tuple(providers) if providers else None,
            folds=tuple(int(f) for f in folds) if folds else None,
            budget_s=float(get("budget") or DEFAULT_BUDGET_S),
            decode=decode,
            run_hours=float(get("run_hours")) if get("run_hours") else None,
            expected_series=int(get("expected_series")) if get("expected_series") else None,
        )


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
        budget = self.predictor.manifest.budget if self.predictor.manifest is not None else BudgetConfig()
        changes = {k: v for k, v in (("run_hours", config.run_hours), ("expected_series", config.expected_series))
                   if v is not None}
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
        """The 1-row answer of one series; then the consumed series is removed from the share folder."""
        try:
            probs, report = self.predictor.predict_series(series_path, degradation=self.budget.current)
            self.reports[report.series_uid] = report
            self.budget.record(report.total_s)
            return probabilities_frame(probs)
        finally:
            self._remove_consumed(series_path)

    def _remove_consumed(self, series_path: str) -> None:
        """Delete a consumed series under the share folder (Kaggle's gateway leaves it: the disk would fill up)."""
        share = self.config.share_dir or gateway.default_share_dir()
        try:
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

    def close(self) -> None:
        self.pool.close()


_RUNTIME: KernelRuntime | None = None
_RUNTIME_LOCK = threading.Lock()


def install_runtime(config: KernelConfig | None = None) -> KernelRuntime:
    """Build and start the runtime `predict` answers with (from the environment when `config` is None)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        config = config or KernelConfig.from_env()
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
    try:
        config = KernelConfig.from_env()
    except ValueError as exc:
        log.error("kernel: %s", exc)
        return 2
    log.info("kernel: inference package %s, weights %s, competition data %s, budget %.0f s per series",
             Path(__file__).resolve().parent, config.weights_dir, config.competition_dir, config.budget_s)
    install_runtime(config)
    server_cls = None if config.gateway == "local" else import_kaggle_server(config.competition_dir)
    if server_cls is None and config.gateway == "kaggle":
        log.error("%s=kaggle but kaggle_evaluation cannot be imported from %s", ENV["gateway"], config.competition_dir)
        return 2
    rerun = bool(os.environ.get(RERUN_ENV))
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
