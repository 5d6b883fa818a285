"""The kernel's settings: every environment variable it reads, checked once at startup (a bad value: its default)."""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decode_pool import DecodeLimits
from .gateway import RERUN_ENV

__all__ = ["KernelConfig", "ENV", "COMPETITION_DIR_DEFAULT", "DEFAULT_BUDGET_S", "GATEWAY_MODES", "RERUN_ENV"]

log = logging.getLogger(__name__)

COMPETITION_DIR_DEFAULT = "/kaggle/input/rsna-intracranial-aneurysm-detection"
DEFAULT_BUDGET_S = 600.0  # well under Kaggle's 30 minutes per call
GATEWAY_MODES = ("auto", "kaggle", "local")

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
    "rerun": RERUN_ENV,  # set by Kaggle for the scoring rerun: serve (any non-empty value)
}


# ------------------------------------------------------------------------------------------------ value parsers
# Each takes the stripped, non-empty text and returns the value or raises ValueError saying what was expected.


def _number(text: str, kind: type, *, low: float, low_open: bool = False) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"not a {'whole ' if kind is int else ''}number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if value < low or (low_open and value == low):
        raise ValueError(f"must be {'>' if low_open else '>='} {low:g}")
    return value


def _positive(text: str) -> float:
    return _number(text, float, low=0.0, low_open=True)


def _at_least(low: int) -> Callable[[str], int]:
    return lambda text: _number(text, int, low=low)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _folds(text: str) -> tuple[int, ...]:
    items = _csv(text)
    if not items:
        raise ValueError("no fold id")
    try:
        folds = tuple(int(item) for item in items)
    except ValueError:
        raise ValueError("fold ids must be whole numbers separated by commas") from None
    if any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise ValueError("fold ids must be distinct and >= 0")
    return folds


def _providers(text: str) -> tuple[str, ...]:
    items = _csv(text)
    if not items:
        raise ValueError("no provider")
    try:
        import onnxruntime

        known = set(onnxruntime.get_all_providers())
    except Exception:  # noqa: BLE001 - without onnxruntime the names cannot be checked here
        return tuple(items)
    unknown = [item for item in items if item not in known]
    if unknown:
        raise ValueError(f"unknown onnxruntime provider(s) {', '.join(unknown)} (known: e.g. CUDAExecutionProvider, "
                         "CPUExecutionProvider)")
    return tuple(items)


def _gateway(text: str) -> str:
    mode = text.lower()
    if mode not in GATEWAY_MODES:
        raise ValueError("must be auto, kaggle or local")
    return mode


def _path(text: str) -> Path:
    return Path(text)


def _flag(_text: str) -> bool:
    return True  # any non-empty value, as Kaggle's own server reads it


_PARSERS: dict[str, Callable[[str], Any]] = {
    "competition_dir": _path, "weights_dir": _path, "share_dir": _path, "output_dir": _path, "test_csv": _path,
    "series_dir": _path, "seed": _seed, "providers": _providers, "folds": _folds, "gateway": _gateway,
    "budget": _positive, "decode_workers": _at_least(1), "decode_timeout": _positive, "decode_memory": _at_least(0),
    "run_hours": _positive, "expected_series": _at_least(1), "rerun": _flag,
}
_DEFAULT_TEXT = {
    "seed": "time-based", "providers": "CUDA when usable, else CPU", "folds": "every fold of the manifest",
    "gateway": "auto", "budget": f"{DEFAULT_BUDGET_S:.0f} s", "decode_workers": "min(4, cores)",
    "decode_timeout": f"{DecodeLimits().timeout_s:g} s", "decode_memory": f"{DecodeLimits().memory_mb} MiB",
    "run_hours": "the manifest's", "expected_series": "the manifest's",
}


def _bundle_root() -> Path:
    """The folder that holds this `inference` package (the dataset root in a built bundle)."""
    return Path(__file__).resolve().parent.parent


def _has_weights(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() or (folder / "bundle.json").is_file()


@dataclass(frozen=True)
class KernelConfig:
    """Every setting the kernel uses, resolved from the environment with Kaggle's defaults.

    Attributes:
        problems: one line per environment value that was refused (its default is used instead).
    """

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
    rerun: bool = False  # Kaggle's scoring rerun (KAGGLE_IS_COMPETITION_RERUN set)
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, strict: bool = False) -> KernelConfig:
        """Read `ENV` once (unset or empty variables take the defaults).

        A value that does not parse or is out of range (a number that is not one, 0 workers, an unknown gateway
        mode or onnxruntime provider) is logged as an error, loudly, and its default used: a typo never stops
        the run. A weights folder that does not exist gives way to the bundle's own weights when those exist.

        Args:
            environ: the environment (default os.environ).
            strict: raise instead of falling back to the defaults.
        Raises:
            ValueError: with `strict`, naming every refused value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, name in ENV.items():
            text = str(env.get(name, "")).strip()
            if not text:
                continue
            try:
                values[key] = _PARSERS[key](text)
            except ValueError as exc:
                problems.append(f"{name}={text!r} ignored ({exc}): using the default "
                                f"({_DEFAULT_TEXT.get(key, 'unset')})")
        default_weights = _bundle_root() / "weights"
        weights = values.get("weights_dir")
        if weights is not None and not weights.is_dir() and _has_weights(default_weights):
            problems.append(f"{ENV['weights_dir']}={str(weights)!r} ignored (no such folder): using the bundle's "
                            f"weights {default_weights}")
            values.pop("weights_dir")
        if strict and problems:
            raise ValueError("; ".join(problems))
        for problem in problems:
            log.error("!!! setting %s !!!", problem)
        competition = values.get("competition_dir") or Path(COMPETITION_DIR_DEFAULT)
        defaults = DecodeLimits()
        decode = DecodeLimits(
            workers=values.get("decode_workers"),
            timeout_s=values.get("decode_timeout", defaults.timeout_s),
            memory_mb=values.get("decode_memory", defaults.memory_mb),
        )
        return cls(
            competition_dir=competition,
            weights_dir=values.get("weights_dir") or default_weights,
            share_dir=values.get("share_dir"),
            output_dir=values.get("output_dir") or Path.cwd(),
            test_csv=values.get("test_csv") or competition / "test.csv",
            series_dir=values.get("series_dir") or competition / "series",
            explicit_test_data="test_csv" in values or "series_dir" in values,
            gateway=values.get("gateway", "auto"),
            seed=values.get("seed"),
            providers=values.get("providers"),
            folds=values.get("folds"),
            budget_s=values.get("budget", DEFAULT_BUDGET_S),
            decode=decode,
            run_hours=values.get("run_hours"),
            expected_series=values.get("expected_series"),
            rerun=values.get("rerun", False),
            problems=tuple(problems),
        )

    @classmethod
    def defaults(cls) -> KernelConfig:
        """The configuration with every variable unset (what the kernel falls back to when nothing else works)."""
        return cls.from_env({})
