"""Window labelling, ROI crop geometry, the inference-regime guard and the L/R flip of the trainer's sampling."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference.labels import LABELS, LEFT_RIGHT_PAIRS, LOCATION_LABELS, PRESENT_INDEX
from training.augment import WindowAugment, flip_lr
from training.config import AugmentConfig, SamplingConfig
from training.localizers import PreparedPoint
from training.sampling import (
    INFERENCE,
    ROI,
    CachedSeries,
    assign_regimes,
    draw_epoch,
    normalized_coords,
    roi_box,
    roi_crop,
    window_at,
    window_labels,
)

LEFT_MCA = LABELS.index("Left Middle Cerebral Artery")
BASILAR = LABELS.index("Basilar Tip")


def test_localizer_at_slice_k_makes_windows_k_minus_2_to_k_plus_2_positive_for_its_location_only():
    k = 10
    points = [PreparedPoint(z=float(k), row=20.0, col=40.0, location=LEFT_MCA)]
    for centre in range(0, 25):
        labels = window_labels(points, centre, radius=2)
        inside = k - 2 <= centre <= k + 2
        assert labels[LEFT_MCA] == float(inside), centre
        assert labels[PRESENT_INDEX] == float(inside), centre
        others = [i for i in range(len(LABELS)) if i not in (LEFT_MCA, PRESENT_INDEX)]
        assert labels[others].sum() == 0


def test_two_localizers_label_only_the_windows_near_each():
    points = [PreparedPoint(z=5.0, row=1, col=1, location=LEFT_MCA),
              PreparedPoint(z=8.4, row=1, col=1, location=BASILAR)]
    labels = window_labels(points, 7, radius=2)  # 5 and round(8.4)=8 both within 2
    assert labels[LEFT_MCA] == 1 and labels[BASILAR] == 1
    labels = window_labels(points, 3, radius=2)
    assert labels[LEFT_MCA] == 1 and labels[BASILAR] == 0
    labels = window_labels(points, 11, radius=2)
    assert labels.sum() == 0


def test_roi_box_is_centred_on_the_point_and_shifted_inside_near_edges():
    top, left, side = roi_box((32.0, 20.0), 64, 0.25)
    assert side == 16
    assert (top + side / 2, left + side / 2) == (32.0, 20.0)
    top, left, side = roi_box((1.0, 62.0), 64, 0.25)  # near the top-right corner: shifted, never shrunk
    assert (top, left, side) == (0, 48, 16)


def test_roi_crop_resizes_the_box_of_every_channel_and_keeps_the_point_content():
    window = np.zeros((5, 64, 64), np.float32)
    for c in range(5):
        window[c, 30:34, 18:22] = c + 1.0  # a bright square at (32, 20), a different value per channel
    crop = roi_crop(window, (32.0, 20.0), fraction=0.25, out_size=64)
    assert crop.shape == (5, 64, 64)
    # the 4 px square in a 16 px box becomes a 16 px square in the middle of the 64 px crop
    for c in range(5):
        assert crop[c, 32, 32] == pytest.approx(c + 1.0)
        assert crop[c, 2, 2] == 0.0
        assert np.isclose(crop[c], c + 1.0).sum() >= 12 * 12


def test_normalized_coords_are_x_col_y_row_in_unit_range():
    assert np.allclose(normalized_coords((0.0, 63.0), 64), [1.0, 0.0])
    assert np.allclose(normalized_coords((63.0, 0.0), 64), [0.0, 1.0])


def _series(n_pos: int = 6, n_neg: int = 6, slices: int = 40, size: int = 32) -> list[CachedSeries]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_pos + n_neg):
        points = []
        labels = np.zeros(len(LABELS), np.float32)
        if i < n_pos:
            loc = int(rng.integers(len(LOCATION_LABELS)))
            points = [PreparedPoint(z=float(rng.integers(10, 30)), row=16.0, col=float(rng.integers(4, 28)),
                                    location=loc)]
            labels[loc] = labels[PRESENT_INDEX] = 1
        out.append(CachedSeries(uid=str(i), modality="CTA", pixels=np.zeros((slices, size, size), np.uint8),
                                points=points, labels=labels))
    return out


def test_epoch_labels_agree_with_the_localizers_and_negatives_keep_their_distance():
    series = _series()
    cfg = SamplingConfig()
    samples = draw_epoch(series, 900, cfg, image_size=32, rng=np.random.default_rng(1))
    assert len(samples) == 900
    positives = [s for s in samples if s.labels[PRESENT_INDEX] == 1]
    assert len(positives) == pytest.approx(300, abs=1)
    for s in samples:
        expected = window_labels(series[s.series].points, s.centre, radius=cfg.label_radius)
        assert np.array_equal(s.labels, expected)
        if s.labels[PRESENT_INDEX] == 0 and series[s.series].points:
            assert min(abs(s.centre - round(p.z)) for p in series[s.series].points) >= cfg.negative_min_distance
    # some negatives come from positive series, most from negative series at the positives' slice levels
    from_positive = sum(1 for s in samples if s.labels[PRESENT_INDEX] == 0 and series[s.series].points)
    assert 0.15 < from_positive / 600 < 0.45
    pos_levels = [s.centre for s in positives]
    neg_levels = [s.centre for s in samples if s.labels[PRESENT_INDEX] == 0 and not series[s.series].points]
    assert abs(np.median(neg_levels) - np.median(pos_levels)) <= 4


def _shares(samples):
    pos = [s for s in samples if s.labels[PRESENT_INDEX] == 1]
    neg = [s for s in samples if s.labels[PRESENT_INDEX] == 0]
    return (sum(s.regime == INFERENCE for s in pos) / len(pos), sum(s.regime == ROI for s in neg) / len(neg))


def test_guard_puts_the_configured_shares_in_each_regime():
    series = _series()
    cfg = SamplingConfig(positive_inference_share=0.6, negative_roi_share=0.4)
    samples = draw_epoch(series, 3000, cfg, image_size=32, rng=np.random.default_rng(2))
    pos_inference, neg_roi = _shares(samples)
    assert pos_inference == pytest.approx(0.6, abs=0.05)
    assert neg_roi == pytest.approx(0.4, abs=0.05)
    for s in samples:
        assert (s.roi_point is not None) == (s.regime == ROI)
        if s.regime == ROI and s.labels[PRESENT_INDEX] == 1:
            assert s.roi_point == s.point  # a positive's ROI is around its own localizer
    # the ROI coordinates of negatives look like those of positives: the coordinates do not tell the label
    pos_cols = np.array([s.roi_point[1] for s in samples if s.regime == ROI and s.labels[PRESENT_INDEX] == 1])
    neg_cols = np.array([s.roi_point[1] for s in samples if s.regime == ROI and s.labels[PRESENT_INDEX] == 0])
    assert abs(pos_cols.mean() - neg_cols.mean()) < 4.0


def test_guard_off_is_the_flawed_design_roi_only_on_positives():
    series = _series()
    cfg = SamplingConfig(guard=False)
    samples = draw_epoch(series, 600, cfg, image_size=32, rng=np.random.default_rng(3))
    assert _shares(samples) == (0.0, 0.0)


def test_guard_requires_at_least_half_of_positives_in_the_inference_regime():
    from inference.errors import ConfigError

    with pytest.raises(ConfigError, match="positive_inference_share"):
        SamplingConfig(positive_inference_share=0.3)
    SamplingConfig(guard=False, positive_inference_share=0.3)  # allowed when measuring the flaw


def test_assign_regimes_keeps_samples_and_labels():
    series = _series()
    samples = draw_epoch(series, 60, SamplingConfig(), image_size=32, rng=np.random.default_rng(4))
    again = assign_regimes(samples, dataclasses.replace(SamplingConfig(), guard=False), image_size=32,
                           rng=np.random.default_rng(5))
    assert [(s.series, s.centre) for s in again] == [(s.series, s.centre) for s in samples]


def test_flip_mirrors_columns_moves_the_point_and_swaps_left_right_labels():
    window = np.zeros((5, 32, 32), np.float32)
    window[:, 10, 28] = 1.0  # patient left (high columns)
    labels = np.zeros(len(LABELS), np.float32)
    labels[LEFT_MCA] = labels[PRESENT_INDEX] = 1
    flipped, point, new_labels = flip_lr(window, (10.0, 28.0), labels)
    assert flipped[0, 10, 3] == 1.0 and flipped[0, 10, 28] == 0.0
    assert point == (10.0, 3.0)
    right_mca = LABELS.index("Right Middle Cerebral Artery")
    assert new_labels[right_mca] == 1 and new_labels[LEFT_MCA] == 0 and new_labels[PRESENT_INDEX] == 1
    twice, _, back = flip_lr(flipped, None, new_labels)
    assert np.array_equal(twice, window) and np.array_equal(back, labels)
    for left, right in LEFT_RIGHT_PAIRS:
        assert LABELS[left].replace("Left ", "") == LABELS[right].replace("Right ", "")


def test_augment_moves_the_point_with_the_image():
    window = np.zeros((5, 64, 64), np.float32)
    window[:, 18:23, 43:48] = 1.0  # blob centred at (20, 45)
    aug = WindowAugment(AugmentConfig(flip_lr=0.5, rotate_deg=15, scale=0.1, translate=0.05, brightness=0,
                                      contrast=0, noise_std=0, blur_prob=0))
    for seed in range(10):
        out, point, _ = aug(window, (20.0, 45.0), np.zeros(len(LABELS), np.float32), np.random.default_rng(seed))
        r, c = int(round(point[0])), int(round(point[1]))
        assert out[2, r, c] > 0.5, seed  # the point still sits on the blob


def test_window_at_is_the_kernels_window():
    from inference.config import WindowConfig
    from inference.windows import iter_window_batches

    stack = np.random.default_rng(0).integers(0, 255, (12, 8, 8), dtype=np.uint8)
    cfg = WindowConfig(offsets=(-2, -1, 0, 1, 2), batch_size=5, scale=1 / 255)
    kernel = np.concatenate([batch.inputs for batch in iter_window_batches(stack, cfg)])  # what the kernel scores
    for centre in (0, 1, 6, 11):
        np.testing.assert_array_equal(window_at(stack, centre, cfg.offsets, scale=cfg.scale), kernel[centre])
    np.testing.assert_allclose(window_at(stack, 6, cfg.offsets, scale=1 / 255), stack[4:9] / 255, rtol=1e-6)
    assert np.array_equal(window_at(stack, 0, cfg.offsets, scale=1.0)[:3], stack[[0, 0, 0]])  # clamped at the edge


def test_hard_negatives_fill_their_share_of_the_negatives():
    series = _series()
    cfg = SamplingConfig(hard_negative_share=0.5)
    hard = [(7, 3), (8, 30)]  # (negative series index, centre)
    samples = draw_epoch(series, 900, cfg, image_size=32, rng=np.random.default_rng(6), hard_negatives=hard)
    negatives = [s for s in samples if s.labels[PRESENT_INDEX] == 0]
    from_pool = sum((s.series, s.centre) in hard for s in negatives)
    assert from_pool == pytest.approx(300, abs=10)  # half of the 600 negatives (plus rare random repeats)
    without = draw_epoch(series, 900, cfg, image_size=32, rng=np.random.default_rng(6))
    assert sum((s.series, s.centre) in hard for s in without) < 30
