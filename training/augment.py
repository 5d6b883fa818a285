"""Anatomy-keeping augmentations of one 2.5D window: L/R flip with label swap, small affine, intensity, noise, blur."""
from __future__ import annotations

import cv2
import numpy as np

from inference.labels import LR_SWAP_INDEX

from .config import AugmentConfig

__all__ = ["flip_lr", "WindowAugment"]

_SWAP = np.array(LR_SWAP_INDEX)
_NO_POINTS = np.zeros((0, 2), np.float32)


def flip_lr(window: np.ndarray, point: tuple[float, float] | None, labels: np.ndarray
            ) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
    """Mirror a canonical (C, S, S) window left-right; the point's column and the left/right labels follow."""
    size = window.shape[-1]
    flipped = np.ascontiguousarray(window[..., ::-1])
    new_point = None if point is None else (point[0], size - 1 - point[1])
    return flipped, new_point, labels[_SWAP]


class WindowAugment:
    """Random augmentation of (window, point, labels); every channel gets the same geometry.

    Example:
        >>> aug = WindowAugment(AugmentConfig())
        >>> window, point, labels = aug(window, point, labels, rng)
        >>> window, point, points, labels = aug.apply(window, point, points, labels, rng)  # + localizer points
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, window: np.ndarray, point: tuple[float, float] | None, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
        window, point, _, labels = self.apply(window, point, _NO_POINTS, labels, rng)
        return window, point, labels

    def apply(self, window: np.ndarray, point: tuple[float, float] | None, points: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray, np.ndarray]:
        """Augment a window with its ROI point and its localizer points ((N, 2) row, col): every point follows
        the flip and the affine; the ROI point is clamped into the window, a localizer moved out of it is dropped.
        Returns (window, point, points, labels)."""
        cfg = self.cfg
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        if rng.random() < cfg.flip_lr:
            window, point, labels = flip_lr(window, point, labels)
            points = np.stack([points[:, 0], window.shape[-1] - 1 - points[:, 1]], axis=1)
        if cfg.rotate_deg > 0 or cfg.scale > 0 or cfg.translate > 0:
            window, point, points = self._affine(window, point, points, rng)
        window = window.astype(np.float32, copy=False)
        if cfg.contrast > 0 or cfg.brightness > 0:
            gain = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
            shift = rng.uniform(-cfg.brightness, cfg.brightness)
            window = window * np.float32(gain) + np.float32(shift)
        if cfg.blur_prob > 0 and rng.random() < cfg.blur_prob:
            hwc = np.ascontiguousarray(window.transpose(1, 2, 0))
            hwc = cv2.GaussianBlur(hwc, (3, 3), float(rng.uniform(0.3, 0.9)))
            window = hwc.reshape(window.shape[1], window.shape[2], -1).transpose(2, 0, 1)
        if cfg.noise_std > 0:
            std = rng.uniform(0.0, cfg.noise_std)
            window = window + rng.normal(0.0, std, window.shape).astype(np.float32)
        return np.ascontiguousarray(window, dtype=np.float32), point, points, labels

    def _affine(self, window: np.ndarray, point: tuple[float, float] | None, points: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float] | None, np.ndarray]:
        cfg = self.cfg
        size = window.shape[-1]
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)
        angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
        zoom = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
        matrix = cv2.getRotationMatrix2D(centre, angle, zoom)
        matrix[:, 2] += rng.uniform(-cfg.translate, cfg.translate, 2) * size
        hwc = np.ascontiguousarray(window.transpose(1, 2, 0), dtype=np.float32)
        out = cv2.warpAffine(hwc, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        out = out.reshape(size, size, -1).transpose(2, 0, 1)
        if point is not None:
            x, y = matrix @ np.array([point[1], point[0], 1.0])
            point = (float(min(max(y, 0.0), size - 1)), float(min(max(x, 0.0), size - 1)))
        if len(points):
            xy = np.c_[points[:, 1], points[:, 0], np.ones(len(points))] @ matrix.T
            moved = np.stack([xy[:, 1], xy[:, 0]], axis=1).astype(np.float32)
            points = moved[np.all((moved >= 0.0) & (moved <= size - 1), axis=1)]
        return out, point, points
