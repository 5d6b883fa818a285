"""DualStreamNet (full window + ROI crop + coordinate MLP -> 14 logits) and its one-input inference graph."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import timm
import torch
from torch import nn

from inference.labels import LABELS

from .config import ModelConfig
from .heatmap import HeatmapHead, stream_tap

__all__ = ["DualStreamNet", "InferenceGraph", "build_model"]


class DualStreamNet(nn.Module):
    """Two timm backbones (full window, ROI crop) and a 2 -> coord_dim MLP, concatenated into a linear classifier.

    Args:
        arch: timm model name for both streams.
        in_chans: channels of a window (len(offsets)).
        pretrained: start both streams from timm's pretrained weights (see training.pretrained).
        coord_dim: width of the coordinate MLP.
        drop_rate: dropout before the classifier.
        heatmap_stride: with a value, a training-only head on the full stream's feature map of this stride
            predicts the localizer heatmap (training.heatmap); `heatmap_logits()` returns it after each training
            forward. The head is never part of the exported graph.
    """

    def __init__(self, arch: str, *, in_chans: int, pretrained: bool = False, coord_dim: int = 64,
                 drop_rate: float = 0.0, heatmap_stride: int | None = None) -> None:
        super().__init__()
        self.full_stream = timm.create_model(arch, pretrained=pretrained, in_chans=in_chans, num_classes=0)
        self.roi_stream = timm.create_model(arch, pretrained=pretrained, in_chans=in_chans, num_classes=0)
        self.coord_mlp = nn.Sequential(nn.Linear(2, coord_dim), nn.ReLU(inplace=True),
                                       nn.Linear(coord_dim, coord_dim), nn.ReLU(inplace=True))
        features = _feature_dim(self.full_stream) + _feature_dim(self.roi_stream) + coord_dim
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(features, len(LABELS))
        self.heatmap_head: HeatmapHead | None = None
        self._tapped: torch.Tensor | None = None
        self._capture = False
        if heatmap_stride is not None:
            tap, channels = stream_tap(self.full_stream, heatmap_stride)
            self.heatmap_head = HeatmapHead(channels)
            tap.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        # a forward hook, not a second forward: the heatmap reuses the full stream's own pass. Only in training,
        # so evaluation and the ONNX export trace exactly the graph without the head.
        self._tapped = output if self.training or self._capture else None

    def forward(self, full: torch.Tensor, roi: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S), (B, C, S, S), (B, 2) -> (B, 14) logits."""
        parts = [self.full_stream(full), self.roi_stream(roi), self.coord_mlp(coords)]
        return self.classifier(self.dropout(torch.cat(parts, dim=1)))

    def heatmap_logits(self) -> torch.Tensor:
        """(B, 1, H, W) heatmap logits of the full windows of the latest training forward.

        Raises:
            RuntimeError: the net has no heatmap head, or no training forward ran since the last call.
        """
        if self.heatmap_head is None or self._tapped is None:
            raise RuntimeError("no heatmap: build the net with heatmap_stride and run a training forward first")
        features, self._tapped = self._tapped, None
        return self.heatmap_head(features)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Keep the tapped features in evaluation mode too, so `heatmap_logits()` answers after an evaluation
        forward (e.g. of the inference graph) without running the full stream again."""
        if self.heatmap_head is None:
            raise RuntimeError("no heatmap head: build the net with heatmap_stride")
        self._capture = True
        try:
            yield
        finally:
            self._capture = False

    def heatmap(self, full: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) heatmap logits of full windows in the current mode (eval: batch-norm running statistics),
        to look at what the head learned; runs only the full stream and the head."""
        with self.capturing():
            self.full_stream(full)
        return self.heatmap_logits()


def _feature_dim(stream: nn.Module) -> int:
    """Width of a timm model's pooled output with num_classes=0 (MobileNetV3 adds a head conv after num_features)."""
    return int(getattr(stream, "head_hidden_size", None) or stream.num_features)


class InferenceGraph(nn.Module):
    """The exported graph: ONE window feeds both streams, the coordinates are zeros (what the kernel runs)."""

    def __init__(self, net: DualStreamNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        coords = torch.zeros_like(window[:, :2, 0, 0])
        return self.net(window, window, coords)


def build_model(cfg: ModelConfig, *, in_chans: int) -> DualStreamNet:
    """The dual-stream network described by `cfg`."""
    return DualStreamNet(cfg.arch, in_chans=in_chans, pretrained=cfg.pretrained, coord_dim=cfg.coord_dim,
                         drop_rate=cfg.drop_rate,
                         heatmap_stride=cfg.heatmap_stride if cfg.heatmap_weight > 0 else None)
