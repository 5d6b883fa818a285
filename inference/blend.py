"""A bundle of several models: its members (one weights folder each) and the per-label weights that blend them."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .aggregate import enforce_present_rule
from .errors import InferenceError, ManifestError
from .labels import LABELS

__all__ = ["BLEND_NAME", "BLEND_VERSION", "BlendMember", "Blend"]

BLEND_NAME = "bundle.json"  # beside the members' folders; a weights folder without it holds one model
BLEND_VERSION = 1


@dataclass(frozen=True)
class BlendMember:
    """One model of the bundle: its name and its weights folder (relative to the bundle's folder)."""

    name: str
    folder: str


@dataclass(frozen=True)
class Blend:
    """The members and `weights` (14, members): label j's answer is sum_m weights[j, m] * member m's answer.

    The trainer fits the weights on out-of-fold answers (`training.blend`); each row is non-negative and sums
    to 1, so the blend stays a probability.
    """

    members: tuple[BlendMember, ...]
    weights: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    def weighted_members(self) -> tuple[BlendMember, ...]:
        """The members with a weight above zero for some label (the others need not run)."""
        return self.weighted().members

    def weighted(self) -> Blend:
        """This blend without its zero-weight members (and their weight columns): what a bundle needs to hold."""
        keep = [i for i, column in enumerate(self.weights.T) if (column > 0).any()]
        if len(keep) == len(self.members):
            return self
        left_out = [m.name for i, m in enumerate(self.members) if i not in keep]
        return Blend(members=tuple(self.members[i] for i in keep), weights=self.weights[:, keep],
                     provenance={**self.provenance, "left_out_members": left_out})

    def combine(self, answers: Mapping[str, np.ndarray]) -> np.ndarray:
        """(14,) blended probabilities of the members' (14,) answers, by member name.

        A member missing from `answers` (it failed on this series) costs only itself: each label's weights are
        renormalised over the members that answered (equal shares where those members had no weight for it).
        Per-label weights can put a blended location above the blended Present, so the kit's rule (Present is at
        least every location) is applied again after blending.

        Raises:
            InferenceError: no member answered.
        """
        present = [i for i, m in enumerate(self.members) if m.name in answers]
        if not present:
            raise InferenceError("no member of the blend answered")
        stacked = np.stack([np.asarray(answers[self.members[i].name], dtype=np.float64) for i in present], axis=1)
        weights = self.weights[:, present]
        totals = weights.sum(axis=1, keepdims=True)
        weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / len(present))
        return enforce_present_rule(np.clip((stacked * weights).sum(axis=1), 0.0, 1.0))

    def problems(self, folder: Path | None = None) -> list[str]:
        out = []
        names = [m.name for m in self.members]
        if len(self.members) < 1 or len(set(names)) != len(names):
            out.append(f"members must be one or more, with distinct names: {names}")
        if self.weights.shape != (len(LABELS), len(self.members)):
            out.append(f"weights have shape {self.weights.shape}, expected ({len(LABELS)}, {len(self.members)})")
        elif not np.isfinite(self.weights).all() or (self.weights < 0).any() \
                or not np.allclose(self.weights.sum(axis=1), 1.0, atol=1e-6):
            out.append("each label's weights must be non-negative and sum to 1")
        if folder is not None:
            for member in self.members:
                if not (Path(folder) / member.folder / "manifest.json").is_file():
                    out.append(f"member {member.name}: no manifest.json in {Path(folder) / member.folder}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": BLEND_VERSION, "labels": list(LABELS),
                "members": [{"name": m.name, "folder": m.folder} for m in self.members],
                "weights": self.weights.tolist(), "provenance": self.provenance}

    def write(self, folder: str | Path) -> Path:
        problems = self.problems(Path(folder))
        if problems:
            raise ManifestError("refusing to write an invalid blend: " + "; ".join(problems))
        path = Path(folder) / BLEND_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Blend | None:
        """The blend of a weights folder, None when it holds a single model (no bundle.json).

        Raises:
            ManifestError: an unreadable, unknown-version or inconsistent bundle.json.
        """
        path = Path(folder) / BLEND_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        if data.get("format_version") != BLEND_VERSION:
            raise ManifestError(f"{path}: format_version {data.get('format_version')!r} is not supported (this "
                                f"kernel reads version {BLEND_VERSION})")
        if data.get("labels") != list(LABELS):
            raise ManifestError(f"{path}: labels are not the competition's 14 in order")
        try:
            blend = cls(members=tuple(BlendMember(str(m["name"]), str(m["folder"])) for m in data["members"]),
                        weights=np.asarray(data["weights"], dtype=np.float64),
                        provenance=dict(data.get("provenance") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: malformed: {type(exc).__name__}: {exc}") from exc
        problems = blend.problems(Path(folder))
        if problems:
            raise ManifestError(f"{path} is inconsistent: " + "; ".join(problems))
        return blend
