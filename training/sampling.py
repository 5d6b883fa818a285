"""Training-window sampling: centres, window labels, ROI crops, and the inference-regime guard."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.labels import LABELS, PRESENT_INDEX
from inference.windows import build_batch, window_indices

from .config import SamplingConfig
from .localizers import PreparedPoint

__all__ = [
    "CachedSeries",
    "Sample",
    "INFERENCE",
    "ROI",
    "window_labels",
    "draw_epoch",
    "assign_regimes",
    "roi_box",
    "roi_crop",
    "normalized_coords",
    "window_at",
    "negative_centres",
]

INFERENCE = "inference"  # stream 2 = the same window, coordinates = zeros (what the exported graph does)
ROI = "roi"  # stream 2 = ROI crop around a point, coordinates = that point's normalized (x, y)


@dataclass
class CachedSeries:
    """One cached series: the prepared uint8 stack, its localizer points and its train.csv labels."""

    uid: str
    modality: str
    pixels: np.ndarray  # uint8 (Z, S, S), possibly a read-only memmap
    points: list[PreparedPoint] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(len(LABELS), np.float32))

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def positive(self) -> bool:
        return bool(self.labels[PRESENT_INDEX] > 0.5)


@dataclass(frozen=True)
class Sample:
    """One training window: which series and centre slice, its 14 labels, and stream 2's regime."""

    series: int  # index into the epoch's series list
    centre: int
    labels: np.ndarray  # (14,) float32
    point: tuple[float, float] | None = None  # (row, col) of the localizer behind a positive, None otherwise
    regime: str = INFERENCE
    roi_point: tuple[float, float] | None = None  # (row, col) the ROI is cropped around (regime ROI)


def window_labels(points: list[PreparedPoint], centre: int, *, radius: int) -> np.ndarray:
    """The (14,) labels of the window centred at `centre`: each location with a point within `radius` slices.

    Aneurysm Present is set when any location is.
    """
    labels = np.zeros(len(LABELS), np.float32)
    for p in points:
        if abs(int(round(p.z)) - centre) <= radius:
            labels[p.location] = 1.0
    labels[PRESENT_INDEX] = float(labels.max() > 0)
    return labels


def _positive_samples(series: list[CachedSeries], n: int, cfg: SamplingConfig,
                      rng: np.random.Generator) -> list[Sample]:
    anchors = [(i, p) for i, s in enumerate(series) for p in s.points]
    if not anchors or n <= 0:
        return []
    out = []
    for k in rng.integers(0, len(anchors), n):
        i, p = anchors[int(k)]
        z = int(round(p.z)) + int(rng.integers(-cfg.positive_jitter, cfg.positive_jitter + 1))
        z = min(max(z, 0), series[i].num_slices - 1)
        labels = window_labels(series[i].points, z, radius=cfg.label_radius)
        if labels[PRESENT_INDEX] == 0:  # clamped away from the point at a volume edge
            z = int(round(p.z))
            labels = window_labels(series[i].points, z, radius=cfg.label_radius)
        out.append(Sample(series=i, centre=z, labels=labels, point=(p.row, p.col)))
    return out


def negative_centres(s: CachedSeries, min_distance: int) -> np.ndarray:
    """Centre slices of a series that may serve as negatives (all of a negative series, far ones otherwise)."""
    return _far_slices(s, min_distance)


def _far_slices(s: CachedSeries, min_distance: int) -> np.ndarray:
    z = np.arange(s.num_slices)
    if not s.points:
        return z
    dist = np.min(np.abs(z[:, None] - np.array([round(p.z) for p in s.points])[None, :]), axis=1)
    return z[dist >= min_distance]


def _negative_samples(series: list[CachedSeries], n: int, cfg: SamplingConfig, rng: np.random.Generator,
                      hard: list[tuple[int, int]] | None = None) -> list[Sample]:
    if n <= 0:
        return []
    out: list[Sample] = []
    if hard and cfg.hard_negative_share > 0:
        count = int(round(n * cfg.hard_negative_share))
        for k in rng.integers(0, len(hard), count):
            i, z = hard[int(k)]
            out.append(Sample(series=i, centre=int(z), labels=np.zeros(len(LABELS), np.float32)))
        n -= count
    negatives = [i for i, s in enumerate(series) if not s.points]
    far = {i: _far_slices(s, cfg.negative_min_distance) for i, s in enumerate(series) if s.points}
    far = {i: z for i, z in far.items() if z.size}
    # relative slice levels of the positives: negatives at the same levels remove the "this level = positive" shortcut
    levels = np.array([p.z / max(s.num_slices - 1, 1) for s in series for p in s.points], dtype=float)
    zero = np.zeros(len(LABELS), np.float32)
    far_ids = list(far)
    for _ in range(n):
        from_positive = far_ids and (not negatives or rng.random() < cfg.positive_series_negative_share)
        if from_positive:
            i = far_ids[int(rng.integers(len(far_ids)))]
            z = int(far[i][int(rng.integers(far[i].size))])
        elif negatives:
            i = negatives[int(rng.integers(len(negatives)))]
            num = series[i].num_slices
            if levels.size and rng.random() < cfg.same_level_share:
                level = float(levels[int(rng.integers(levels.size))])
                z = int(round(level * (num - 1))) + int(rng.integers(-cfg.label_radius, cfg.label_radius + 1))
                z = min(max(z, 0), num - 1)
            else:
                z = int(rng.integers(num))
        else:
            break
        out.append(Sample(series=i, centre=z, labels=zero.copy()))
    return out


def draw_epoch(series: list[CachedSeries], n_windows: int, cfg: SamplingConfig, *,
               image_size: int, rng: np.random.Generator,
               hard_negatives: list[tuple[int, int]] | None = None) -> list[Sample]:
    """Sample one epoch of windows: positives near localizers, negatives far from them, regimes assigned.

    Args:
        series: the fold's training series.
        n_windows: windows to draw (positives : negatives = 1 : cfg.negatives_per_positive).
        cfg: sampling options.
        image_size: side of the prepared slices (for random ROI points).
        rng: the epoch's generator.
        hard_negatives: (series index, centre) windows mined as hard negatives; a share
            `cfg.hard_negative_share` of the negatives is drawn from them.
    Returns:
        A shuffled list of samples.
    """
    n_pos = int(round(n_windows / (1.0 + cfg.negatives_per_positive)))
    samples = _positive_samples(series, n_pos, cfg, rng)
    samples += _negative_samples(series, n_windows - len(samples), cfg, rng, hard_negatives)
    samples = assign_regimes(samples, cfg, image_size=image_size, rng=rng)
    order = rng.permutation(len(samples))
    return [samples[i] for i in order]


def assign_regimes(samples: list[Sample], cfg: SamplingConfig, *, image_size: int,
                   rng: np.random.Generator) -> list[Sample]:
    """Give each sample its stream-2 regime (the guard against "coordinates present = aneurysm").

    With `cfg.guard`: a share `positive_inference_share` of positives go in the inference regime (identical streams,
    zero coordinates), the rest as ROI crops around their localizer; a share `negative_roi_share` of negatives get an
    ROI crop around a point drawn like the positives' points (or uniformly), with its coordinates. Neither the crop
    nor the coordinates then tell the label. Without the guard (the flawed design, kept only to measure it): every
    positive gets its ROI and coordinates, every negative the inference regime.
    """
    pos_points = [s.point for s in samples if s.point is not None]
    out = []
    for s in samples:
        positive = s.labels[PRESENT_INDEX] > 0.5
        if positive:
            roi = (not cfg.guard) or rng.random() >= cfg.positive_inference_share
            point = s.point if roi else None
        else:
            roi = cfg.guard and rng.random() < cfg.negative_roi_share
            point = None
            if roi:
                if pos_points and rng.random() < 0.5:
                    point = pos_points[int(rng.integers(len(pos_points)))]
                else:
                    point = tuple(float(v) for v in rng.uniform(0.1, 0.9, 2) * (image_size - 1))
        out.append(Sample(series=s.series, centre=s.centre, labels=s.labels, point=s.point,
                          regime=ROI if roi and point is not None else INFERENCE, roi_point=point))
    return out


def roi_box(point: tuple[float, float], image_size: int, fraction: float) -> tuple[int, int, int]:
    """The square ROI (top, left, side) of side round(fraction * image_size) centred on (row, col).

    The box is shifted (never shrunk) to stay inside the image, so the point is at its centre except near edges.
    """
    side = int(min(max(round(fraction * image_size), 2), image_size))
    row, col = point
    top = int(round(row - side / 2.0))
    left = int(round(col - side / 2.0))
    top = min(max(top, 0), image_size - side)
    left = min(max(left, 0), image_size - side)
    return top, left, side


def roi_crop(window: np.ndarray, point: tuple[float, float], *, fraction: float,
             out_size: int | None = None) -> np.ndarray:
    """Crop the ROI box around `point` from every channel of a (C, S, S) window and resize it to (C, out, out)."""
    channels, size = window.shape[0], window.shape[-1]
    out_size = out_size or size
    top, left, side = roi_box(point, size, fraction)
    crop = np.ascontiguousarray(window[:, top:top + side, left:left + side].transpose(1, 2, 0))
    resized = cv2.resize(crop, (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return np.ascontiguousarray(resized.transpose(2, 0, 1)).reshape(channels, out_size, out_size)


def normalized_coords(point: tuple[float, float], image_size: int) -> np.ndarray:
    """(x, y) in [0, 1] of a (row, col) point: x = col / (S - 1), y = row / (S - 1)."""
    row, col = point
    scale = float(max(image_size - 1, 1))
    return np.clip(np.array([col / scale, row / scale], np.float32), 0.0, 1.0)


def window_at(pixels: np.ndarray, centre: int, offsets: tuple[int, ...], *, scale: float) -> np.ndarray:
    """The (C, S, S) float32 window the kernel builds for centre slice `centre` (inference.windows)."""
    indices = window_indices(pixels.shape[0], offsets, centres=[centre])
    return build_batch(pixels, indices, scale=scale, dtype=np.float32)[0]
