"""Localizer heatmaps: an auxiliary training target that tells the full stream WHERE in the window the aneurysm is.

The labels of a window say only which locations it holds; the localizer points say where. A small head on the full
stream's stride-`stride` feature map learns a one-channel heatmap of the window's points (CenterNet's gaussian
targets and focal loss), so the backbone's features must find the aneurysm, not just the level of the slice.
The head exists only in training: the exported graph (`InferenceGraph`) never runs it, so the kernel is unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from inference.errors import ConfigError

from .localizers import PreparedPoint

__all__ = ["window_points", "render_heatmap", "heatmap_focal_loss", "HeatmapHead", "stream_tap"]


def window_points(points: list[PreparedPoint], centre: int, *, radius: int) -> np.ndarray:
    """(N, 2) float32 (row, col) of the localizer points within `radius` slices of `centre`: those behind the
    window's labels (`sampling.window_labels` uses the same rule)."""
    near = [(p.row, p.col) for p in points if abs(int(round(p.z)) - centre) <= radius]
    return np.asarray(near, dtype=np.float32).reshape(-1, 2)


def render_heatmap(points: np.ndarray, image_size: int, *, stride: int, sigma: float) -> np.ndarray:
    """The (1, H, H) float32 target, H = ceil(image_size / stride): a gaussian of `sigma` input pixels around each
    point (the maximum where they overlap), exactly 1 at the cell that holds the point and 0 with no points.

    Points are (row, col) in input pixels; a point outside the image adds nothing.
    """
    side = -(-image_size // stride)
    heat = np.zeros((1, side, side), np.float32)
    centres = (np.arange(side, dtype=np.float32) + 0.5) * stride - 0.5  # input pixel at each cell's centre
    for row, col in np.asarray(points, dtype=np.float32).reshape(-1, 2):
        if not (0.0 <= row <= image_size - 1 and 0.0 <= col <= image_size - 1):
            continue
        g = np.exp(-((centres[:, None] - row) ** 2 + (centres[None, :] - col) ** 2) / (2.0 * sigma**2))
        cell_r, cell_c = min(int(row // stride), side - 1), min(int(col // stride), side - 1)
        g[cell_r, cell_c] = 1.0
        np.maximum(heat[0], g, out=heat[0])
    return heat


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of (B, 1, H, W) logits against gaussian targets, summed over cells
    and divided by the number of peak cells in the batch (at least 1, so a batch of negatives still counts)."""
    prob = torch.sigmoid(logits.float()).clamp(1e-4, 1.0 - 1e-4)
    target = target.float()
    peak = target.eq(1.0).float()
    pos = -torch.log(prob) * (1.0 - prob) ** alpha * peak
    neg = -torch.log(1.0 - prob) * prob**alpha * (1.0 - target) ** beta * (1.0 - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp(min=1.0)


class HeatmapHead(nn.Module):
    """conv3x3 -> ReLU -> conv1x1 to one heatmap logit per cell, biased to a 0.1 prior (CenterNet's init)."""

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, 1, 1))
        nn.init.constant_(self.body[-1].bias, -2.19)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


def stream_tap(stream: nn.Module, stride: int) -> tuple[nn.Module, int]:
    """The module of a timm backbone whose output has this stride (timm's `feature_info`), and its channels.

    Raises:
        ConfigError: the backbone reports no feature map at this stride (model.heatmap_stride).
    """
    entries = list(getattr(stream, "feature_info", None) or [])
    for entry in entries:
        if int(entry["reduction"]) == stride:
            return stream.get_submodule(entry["module"]), int(entry["num_chs"])
    strides = sorted({int(e["reduction"]) for e in entries})
    raise ConfigError(f"model.heatmap_stride={stride}: the backbone has no feature map at that stride (it has "
                      f"{strides})")
