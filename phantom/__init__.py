"""Synthetic competition dataset ("phantom"): an analytic head written as DICOM series in Kaggle's layout.

Test and demo tooling only: never bundled into the kernel. CLI: ``python -m phantom --out DIR --series 60``.
"""
from __future__ import annotations

from .acquisition import COMPRESSIONS, PLANES, Acquisition, PixelLocation
from .anatomy import TEMPLATE_SITES, Anatomy, Aneurysm, Vessel, random_anatomy, template_anatomy
from .dataset import (
    LOCALIZER_COLUMNS,
    TRAIN_COLUMNS,
    DatasetSummary,
    PhantomConfig,
    draw_split,
    make_dataset,
    random_acquisition,
    write_mirrored_test_split,
)
from .dicom_writer import STRIPPED_KEYWORDS, LocalizerRow, localizer_rows, stored_pixels, write_series
from .render import MODALITY_INTENSITIES, Intensities, blob_level, render_volume
from .spec import MODALITIES, SeriesSpec, deterministic_uid, series_spec

__all__ = [
    "Acquisition",
    "PixelLocation",
    "PLANES",
    "COMPRESSIONS",
    "Anatomy",
    "Aneurysm",
    "Vessel",
    "TEMPLATE_SITES",
    "random_anatomy",
    "template_anatomy",
    "SeriesSpec",
    "series_spec",
    "deterministic_uid",
    "MODALITIES",
    "Intensities",
    "MODALITY_INTENSITIES",
    "blob_level",
    "render_volume",
    "LocalizerRow",
    "STRIPPED_KEYWORDS",
    "write_series",
    "localizer_rows",
    "stored_pixels",
    "PhantomConfig",
    "DatasetSummary",
    "TRAIN_COLUMNS",
    "LOCALIZER_COLUMNS",
    "random_acquisition",
    "draw_split",
    "make_dataset",
    "write_mirrored_test_split",
]
