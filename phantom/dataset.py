"""Draw a whole synthetic competition dataset (train + test split) and write it in Kaggle's layout."""
from __future__ import annotations

import csv
import logging
import math
import shutil
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inference.errors import ConfigError
from inference.labels import ID_COLUMN, LABELS, LOCATION_LABELS

from .acquisition import Acquisition
from .anatomy import Anatomy, random_anatomy
from .dicom_writer import LocalizerRow, physical_pixels, stored_pixels, write_series
from .masks import SEGMENTATION_DIR, write_vessel_mask
from .render import MODALITY_INTENSITIES
from .scale import COMPETITION_GRIDS, ModalityGrid, competition_grid, downscale_grids
from .spec import SeriesSpec, deterministic_uid

__all__ = [
    "PhantomConfig",
    "DatasetSummary",
    "TRAIN_COLUMNS",
    "LOCALIZER_COLUMNS",
    "random_acquisition",
    "draw_split",
    "make_dataset",
]

logger = logging.getLogger(__name__)

TRAIN_COLUMNS: tuple[str, ...] = (ID_COLUMN, "PatientAge", "PatientSex", "Modality") + LABELS
LOCALIZER_COLUMNS: tuple[str, ...] = (ID_COLUMN, "SOPInstanceUID", "coordinates", "location")
_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


@dataclass(frozen=True)
class PhantomConfig:
    """What varies between series and how often (fractions are per-series probabilities)."""

    slices: tuple[int, int] = (20, 60)  # slice count range (inclusive)
    size: tuple[int, int] = (96, 160)  # rows/cols range (inclusive)
    fov_mm: tuple[float, float] = (180.0, 240.0)  # in-plane field of view; pixel spacing = fov / size
    slice_coverage_mm: tuple[float, float] = (70.0, 110.0)  # slab thickness before it is widened to the anatomy
    slice_spacing_mm: tuple[float, float] = (0.4, 4.0)  # clamp of slab / slices (slices are added if the slab
    # cannot hold the anatomy at the maximum spacing; keep the maximum below 2 x the smallest blob radius)
    blob_contrast: float = 1.6  # blob vs vessel intensity (1.0: as bright as vessels; harder)
    blob_radius: tuple[float, float] = (3.0, 6.0)  # mm
    positive_fraction: float = 0.5  # share of series with >= 1 aneurysm
    modality_weights: tuple[tuple[str, float], ...] = (("CTA", 0.4), ("MRA", 0.3), ("MRI T2", 0.2),
                                                       ("MRI T1post", 0.1))
    non_axial_fraction: float = 0.15  # coronal or sagittal (half each)
    flip_fraction: float = 0.15  # per axis: rows flipped, columns flipped
    reverse_fraction: float = 0.3  # InstanceNumber runs against the slice normal
    multiframe_fraction: float = 0.1  # one enhanced multi-frame file
    compressed_fraction: float = 0.2  # JPEG 2000 / JPEG-LS / RLE lossless (a third each)
    stripped_fraction: float = 0.2  # test-set tag allowlist only
    monochrome1_fraction: float = 0.0  # MR series stored inverted
    signed_ct_fraction: float = 0.3  # CT as int16 with intercept 0 (else uint16 with intercept -1024)
    mr_slope_fraction: float = 0.2  # MR with a RescaleSlope != 1
    non_square_fraction: float = 0.1  # rows != cols
    noise: float = 1.0  # multiplier of every modality's noise
    force_test_coverage: bool = True  # every location positive and negative at least once in the test split
    # the competition-scale preset (PhantomConfig.competition()); the defaults above leave the phantom as it was
    grids: tuple[ModalityGrid, ...] | None = None  # per-modality grids; replace slices/size/fov/coverage/spacing
    blob_size_law: str = "uniform"  # 'uniform' radius in blob_radius, or 'competition' (log-normal diameters)
    neck: bool = False  # grow the neck: carotids and vertebrals to the slab's bottom, skull base, cervical spine
    mask_fraction: float = 0.0  # share of train series shipped with a vessel segmentation (segmentations/)

    def __post_init__(self) -> None:
        for name in ("slices", "size", "fov_mm", "slice_coverage_mm", "slice_spacing_mm", "blob_radius"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if self.size[1] > 2048:
            raise ConfigError(f"size above 2048 is not supported, got {self.size}")
        for f in fields(self):
            if f.name.endswith("_fraction") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ConfigError(f"{f.name} must lie in [0, 1], got {getattr(self, f.name)}")
        unknown = [m for m, _ in self.modality_weights if m not in MODALITY_INTENSITIES]
        if unknown or not self.modality_weights or sum(w for _, w in self.modality_weights) <= 0:
            raise ConfigError(f"modality_weights need known modalities and a positive sum: {self.modality_weights}")
        if self.blob_contrast <= 0 or self.noise < 0:
            raise ConfigError(f"blob_contrast must be > 0 and noise >= 0, got {self.blob_contrast}, {self.noise}")
        if self.blob_size_law not in ("uniform", "competition"):
            raise ConfigError(f"blob_size_law must be 'uniform' or 'competition', got {self.blob_size_law!r}")
        if self.grids is not None:
            missing = [m for m, _ in self.modality_weights if m not in {g.modality for g in self.grids}]
            if missing:
                raise ConfigError(f"grids lack the modalities {missing}")

    @classmethod
    def competition(cls, downscale: int = 1, **changes) -> PhantomConfig:
        """The competition-scale preset: the real data's grids per modality, neck to vertex, small aneurysms.

        Args:
            downscale: N times fewer pixels a side, the same millimetres and slices (for CPU training).
            **changes: other fields (blob_contrast, modality_weights...).
        """
        options: dict[str, object] = dict(
            grids=downscale_grids(COMPETITION_GRIDS, downscale), blob_radius=(1.0, 5.0), blob_size_law="competition",
            neck=True, mask_fraction=0.04, positive_fraction=0.43, non_axial_fraction=0.0, non_square_fraction=0.0,
            compressed_fraction=0.1)
        options.update(changes)
        return cls(**options)  # type: ignore[arg-type]

    def grid(self, modality: str) -> ModalityGrid:
        """This modality's competition-scale grid (ConfigError without grids or for an unknown modality)."""
        for g in self.grids or ():
            if g.modality == modality:
                return g
        raise ConfigError(f"no grid for modality {modality!r} in this PhantomConfig")


@dataclass(frozen=True)
class DatasetSummary:
    """What make_dataset wrote."""

    root: Path
    train_series: int
    test_series: int
    files: int
    train_positive: int
    test_positive: int
    modalities: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    masks: int = 0  # train series with a vessel segmentation (segmentations/<uid>/)


def random_acquisition(rng: np.random.Generator, anatomy: Anatomy, modality: str,
                       config: PhantomConfig = PhantomConfig()) -> Acquisition:
    """A random grid that holds every location site and blob of `anatomy`, plus random storage options.

    With `config.grids` (the competition-scale preset) the grid is that modality's (phantom.scale.competition_grid).
    """
    if config.grids is not None:
        grid = config.grid(modality)
        return replace(competition_grid(rng, anatomy, grid), **_storage_options(rng, modality, config))  # type: ignore[arg-type]
    plane = "axial"
    if rng.random() < config.non_axial_fraction:
        plane = "coronal" if rng.random() < 0.5 else "sagittal"
    rows = int(rng.integers(config.size[0], config.size[1] + 1))
    cols = rows if rng.random() >= config.non_square_fraction else int(rng.integers(config.size[0],
                                                                                     config.size[1] + 1))
    fov = float(rng.uniform(*config.fov_mm))
    spacing = round(fov / max(rows, cols), 4)
    num_slices = int(rng.integers(config.slices[0], config.slices[1] + 1))

    low, high = anatomy.extent()
    axis = _SLICE_AXIS[plane]
    needed = float(high[axis] - low[axis]) + 8.0
    coverage = max(needed, float(rng.uniform(*config.slice_coverage_mm)))
    slice_spacing = float(np.clip(coverage / num_slices, *config.slice_spacing_mm))
    # the slab must hold every site and blob: widen the spacing up to its maximum, then add slices
    slice_spacing = round(min(max(slice_spacing, needed / max(num_slices - 1, 1)), config.slice_spacing_mm[1]), 3)
    num_slices = max(num_slices, math.ceil(needed / slice_spacing) + 1)
    slab = slice_spacing * (num_slices - 1)
    centre = np.asarray(anatomy.head_centre, dtype=float) + rng.uniform(-6.0, 6.0, size=3)
    slack = max(slab - needed, 0.0) / 2.0
    centre[axis] = (low[axis] + high[axis]) / 2.0 + rng.uniform(-slack, slack)

    return Acquisition(
        plane=plane, rows=rows, cols=cols, num_slices=num_slices, pixel_spacing=(spacing, spacing),
        slice_spacing=slice_spacing, centre=tuple(round(float(v), 2) for v in centre),  # type: ignore[arg-type]
        **_storage_options(rng, modality, config))


def _storage_options(rng: np.random.Generator, modality: str, config: PhantomConfig) -> dict[str, object]:
    """The random storage options of one series (Acquisition fields), drawn in a fixed order."""
    compression = None
    if rng.random() < config.compressed_fraction:
        compression = ("jpeg2000", "jpegls", "rle")[int(rng.integers(3))]
    is_ct = modality == "CTA"
    return dict(
        flip_rows=bool(rng.random() < config.flip_fraction), flip_cols=bool(rng.random() < config.flip_fraction),
        reverse_slices=bool(rng.random() < config.reverse_fraction),
        multiframe=bool(rng.random() < config.multiframe_fraction), compression=compression,
        stripped=bool(rng.random() < config.stripped_fraction), noise=config.noise,
        signed=bool(is_ct and rng.random() < config.signed_ct_fraction),
        rescale_slope=round(float(rng.uniform(1.2, 3.0)), 3) if (not is_ct and rng.random() < config.mr_slope_fraction)
        else 1.0,
        monochrome1=bool(not is_ct and rng.random() < config.monochrome1_fraction),
    )


def _covering_locations(rng: np.random.Generator, n: int, positive_fraction: float) -> list[list[str]]:
    """Positive locations per series such that every location is positive once and some series is negative."""
    n_locations = len(LOCATION_LABELS)
    n_pos = int(round(n * positive_fraction))
    n_pos = min(max(n_pos, math.ceil(n_locations / 3)), n - 1)
    positives = sorted(int(i) for i in rng.permutation(n)[:n_pos])
    assigned: list[list[str]] = [[] for _ in range(n)]
    order = [LOCATION_LABELS[int(i)] for i in rng.permutation(n_locations)]
    for i, name in enumerate(order):
        assigned[positives[i % n_pos]].append(name)
    for s in positives:
        if not assigned[s]:
            assigned[s].append(LOCATION_LABELS[int(rng.integers(n_locations))])
        while len(assigned[s]) < 3 and rng.random() < 0.2:
            extra = LOCATION_LABELS[int(rng.integers(n_locations))]
            if extra not in assigned[s]:
                assigned[s].append(extra)
    return [sorted(a, key=LOCATION_LABELS.index) for a in assigned]


def draw_split(n: int, *, seed: int, split: str, config: PhantomConfig = PhantomConfig(),
               force_coverage: bool = False) -> list[SeriesSpec]:
    """Draw `n` series specs for one split ('train' or 'test'), deterministic for (seed, split)."""
    split_rng = np.random.default_rng([seed, 1 if split == "test" else 0, 99])
    forced: list[list[str]] | None = None
    if force_coverage:
        if n < len(LOCATION_LABELS) // 3 + 2:
            logger.warning("%s split of %d series is too small to hold every location positive and negative",
                           split, n)
        else:
            forced = _covering_locations(split_rng, n, config.positive_fraction)
    names = [m for m, _ in config.modality_weights]
    weights = np.array([w for _, w in config.modality_weights], dtype=float)
    weights /= weights.sum()
    specs = []
    for index in range(n):
        rng = np.random.default_rng([seed, 1 if split == "test" else 0, index])
        modality = names[int(rng.choice(len(names), p=weights))]
        anatomy = random_anatomy(rng, positive_locations=None if forced is None else forced[index],
                                 positive_fraction=config.positive_fraction, blob_radius=config.blob_radius,
                                 blob_size_law=config.blob_size_law, neck=config.neck)
        acquisition = random_acquisition(rng, anatomy, modality, config)
        t = MODALITY_INTENSITIES[modality]
        vessel = float(rng.uniform(250.0, 420.0)) if modality == "CTA" else t.vessel * float(rng.uniform(0.85, 1.15))
        specs.append(SeriesSpec(
            series_uid=deterministic_uid("phantom", seed, split, index), modality=modality, anatomy=anatomy,
            acquisition=acquisition, seed=int(rng.integers(2**31)), age=int(rng.integers(18, 90)),
            sex="Female" if rng.random() < 0.6 else "Male", blob_contrast=config.blob_contrast,
            vessel_level=round(vessel, 1), gain=round(float(rng.uniform(0.5, 2.5)), 3)))
    return specs


def _write_one(args: tuple[SeriesSpec, Path, Path | None]) -> tuple[list[LocalizerRow], int]:
    spec, folder, mask_root = args
    storage = stored_pixels(spec)
    rows = write_series(spec, folder, storage=storage)
    if mask_root is not None:
        write_vessel_mask(spec, mask_root, image=physical_pixels(storage))
    return rows, len(spec.sop_instance_uids())


def _masked_series(n: int, *, seed: int, fraction: float) -> set[int]:
    """Which train series ship a vessel segmentation: round(n x fraction) of them (at least one when > 0)."""
    if fraction <= 0 or n == 0:
        return set()
    count = min(n, max(1, int(round(n * fraction))))
    return {int(i) for i in np.random.default_rng([seed, 0, 555]).permutation(n)[:count]}


def _write_split(specs: Sequence[SeriesSpec], series_dir: Path, desc: str, workers: int,
                 progress: bool, *, mask_root: Path | None = None,
                 masked: Collection[int] = ()) -> tuple[list[tuple[str, LocalizerRow]], int]:
    jobs = [(spec, series_dir / spec.series_uid, mask_root if i in masked else None) for i, spec in enumerate(specs)]
    localizers: list[tuple[str, LocalizerRow]] = []
    files = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_write_one, jobs), total=len(jobs), desc=desc, disable=not progress))
    else:
        results = [_write_one(job) for job in tqdm(jobs, desc=desc, disable=not progress)]
    for spec, (rows, count) in zip(specs, results):
        localizers.extend((spec.series_uid, row) for row in rows)
        files += count
    return localizers, files


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _label_rows(specs: Sequence[SeriesSpec]) -> list[list[object]]:
    return [[spec.label_row()[c] for c in TRAIN_COLUMNS] for spec in specs]


def _localizer_rows(rows: Sequence[tuple[str, LocalizerRow]]) -> list[list[object]]:
    return [[uid, r.sop_instance_uid, r.coordinates, r.location] for uid, r in rows]


def make_dataset(out_dir: str | Path, *, series: int = 60, test_series: int = 30, seed: int = 0,
                 config: PhantomConfig | None = None, overwrite: bool = False, workers: int = 1,
                 progress: bool = False, **options) -> DatasetSummary:
    """Write a synthetic dataset in the competition's layout.

    Args:
        out_dir: root folder (created). Writes train.csv, train_localizers.csv, series/<uid>/<sop>.dcm and
            test/test.csv, test/test_labels.csv, test/test_localizers.csv, test/series/<uid>/<sop>.dcm.
        series, test_series: number of train and test series.
        seed: everything (anatomy, acquisition, noise, UIDs) follows from it: same seed, same bytes.
        config: a PhantomConfig (PhantomConfig.competition() for the competition's scale); `**options` override
            its fields (e.g. size=(48, 64), blob_contrast=1.0). With mask_fraction > 0 that share of the train
            series also gets segmentations/<uid>/<uid>.nii and <uid>_cowseg.nii (phantom.masks).
        overwrite: replace an existing dataset in out_dir (else ConfigError).
        workers: processes writing series in parallel (the output does not depend on it).
        progress: show tqdm bars.
    Returns:
        A DatasetSummary.
    Raises:
        ConfigError: bad options, or out_dir already holds a dataset and overwrite is False.
    """
    started = time.perf_counter()
    unknown = sorted(set(options) - {f.name for f in fields(PhantomConfig)})
    if unknown:
        raise ConfigError(f"unknown make_dataset options {unknown}; see PhantomConfig for the valid ones")
    config = replace(config or PhantomConfig(), **options)
    if series < 0 or test_series < 0:
        raise ConfigError(f"series counts must be >= 0, got {series}, {test_series}")
    root = Path(out_dir)
    outputs = [root / "train.csv", root / "train_localizers.csv", root / "series", root / "test",
               root / SEGMENTATION_DIR]
    if any(p.exists() for p in outputs):
        if not overwrite:
            raise ConfigError(f"{root} already holds a dataset; pass overwrite=True (--overwrite) to replace it")
        for p in outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (root / "series").mkdir(parents=True, exist_ok=True)
    (root / "test" / "series").mkdir(parents=True, exist_ok=True)

    train = draw_split(series, seed=seed, split="train", config=config)
    test = draw_split(test_series, seed=seed, split="test", config=config,
                      force_coverage=config.force_test_coverage)
    masked = _masked_series(len(train), seed=seed, fraction=config.mask_fraction)
    train_loc, train_files = _write_split(train, root / "series", "train", workers, progress, mask_root=root,
                                          masked=masked)
    test_loc, test_files = _write_split(test, root / "test" / "series", "test", workers, progress)

    _write_csv(root / "train.csv", TRAIN_COLUMNS, _label_rows(train))
    _write_csv(root / "train_localizers.csv", LOCALIZER_COLUMNS, _localizer_rows(train_loc))
    _write_csv(root / "test" / "test.csv", (ID_COLUMN,), [[s.series_uid] for s in test])
    _write_csv(root / "test" / "test_labels.csv", TRAIN_COLUMNS, _label_rows(test))
    _write_csv(root / "test" / "test_localizers.csv", LOCALIZER_COLUMNS, _localizer_rows(test_loc))

    modalities: dict[str, int] = {}
    for spec in list(train) + list(test):
        modalities[spec.modality] = modalities.get(spec.modality, 0) + 1
    summary = DatasetSummary(
        root=root, train_series=len(train), test_series=len(test), files=train_files + test_files,
        train_positive=sum(int(s.labels[-1]) for s in train), test_positive=sum(int(s.labels[-1]) for s in test),
        modalities=modalities, seconds=time.perf_counter() - started, masks=len(masked))
    logger.info("wrote %d train + %d test series (%d files) to %s in %.1f s", summary.train_series,
                summary.test_series, summary.files, root, summary.seconds)
    return summary


def write_mirrored_test_split(out_dir: str | Path, *, test_series: int, seed: int,
                              config: PhantomConfig | None = None, **options) -> Path:
    """Write the test split of `make_dataset(..., test_series=test_series, seed=seed)` with mirrored storage.

    Same anatomy, labels and series UIDs; only the storage changes (rows and columns both flipped), so canonical
    volumes, predictions and location scores must not change: the left/right check of the loader, the trainer
    and the kernel together.

    Returns:
        The folder holding test.csv, test_labels.csv and series/<uid>/.
    """
    config = replace(config or PhantomConfig(), **options)
    specs = draw_split(test_series, seed=seed, split="test", config=config, force_coverage=config.force_test_coverage)
    mirrored = [spec.with_acquisition(flip_cols=not spec.acquisition.flip_cols,
                                      flip_rows=not spec.acquisition.flip_rows) for spec in specs]
    root = Path(out_dir)
    _write_split(mirrored, root / "series", "mirrored test", 1, False)
    _write_csv(root / "test.csv", (ID_COLUMN,), [[s.series_uid] for s in mirrored])
    _write_csv(root / "test_labels.csv", TRAIN_COLUMNS, _label_rows(mirrored))
    return root
