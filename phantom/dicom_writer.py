"""Write one SeriesSpec as DICOM files (single- or multi-frame, compressed, stripped) and its localizer rows."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from .render import render_volume
from .spec import SeriesSpec

__all__ = ["LocalizerRow", "STRIPPED_KEYWORDS", "stored_pixels", "physical_pixels", "write_series", "localizer_rows"]

logger = logging.getLogger(__name__)

# The test set's tag allowlist (plus the pixel module); a stripped series keeps only these top-level elements.
STRIPPED_KEYWORDS = frozenset({
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "InstanceNumber", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelData", "PerFrameFunctionalGroupsSequence",
})

_SOP_CLASS = {
    ("CT", False): uid.CTImageStorage,
    ("CT", True): uid.EnhancedCTImageStorage,
    ("MR", False): uid.MRImageStorage,
    ("MR", True): uid.EnhancedMRImageStorage,
}
_TRANSFER_SYNTAX = {"jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless, "rle": RLELossless}
_ENCODER_PLUGIN = {"jpeg2000": "pylibjpeg", "jpegls": "pyjpegls", "rle": "pylibjpeg"}
_MR_BITS = 12


@dataclass(frozen=True)
class LocalizerRow:
    """One train_localizers.csv row (without the SeriesInstanceUID)."""

    sop_instance_uid: str
    frame: int | None
    x: float
    y: float
    location: str

    @property
    def coordinates(self) -> str:
        """The competition's string form: "{'x': 258.36, 'y': 261.36}" (plus 'f' for multi-frame files)."""
        point: dict[str, float | int] = {"x": self.x, "y": self.y}
        if self.frame is not None:
            point["f"] = self.frame
        return str(point)


@dataclass(frozen=True)
class _Storage:
    pixels: np.ndarray  # stored values, file order (k, rows, cols)
    bits_stored: int
    signed: bool
    slope: float | None  # None: no rescale tags
    intercept: float
    rescale_type: str
    photometric: str


def stored_pixels(spec: SeriesSpec) -> _Storage:
    """Render the series and map it to stored integers (HU via slope/intercept for CT, scanner units for MR)."""
    acq = spec.acquisition
    rng = np.random.default_rng([spec.seed, 11])
    physical = render_volume(spec.anatomy, acq, spec.modality, vessel_level=spec.vessel_level,
                             blob_contrast=spec.blob_contrast, gain=spec.gain, rng=rng)
    if spec.dicom_modality == "CT":
        hu = np.clip(np.rint(physical), -1024, 3071)
        if acq.signed:
            return _Storage(hu.astype(np.int16), 16, True, 1.0, 0.0, "HU", "MONOCHROME2")
        return _Storage((hu + 1024).astype(np.uint16), 12, False, 1.0, -1024.0, "HU", "MONOCHROME2")
    stored = np.clip(np.rint(physical / acq.rescale_slope), 0, 2**_MR_BITS - 1).astype(np.uint16)
    photometric = "MONOCHROME2"
    if acq.monochrome1:
        stored = (2**_MR_BITS - 1 - stored).astype(np.uint16)
        photometric = "MONOCHROME1"
    slope = None if acq.rescale_slope == 1.0 else acq.rescale_slope
    return _Storage(stored, _MR_BITS, False, slope, 0.0, "US", photometric)


def physical_pixels(storage: _Storage) -> np.ndarray:
    """The modality values of stored pixels (HU for CT, scanner units for MR), file order, float32."""
    pixels = storage.pixels.astype(np.float32)
    if storage.photometric == "MONOCHROME1":
        pixels = (2**storage.bits_stored - 1) - pixels
    if storage.slope is not None:
        pixels = pixels * np.float32(storage.slope) + np.float32(storage.intercept)
    return pixels


def _ds(value: float) -> str:
    return f"{round(float(value), 4) + 0.0:.4f}".rstrip("0").rstrip(".") or "0"


def _base_dataset(spec: SeriesSpec, storage: _Storage, sop_uid: str) -> Dataset:
    acq = spec.acquisition
    modality = spec.dicom_modality
    sop_class = _SOP_CLASS[(modality, acq.multiframe)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PHANTOM_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if acq.plane == "axial" else "OTHER"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240101"
    ds.Modality = modality
    ds.Manufacturer = "PHANTOM"
    ds.SeriesDescription = f"phantom {spec.modality} {acq.plane}"
    ds.PatientName = f"PHANTOM^{spec.series_uid[-8:]}"
    ds.PatientID = spec.series_uid[-12:]
    ds.PatientAge = f"{int(spec.age):03d}Y"
    ds.PatientSex = spec.sex[0].upper()
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(acq.slice_spacing)
    ds.SpacingBetweenSlices = _ds(acq.slice_spacing)
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.ImageOrientationPatient = [_ds(v) for v in acq.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = storage.photometric
    ds.Rows = acq.rows
    ds.Columns = acq.cols
    ds.PixelSpacing = [_ds(v) for v in acq.written_pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = storage.bits_stored
    ds.HighBit = storage.bits_stored - 1
    ds.PixelRepresentation = 1 if storage.signed else 0
    if storage.slope is not None:
        ds.RescaleIntercept = _ds(storage.intercept)
        ds.RescaleSlope = _ds(storage.slope)
        ds.RescaleType = storage.rescale_type
    return ds


def _finish(ds: Dataset, pixels: np.ndarray, spec: SeriesSpec, path: Path) -> None:
    acq = spec.acquisition
    if acq.compression is None:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    else:
        ds.compress(_TRANSFER_SYNTAX[acq.compression], np.ascontiguousarray(pixels),
                    encoding_plugin=_ENCODER_PLUGIN[acq.compression], generate_instance_uid=False)
    if acq.stripped:
        for elem in list(ds):
            if elem.keyword not in STRIPPED_KEYWORDS:
                del ds[elem.tag]
    ds.save_as(path, enforce_file_format=True)


def localizer_rows(spec: SeriesSpec) -> list[LocalizerRow]:
    """One row per aneurysm: its centre's pixel (x = column, y = row) on the file/frame nearest to it."""
    rows = []
    for an in spec.anatomy.aneurysms:
        sop, frame, loc = spec.locate(an.centre)
        if not spec.acquisition.contains(loc):
            logger.warning("series %s: %s blob centre lies outside the image, no localizer row",
                           spec.series_uid, an.location)
            continue
        rows.append(LocalizerRow(sop, frame, round(loc.col, 2), round(loc.row, 2), an.location))
    return rows


def write_series(spec: SeriesSpec, folder: str | Path, *, storage: _Storage | None = None) -> list[LocalizerRow]:
    """Write a series' DICOM files into `folder` (created) as <SOPInstanceUID>.dcm.

    Args:
        spec: the series.
        folder: output folder; usually .../series/<SeriesInstanceUID>.
        storage: stored_pixels(spec) when the caller has it already (else rendered here).
    Returns:
        The localizer rows of its aneurysms (empty for a negative series).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    acq = spec.acquisition
    storage = storage if storage is not None else stored_pixels(spec)
    positions = acq.positions()
    normal = acq.normal
    uids = spec.sop_instance_uids()
    if acq.multiframe:
        ds = _base_dataset(spec, storage, uids[0])
        ds.InstanceNumber = 1
        ds.NumberOfFrames = acq.num_slices
        shared = Dataset()
        orientation = Dataset()
        orientation.ImageOrientationPatient = list(ds.ImageOrientationPatient)
        measures = Dataset()
        measures.PixelSpacing = list(ds.PixelSpacing)
        measures.SliceThickness = ds.SliceThickness
        measures.SpacingBetweenSlices = ds.SpacingBetweenSlices
        shared.PlaneOrientationSequence = DicomSequence([orientation])
        shared.PixelMeasuresSequence = DicomSequence([measures])
        if storage.slope is not None:
            transform = Dataset()
            transform.RescaleIntercept = ds.RescaleIntercept
            transform.RescaleSlope = ds.RescaleSlope
            transform.RescaleType = ds.RescaleType
            shared.PixelValueTransformationSequence = DicomSequence([transform])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        frames = []
        for k, ipp in enumerate(positions):
            item = Dataset()
            plane = Dataset()
            plane.ImagePositionPatient = [_ds(v) for v in ipp]
            content = Dataset()
            content.InStackPositionNumber = k + 1
            content.StackID = "1"
            item.PlanePositionSequence = DicomSequence([plane])
            item.FrameContentSequence = DicomSequence([content])
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        # a stripped file loses NumberOfFrames (not in the allowlist): readers infer it from the pixel data
        _finish(ds, storage.pixels, spec, folder / f"{uids[0]}.dcm")
        return localizer_rows(spec)

    template = _base_dataset(spec, storage, uids[0])
    for k, (sop_uid, ipp) in enumerate(zip(uids, positions)):
        # a new element dict sharing the template's (never mutated) elements: much cheaper than rebuilding
        ds = Dataset(dict(template.items()))
        meta = FileMetaDataset(dict(template.file_meta.items()))
        meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.SliceLocation = _ds(float(ipp @ normal))
        _finish(ds, storage.pixels[k], spec, folder / f"{sop_uid}.dcm")
    return localizer_rows(spec)
