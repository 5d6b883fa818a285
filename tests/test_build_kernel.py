"""build_kernel.py: checks before writing, bundle contents, notebook, metadata, and the bundled kernel run offline."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import build_kernel
from bundle import BuildError, BuildOptions, build
from bundle.checks import ORT_MAX_OPSET, max_opset
from bundle.modules import VENDORED_PACKAGES, runtime_modules
from bundle.notebook import TEMPLATE, cells_from_py, kernel_cells
from bundle.options import BUNDLE_MARKER
from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.labels import COMPETITION_SLUG, ID_COLUMN, LABELS
from inference.manifest import Manifest, sha256_file
from inference.predict import Predictor
from tests.kernel_env import clean_kernel_env
from tests.onnx_models import PlantedModel, export_onnx, write_bundle

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A two-fold ensemble of planted ONNX models with its manifest."""
    folder = tmp_path_factory.mktemp("weights")
    windows = WindowConfig(offsets=(-1, 0, 1), batch_size=16)
    files = [export_onnx(PlantedModel(windows.channels, gain=6.0 + i), folder / f"fold{i}.onnx",
                         channels=windows.channels, size=SIZE) for i in range(2)]
    write_bundle(folder, files, preprocess=PreprocessConfig(image_size=SIZE), windows=windows,
                 aggregation=AggregationConfig(tta_flip=False))
    return folder


@pytest.fixture(scope="module")
def built(weights, tmp_path_factory) -> dict:
    """The bundle built through the CLI (TTA switched on, batch size 7, no GPU)."""
    out = tmp_path_factory.mktemp("dist")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = build_kernel.main(["--weights", str(weights), "--out", str(out), "--username", "tester",
                                    "--tta", "on", "--batch-size", "7", "--no-gpu", "--gpu-batch-size", "64",
                                    "--degrade", "stride_2,tta_off", "--expected-series", "100",
                                    "--degrade-after", "1"])  # 6 series: a step on each one's evidence
    assert status == 0
    return {"out": out, "dataset": out / "dataset", "kernel": out / "kernel", "stdout": stdout.getvalue()}


@pytest.fixture(scope="module")
def phantom_test(tmp_path_factory) -> Path:
    """A small phantom test split (6 series: every location positive and negative at least once)."""
    from phantom import make_dataset

    root = tmp_path_factory.mktemp("phantom")
    make_dataset(root, series=0, test_series=6, seed=11, size=(40, 56), slices=(10, 16))
    return root / "test"


def test_dataset_holds_runtime_package_and_weights(built, weights):
    dataset = built["dataset"]
    files = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    package = sorted(p.stem for p in (dataset / "inference").iterdir())
    assert package == runtime_modules()
    assert {"kernel", "gateway", "predict", "load", "ensemble", "normalize"} <= set(package)
    assert all(p.suffix == ".py" for p in (dataset / "inference").iterdir())
    assert "metric" not in package  # scoring stays in the development package
    assert not any(f.split("/")[0] in ("phantom", "training", "tests", "scripts", "evaluation") for f in files)
    for name in VENDORED_PACKAGES:  # pure-Python runtime libraries travel in vendor/
        assert (dataset / "vendor" / name / "__init__.py").is_file()
    assert "train_minimal.py" not in files and "build_kernel.py" not in files
    bundled = Manifest.read(dataset / "weights", verify=True)
    assert bundled.aggregation.tta_flip is True and bundled.windows.batch_size == 7
    assert bundled.windows.gpu_batch_size == 64
    assert bundled.budget.degrade_steps == ("stride_2", "tta_off") and bundled.budget.expected_series == 100
    source = Manifest.read(weights, verify=True)
    assert [f.sha256 for f in bundled.folds] == [f.sha256 for f in source.folds]
    assert [sha256_file(dataset / "weights" / f.file) for f in bundled.folds] == [f.sha256 for f in source.folds]
    marker = json.loads((dataset / BUNDLE_MARKER).read_text())
    assert marker["dataset_id"] == "tester/rsna-aneurysm-kit-bundle" and marker["opsets"]
    for part in ("runtime package", "weights fold 0", "weights fold 1", "kernel", "total"):
        assert part in built["stdout"]


def test_metadata_have_the_kaggle_cli_fields(built):
    dataset_meta = json.loads((built["dataset"] / "dataset-metadata.json").read_text())
    assert dataset_meta["id"] == "tester/rsna-aneurysm-kit-bundle"
    assert 6 <= len(dataset_meta["title"]) <= 50
    assert dataset_meta["licenses"] and all("name" in lic for lic in dataset_meta["licenses"])
    meta = json.loads((built["kernel"] / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/rsna-aneurysm-kit-submission"
    assert meta["title"].lower().replace(" ", "-") == meta["id"].split("/")[1]
    assert (built["kernel"] / meta["code_file"]).is_file() and meta["code_file"].endswith(".ipynb")
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["is_private"] is True and meta["enable_gpu"] is False and meta["enable_internet"] is False
    assert meta["dataset_sources"] == [dataset_meta["id"]]
    assert meta["competition_sources"] == [COMPETITION_SLUG]


def test_notebook_is_valid_nbformat4_and_equals_py_twin(built):
    nbformat = pytest.importorskip("nbformat")
    meta = json.loads((built["kernel"] / "kernel-metadata.json").read_text())
    notebook_path = built["kernel"] / meta["code_file"]
    raw = json.loads(notebook_path.read_text())
    assert raw["nbformat"] == 4
    notebook = nbformat.reads(notebook_path.read_text(), as_version=4)
    nbformat.validate(notebook)
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    twin = notebook_path.with_suffix(".py").read_text()
    assert cells_from_py(twin) == sources
    for source in sources:
        compile(source, "cell", "exec")
    code = "\n".join(sources)
    assert "--no-index" in code and "--find-links" in code and "kernel_main" in code
    assert sources == kernel_cells(dataset_slug="rsna-aneurysm-kit-bundle")  # the template, names filled in
    assert "'rsna-aneurysm-kit-bundle'" in code and repr(BUNDLE_MARKER) in code and "__DATASET_SLUG__" not in code


def test_the_notebook_template_is_a_real_python_file():
    source = TEMPLATE.read_text()
    compile(source, str(TEMPLATE), "exec")  # linters and tests read it as code, not as strings in build_kernel.py
    assert len(cells_from_py(source)) == 3


def test_an_onnxruntime_release_unknown_to_the_opset_table_fails_loudly():
    assert max_opset("1.22.0") == ORT_MAX_OPSET[(1, 22)]
    with pytest.raises(BuildError, match="does not know which opsets onnxruntime 1.27.1 implements"):
        max_opset("1.27.1")


def test_bundled_kernel_runs_offline_in_a_clean_process(built, phantom_test, tmp_path_factory):
    from evaluation.__main__ import summarize_run

    tmp = tmp_path_factory.mktemp("kaggle")
    assert REPO not in tmp.parents
    bundle = shutil.copytree(built["dataset"], tmp / "input" / "rsna-aneurysm-kit-bundle")
    kernel = shutil.copytree(built["kernel"], tmp / "kernel")
    working = tmp / "working"
    working.mkdir()
    env = clean_kernel_env(tmp, bundle, phantom_test)
    proc = subprocess.run([sys.executable, "-X", "importtime", str(kernel / "rsna-aneurysm-kit-submission.py")],
                          cwd=working, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported
    assert not imported & {"torch", "timm", "torchvision", "training", "phantom", "evaluation", "matplotlib"}
    assert f"runtime package: {bundle / 'inference'}" in log  # the copy, not the repository, was imported
    assert "kaggle_evaluation is not importable" in log
    submission = pl.read_parquet(working / "submission.parquet")
    expected = pl.read_csv(phantom_test / "test.csv")[ID_COLUMN].to_list()
    assert submission.columns == [ID_COLUMN, *LABELS]
    assert sorted(submission[ID_COLUMN].to_list()) == sorted(expected)
    values = submission.select(LABELS).to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    priors = np.array(Manifest.read(bundle / "weights").priors)
    assert not np.allclose(values, priors[None, :])  # the models ran: not the fallback priors
    summary = summarize_run(working / "gateway_run.json", labels_csv=phantom_test / "test_labels.csv")
    assert summary["timing"]["series"] == len(expected) and summary["answers"] == {"model": len(expected)}
    assert 0.0 <= summary["score"]["score"] <= 1.0
    assert not any(p.is_symlink() for p in (tmp / "shared").rglob("*"))  # every consumed series removed


def test_a_run_projected_past_its_limit_degrades_and_the_record_shows_it(built, phantom_test, tmp_path):
    from evaluation.__main__ import summarize_run

    working = tmp_path / "working"
    working.mkdir()
    env = clean_kernel_env(tmp_path, built["dataset"], phantom_test, RSNA_RUN_HOURS="0.0001",  # 0.36 s for 100
                           RSNA_GATEWAY_SEED="0")
    proc = subprocess.run([sys.executable, str(built["kernel"] / "rsna-aneurysm-kit-submission.py")], cwd=working,
                          env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "degrade level up to 1 (stride_2)" in log and "degrade level up to 2 (stride_2+tta_off)" in log
    record = json.loads((working / "gateway_run.json").read_text())
    decisions = record["run_budget"]["decisions"]
    assert [d["steps"] for d in decisions] == ["stride_2", "stride_2+tta_off"]
    levels = [record["series"][uid]["degraded"] for uid in record["order"]]
    assert levels[0] == "full" and levels[-1] == "stride_2+tta_off"
    summary = summarize_run(working / "gateway_run.json")
    assert summary["degraded"]["stride_2+tta_off"] >= 1 and summary["run_budget"]["decisions"] == decisions


def test_bundled_kernel_decodes_compressed_series_in_its_pool_once(built, tmp_path):
    """Run as a script, the kernel must not be re-run inside the decoding pool's workers (they import __main__)."""
    from phantom import Acquisition, series_spec, write_series

    test_dir = tmp_path / "test"
    uids = []
    for seed, compression in enumerate(["jpeg2000", "jpegls", "jpeg2000"]):
        acquisition = Acquisition(rows=64, cols=64, num_slices=12, pixel_spacing=(3.0, 3.0), slice_spacing=8.0,
                                  compression=compression)
        spec = series_spec(seed, modality="CTA", acquisition=acquisition)
        write_series(spec, test_dir / "series" / spec.series_uid)
        uids.append(spec.series_uid)
    pl.DataFrame({ID_COLUMN: uids}).write_csv(test_dir / "test.csv")
    working = tmp_path / "working"
    working.mkdir()
    env = clean_kernel_env(tmp_path, built["dataset"], test_dir)
    env.pop("OMP_NUM_THREADS")
    proc = subprocess.run([sys.executable, str(built["kernel"] / "rsna-aneurysm-kit-submission.py")], cwd=working,
                          env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "skipped" not in log and "without isolation" not in log, log[-4000:]
    assert log.count("runtime package:") == 1  # no worker process re-ran the kernel
    for uid in uids:  # each series answered once, from all of its 12 files
        assert len(re.findall(f"series {re.escape(uid)}: 12 slices", log)) == 1, log[-4000:]
    submission = pl.read_parquet(working / "submission.parquet")
    predictor = Predictor(built["dataset"] / "weights", providers=["CPUExecutionProvider"])
    for row in submission.iter_rows(named=True):
        direct = predictor.predict_probabilities(str(test_dir / "series" / row[ID_COLUMN]))
        np.testing.assert_allclose([row[label] for label in LABELS], direct, atol=1e-6)


def test_kernel_fails_loudly_when_kaggle_gateway_is_required(built, phantom_test, tmp_path):
    env = clean_kernel_env(tmp_path, built["dataset"], phantom_test, RSNA_GATEWAY="kaggle")
    script = built["kernel"] / "rsna-aneurysm-kit-submission.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "kaggle_evaluation cannot be imported" in proc.stdout + proc.stderr
    assert not (tmp_path / "submission.parquet").exists()


def _copy_weights(weights: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(weights, tmp / "weights"))


def test_checks_run_before_anything_is_written(weights, tmp_path):
    bad = _copy_weights(weights, tmp_path)
    with open(bad / "fold1.onnx", "ab") as handle:
        handle.write(b"\0")
    out = tmp_path / "dist"
    with pytest.raises(BuildError, match="sha256"):
        build(BuildOptions(weights=bad, out=out))
    assert not (out / "dataset").exists() and not (out / "kernel").exists()
    assert not list(out.glob(".build-*"))

    shutil.rmtree(bad)
    bad = _copy_weights(weights, tmp_path)
    data = json.loads((bad / "manifest.json").read_text())
    data["labels"] = list(reversed(data["labels"]))
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BuildError, match="another order"):
        build(BuildOptions(weights=bad, out=out))

    with pytest.raises(BuildError, match="folds"):
        build(BuildOptions(weights=weights, out=out, folds=(5,)))
    with pytest.raises(BuildError, match="resolves to the slug"):
        build(BuildOptions(weights=weights, out=out, kernel_title="Something else entirely"))
    assert not (out / "dataset").exists()


def test_the_aggregation_option_is_written_and_learned_needs_a_fitted_aggregator(weights, tmp_path):
    result = build(BuildOptions(weights=weights, out=tmp_path / "dist", aggregation="max"))
    bundled = Manifest.read(tmp_path / "dist" / "dataset" / "weights", verify=True)
    assert result.manifest.aggregation.method == bundled.aggregation.method == "max"
    assert bundled.provenance["bundle"]["aggregation"] == "max"
    with pytest.raises(BuildError, match="--aggregation learned: .*no aggregator"):
        build(BuildOptions(weights=weights, out=tmp_path / "other", aggregation="learned"))
    assert not (tmp_path / "other" / "dataset").exists()
    with pytest.raises(BuildError, match="aggregation 'median' is not one of"):
        build(BuildOptions(weights=weights, out=tmp_path / "other", aggregation="median"))


def test_not_an_onnx_file_fails(weights, tmp_path):
    bad = _copy_weights(weights, tmp_path)
    (bad / "fold0.onnx").write_bytes(b"not a model")
    manifest = Manifest.read(bad, verify=False)
    folds = tuple(dataclasses.replace(f, sha256=sha256_file(bad / f.file)) for f in manifest.folds)
    dataclasses.replace(manifest, folds=folds).write(bad)
    with pytest.raises(BuildError, match="onnxruntime cannot load"):
        build(BuildOptions(weights=bad, out=tmp_path / "dist"))


def test_fold_subset_and_wheel_dir(weights, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("onnxruntime_gpu-1.20.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
                 "pydicom-3.0.2-py3-none-any.whl", "sympy-1.14.0-py3-none-any.whl"):
        with zipfile.ZipFile(wheels / name, "w") as archive:
            archive.writestr("placeholder.txt", name)
    out = tmp_path / "dist"
    result = build(BuildOptions(weights=weights, out=out, folds=(1,), wheel_dir=wheels,
                                wheel_packages=("onnxruntime-gpu", "pydicom==3.0.2", "pylibjpeg")))
    assert [f.fold for f in result.manifest.folds] == [1]
    assert sorted(p.name for p in (out / "dataset" / "weights").iterdir()) == ["fold1.onnx", "manifest.json"]
    assert len(list((out / "dataset" / "wheels").glob("*.whl"))) == 3
    requirements = (out / "dataset" / "wheels" / "requirements.txt").read_text().split()
    assert requirements == ["onnxruntime-gpu==1.20.0", "pydicom==3.0.2"]
    assert any(row[0] == "wheel onnxruntime-gpu 1.20.0" for row in result.sizes)

    newer = tmp_path / "opset18"  # a fold exported at opset 18 cannot run on onnxruntime 1.13 (opset 17)
    newer.mkdir()
    windows = WindowConfig(offsets=(-1, 0, 1), batch_size=16)
    onnx = export_onnx(PlantedModel(windows.channels), newer / "fold0.onnx", channels=windows.channels, size=SIZE,
                       opset=18)
    write_bundle(newer, [onnx], preprocess=PreprocessConfig(image_size=SIZE), windows=windows)
    for version, match in (("1.13.0", "implements opsets up to 17"), ("1.11.0", "does not know which opsets")):
        old = tmp_path / f"wheels-{version}"
        old.mkdir()
        with zipfile.ZipFile(old / f"onnxruntime_gpu-{version}-cp311-cp311-manylinux_2_28_x86_64.whl", "w") as archive:
            archive.writestr("placeholder.txt", "old")
        with pytest.raises(BuildError, match=match):
            build(BuildOptions(weights=newer, out=tmp_path / f"dist-{version}", wheel_dir=old,
                               wheel_packages=("onnxruntime-gpu",)))


def test_runtime_modules_follow_imports_and_refuse_torch(tmp_path):
    package = tmp_path / "inference"
    package.mkdir()
    (package / "__init__.py").write_text('"""x"""\n')
    (package / "kernel.py").write_text("from .a import f\n\ndef g():\n    from . import b\n")
    (package / "a.py").write_text("import numpy\n")
    (package / "b.py").write_text("from inference.c import h\n")
    (package / "c.py").write_text("h = 1\n")
    (package / "unused.py").write_text("import torch\n")
    assert runtime_modules(package) == ["__init__", "a", "b", "c", "kernel"]
    (package / "c.py").write_text("def h():\n    import torch\n")
    with pytest.raises(BuildError, match="torch"):
        runtime_modules(package)


FAKE_SERVER = '''\
"""A stand-in for the competition's server module: the kit's own stand-in (which enforces the endpoint rules of
Kaggle's server) plus a record of how the kernel drives it. Not Kaggle's code."""
import json
import os

from inference.gateway import LocalInferenceServer


class RSNAInferenceServer(LocalInferenceServer):
    def _record(self, mode, data_paths=None, file_share_dir=None):
        with open(os.environ["FAKE_RECORD"], "w") as handle:
            json.dump({"mode": mode, "data_paths": data_paths, "file_share_dir": file_share_dir}, handle)

    def serve(self):
        self._record("serve")
        self._call("predict", os.environ["FAKE_SERIES"], timeout=None)

    def run_local_gateway(self, data_paths=None, file_share_dir=None):
        self._record("local", data_paths, file_share_dir)
        if data_paths is None:  # Kaggle's default: the test data beside its package
            data_paths = (os.environ["FAKE_TEST_CSV"], os.environ["FAKE_SERIES_DIR"])
        super().run_local_gateway(data_paths, file_share_dir, seed=0)
'''


@pytest.mark.parametrize("rerun, explicit", [(True, False), (False, False), (False, True)])
def test_kernel_drives_kaggle_server_when_importable(built, phantom_test, tmp_path, rerun, explicit):
    competition = tmp_path / "competition"
    (competition / "kaggle_evaluation").mkdir(parents=True)
    (competition / "kaggle_evaluation" / "__init__.py").write_text("")
    (competition / "kaggle_evaluation" / "rsna_inference_server.py").write_text(FAKE_SERVER)
    series = sorted((phantom_test / "series").iterdir())[0]
    env = clean_kernel_env(tmp_path, built["dataset"], phantom_test, RSNA_COMPETITION_DIR=str(competition),
                     FAKE_SERIES=str(series), FAKE_RECORD=str(tmp_path / "record.json"),
                     FAKE_TEST_CSV=str(phantom_test / "test.csv"), FAKE_SERIES_DIR=str(phantom_test / "series"))
    if not explicit:
        del env["RSNA_TEST_CSV"], env["RSNA_SERIES_DIR"], env["RSNA_SHARE_DIR"]
    if rerun:
        env["KAGGLE_IS_COMPETITION_RERUN"] = "1"
    script = built["kernel"] / "rsna-aneurysm-kit-submission.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["mode"] == ("serve" if rerun else "local")
    if rerun:
        assert f"series {series.name}:" in log and "answer: model" in log
        return
    assert record["file_share_dir"]  # off Kaggle, Kaggle's gateway cannot share a series without it
    if explicit:
        assert record["data_paths"] == [str(phantom_test / "test.csv"), str(phantom_test / "series")]
        assert record["file_share_dir"] == env["RSNA_SHARE_DIR"]
    else:
        assert record["data_paths"] is None and not Path(record["file_share_dir"]).exists()  # a temp dir, removed
    submission = pl.read_parquet(tmp_path / "submission.parquet")
    assert submission.height == pl.read_csv(phantom_test / "test.csv").height


def test_kernel_unpacks_folders_that_kaggle_kept_as_archives(built, phantom_test, tmp_path):
    bundle = Path(shutil.copytree(built["dataset"], tmp_path / "input" / "bundle"))
    for name in ("inference", "weights"):  # as `kaggle datasets create --dir-mode zip` packs a folder
        shutil.make_archive(str(bundle / name), "zip", root_dir=bundle / name)
        shutil.rmtree(bundle / name)
    working = tmp_path / "working"
    working.mkdir()
    env = clean_kernel_env(tmp_path, bundle, phantom_test, RSNA_UNPACK_DIR=str(tmp_path / "unpacked"))
    script = built["kernel"] / "rsna-aneurysm-kit-submission.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=working, env=env, capture_output=True, text=True,
                          timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"runtime package: {tmp_path / 'unpacked' / 'inference'}" in log
    assert pl.read_parquet(working / "submission.parquet").height == pl.read_csv(phantom_test / "test.csv").height


def test_kernel_config_defaults_to_kaggle_and_follows_the_environment(tmp_path):
    from inference.kernel import COMPETITION_DIR_DEFAULT, DEFAULT_BUDGET_S, KernelConfig

    config = KernelConfig.from_env({})
    assert config.competition_dir == Path(COMPETITION_DIR_DEFAULT)
    assert config.share_dir is None and config.budget_s == DEFAULT_BUDGET_S and config.seed is None
    assert config.test_csv == Path(COMPETITION_DIR_DEFAULT) / "test.csv"
    assert config.weights_dir == REPO / "weights" and not config.explicit_test_data
    custom = KernelConfig.from_env({"RSNA_COMPETITION_DIR": str(tmp_path), "RSNA_WEIGHTS_DIR": "/w",
                                    "RSNA_SERIES_DIR": "/s", "RSNA_CALL_BUDGET_S": "42", "RSNA_FOLDS": "0, 2",
                                    "RSNA_DECODE_TIMEOUT_S": "5", "RSNA_DECODE_MEMORY_MB": "1024",
                                    "RSNA_SHARE_DIR": "/sh", "RSNA_GATEWAY_SEED": "7"})
    assert custom.test_csv == tmp_path / "test.csv" and custom.series_dir == Path("/s")
    assert custom.weights_dir == Path("/w") and custom.explicit_test_data and custom.share_dir == Path("/sh")
    assert custom.budget_s == 42.0 and custom.folds == (0, 2) and custom.seed == 7
    assert custom.decode.timeout_s == 5.0 and custom.decode.memory_mb == 1024
    with pytest.raises(ValueError, match="auto, kaggle or local"):
        KernelConfig.from_env({"RSNA_GATEWAY": "remote"}, strict=True)
    assert KernelConfig.from_env({"RSNA_GATEWAY": "remote"}).gateway == "auto"  # a typo falls back, loudly
