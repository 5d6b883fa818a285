"""The kit's exception types: one base error and one subclass per failing stage."""
from __future__ import annotations

__all__ = ["KitError", "SeriesLoadError", "ManifestError", "ConfigError", "InferenceError", "DeadlineError"]


class KitError(Exception):
    """Base class of every error the kit raises on purpose."""


class SeriesLoadError(KitError):
    """A series folder holds no usable image (every file missing, unreadable or undecodable)."""


class ManifestError(KitError):
    """A weights manifest does not match its files or the competition (hash, labels, shapes)."""


class ConfigError(KitError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class InferenceError(KitError):
    """The model ensemble failed on a batch of windows."""


class DeadlineError(KitError):
    """A series ran out of its time budget before any window was scored (the kernel answers the priors)."""
