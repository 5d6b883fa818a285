"""Localizer heatmaps: targets, the points' path through augmentation, the focal loss, the training-only head."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inference.errors import ConfigError
from inference.labels import PRESENT_INDEX
from tests.test_training_loop import CFG, _series
from training.augment import WindowAugment
from training.config import AugmentConfig, ModelConfig, load_config
from training.export import export_fold
from training.heatmap import heatmap_focal_loss, render_heatmap, window_points
from training.localizers import PreparedPoint
from training.loop import WindowDataset, train_fold
from training.model import DualStreamNet, InferenceGraph, build_model
from training.sampling import draw_epoch, window_labels

ARCH = "mobilenetv3_small_050"
HEAT = ["model.heatmap_weight=1.0", "model.heatmap_sigma=3.0"]


def test_render_heatmap_is_one_at_the_points_cell_and_empty_without_points():
    heat = render_heatmap(np.array([[10.0, 21.0]]), 32, stride=8, sigma=4.0)
    assert heat.shape == (1, 4, 4) and heat.dtype == np.float32
    assert heat[0, 1, 2] == 1.0 and np.count_nonzero(heat == 1.0) == 1
    assert 0.0 < heat[0, 3, 0] < heat[0, 1, 1] < 1.0  # falls off with distance
    assert not render_heatmap(np.zeros((0, 2)), 32, stride=8, sigma=4.0).any()
    assert not render_heatmap(np.array([[40.0, 5.0]]), 32, stride=8, sigma=4.0).any()  # outside the image
    two = render_heatmap(np.array([[2.0, 2.0], [30.0, 30.0]]), 32, stride=8, sigma=4.0)
    assert two[0, 0, 0] == two[0, 3, 3] == 1.0


def test_window_points_are_exactly_the_points_behind_the_windows_labels():
    points = [PreparedPoint(z=4.0, row=5.0, col=6.0, location=0), PreparedPoint(z=9.4, row=7.0, col=8.0, location=3)]
    for centre in range(14):
        near = window_points(points, centre, radius=2)
        labels = window_labels(points, centre, radius=2)
        assert len(near) == sum(labels[:PRESENT_INDEX] > 0)
    assert window_points(points, 8, radius=2).tolist() == [[7.0, 8.0]]


def _dot_window(row: int, col: int, size: int = 48) -> np.ndarray:
    window = np.zeros((5, size, size), np.float32)
    window[:, row - 1:row + 2, col - 1:col + 2] = 1.0
    return window


def test_augmented_points_follow_the_pixels_and_stay_in_the_window():
    cfg = AugmentConfig(flip_lr=0.5, rotate_deg=20.0, scale=0.15, translate=0.08, brightness=0.0, contrast=0.0,
                        noise_std=0.0, blur_prob=0.0)
    augment = WindowAugment(cfg)
    labels = np.arange(14, dtype=np.float32)
    moved = dropped = 0
    for seed in range(40):
        window = _dot_window(14, 30)
        # the dot's point, and one on the corner that a rotation or a zoom in pushes out of the window
        out, _, points, _ = augment.apply(window, None, np.array([[14.0, 30.0], [0.0, 0.0]]), labels,
                                          np.random.default_rng(seed))
        assert np.all((points >= 0) & (points <= 47)) and len(points) in (1, 2)
        peak = np.unravel_index(np.argmax(out[2]), out[2].shape)
        assert np.min(np.hypot(*(points - np.array(peak)).T)) <= 1.5
        moved += int(np.hypot(peak[0] - 14, peak[1] - 30) > 2)
        dropped += int(len(points) == 1)
    assert moved > 20 and 0 < dropped < 40  # the augmentation did move them, and dropped the corner only at times


def test_apply_without_points_is_the_old_call():
    augment = WindowAugment(AugmentConfig())
    window, labels = _dot_window(20, 9), np.arange(14, dtype=np.float32)
    a = augment(window, (20.0, 9.0), labels, np.random.default_rng(3))
    b = augment.apply(window, (20.0, 9.0), np.zeros((0, 2)), labels, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[3])


def test_focal_loss_prefers_the_right_place_and_counts_negative_batches():
    target = torch.from_numpy(render_heatmap(np.array([[12.0, 12.0]]), 32, stride=8, sigma=4.0))[None]
    right = torch.full_like(target, -6.0)
    right[0, 0, 1, 1] = 6.0
    wrong = torch.full_like(target, -6.0)
    wrong[0, 0, 3, 3] = 6.0
    assert heatmap_focal_loss(right, target) < 0.1 < heatmap_focal_loss(wrong, target)
    empty = torch.zeros_like(target)
    assert heatmap_focal_loss(torch.full_like(target, -6.0), empty) < 1e-3 < heatmap_focal_loss(right, empty)


def test_the_head_runs_only_in_training_and_the_export_is_the_graph_without_it(tmp_path):
    torch.manual_seed(0)
    net = DualStreamNet(ARCH, in_chans=5, heatmap_stride=8)
    x = torch.rand(3, 5, 32, 32)
    net.train()
    net(x, x, torch.zeros(3, 2))
    assert net.heatmap_logits().shape == (3, 1, 4, 4)
    with pytest.raises(RuntimeError):
        net.heatmap_logits()  # one forward, one heatmap
    net.eval()
    with torch.no_grad():
        net(x, x, torch.zeros(3, 2))
    with pytest.raises(RuntimeError):
        net.heatmap_logits()  # evaluation forwards keep nothing
    with torch.no_grad():
        assert net.heatmap(x).shape == (3, 1, 4, 4)  # asked for, in evaluation mode
        with net.capturing():  # or read from the inference graph's own forward: the same map
            InferenceGraph(net)(x)
            assert torch.equal(net.heatmap_logits(), net.heatmap(x))
    plain = DualStreamNet(ARCH, in_chans=5).eval()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("heatmap_head.")}
    plain.load_state_dict(state)
    windows = np.random.default_rng(0).random((4, 5, 32, 32), dtype=np.float32)
    export_fold(net, tmp_path / "with_head.onnx", parity_windows=windows, opset=17)
    export_fold(plain, tmp_path / "plain.onnx", parity_windows=windows, opset=17)
    with_head, without = (onnx.load(str(tmp_path / name)) for name in ("with_head.onnx", "plain.onnx"))
    # the same graph: the same operators and weights (only torch's running numbers of unnamed tensors differ)
    assert [n.op_type for n in with_head.graph.node] == [n.op_type for n in without.graph.node]
    assert len(with_head.graph.initializer) == len(without.graph.initializer)
    assert not [i.name for i in with_head.graph.initializer if "heatmap" in i.name]
    answers = [ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
               .run(None, {"window": windows})[0] for name in ("with_head.onnx", "plain.onnx")]
    assert np.array_equal(*answers)


def test_a_stride_the_backbone_lacks_and_a_volume_kind_are_config_errors():
    with pytest.raises(ConfigError, match="heatmap_stride"):
        build_model(ModelConfig(arch=ARCH, heatmap_weight=1.0, heatmap_stride=3), in_chans=5)
    assert build_model(ModelConfig(arch=ARCH, heatmap_stride=3), in_chans=5).heatmap_head is None  # weight 0: off
    with pytest.raises(ConfigError, match="windowed"):
        load_config(None, ["model.kind=volume32", "model.heatmap_weight=1"])
    with pytest.raises(ConfigError, match="heatmap_weight"):
        load_config(None, ["model.heatmap_weight=-1"])


def test_dataset_items_carry_the_heatmap_of_their_own_points():
    cfg = load_config(None, CFG + HEAT)
    series = _series(6, 0)
    samples = draw_epoch(series, 64, cfg.sampling, image_size=32, rng=np.random.default_rng(0))
    dataset = WindowDataset(series, samples, cfg, seed=0)
    for i in range(len(samples)):
        full, _, _, labels, heat = dataset[i]
        assert heat.shape == (1, 4, 4)
        assert bool((heat == 1.0).any()) == bool(labels[PRESENT_INDEX] > 0)
        if labels[PRESENT_INDEX] > 0:  # the peak cell holds the (augmented) blob
            cell = np.unravel_index(int(torch.argmax(heat[0])), (4, 4))
            block = full[:, cell[0] * 8:cell[0] * 8 + 8, cell[1] * 8:cell[1] * 8 + 8]
            assert float(block.max()) > 0.5
    plain = WindowDataset(series, samples, load_config(None, CFG), seed=0)
    assert len(plain[0]) == 4


def test_train_fold_with_heatmaps_learns_where_the_blob_is(tmp_path):
    torch.set_num_threads(1)
    train, val = _series(8, 1), _series(4, 2)
    cfg = load_config(None, CFG + HEAT + ["train.epochs=4", "train.windows_per_epoch=128", "train.val_every=4"])
    result = train_fold(cfg, 0, train, val, checkpoint_dir=tmp_path, progress=False)
    aux = [entry["aux_loss"] for entry in result.history]
    assert len(aux) == 4 and all(np.isfinite(aux)) and aux[-1] < aux[0]
    state = torch.load(result.best_path, weights_only=False)["model"]
    assert any(k.startswith("heatmap_head.") for k in state)
    net = build_model(cfg.model, in_chans=5)
    net.load_state_dict(state)
    net.eval()
    dataset = WindowDataset(train, draw_epoch(train, 64, dataclasses.replace(cfg.sampling, negatives_per_positive=0),
                                              image_size=32, rng=np.random.default_rng(9)), cfg, seed=1, augment=False)
    hits = total = 0
    with torch.no_grad():
        for i in range(len(dataset)):
            full, roi, coords, labels, heat = dataset[i]
            if labels[PRESENT_INDEX] == 0:
                continue
            guess = int(torch.argmax(net.heatmap(full[None])[0, 0]))
            hits += int(heat[0].flatten()[guess] > 0.5)
            total += 1
    # a guess is a hit on a cell of the target above 0.5: one or two of the 16 cells, so chance is under 0.15
    # (measured here: 0.53 after these 4 short epochs)
    assert total > 10 and hits / total > 0.3
