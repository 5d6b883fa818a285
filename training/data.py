"""Read the competition layout: train.csv labels/modality and train_localizers.csv points, per series."""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from inference.errors import ConfigError
from inference.labels import ID_COLUMN, LABELS

from .localizers import LocalizerRow, parse_coordinates

__all__ = ["TrainTable", "read_train_table", "read_localizers", "series_folder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTable:
    """train.csv as arrays: one row per series."""

    uids: tuple[str, ...]
    modality: tuple[str, ...]  # the raw Modality column (CTA, MRA, MRI T2, ...)
    labels: np.ndarray  # (n, 14) float32 in LABELS order

    def index(self, uid: str) -> int:
        return self.uids.index(uid)


def read_train_table(path: str | Path) -> TrainTable:
    """Read train.csv (or test_labels.csv): SeriesInstanceUID, Modality and the 14 label columns.

    Raises:
        ConfigError: missing file or columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: --data-dir must hold the competition layout (train.csv, "
                          "train_localizers.csv, series/)")
    frame = pl.read_csv(path, infer_schema_length=10000)
    missing = [c for c in (ID_COLUMN, "Modality", *LABELS) if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks columns {missing}")
    labels = frame.select([pl.col(c).cast(pl.Float32) for c in LABELS]).to_numpy().astype(np.float32)
    return TrainTable(uids=tuple(str(v) for v in frame[ID_COLUMN].to_list()),
                      modality=tuple(str(v) for v in frame["Modality"].to_list()), labels=labels)


def read_localizers(path: str | Path, *, frame_base: int = 0) -> dict[str, list[LocalizerRow]]:
    """Read train_localizers.csv into rows per series; unparsable rows are logged and skipped."""
    path = Path(path)
    if not path.is_file():
        log.warning("%s not found: training without localizers (no positive windows)", path)
        return {}
    frame = pl.read_csv(path, infer_schema_length=10000)
    out: dict[str, list[LocalizerRow]] = defaultdict(list)
    columns = [ID_COLUMN, "SOPInstanceUID", "coordinates", "location"]
    for uid, sop, coords, location in frame.select(columns).iter_rows():
        try:
            x, y, f = parse_coordinates(coords, frame_base=frame_base)
        except ConfigError as exc:
            log.warning("series %s: skipping localizer: %s", uid, exc)
            continue
        out[str(uid)].append(LocalizerRow(series_uid=str(uid), sop_uid=str(sop), x=x, y=y, frame=f,
                                          location=str(location)))
    return dict(out)


def series_folder(data_dir: str | Path, uid: str) -> Path:
    """The DICOM folder of a series in the competition layout."""
    return Path(data_dir) / "series" / uid
