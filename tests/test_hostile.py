"""A hostile DICOM corpus (generated here, never stored): each case answers a valid row in a fresh process.

Crashing decoders (SIGSEGV, SIGABRT), a decoder that loops while its memory grows, cut and empty files, a
header declaring 65535 x 65535 pixels, a non-image object, degenerate geometry, a second series in the folder
and rescale tags missing on half the files: every case must end with a valid 1-row answer within its deadline,
and a broken file must cost that file only (the series is still answered by the model from its good slices).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.labels import LABELS
from tests.hostile_dicom import HOSTILE_CASES, run_predict_in_subprocess, write_hostile_series
from tests.onnx_models import PlantedModel, export_onnx, write_bundle

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 8
DEADLINE_S = 90.0  # per case: interpreter start, worker start, a 4 s decode timeout, well under the 60 s budget

CODESTREAM_CASES = ["jpegls_zero_width", "jpegls_precision_31", "jpegls_zero_lines", "jpeg2000_ssiz_255"]
FILE_CASES = ["truncated", "truncated_jpegls", "truncated_jpeg2000", "zero_byte", "rtdose_intruder", "declared_65535"]
GEOMETRY_CASES = ["zero_orientation", "collinear_orientation", "identical_positions", "missing_orientation"]
SERIES_CASES = ["second_series", "second_series_same_pos", "rescale_missing"]  # nothing lost, something reported
CASES = ([(name, position) for name in CODESTREAM_CASES for position in ("first", "middle")]
         + [(name, "middle") for name in FILE_CASES] + [(name, "first") for name in GEOMETRY_CASES]
         + [(name, "middle") for name in SERIES_CASES])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    onnx = export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=32)
    write_bundle(folder, [onnx], preprocess=PreprocessConfig(image_size=32), windows=WindowConfig(),
                 aggregation=AggregationConfig(), priors=tuple([0.01] * len(LABELS)))
    return folder


def test_every_case_is_covered():
    assert {name for name, _ in CASES} == set(HOSTILE_CASES)


@pytest.mark.parametrize("name, position", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_hostile_series_gets_a_valid_row_from_its_good_slices(weights, tmp_path, name, position):
    series = write_hostile_series(name, tmp_path / "1.2.826.0.1.3680043.8.498.77", position=position,
                                  n_good=N_GOOD, size=32)
    run = run_predict_in_subprocess(series.folder, weights, cwd=REPO, timeout_s=DEADLINE_S)
    assert run.returncode == 0 and run.result is not None, run.log[-3000:]
    result = run.result
    assert result["columns"] == list(LABELS)
    row = np.asarray(result["row"])
    assert row.shape == (len(LABELS),) and np.isfinite(row).all() and ((row >= 0) & (row <= 1)).all()
    assert result["answer"] == "model", run.log[-3000:]  # the model answered, not the priors
    if name in GEOMETRY_CASES:
        assert result["slices"] == N_GOOD + 1  # nothing collapsed, nothing dropped
    elif name in SERIES_CASES:
        assert result["slices"] == N_GOOD + 1  # the folder's own series, whole: nothing merged, nothing replaced
        assert "duplicate positions" not in run.log
        assert ("RescaleIntercept missing" if name == "rescale_missing" else "another series") in run.log
    elif name == "rtdose_intruder":
        assert result["slices"] == N_GOOD and result["modality"] == "CT"  # the image stack won
        assert "non-image objects" in run.log
    else:
        assert result["slices"] == N_GOOD  # the broken file cost itself, the series kept its good slices
        assert f"skipped {series.bad[0].name}" in run.log  # and the loss is logged by name
        if name == "declared_65535":
            assert "larger than any CT/MR scanner writes" in run.log and "MemoryError" not in run.log
        if name == "jpegls_zero_lines":  # the hung file is blamed at once and never decoded again
            assert run.log.count("the file is not retried") == 1 and "one by one" not in run.log
