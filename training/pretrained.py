"""Pretrained backbone weights: where timm takes them from, and a check before the first epoch that they load."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import timm
from timm.models import get_pretrained_cfg

from inference.errors import ConfigError

__all__ = ["PretrainedSource", "PretrainedWeightsError", "pretrained_source", "ensure_pretrained"]

log = logging.getLogger(__name__)


class PretrainedWeightsError(ConfigError):
    """The preset asks for pretrained weights that are neither cached here nor downloadable."""


@dataclass(frozen=True)
class PretrainedSource:
    """Which weights a backbone starts from (recorded in the manifest's provenance)."""

    arch: str
    pretrained: bool
    hf_hub_id: str = ""  # timm's Hugging Face repository, e.g. timm/tf_efficientnet_b0.ns_jft_in1k
    url: str = ""  # timm's fallback download URL

    def describe(self) -> str:
        if not self.pretrained:
            return f"{self.arch}: random initialisation (model.pretrained=false)"
        return f"{self.arch}: timm pretrained weights " + (f"hf-hub:{self.hf_hub_id}" if self.hf_hub_id else self.url)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pretrained_source(arch: str, *, pretrained: bool) -> PretrainedSource:
    """Where timm takes `arch`'s default pretrained weights from (no file is read, nothing is downloaded)."""
    if not pretrained:
        return PretrainedSource(arch, False)
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise PretrainedWeightsError(f"timm has no pretrained weights for {arch!r}; pass --no-pretrained or pick "
                                     "another model.arch")
    return PretrainedSource(arch, True, hf_hub_id=cfg.hf_hub_id or "", url=cfg.url or "")


def ensure_pretrained(arch: str, *, in_chans: int) -> PretrainedSource:
    """Load `arch`'s pretrained weights once (from the local cache, else by download) before anything is trained.

    timm adapts the first convolution to `in_chans` channels. Call it before the cache and the first epoch: a
    missing file then stops the run at once, with the ways to fix it.

    Raises:
        PretrainedWeightsError: the weights are not cached and cannot be fetched (offline, HF_HUB_OFFLINE=1...).
    """
    source = pretrained_source(arch, pretrained=True)
    try:
        timm.create_model(arch, pretrained=True, in_chans=in_chans, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - hub, network, file and format errors all mean "not available"
        cache = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
        raise PretrainedWeightsError(
            f"model.pretrained is true, but timm's weights for {arch} ({source.describe()}) are not in the local "
            f"cache ({cache}) and could not be fetched: {type(exc).__name__}: {str(exc)[:300]}. Fix it one of "
            f"three ways: fetch them once on a machine with internet "
            f"(python -c \"import timm; timm.create_model('{arch}', pretrained=True)\"); copy that Hugging Face "
            "cache here and point HF_HOME at it (HF_HUB_OFFLINE=1 then keeps timm off the network); or pass "
            "--no-pretrained to train from random weights on purpose.") from exc
    log.info("pretrained weights available: %s", source.describe())
    return source
