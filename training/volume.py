"""The volume model (kind volume32): the whole series resampled to D slices, fed as D channels of one timm image."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import Dataset

from evaluation.metric import score_predictions
from inference.aggregate import enforce_present_rule
from inference.labels import LABELS
from inference.normalize import volume_model_input
from inference.progress import Progress

from .augment import WindowAugment
from .config import ModelConfig, TrainConfig
from .loop import DistInfo, FoldResult, FoldTask, fit_fold, seed_everything
from .sampling import CachedSeries

__all__ = ["VolumeNet", "build_volume_model", "volume_input", "VolumeDataset", "predict_volumes",
           "validate_volumes", "train_volume_fold"]

log = logging.getLogger(__name__)


class VolumeNet(nn.Module):
    """One timm backbone over the series' D resampled slices as channels -> 14 logits (its own exported graph)."""

    def __init__(self, arch: str, *, depth: int, pretrained: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = timm.create_model(arch, pretrained=pretrained, in_chans=depth, num_classes=len(LABELS),
                                          drop_rate=drop_rate)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, D, S, S) -> (B, 14) logits."""
        return self.backbone(volume)


def build_volume_model(cfg: ModelConfig, *, depth: int) -> VolumeNet:
    """The volume network described by `cfg` (model.arch, pretrained, drop_rate) for `depth` slices."""
    return VolumeNet(cfg.arch, depth=depth, pretrained=cfg.pretrained, drop_rate=cfg.drop_rate)


def volume_input(pixels: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """(D, S, S) float32 model input of a cached uint8 stack: the kernel's `volume_model_input`."""
    return volume_model_input(pixels, cfg.volume)


def volume_parity_inputs(series: list[CachedSeries], cfg: TrainConfig, count: int) -> np.ndarray:
    """Whole resampled validation series (at most 4) for the export's parity check."""
    return np.stack([volume_input(s.pixels, cfg) for s in series[:max(1, min(count, 4))]])


class VolumeDataset(Dataset):
    """One item per series: (volume (D, S, S), labels (14,)), augmented like a window (a left-right flip swaps
    the left/right labels; every channel gets the same geometry)."""

    def __init__(self, series: list[CachedSeries], order: np.ndarray, cfg: TrainConfig, *, seed: int,
                 augment: bool = True) -> None:
        self.series, self.order, self.cfg, self.seed = series, order, cfg, int(seed)
        self.augment = WindowAugment(cfg.augment) if augment else None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        s = self.series[int(self.order[index])]
        volume, labels = volume_input(s.pixels, self.cfg), s.labels.copy()
        if self.augment is not None:
            volume, _, labels = self.augment(volume, None, labels, np.random.default_rng([self.seed, index]))
        return torch.from_numpy(np.ascontiguousarray(volume)), torch.from_numpy(labels.astype(np.float32))


@torch.no_grad()
def predict_volumes(net: VolumeNet, series: list[CachedSeries], cfg: TrainConfig, *, device: str = "cpu",
                    progress: bool = False) -> np.ndarray:
    """(n, 14) probabilities of whole series, as the kernel computes them (Present raised to the locations)."""
    was_training = net.training
    net.eval()
    out = []
    for s in Progress(series, desc="validate", unit="series", enabled=progress, leave=False):
        logits = net(torch.from_numpy(volume_input(s.pixels, cfg)[None]).to(device))
        out.append(enforce_present_rule(torch.sigmoid(logits.float()).cpu().numpy()[0]))
    net.train(was_training)
    return np.stack(out)


def validate_volumes(net: VolumeNet, series: list[CachedSeries], cfg: TrainConfig, *,
                     device: str = "cpu") -> dict[str, Any]:
    """Series-level scores; one answer per series, so the window reductions' names all report it."""
    y_pred = predict_volumes(net, series, cfg, device=device)
    scores = score_predictions(np.stack([s.labels for s in series]), y_pred)
    return {"configured": scores, "max": scores, "topk_mean": scores, "y_pred": y_pred}


def train_volume_fold(cfg: TrainConfig, fold: int, train_series: list[CachedSeries],
                      val_series: list[CachedSeries], *, checkpoint_dir, dist_info: DistInfo | None = None,
                      progress: bool = True) -> FoldResult:
    """Train one fold of the volume model: every training series once per epoch, shuffled, augmented."""
    info = dist_info or DistInfo()
    seed_everything(cfg.train.seed * 1000 + fold)
    net = build_volume_model(cfg.model, depth=cfg.volume.depth).to(info.device)
    items = max(cfg.train.batch_size, len(train_series))

    def epoch_dataset(epoch: int, rng: np.random.Generator) -> Dataset:
        order = rng.permutation(np.resize(np.arange(len(train_series)), items))
        return VolumeDataset(train_series, order, cfg, seed=hash((cfg.train.seed, fold, epoch)) % (2**31))

    task = FoldTask(net=net, items_per_epoch=items, epoch_dataset=epoch_dataset,
                    validate=lambda trained: validate_volumes(trained, val_series, cfg, device=info.device))
    return fit_fold(cfg, fold, task, val_uids=[s.uid for s in val_series], checkpoint_dir=checkpoint_dir,
                    dist_info=info, progress=progress)

