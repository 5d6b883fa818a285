"""The model kinds a bundle may hold: each kind's name, its ONNX input and the runner that answers a series with it.

The one module that knows the kinds by name. Everything else asks `model_kind(name)` and reads the entry's fields
(trainer side: `training.kinds`, keyed by these entries). Adding a kind is one entry here, its runner (a class with
the `inference.runners.Runner` interface) and its trainer entry.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # types only: kinds.py sits below config, manifest and the runners
    from .config import VolumeConfig, WindowConfig

__all__ = ["ModelKind", "KINDS", "KIND_NAMES", "REGION_KIND_NAMES", "DEFAULT_KIND", "WINDOW_25D", "VOLUME_32",
           "model_kind"]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: what its ONNX graph takes and how the kernel answers a series with it.

    Attributes:
        name: the manifest's and the training config's `kind`.
        summary: one line for messages and --help.
        windowed: the model scores windows of slices (N per series) that the manifest's aggregation reduces to one
            answer; else it answers once per series (the aggregation does not apply, there are no windows).
        input_name: the ONNX graph's input name the exporter writes.
        needs_volume: the manifest must carry a `volume` section (the resampled depth).
        runner: "module:Class" of the kernel's runner for this kind (imported when first built, so this module
            imports nothing heavy and nothing that imports it).
        region_runner: "module:Class" of the runner when the manifest carries a region locator (a stage before the
            model that crops the volume to its box); "" when this kind takes no region.
    """

    name: str
    summary: str
    windowed: bool
    input_name: str
    needs_volume: bool
    runner: str
    region_runner: str = ""

    def channels(self, windows: WindowConfig, volume: VolumeConfig | None) -> int:
        """Channels of one model input: the window's slices, or the resampled depth of a volume kind."""
        if self.needs_volume and volume is not None:
            return volume.depth
        return windows.channels

    @property
    def takes_region(self) -> bool:
        """A region locator may run before this kind's model (the manifest's `region` section)."""
        return bool(self.region_runner)

    def runner_class(self, *, region: bool = False) -> Callable[..., object]:
        """The runner class named by `runner` (with `region`: by `region_runner`).

        Raises:
            ConfigError: `region` asked of a kind that takes none.
        """
        if region and not self.takes_region:
            raise ConfigError(f"a region locator needs kind {', '.join(REGION_KIND_NAMES)}, not {self.name}")
        module, _, attr = (self.region_runner if region else self.runner).partition(":")
        factory: Callable[..., object] = getattr(importlib.import_module(module), attr)
        return factory


WINDOW_25D = ModelKind(name="window25d", summary="2.5D windows of neighbouring slices, dual stream",
                       windowed=True, input_name="window", needs_volume=False,
                       runner="inference.runners:WindowRunner", region_runner="inference.runners:RegionRunner")
VOLUME_32 = ModelKind(name="volume32", summary="the whole series resampled to D slices, fed as D channels",
                      windowed=False, input_name="volume", needs_volume=True,
                      runner="inference.runners:VolumeRunner")

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (WINDOW_25D, VOLUME_32)}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)
REGION_KIND_NAMES: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.takes_region)
DEFAULT_KIND = WINDOW_25D.name  # a manifest without "kind" (older bundles) holds a 2.5D model


def model_kind(name: str) -> ModelKind:
    """The registered kind called `name`.

    Raises:
        ConfigError: no kind has that name (the message lists the known ones).
    """
    kind = KINDS.get(name)
    if kind is None:
        raise ConfigError(f"unknown model kind {name!r}: this kit knows {', '.join(KIND_NAMES)} (update the kit or "
                          "rebuild the bundle)")
    return kind
