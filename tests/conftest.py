"""Shared, session-scoped fixtures: a small synthetic competition dataset and a one-series writer."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import pytest

from phantom import Acquisition, SeriesSpec, make_dataset, series_spec, write_series

# The options of the `phantom_dataset` fixture: small images, and every file variety present (seed 0 holds
# multi-frame, stripped multi-frame, all three codecs, coronal, sagittal, flips, MONOCHROME1, signed CT).
PHANTOM_FIXTURE_OPTIONS: dict = dict(
    slices=(12, 20), size=(48, 64), multiframe_fraction=0.25, compressed_fraction=0.35, stripped_fraction=0.3,
    non_axial_fraction=0.3, flip_fraction=0.25, monochrome1_fraction=0.1,
)
PHANTOM_FIXTURE_SEED = 0
PHANTOM_FIXTURE_SERIES = 16  # train and test each


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Root of a 16 train + 16 test series phantom dataset (Kaggle layout; see phantom.make_dataset)."""
    root = tmp_path_factory.mktemp("phantom") / "data"
    make_dataset(root, series=PHANTOM_FIXTURE_SERIES, test_series=PHANTOM_FIXTURE_SERIES,
                 seed=PHANTOM_FIXTURE_SEED, **PHANTOM_FIXTURE_OPTIONS)
    return root


def small_acquisition(**changes) -> Acquisition:
    """A quick default grid (64 x 64 x 24, 3.2 mm pixels, 3 mm slices) around the circle of Willis."""
    return replace(Acquisition(rows=64, cols=64, num_slices=24, pixel_spacing=(3.2, 3.2), slice_spacing=3.0,
                               centre=(0.0, 0.0, -15.0)), **changes)


_ACQ_FIELDS = {f.name for f in fields(Acquisition)}


@pytest.fixture(scope="session")
def write_phantom_series(tmp_path_factory) -> Callable[..., Path]:
    """Factory: write one series, return its folder (named after its SeriesInstanceUID, in a fresh parent).

    Call as ``write_phantom_series(spec=None, **overrides)``. Without a spec it uses
    ``series_spec(seed, modality="CTA", positive_locations=("Left Middle Cerebral Artery",),
    acquisition=small_acquisition())``; `seed` and `positive_locations` may be overridden. Other overrides
    that name an Acquisition field (plane, flip_rows, multiframe, compression, stripped, noise...) change the
    acquisition, the rest change SeriesSpec fields (modality, blob_contrast, acquisition...). Build the spec
    yourself with phantom.series_spec when the test needs the ground truth (spec.anatomy.aneurysms,
    spec.locate(point)).
    """
    base = tmp_path_factory.mktemp("phantom_series")
    counter = itertools.count()

    def write(spec: SeriesSpec | None = None, **overrides) -> Path:
        seed = overrides.pop("seed", 0)
        positives = overrides.pop("positive_locations", ("Left Middle Cerebral Artery",))
        if spec is None:
            spec = series_spec(seed, modality=overrides.pop("modality", "CTA"), positive_locations=positives,
                               acquisition=overrides.pop("acquisition", small_acquisition()))
        acq_changes = {k: overrides.pop(k) for k in list(overrides) if k in _ACQ_FIELDS}
        if overrides:
            spec = replace(spec, **overrides)
        if acq_changes:
            spec = spec.with_acquisition(**acq_changes)
        folder = base / f"{next(counter):04d}" / spec.series_uid
        write_series(spec, folder)
        return folder

    return write
