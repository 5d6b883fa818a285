"""Kernel entry: start the evaluation server at once, load the fold ensemble in the background, answer each series."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPETITION_DIR_DEFAULT",
    "SHARE_DIR_DEFAULT",
    "ENV",
    "KernelPaths",
    "LazyPredictor",
    "prepare_onnxruntime",
    "import_kaggle_server",
    "main",
]

log = logging.getLogger(__name__)

COMPETITION_DIR_DEFAULT = "/kaggle/input/rsna-intracranial-aneurysm-detection"
SHARE_DIR_DEFAULT = "/kaggle/shared"

# Environment variables read by the kernel (all optional; Kaggle's defaults apply when unset).
ENV = {
    "competition_dir": "RSNA_COMPETITION_DIR",  # competition data (kaggle_evaluation/, test.csv, series/)
    "weights_dir": "RSNA_WEIGHTS_DIR",  # manifest.json + ONNX folds; default <bundle>/weights
    "share_dir": "RSNA_SHARE_DIR",  # where the gateway exposes series; default /kaggle/shared
    "output_dir": "RSNA_OUTPUT_DIR",  # where our gateway writes submission.parquet; default the working folder
    "test_csv": "RSNA_TEST_CSV",  # our gateway's test csv; default <competition>/test.csv
    "series_dir": "RSNA_SERIES_DIR",  # our gateway's series folder; default <competition>/series
    "labels_csv": "RSNA_LABELS_CSV",  # our gateway scores the submission against these labels when set
    "seed": "RSNA_GATEWAY_SEED",  # our gateway's visiting order seed; default 0
    "providers": "RSNA_PROVIDERS",  # comma-separated onnxruntime providers; default CUDA if usable, else CPU
    "folds": "RSNA_FOLDS",  # comma-separated fold ids; default all folds of the manifest
    "gateway": "RSNA_GATEWAY",  # "auto" (Kaggle's when importable), "kaggle" (required) or "local" (ours)
    "report": "RSNA_REPORT_PNG",  # our gateway writes its PNG report here when set (needs matplotlib)
}
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"


def _bundle_root() -> Path:
    """The folder that holds this `inference` package (the dataset root in a built bundle)."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KernelPaths:
    """Every path the kernel uses, resolved from the environment with Kaggle's defaults."""

    competition_dir: Path
    weights_dir: Path
    share_dir: Path
    output_dir: Path
    test_csv: Path
    series_dir: Path
    labels_csv: Path | None
    explicit_test_data: bool  # RSNA_TEST_CSV or RSNA_SERIES_DIR was set

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelPaths:
        env = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            value = env.get(ENV[key], "").strip()
            return value or None

        competition = Path(get("competition_dir") or COMPETITION_DIR_DEFAULT)
        labels = get("labels_csv")
        return cls(
            competition_dir=competition,
            weights_dir=Path(get("weights_dir") or _bundle_root() / "weights"),
            share_dir=Path(get("share_dir") or SHARE_DIR_DEFAULT),
            output_dir=Path(get("output_dir") or Path.cwd()),
            test_csv=Path(get("test_csv") or competition / "test.csv"),
            series_dir=Path(get("series_dir") or competition / "series"),
            labels_csv=Path(labels) if labels else None,
            explicit_test_data=bool(get("test_csv") or get("series_dir")),
        )


def prepare_onnxruntime() -> list[str]:
    """Make onnxruntime-gpu find CUDA/cuDNN, and choose the providers (CUDA first, CPU fallback, logged loudly).

    onnxruntime-gpu does not ship the CUDA libraries: `onnxruntime.preload_dlls()` (onnxruntime >= 1.21) loads the
    ones pip-installed with torch (nvidia-* wheels), which Kaggle's image has.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    log.info("onnxruntime %s, providers available: %s", ort.__version__, ", ".join(available))
    if "CUDAExecutionProvider" not in available:
        log.warning("!!! onnxruntime has no CUDAExecutionProvider (CPU build or no GPU): RUNNING ON CPU !!!")
        return ["CPUExecutionProvider"]
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()  # prints each library it cannot load, and does not raise for them
            log.info("onnxruntime.preload_dlls() done (any 'Failed to load' lines above name missing CUDA/cuDNN "
                     "libraries: onnxruntime-gpu %s must match the image's CUDA major version)", ort.__version__)
        except Exception as exc:  # a missing library shows up later as a CPU fallback
            log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", exc)
    else:
        log.info("onnxruntime %s has no preload_dlls(); relying on the system's CUDA libraries", ort.__version__)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class LazyPredictor:
    """The `predict(series_path)` handed to the server: the Predictor is built, and its models loaded, in the
    background, so the server starts at once; the first call waits for the load if it is still running.

    Args:
        weights_dir: bundle weights folder (manifest.json + ONNX folds).
        providers: onnxruntime providers (None: decided by `prepare_onnxruntime` in the background).
        folds: fold ids (None: all).
        shared_root: the share folder whose consumed series the Predictor deletes.
    """

    def __init__(self, weights_dir: str | Path, *, providers: Sequence[str] | None = None,
                 folds: Sequence[int] | None = None, shared_root: str | Path | None = None) -> None:
        self.weights_dir = Path(weights_dir)
        self.providers = None if providers is None else list(providers)
        self.folds = None if folds is None else list(folds)
        self.shared_root = shared_root
        self._predictor: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> LazyPredictor:
        """Build the Predictor and load the ensemble in a daemon thread."""
        self._thread = threading.Thread(target=self._build, name="model-load", daemon=True)
        self._thread.start()
        return self

    def _build(self) -> Any:
        with self._lock:
            if self._predictor is None:
                t0 = time.perf_counter()
                try:
                    providers = self.providers if self.providers is not None else prepare_onnxruntime()
                except Exception as exc:
                    log.warning("!!! cannot prepare onnxruntime (%s): RUNNING ON CPU !!!", exc)
                    providers = ["CPUExecutionProvider"]
                from .predict import Predictor

                predictor = Predictor(self.weights_dir, providers=providers, folds=self.folds,
                                      shared_root=self.shared_root)
                try:
                    ensemble = predictor.ensemble
                    if "CUDAExecutionProvider" not in ensemble.providers:
                        log.warning("!!! the fold ensemble runs on %s, not on CUDA: expect CPU speed !!!",
                                    ensemble.providers)
                    log.info("models loaded in %.1f s", time.perf_counter() - t0)
                except Exception as exc:  # the Predictor answers the priors for every series and logs why
                    log.error("!!! the fold ensemble failed to load: %s: %s; every series gets the priors !!!",
                              type(exc).__name__, exc)
                self._predictor = predictor
            return self._predictor

    @property
    def last_report(self) -> Any:
        """The Predictor's report of the last series (slice count and stage times), None before the first."""
        return getattr(self._predictor, "last_report", None)

    def __call__(self, series_path: str) -> Any:
        predictor = self._predictor if self._predictor is not None else self._build()
        return predictor.predict(series_path)


def import_kaggle_server(competition_dir: str | Path) -> type | None:
    """`kaggle_evaluation.rsna_inference_server.RSNAInferenceServer` from the competition folder, or None."""
    folder = str(Path(competition_dir))
    added = False
    if Path(folder, "kaggle_evaluation").is_dir() and folder not in sys.path:
        sys.path.insert(0, folder)
        added = True
    try:
        module = importlib.import_module("kaggle_evaluation.rsna_inference_server")
        return module.RSNAInferenceServer
    except Exception as exc:  # ImportError, or a broken package: our own gateway takes over
        log.info("kaggle_evaluation is not importable from %s (%s: %s)", folder, type(exc).__name__, exc)
        if added:
            sys.path.remove(folder)
        return None


def _csv_list(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.kernel",
        description="The Kaggle kernel entry. Configuration comes from environment variables: "
                    + ", ".join(f"{v}" for v in ENV.values()) + f", and Kaggle's {RERUN_ENV}.")
    parser.add_argument("--log-level", default="INFO", help="logging level when logging is not yet configured")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start Kaggle's inference server (serve() on the scoring rerun, its local gateway otherwise), or run our
    own gateway where `kaggle_evaluation` is not available. Returns the exit status."""
    args = _parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = KernelPaths.from_env()
    mode = (os.environ.get(ENV["gateway"]) or "auto").strip().lower()
    if mode not in ("auto", "kaggle", "local"):
        log.error("%s must be auto, kaggle or local, got %r", ENV["gateway"], mode)
        return 2
    log.info("kernel: inference package %s, weights %s, competition data %s", Path(__file__).resolve().parent,
             paths.weights_dir, paths.competition_dir)
    folds = _csv_list(os.environ.get(ENV["folds"]))
    predict = LazyPredictor(paths.weights_dir, providers=_csv_list(os.environ.get(ENV["providers"])),
                            folds=[int(f) for f in folds] if folds else None, shared_root=paths.share_dir).start()
    server_cls = None if mode == "local" else import_kaggle_server(paths.competition_dir)
    if server_cls is not None:
        server = server_cls(predict)
        if os.environ.get(RERUN_ENV):
            log.info("kernel: competition rerun: serving")
            server.serve()
        elif paths.explicit_test_data:
            server.run_local_gateway(data_paths=(str(paths.test_csv), str(paths.series_dir)))
        else:
            log.info("kernel: Kaggle's local gateway with the competition's own test data")
            server.run_local_gateway()
        return 0
    if mode == "kaggle":
        log.error("%s=kaggle but kaggle_evaluation cannot be imported from %s", ENV["gateway"], paths.competition_dir)
        return 2
    if os.environ.get(RERUN_ENV):
        log.error("%s is set but kaggle_evaluation is missing from %s: cannot serve the scoring run",
                  RERUN_ENV, paths.competition_dir)
        return 2
    from .gateway import GatewayError, run_gateway, write_report

    log.info("kernel: kaggle_evaluation unavailable: running the kit's local gateway on %s", paths.test_csv)
    try:
        result = run_gateway(predict, test_csv=paths.test_csv, series_dir=paths.series_dir,
                             share_dir=paths.share_dir, out_dir=paths.output_dir, labels_csv=paths.labels_csv,
                             seed=int(os.environ.get(ENV["seed"]) or 0))
    except GatewayError as exc:
        log.error("kernel: the local gateway stopped the run (Kaggle would fail the submission): %s", exc)
        return 1
    report = os.environ.get(ENV["report"])
    if report:
        log.info("kernel: report written to %s", write_report(result, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
