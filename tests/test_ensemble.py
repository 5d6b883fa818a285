"""FoldEnsemble: onnxruntime matches torch, folds average, the flip TTA swaps left/right back, graphs are checked."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.ensemble import load_ensemble, sigmoid
from inference.errors import InferenceError, ManifestError
from inference.labels import LR_SWAP_INDEX
from inference.windows import build_batch, window_indices
from tests.onnx_models import DualStreamNet, PlantedModel, export_onnx, planted_logits, raising_model, write_bundle

SIZE = 32
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def planted_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    export_onnx(PlantedModel(5, gain=8.0, bias=-4.0), folder / "a.onnx", channels=5, size=SIZE)
    export_onnx(PlantedModel(5, gain=-3.0, bias=1.0), folder / "b.onnx", channels=5, size=SIZE)
    export_onnx(PlantedModel(5), folder / "half.onnx", channels=5, size=SIZE, dtype="float16")
    export_onnx(PlantedModel(3), folder / "three.onnx", channels=3, size=SIZE)
    return folder


def _bundle(tmp_path, planted_files, names, **kwargs):
    files = []
    for name in names:
        shutil.copy(planted_files / name, tmp_path / name)
        files.append(tmp_path / name)
    write_bundle(tmp_path, files, preprocess=PreprocessConfig(image_size=SIZE), **kwargs)
    return tmp_path


def _windows(n=6, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 5, SIZE, SIZE)).astype(np.float32)


def test_onnxruntime_matches_torch_on_a_dual_stream_timm_model(tmp_path):
    torch.manual_seed(0)
    model = DualStreamNet("test_efficientnet", in_chans=5).eval()
    path = export_onnx(model, tmp_path / "ds.onnx", channels=5, size=SIZE)
    write_bundle(tmp_path, [path], preprocess=PreprocessConfig(image_size=SIZE))
    ensemble = load_ensemble(tmp_path, providers=CPU)
    x = _windows()
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(ensemble.predict_windows(x), expected, atol=1e-4)
    np.testing.assert_allclose(ensemble.predict_logits(x)[0], model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_two_folds_give_the_mean_of_their_probabilities(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["a.onnx", "b.onnx"])
    x = _windows()
    pa = sigmoid(planted_logits(x, gain=8.0, bias=-4.0))
    pb = sigmoid(planted_logits(x, gain=-3.0, bias=1.0))
    both = load_ensemble(folder, providers=CPU)
    np.testing.assert_allclose(both.predict_windows(x), (pa + pb) / 2, atol=1e-5)
    np.testing.assert_allclose(load_ensemble(folder, providers=CPU, folds=[1]).predict_windows(x), pb, atol=1e-5)
    assert not np.allclose(pa, pb, atol=1e-2)


def test_logit_fold_average(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["a.onnx", "b.onnx"], aggregation=AggregationConfig(fold_average="logit"))
    x = _windows()
    mean_logits = (planted_logits(x, gain=8.0, bias=-4.0) + planted_logits(x, gain=-3.0, bias=1.0)) / 2
    np.testing.assert_allclose(load_ensemble(folder, providers=CPU).predict_windows(x), sigmoid(mean_logits), atol=1e-5)


def test_flip_tta_averages_the_mirrored_pass_with_labels_swapped_back(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["a.onnx"], aggregation=AggregationConfig(tta_flip=True))
    x = _windows()
    x[:, :, :, SIZE // 2:] *= 0.2  # the patient's left (high columns) darker than the right
    plain = sigmoid(planted_logits(x))
    mirrored = sigmoid(planted_logits(x[..., ::-1]))[:, list(LR_SWAP_INDEX)]
    got = load_ensemble(folder, providers=CPU).predict_windows(x)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-5)
    # the planted left/right features are mirror images, so the TTA leaves them exactly where they were
    np.testing.assert_allclose(got[:, :2], plain[:, :2], atol=1e-5)
    assert (got[:, 0] < got[:, 1]).all()


def test_windows_and_channel_order_reach_the_model(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["a.onnx"])
    stack = (np.arange(10)[:, None, None] * 25 + np.zeros((1, SIZE, SIZE))).astype(np.uint8)
    cfg = WindowConfig()
    batch = build_batch(stack, window_indices(10, cfg.offsets), scale=cfg.scale)
    probs = load_ensemble(folder, providers=CPU).predict_windows(batch)
    for centre in range(10):
        for c, offset in enumerate(cfg.offsets):
            value = min(max(centre + offset, 0), 9) * 25 / 255
            assert probs[centre, 2 + c] == pytest.approx(sigmoid(8.0 * value - 4.0), abs=1e-5)


def test_float16_model_gets_float16_input(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["half.onnx"], input_dtype="float16")
    ensemble = load_ensemble(folder, providers=CPU)
    assert ensemble.input_dtype == np.float16
    x = _windows()
    np.testing.assert_allclose(ensemble.predict_windows(x), sigmoid(planted_logits(x.astype(np.float16))), atol=1e-3)


def test_graph_that_disagrees_with_the_manifest_fails_at_load(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["three.onnx"])  # manifest: 5 channels, graph: 3
    with pytest.raises(ManifestError, match="input dimension 1 is 3, manifest says 5"):
        load_ensemble(folder, providers=CPU)


def test_dtype_mismatch_and_unknown_fold_fail_at_load(tmp_path, planted_files):
    folder = _bundle(tmp_path, planted_files, ["a.onnx"], input_dtype="float16")
    with pytest.raises(ManifestError, match="input_dtype"):
        load_ensemble(folder, providers=CPU)
    folder = _bundle(tmp_path, planted_files, ["a.onnx"])
    with pytest.raises(ManifestError, match=r"folds \[3\] requested"):
        load_ensemble(folder, providers=CPU, folds=[3])


def test_model_that_raises_gives_an_inference_error(tmp_path):
    write_bundle(tmp_path, [raising_model(tmp_path / "bad.onnx", size=SIZE)],
                 preprocess=PreprocessConfig(image_size=SIZE))
    ensemble = load_ensemble(tmp_path, providers=CPU)
    with pytest.raises(InferenceError, match="fold 0: onnxruntime failed"):
        ensemble.predict_windows(_windows())


def test_default_providers_fall_back_to_cpu_loudly(tmp_path, planted_files, caplog):
    import onnxruntime as ort

    folder = _bundle(tmp_path, planted_files, ["a.onnx"])
    with caplog.at_level(logging.INFO, logger="inference.ensemble"):
        ensemble = load_ensemble(folder)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert ensemble.providers[0] == "CUDAExecutionProvider"
    else:
        assert ensemble.providers == ["CPUExecutionProvider"]
        assert "RUNNING ON CPU" in caplog.text
    options = ensemble.sessions[0].get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads >= 1


def test_choose_providers_preloads_cuda_libraries_when_cuda_is_offered(monkeypatch):
    import onnxruntime as ort

    from inference.ensemble import choose_providers

    preloaded = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloaded.append(True), raising=False)
    assert choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"] and preloaded == [True]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers() == ["CPUExecutionProvider"] and preloaded == [True]
