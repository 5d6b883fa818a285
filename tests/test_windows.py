"""2.5D windows: clamped index arrays, batches gathered from one stack, batch iteration."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from inference.config import WindowConfig
from inference.errors import ConfigError, InferenceError
from inference.windows import build_batch, iter_window_batches, window_indices


def test_window_indices_are_clamped_at_both_ends():
    idx = window_indices(4, (-2, -1, 0, 1, 2))
    np.testing.assert_array_equal(idx, [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]])
    assert idx.dtype == np.int64


def test_window_indices_stride_and_single_slice():
    idx = window_indices(7, (-1, 0, 1), stride=3)
    np.testing.assert_array_equal(idx, [[0, 0, 1], [2, 3, 4], [5, 6, 6]])
    np.testing.assert_array_equal(window_indices(1, (-2, -1, 0, 1, 2)), [[0, 0, 0, 0, 0]])


@pytest.mark.parametrize("args,kwargs", [((5, ()), {}), ((5, (0,)), {"stride": 0})])
def test_window_indices_reject_bad_settings(args, kwargs):
    with pytest.raises(ConfigError):
        window_indices(*args, **kwargs)


def test_window_indices_reject_a_stack_without_slices():
    with pytest.raises(InferenceError, match="at least one slice"):
        window_indices(0, (0,))


def test_build_batch_scales_the_indexed_slices():
    stack = (np.arange(6)[:, None, None] * 40 + np.zeros((1, 4, 4))).astype(np.uint8)
    idx = np.array([[0, 1, 2], [3, 4, 5]])
    batch = build_batch(stack, idx, scale=0.5)
    assert batch.shape == (2, 3, 4, 4) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:, :, 0, 0], [[0, 20, 40], [60, 80, 100]])
    half = build_batch(stack, idx, scale=1 / 255, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, stack[idx] / 255, atol=1e-3)


def test_build_batch_gathers_only_the_batch_not_the_volume_per_channel():
    stack = np.zeros((400, 128, 128), dtype=np.uint8)  # 6.5 MB
    idx = window_indices(400, (-2, -1, 0, 1, 2))[:4]
    tracemalloc.start()
    build_batch(stack, idx, scale=1 / 255)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    batch_bytes = 4 * 5 * 128 * 128 * (4 + 1)  # float32 output + its uint8 gather
    assert peak < 1.5 * batch_bytes < stack.nbytes


def test_iter_window_batches_covers_every_centre_in_order():
    stack = np.random.default_rng(0).integers(0, 255, size=(11, 8, 8), dtype=np.uint8)
    cfg = WindowConfig(offsets=(-1, 0, 1), batch_size=4, scale=1 / 255)
    batches = list(iter_window_batches(stack, cfg))
    assert [len(b.centres) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b.centres for b in batches]), np.arange(11))
    full = build_batch(stack, window_indices(11, cfg.offsets), scale=cfg.scale)
    np.testing.assert_array_equal(np.concatenate([b.inputs for b in batches]), full)
    # channel c of window n is slice n + offsets[c]
    np.testing.assert_allclose(full[5, 0], stack[4] / 255, rtol=1e-6)
    np.testing.assert_allclose(full[5, 2], stack[6] / 255, rtol=1e-6)
