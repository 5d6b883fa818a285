"""The trainer's side of the model kinds: each kind's fold trainer, network builder and export parity inputs.

Keyed by the entries of `inference.kinds` (the one place the kinds are named); `training_kind` refuses an unknown
kind, or a known one this trainer cannot train, by name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.errors import ConfigError
from inference.kinds import VOLUME_32, WINDOW_25D, ModelKind, model_kind

from .config import TrainConfig
from .loop import FoldResult, train_fold, window_parity_inputs
from .model import build_model
from .sampling import CachedSeries
from .volume import build_volume_model, train_volume_fold, volume_parity_inputs

__all__ = ["TrainingKind", "TRAINING_KINDS", "training_kind", "load_best"]


@dataclass(frozen=True)
class TrainingKind:
    """How the trainer handles one model kind.

    Attributes:
        spec: the kind's registry entry (name, ONNX input, windowed or not).
        train_fold: (cfg, fold, train series, validation series, *, checkpoint_dir, dist_info, progress) ->
            FoldResult.
        build_net: cfg -> the untrained network of this kind as `cfg.model` describes it.
        parity_inputs: (validation series, cfg, count) -> real model inputs for the export's parity check.
    """

    spec: ModelKind
    train_fold: Callable[..., FoldResult]
    build_net: Callable[[TrainConfig], torch.nn.Module]
    parity_inputs: Callable[[list[CachedSeries], TrainConfig, int], np.ndarray]


def _window_net(cfg: TrainConfig) -> torch.nn.Module:
    return build_model(cfg.model, in_chans=cfg.windows.channels)


def _volume_net(cfg: TrainConfig) -> torch.nn.Module:
    return build_volume_model(cfg.model, depth=cfg.volume.depth)


TRAINING_KINDS: dict[str, TrainingKind] = {
    WINDOW_25D.name: TrainingKind(WINDOW_25D, train_fold, _window_net, window_parity_inputs),
    VOLUME_32.name: TrainingKind(VOLUME_32, train_volume_fold, _volume_net, volume_parity_inputs),
}


def training_kind(name: str) -> TrainingKind:
    """The trainer's entry of the kind called `name`.

    Raises:
        ConfigError: an unknown kind, or one the kernel knows and this trainer cannot train.
    """
    spec = model_kind(name)
    entry = TRAINING_KINDS.get(spec.name)
    if entry is None:
        raise ConfigError(f"model kind {name!r} has no trainer (trainable: {', '.join(TRAINING_KINDS)})")
    return entry


def load_best(path: str | Path, cfg: TrainConfig) -> torch.nn.Module:
    """Rebuild a fold's network (any kind) from its best checkpoint (CPU, eval mode)."""
    fresh = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    net = training_kind(cfg.model.kind).build_net(fresh)
    state = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(state["model"])
    return net.eval()
