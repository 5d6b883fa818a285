"""The kernel's startup is race-free, and a caller's script is never re-run inside the decoding workers.

The import race: onnxruntime's extension imports numpy's C core as it loads. When the model-load thread did that
while the main thread was half-way through `import numpy` (Kaggle's `kaggle_evaluation` imports numpy, pandas,
polars and grpc right after the kernel starts its thread), one thread got the half-built module and the kernel
died at startup. The test below forces that interleaving with an import hook instead of waiting for chance.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from inference.config import PreprocessConfig, WindowConfig
from inference.labels import ID_COLUMN, LABELS
from tests.onnx_models import PlantedModel, export_onnx, write_bundle

REPO = Path(__file__).resolve().parents[1]

# Installed before anything else: records every fresh import with its thread, and forces the interleaving that
# broke the kernel. While the model-load thread is alive, the main thread is held inside `import numpy` (at
# numpy.__config__, whose `from numpy._core._multiarray_umath import ...` met the half-built core) until that
# thread reaches onnxruntime's extension, the module that imports numpy's C core. Against the kernel before the
# fix this gave "cannot import name '__cpu_features__' from partially initialized module" in 5 of 8 runs, and the
# record below showed the model-load thread importing 17-97 modules in all 8 runs (the assertion that fails).
HOOK = textwrap.dedent("""
    import importlib.abc, json, os, sys, threading, time
    MAIN = threading.main_thread()
    FRESH = []
    HELD = []
    LOADER_AT_EXTENSION = threading.Event()

    class Hold(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            thread = threading.current_thread()
            FRESH.append((thread.name, name))
            if thread is not MAIN and name == "onnxruntime.capi.onnxruntime_pybind11_state":
                LOADER_AT_EXTENSION.set()
            loading = any(t.name == "model-load" and t.is_alive() for t in threading.enumerate())
            if thread is MAIN and name == "numpy.__config__" and loading and not HELD:
                HELD.append(name)
                LOADER_AT_EXTENSION.wait(5)
                time.sleep(0.5)
            return None

    sys.meta_path.insert(0, Hold())

    def report():
        with open(os.environ["HOOK_RECORD"], "w") as handle:
            json.dump({"fresh": FRESH, "held": HELD}, handle)
""")

KAGGLE_LIKE_SERVER = textwrap.dedent('''
    """Stands in for kaggle_evaluation: imports what it imports (numpy, polars), serves with the kit's rules."""
    import numpy
    import polars

    from inference.gateway import LocalInferenceServer


    class RSNAInferenceServer(LocalInferenceServer):
        def run_local_gateway(self, data_paths=None, file_share_dir=None):
            return super().run_local_gateway(data_paths, file_share_dir, seed=0)
''')


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=32)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=32), windows=WindowConfig())
    return folder


def test_kernel_starts_and_answers_under_the_forced_import_interleaving(weights, write_phantom_series, tmp_path):
    series = write_phantom_series(seed=4)
    test_csv = tmp_path / "test.csv"
    pl.DataFrame({ID_COLUMN: [series.name]}).write_csv(test_csv)
    competition = tmp_path / "competition" / "kaggle_evaluation"
    competition.mkdir(parents=True)
    (competition / "__init__.py").write_text("")
    (competition / "rsna_inference_server.py").write_text(KAGGLE_LIKE_SERVER)
    record = tmp_path / "hook.json"
    script = HOOK + textwrap.dedent("""
        try:
            from inference.kernel import main
            status = main([])
        finally:
            report()
        sys.exit(status)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOOK_RECORD": str(record),
           "RSNA_COMPETITION_DIR": str(competition.parent), "RSNA_WEIGHTS_DIR": str(weights),
           "RSNA_TEST_CSV": str(test_csv), "RSNA_SERIES_DIR": str(series.parent),
           "RSNA_SHARE_DIR": str(tmp_path / "shared"), "RSNA_OUTPUT_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "partially initialized" not in log
    answer = pl.read_parquet(tmp_path / "submission.parquet")
    assert answer.columns == [ID_COLUMN, *LABELS] and answer.height == 1
    assert "answer: model" in log
    hook = json.loads(record.read_text())
    by_loader = [name for thread, name in hook["fresh"] if thread == "model-load"]
    assert by_loader == []  # everything it needs was imported on the main thread before it started


def test_a_script_without_a_main_guard_runs_once(tmp_path, write_phantom_series):
    """The decoding workers are started by fork+exec and never import the caller's __main__ script."""
    series = write_phantom_series(seed=5, compression="jpegls")
    marker = tmp_path / "ran.txt"
    script = tmp_path / "check_series.py"
    script.write_text(textwrap.dedent(f"""
        # no `if __name__ == "__main__":` guard, on purpose
        with open({str(marker)!r}, "a") as handle:
            handle.write("ran\\n")
        from inference.decode_pool import shared_pool
        from inference.load import load_series
        volume = load_series({str(series)!r})
        assert shared_pool().started, "the compressed files were not decoded by the workers"
        print("slices", volume.num_slices)
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "slices" in proc.stdout
    assert marker.read_text() == "ran\n"  # the side effect happened once: no worker re-ran the script
