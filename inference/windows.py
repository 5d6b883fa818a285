"""2.5D windows: index arrays of neighbouring slices into one uint8 stack, batched and scaled for the model."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from .config import WindowConfig
from .errors import ConfigError, InferenceError

__all__ = ["WindowBatch", "window_centres", "window_indices", "build_batch", "iter_window_batches"]


@dataclass(frozen=True)
class WindowBatch:
    """One model batch: `inputs` (N, C, S, S) for the windows centred on slices `centres` (N,)."""

    centres: np.ndarray
    inputs: np.ndarray


def window_centres(num_slices: int, *, stride: int = 1) -> np.ndarray:
    """The centre slices visited: 0, stride, 2*stride, ... < num_slices."""
    if num_slices < 1:
        raise InferenceError(f"a window needs at least one slice, got num_slices={num_slices}")
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    return np.arange(0, num_slices, stride, dtype=np.int64)


def window_indices(num_slices: int, offsets: Sequence[int], *, stride: int = 1,
                   centres: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Slice indices of every window: row n, channel c is `centre_n + offsets[c]` clamped to [0, num_slices).

    Args:
        num_slices: slices in the stack.
        offsets: channel offsets around the centre slice, e.g. (-2, -1, 0, 1, 2).
        stride: visit every stride-th centre slice.
        centres: these centre slices instead (the trainer's sampled windows); `stride` is then unused.
    Returns:
        int64 array (N, C).
    Raises:
        ConfigError: no slice, no offset, or a stride below 1.
    """
    channel = np.asarray(tuple(offsets), dtype=np.int64)
    if channel.ndim != 1 or channel.size == 0:
        raise ConfigError(f"offsets must be a non-empty sequence of ints, got {channel!r}")
    if centres is None:
        centres = window_centres(num_slices, stride=stride)
    elif num_slices < 1:
        raise InferenceError(f"a window needs at least one slice, got num_slices={num_slices}")
    centre = np.asarray(centres, dtype=np.int64).reshape(-1)
    return np.clip(centre[:, None] + channel[None, :], 0, num_slices - 1)


def build_batch(stack_u8: np.ndarray, indices: np.ndarray, *, scale: float,
                dtype: DTypeLike = np.float32) -> np.ndarray:
    """Gather windows (N, C) from a uint8 (Z, S, S) stack into model input (N, C, S, S) = pixel * scale.

    Only the batch is gathered (fancy indexing into the one stack): the volume is never copied per channel.
    """
    if stack_u8.ndim != 3:
        raise InferenceError(f"stack must be (Z, S, S), got shape {stack_u8.shape}")
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise InferenceError(f"indices must be (N, C), got shape {indices.shape}")
    kind = np.dtype(dtype)
    out = np.empty((*indices.shape, *stack_u8.shape[1:]), dtype=kind)
    np.multiply(stack_u8[indices], np.asarray(scale, dtype=kind), out=out, dtype=kind)
    return out


def iter_window_batches(stack_u8: np.ndarray, cfg: WindowConfig, *, dtype: DTypeLike = np.float32,
                        batch_size: int | None = None,
                        ready: Callable[[int], None] | None = None) -> Iterator[WindowBatch]:
    """Yield the windows of `stack_u8` in batches of `batch_size` (default cfg.batch_size), in slice order.

    Args:
        stack_u8: the prepared (Z, S, S) stack (it may still be filling, see `ready`).
        cfg: offsets, stride, scale and batch size.
        dtype: the model input's dtype.
        batch_size: overrides cfg.batch_size.
        ready: called with n before a batch is gathered, and returns once slices [0, n) of the stack are
            prepared: the kernel runs the model on the first windows while later slices are still being prepared.
    """
    size = cfg.batch_size if batch_size is None else batch_size
    if size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {size}")
    indices = window_indices(stack_u8.shape[0], cfg.offsets, stride=cfg.stride)
    centres = window_centres(stack_u8.shape[0], stride=cfg.stride)
    for start in range(0, len(indices), size):
        part = slice(start, start + size)
        if ready is not None:
            ready(int(indices[part].max()) + 1)
        yield WindowBatch(centres=centres[part],
                          inputs=build_batch(stack_u8, indices[part], scale=cfg.scale, dtype=dtype))
