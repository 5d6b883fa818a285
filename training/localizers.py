"""Localizer rows -> points in the prepared (cached) volume, through the loader's original->canonical mapping."""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.errors import ConfigError
from inference.labels import LOCATION_LABELS

__all__ = ["LocalizerRow", "PreparedPoint", "parse_coordinates", "place_points", "rows_hash"]


@dataclass(frozen=True)
class LocalizerRow:
    """One row of train_localizers.csv: a point on one frame of one file."""

    series_uid: str
    sop_uid: str
    x: float  # pixel column in the file's frame
    y: float  # pixel row
    frame: int  # 0-based frame of a multi-frame file ('f' in the coordinates string), 0 otherwise
    location: str


@dataclass(frozen=True)
class PreparedPoint:
    """A localizer placed in the prepared uint8 stack: slice z, row, col (fractional) and its location index."""

    z: float
    row: float
    col: float
    location: int  # index into LABELS (a location label, never Aneurysm Present)


def parse_coordinates(text: str, *, frame_base: int = 0) -> tuple[float, float, int]:
    """Parse the competition's coordinates string "{'x': 258.3, 'y': 261.4}" (optionally with 'f': frame).

    Args:
        text: the coordinates cell.
        frame_base: the number the dataset uses for the first frame ('f' minus frame_base is 0-based).
    Returns:
        (x, y, frame) with frame 0-based (0 when 'f' is absent).
    Raises:
        ConfigError: when the text is not a mapping with numeric x and y.
    """
    try:
        value = ast.literal_eval(str(text).strip())
        x, y = float(value["x"]), float(value["y"])
        frame = int(value["f"]) - frame_base if "f" in value and value["f"] is not None else 0
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise ConfigError(f"bad localizer coordinates {text!r}: {exc}") from None
    return x, y, max(frame, 0)


def rows_hash(rows: list[LocalizerRow]) -> str:
    """A stable hash of a series' localizer rows (stored with the cache entry to detect CSV changes)."""
    text = json.dumps(sorted(json.dumps(asdict(r), sort_keys=True) for r in rows))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stack_index_by_file_name(volume: Any, sop_uid: str, frame: int) -> int | None:
    """Stack index of the file named <sop_uid>.dcm (the competition names files by SOPInstanceUID), if any.

    Same mapping as `Volume.to_canonical` (stack index, then the canonical transform); looked up first because a
    file's name is what the localizer CSV was made from, even where a header's SOPInstanceUID disagrees with it.
    """
    for k, src in enumerate(getattr(volume, "sources", [])):
        if src.frame == frame and src.path and Path(src.path).stem == sop_uid:
            return k
    return None


def place_points(volume: Any, prepared: Any, rows: list[LocalizerRow]) -> tuple[list[PreparedPoint], list[str]]:
    """Map localizer rows to prepared-stack points.

    Args:
        volume: the loaded `inference.volume.Volume` (provides `to_canonical`).
        prepared: its `PreparedVolume` (provides `canonical_to_prepared`).
        rows: the series' localizer rows.
    Returns:
        (points, problems): points inside the prepared stack, and one note per row that could not be placed
        (unknown SOP/frame, unknown location name); those rows are skipped, not fatal.
    """
    points: list[PreparedPoint] = []
    problems: list[str] = []
    num_slices = prepared.pixels.shape[0]
    for row in rows:
        if row.location not in LOCATION_LABELS:
            problems.append(f"{row.sop_uid}: unknown location {row.location!r}")
            continue
        k = _stack_index_by_file_name(volume, row.sop_uid, row.frame)
        if k is not None:  # the file named by the localizer's SOPInstanceUID, as the competition names files
            canonical = volume.transform.point((k, row.y, row.x), volume.stack_shape)
        else:
            try:
                canonical = volume.to_canonical(row.sop_uid, row.frame, row.x, row.y)
            except KeyError as exc:
                problems.append(f"{row.sop_uid} frame {row.frame}: {exc}")
                continue
        z, r, c = (float(v) for v in prepared.canonical_to_prepared(*canonical))
        z = min(max(z, 0.0), num_slices - 1.0)
        points.append(PreparedPoint(z=z, row=r, col=c, location=LOCATION_LABELS.index(row.location)))
    return points, problems
