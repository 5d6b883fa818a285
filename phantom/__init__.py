"""Synthetic competition dataset ("phantom"): an analytic head written as DICOM series in Kaggle's layout.

Test and demo tooling only: never bundled into the kernel. CLI: ``python -m phantom --out DIR --series 60``;
``--scale competition [--downscale N]`` for the real data's proportions (phantom.scale), with vessel masks
(phantom.masks).
"""
from __future__ import annotations

from .acquisition import COMPRESSIONS, PLANES, Acquisition, PixelLocation
from .anatomy import (
    TEMPLATE_SITES,
    VESSEL_MASK_LABELS,
    Anatomy,
    Aneurysm,
    Neck,
    Vessel,
    random_anatomy,
    template_anatomy,
    vessel_label_segments,
)
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
from .dicom_writer import (
    STRIPPED_KEYWORDS,
    LocalizerRow,
    localizer_rows,
    physical_pixels,
    stored_pixels,
    write_series,
)
from .masks import SEGMENTATION_DIR, mask_paths, nifti_affine, to_nifti_order, write_vessel_mask
from .render import MODALITY_INTENSITIES, Intensities, blob_level, render_vessel_labels, render_volume
from .scale import COMPETITION_GRIDS, ModalityGrid, willis_band, willis_share
from .spec import MODALITIES, SeriesSpec, deterministic_uid, series_spec

__all__ = [
    "Acquisition",
    "PixelLocation",
    "PLANES",
    "COMPRESSIONS",
    "Anatomy",
    "Aneurysm",
    "Vessel",
    "Neck",
    "TEMPLATE_SITES",
    "VESSEL_MASK_LABELS",
    "vessel_label_segments",
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
    "render_vessel_labels",
    "ModalityGrid",
    "COMPETITION_GRIDS",
    "willis_band",
    "willis_share",
    "SEGMENTATION_DIR",
    "mask_paths",
    "nifti_affine",
    "to_nifti_order",
    "write_vessel_mask",
    "physical_pixels",
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
