"""SeriesSpec: everything that determines one synthetic series (anatomy, acquisition, modality, identity)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.uid import generate_uid

from inference.errors import ConfigError
from inference.labels import LABELS

from .acquisition import Acquisition, PixelLocation
from .anatomy import Anatomy, random_anatomy
from .render import MODALITY_INTENSITIES

__all__ = ["MODALITIES", "SeriesSpec", "series_spec", "deterministic_uid"]

# Competition modality label -> DICOM Modality tag.
MODALITIES: dict[str, str] = {"CTA": "CT", "MRA": "MR", "MRI T2": "MR", "MRI T1post": "MR"}


def deterministic_uid(*parts: object) -> str:
    """A valid DICOM UID derived only from `parts` (pydicom's root, SHA-512 of the parts)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class SeriesSpec:
    """One synthetic series. Writing it twice gives the same bytes.

    Attributes:
        series_uid: SeriesInstanceUID (also the folder name).
        modality: competition label: 'CTA' | 'MRA' | 'MRI T2' | 'MRI T1post'.
        anatomy: the head, vessels and aneurysms.
        acquisition: grid, orientation and storage options.
        seed: seeds the noise.
        age, sex: PatientAge (years) and PatientSex ('Female' | 'Male', as in train.csv).
        blob_contrast: blob intensity relative to vessels (1.0 = as bright as a vessel).
        vessel_level: vessel intensity; None = the modality's nominal value.
        gain: MR scanner scale (stored values ~ gain * nominal units); ignored for CT.
        study_uid: StudyInstanceUID; derived from series_uid when empty.
    """

    series_uid: str
    modality: str
    anatomy: Anatomy
    acquisition: Acquisition = field(default_factory=Acquisition)
    seed: int = 0
    age: int = 60
    sex: str = "Female"
    blob_contrast: float = 1.6
    vessel_level: float | None = None
    gain: float = 1.0
    study_uid: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {tuple(MODALITIES)}, got {self.modality!r}")
        if self.blob_contrast <= 0 or self.gain <= 0:
            raise ConfigError(f"blob_contrast and gain must be positive, got {self.blob_contrast}, {self.gain}")
        if self.sex not in ("Female", "Male"):
            raise ConfigError(f"sex must be 'Female' or 'Male', got {self.sex!r}")
        if self.acquisition.monochrome1 and self.modality == "CTA":
            raise ConfigError("monochrome1 is only written for MR series")
        if not self.study_uid:
            object.__setattr__(self, "study_uid", deterministic_uid(self.series_uid, "study"))

    @property
    def dicom_modality(self) -> str:
        return MODALITIES[self.modality]

    @property
    def frame_of_reference_uid(self) -> str:
        return deterministic_uid(self.series_uid, "frame-of-reference")

    @property
    def labels(self) -> np.ndarray:
        """The 14 labels in LABELS order (int 0/1)."""
        return self.anatomy.labels()

    def label_row(self) -> dict[str, object]:
        """One train.csv row."""
        row: dict[str, object] = {"SeriesInstanceUID": self.series_uid, "PatientAge": self.age,
                                  "PatientSex": self.sex, "Modality": self.modality}
        row.update({name: int(v) for name, v in zip(LABELS, self.labels)})
        return row

    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUIDs in file order (one for a multi-frame series)."""
        count = 1 if self.acquisition.multiframe else self.acquisition.num_slices
        return [deterministic_uid(self.series_uid, "sop", k) for k in range(count)]

    def locate(self, point) -> tuple[str, int | None, PixelLocation]:
        """(SOPInstanceUID, frame or None, PixelLocation) of a patient-mm point: its nearest slice and pixel."""
        loc = self.acquisition.locate(point)
        uids = self.sop_instance_uids()
        if self.acquisition.multiframe:
            return uids[0], loc.index, loc
        return uids[loc.index], None, loc

    def with_acquisition(self, **changes) -> SeriesSpec:
        """A copy with some Acquisition fields changed."""
        return replace(self, acquisition=replace(self.acquisition, **changes))


def series_spec(seed: int = 0, *, modality: str = "CTA", positive_locations: Sequence[str] | None = None,
                acquisition: Acquisition | None = None, series_uid: str | None = None, **fields) -> SeriesSpec:
    """A convenient spec for tests: random anatomy from `seed`, the default Acquisition unless given.

    Args:
        seed: seeds the anatomy, the noise and the UID.
        modality: competition modality label.
        positive_locations: the aneurysm locations (None: drawn at random).
        acquisition: the grid (default: Acquisition()).
        series_uid: SeriesInstanceUID (default derived from the seed).
        **fields: other SeriesSpec fields (age, sex, blob_contrast, gain...).
    """
    rng = np.random.default_rng([seed, 7])
    anatomy = random_anatomy(rng, positive_locations=positive_locations)
    uid = series_uid or deterministic_uid("phantom-spec", seed)
    if modality not in MODALITY_INTENSITIES:
        raise ConfigError(f"modality must be one of {tuple(MODALITY_INTENSITIES)}, got {modality!r}")
    return SeriesSpec(series_uid=uid, modality=modality, anatomy=anatomy,
                      acquisition=acquisition or Acquisition(), seed=seed, **fields)
