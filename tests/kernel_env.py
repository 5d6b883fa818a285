"""Test helper: the clean, offline environment a bundled kernel runs in (no PYTHONPATH, no user site)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["clean_kernel_env"]


def clean_kernel_env(tmp: Path, bundle: Path, test_dir: Path, **extra: str) -> dict[str, str]:
    """Environment variables for running the bundled kernel script on `test_dir` (test.csv + series/)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "PYTHONPATH": "",
           "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8", "RSNA_BUNDLE_DIR": str(bundle),
           "RSNA_COMPETITION_DIR": str(tmp / "no-competition-data"), "RSNA_TEST_CSV": str(test_dir / "test.csv"),
           "RSNA_SERIES_DIR": str(test_dir / "series"), "RSNA_SHARE_DIR": str(tmp / "shared"),
           "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env
