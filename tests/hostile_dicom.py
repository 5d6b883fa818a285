"""Test helpers: generate (never store) a hostile DICOM corpus: broken codestreams, cut files, intruders, bad geometry.

Every hostile file starts as a valid phantom file (``phantom.write_series``) and is then corrupted in place, so
everything except the targeted bytes stays a well-formed DICOM object of the series.

Case names (``HOSTILE_CASES``; each also has its own public function):

=========================  ===========  =================================================================
name                       compression  what the hostile file is
=========================  ===========  =================================================================
jpegls_zero_width          jpegls       SOF55 X (columns) = 0          GDCM: SIGSEGV
jpegls_precision_31        jpegls       SOF55 P (precision) = 31       GDCM: SIGABRT
jpegls_zero_lines          jpegls       SOF55 Y (lines) = 0            pylibjpeg: loops, RSS +100 MB/s or more
jpeg2000_ssiz_255          jpeg2000     SIZ Ssiz of component 0 = 255  GDCM: SIGABRT
truncated                  None         the file cut in the middle of its PixelData value
truncated_jpegls           jpegls       the same, cut inside the JPEG-LS fragment
truncated_jpeg2000         jpeg2000     the same, cut inside the JPEG 2000 fragment
zero_byte                  None         an empty (0 byte) file
rtdose_intruder            None         RTDOSE, 10x10, 15 frames, NumberOfFrames "1A", same study/series
zero_orientation           None         every file: ImageOrientationPatient = 0,0,0,0,0,0
collinear_orientation      None         every file: ImageOrientationPatient column vector = row vector
identical_positions        None         every file: the first file's ImagePositionPatient
missing_orientation        None         ImageOrientationPatient removed from every second file from the slot
declared_65535             jpegls       the header declares Rows = Columns = 65535 (656 GiB for the volume)
second_series              None         a second series (other UIDs, same size) between the first's slices
second_series_same_pos     None         a second series (other UIDs, same size) at the first's positions
rescale_missing            None         RescaleSlope/Intercept removed from every second file from the slot
=========================  ===========  =================================================================

Main entry point::

    series = write_hostile_series("jpegls_zero_width", tmp_path / "1.2.3", position="middle", n_good=8)
    series.bad      # [Path] the hostile file(s)
    series.files    # every file, in name = InstanceNumber = position order

``write_hostile_series`` writes a valid phantom series of ``n_good + 1`` slices with the case's compression (so a
loader sees one series of one syntax), named ``NNNN-<SOPInstanceUID>.dcm`` so that file-name order, InstanceNumber
order and position order agree, then turns the slice at the slot (``position="first"``: slot 0, ``"middle"``:
slot ``(n_good + 1) // 2``) into the hostile file. Geometry cases rewrite the whole folder instead.
``write_hostile_file(name, folder)`` writes the hostile file alone (a one-slice series).

Lower-level tools, for new cases: ``patch_jpegls_sof55``, ``patch_jpeg2000_siz`` (edit marker-segment fields of the
codestream inside the first encapsulated fragment; fragment and item lengths never change),
``truncate_pixel_data``, ``declare_size``, ``write_rtdose`` and the folder rewrites ``zero_orientation``,
``collinear_orientation``, ``identical_positions``, ``drop_orientation``, ``drop_rescale``, ``add_second_series``.

Decoding a codestream case can kill the process (SIGSEGV / SIGABRT) or eat memory: tests must decode them in a
subprocess (or a worker that the code under test is allowed to lose) with a timeout and a memory cap. The
outcomes above were measured with pydicom 3.0.2, python-gdcm 3.2.6, pylibjpeg-libjpeg 2.5.0, pylibjpeg-openjpeg
2.6.0 and pyjpegls 1.5.1; every other plugin raises a Python exception on these files (pyjpegls / CharLS and
pylibjpeg-openjpeg included).
"""
from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from phantom import Acquisition, SeriesSpec, series_spec, write_series

__all__ = [
    "HOSTILE_CASES",
    "HostileCase",
    "HostileSeries",
    "RTDOSE_SOP_CLASS",
    "write_hostile_series",
    "write_hostile_file",
    "write_valid_series",
    "hostile_acquisition",
    # codestream / file corruption (in place, on a valid file)
    "patch_jpegls_sof55",
    "patch_jpeg2000_siz",
    "truncate_pixel_data",
    "jpegls_zero_width",
    "jpegls_precision_31",
    "jpegls_zero_lines",
    "jpeg2000_ssiz_255",
    "truncate_file",
    "zero_byte_file",
    "declare_size",
    "write_rtdose",
    # geometry rewrites of a series folder
    "zero_orientation",
    "collinear_orientation",
    "identical_positions",
    "drop_orientation",
    "drop_rescale",
    "add_second_series",
]

Position = Literal["first", "middle"]

RTDOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"  # RT Dose Storage

_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) item tag, little endian
_SOI, _SOF55, _SOS = 0xD8, 0xF7, 0xDA
_SOC, _SIZ = b"\xff\x4f", b"\xff\x51"
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: markers without a length field
_GRID_FRAME_OFFSET_VECTOR = Tag(0x3004, 0x000C)  # what an RTDOSE's FrameIncrementPointer points to


# ------------------------------------------------------------------------------------------ codestream location


def _first_fragment(data: bytes) -> tuple[int, int]:
    """(file offset, length) of the first fragment of an encapsulated PixelData value (the one with the header)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "PixelData" not in ds or not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        raise ValueError("not an encapsulated (compressed) file")
    value = ds.PixelData  # the items: basic offset table first, then the fragments (no sequence delimiter)
    start = data.rfind(value)
    if start < 0 or data[start - 4:start] != b"\xff\xff\xff\xff":
        raise ValueError("cannot locate the encapsulated PixelData value in the file")
    pos = 0
    for index in range(2):  # item 0: the basic offset table; item 1: the first fragment
        if value[pos:pos + 4] != _ITEM:
            raise ValueError(f"encapsulated item {index} does not start with an item tag")
        (length,) = struct.unpack_from("<I", value, pos + 4)
        if index == 1:
            if pos + 8 + length > len(value):
                raise ValueError("first fragment runs past the end of the PixelData value")
            return start + pos + 8, length
        pos += 8 + length
    raise AssertionError("unreachable")


def _jpeg_marker_offset(fragment: bytes, wanted: int) -> int:
    """Offset of marker FF `wanted` among the marker segments before the scan (walked by their lengths)."""
    if fragment[:2] != b"\xff\xd8":
        raise ValueError("fragment does not start with a JPEG SOI marker")
    pos = 2
    while pos + 4 <= len(fragment):
        if fragment[pos] != 0xFF:
            raise ValueError(f"expected a marker at fragment offset {pos}")
        marker = fragment[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == wanted:
            return pos
        if marker == _SOS:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", fragment, pos + 2)
        pos += 2 + length
    raise ValueError(f"marker FF {wanted:02X} not found before the scan")


def _siz_offset(fragment: bytes) -> int:
    """Offset of the JPEG 2000 SIZ marker, which must follow SOC directly."""
    if fragment[:2] != _SOC or fragment[2:4] != _SIZ:
        raise ValueError("fragment does not start with a JPEG 2000 SOC + SIZ")
    return 2


def _patch_fields(path: Path, locate: Callable[[bytes], int], fields: dict[int, tuple[str, int]]) -> Path:
    """Write big-endian fields {offset from the marker: (struct format, value)} into the first fragment."""
    data = bytearray(Path(path).read_bytes())
    offset, length = _first_fragment(bytes(data))
    fragment = bytes(data[offset:offset + length])
    marker = locate(fragment)
    for rel, (fmt, value) in fields.items():
        at = marker + rel
        if at + struct.calcsize(fmt) > length:
            raise ValueError(f"field at marker + {rel} lies outside the first fragment")
        struct.pack_into(">" + fmt, data, offset + at, value)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def _set_fields(*fields: tuple[int, str, int | None]) -> dict[int, tuple[str, int]]:
    """(offset, struct format, value) triples -> {offset: (format, value)} for the values that are set."""
    return {offset: (fmt, value) for offset, fmt, value in fields if value is not None}


def patch_jpegls_sof55(path: Path, *, precision: int | None = None, lines: int | None = None,
                       columns: int | None = None, components: int | None = None) -> Path:
    """Overwrite fields of the JPEG-LS SOF55 segment (FF F7 Lf P Y X Nf ...) of a valid JPEG-LS file, in place.

    Offsets from the marker: Lf +2 (2 bytes), P +4 (1), Y +5 (2), X +7 (2), Nf +9 (1). Unset fields are kept.
    """
    fields = _set_fields((4, "B", precision), (5, "H", lines), (7, "H", columns), (9, "B", components))
    return _patch_fields(path, lambda fragment: _jpeg_marker_offset(fragment, _SOF55), fields)


def patch_jpeg2000_siz(path: Path, *, component: int = 0, ssiz: int | None = None, xrsiz: int | None = None,
                       yrsiz: int | None = None, xsiz: int | None = None, ysiz: int | None = None,
                       csiz: int | None = None) -> Path:
    """Overwrite fields of the JPEG 2000 SIZ segment of a valid JPEG 2000 file, in place.

    Offsets from FF 51: Lsiz +2 (2), Rsiz +4 (2), Xsiz +6 (4), Ysiz +10 (4), XOsiz +14, YOsiz +18, XTsiz +22,
    YTsiz +26, XTOsiz +30, YTOsiz +34 (4 each), Csiz +38 (2), then 3 bytes per component c: Ssiz +40+3c,
    XRsiz +41+3c, YRsiz +42+3c. Unset fields are kept.
    """
    c = 3 * component
    fields = _set_fields((6, "I", xsiz), (10, "I", ysiz), (38, "H", csiz), (40 + c, "B", ssiz), (41 + c, "B", xrsiz),
                         (42 + c, "B", yrsiz))
    return _patch_fields(path, _siz_offset, fields)


def truncate_pixel_data(path: Path, *, fraction: float = 0.5) -> Path:
    """Cut a file at `fraction` of its PixelData value (inside the first fragment when compressed), in place."""
    data = Path(path).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        start, length = _first_fragment(data)
    else:
        length = len(ds.PixelData)
        start = len(data) - length  # a native PixelData value is the last element of the phantom's files
        if data[start:] != ds.PixelData:
            raise ValueError("native PixelData is not the last element of the file")
    cut = start + max(1, min(length - 1, int(length * fraction)))
    Path(path).write_bytes(data[:cut])
    return Path(path)


# ------------------------------------------------------------------------------------------ file case builders
# Each turns a valid file of the case's compression (written by the phantom) into the hostile file, in place.


def jpegls_zero_width(path: Path) -> Path:
    """Set the JPEG-LS SOF55 width X to 0 (known to SIGSEGV inside GDCM)."""
    return patch_jpegls_sof55(path, columns=0)


def jpegls_precision_31(path: Path) -> Path:
    """Set the JPEG-LS SOF55 sample precision P to 31 (known to SIGABRT inside GDCM)."""
    return patch_jpegls_sof55(path, precision=31)


def jpegls_zero_lines(path: Path) -> Path:
    """Set the JPEG-LS SOF55 line count Y to 0 (known to make pylibjpeg-libjpeg grow memory until OOM)."""
    return patch_jpegls_sof55(path, lines=0)


def jpeg2000_ssiz_255(path: Path) -> Path:
    """Set the JPEG 2000 SIZ Ssiz of the first component to 255 (SIGABRT in GDCM; pylibjpeg-openjpeg raises)."""
    return patch_jpeg2000_siz(path, component=0, ssiz=255)


def truncate_file(path: Path) -> Path:
    """Cut a file in the middle of its pixel data."""
    return truncate_pixel_data(path, fraction=0.5)


def declare_size(path: Path, rows: int = 65535, cols: int = 65535) -> Path:
    """Rewrite the header's Rows and Columns (the pixel data is kept as it is), in place."""
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def declared_65535(path: Path) -> Path:
    """Declare Rows = Columns = 65535 in the header of a valid compressed file (the volume would need 656 GiB)."""
    return declare_size(path, 65535, 65535)


def zero_byte_file(path: Path) -> Path:
    """Replace a file by an empty (0 byte) file of the same name."""
    Path(path).write_bytes(b"")
    return Path(path)


def write_rtdose(path: Path, *, like: Path | None = None, frames: int = 15, rows: int = 10, cols: int = 10,
                 number_of_frames: bytes = b"1A", bits_allocated: int = 32) -> Path:
    """Write an RTDOSE-like multi-frame file (uncompressed) that could outvote a CT stack by frame count.

    Args:
        path: the file written (replaced if present).
        like: a file of the series to join: its Study/Series/FrameOfReference UIDs, SOPInstanceUID,
            InstanceNumber, ImagePositionPatient and ImageOrientationPatient are copied (else fresh values).
        frames, rows, cols: the dose grid (frames are the pixel data's real frame count).
        number_of_frames: the raw NumberOfFrames (IS) value written, unvalidated (default the malformed b"1A";
            padded to even length with a space).
        bits_allocated: 16 or 32 (unsigned, BitsStored = BitsAllocated).
    """
    ref = pydicom.dcmread(like, stop_before_pixels=True) if like is not None else Dataset()
    uid = pydicom.uid.generate_uid
    sop_uid = str(ref.get("SOPInstanceUID") or uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTDOSE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTDOSE_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTDOSE"
    ds.StudyInstanceUID = str(ref.get("StudyInstanceUID") or uid())
    ds.SeriesInstanceUID = str(ref.get("SeriesInstanceUID") or uid())
    ds.FrameOfReferenceUID = str(ref.get("FrameOfReferenceUID") or uid())
    ds.InstanceNumber = int(ref.get("InstanceNumber") or 1)
    ds.ImagePositionPatient = list(ref.get("ImagePositionPatient") or [-12.5, -12.5, -20.0])
    ds.ImageOrientationPatient = list(ref.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0])
    ds.PixelSpacing = [2.5, 2.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = bits_allocated
    ds.HighBit = bits_allocated - 1
    ds.PixelRepresentation = 0
    raw = number_of_frames + b" " * (len(number_of_frames) % 2)
    if not 0 < len(raw) <= 12:
        raise ValueError("number_of_frames must be 1 to 12 bytes")
    placeholder = b"1" * len(raw)  # a valid IS of the same length, swapped for the raw value after writing
    ds.NumberOfFrames = placeholder.decode()
    ds.FrameIncrementPointer = _GRID_FRAME_OFFSET_VECTOR
    ds.GridFrameOffsetVector = [2.5 * k for k in range(frames)]
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = 1e-4
    z, y, x = np.meshgrid(np.linspace(-1, 1, frames), np.linspace(-1, 1, rows), np.linspace(-1, 1, cols),
                          indexing="ij")
    dose = np.rint(60000 * np.exp(-2.0 * (x * x + y * y + z * z))).astype(f"<u{bits_allocated // 8}")
    ds.PixelData = dose.tobytes()
    ds.save_as(path, enforce_file_format=True)
    element = struct.pack("<HH2sH", 0x0028, 0x0008, b"IS", len(raw))  # explicit VR little endian header
    data = Path(path).read_bytes()
    if data.count(element + placeholder) != 1:
        raise AssertionError("cannot locate the NumberOfFrames element just written")
    Path(path).write_bytes(data.replace(element + placeholder, element + raw))
    return Path(path)


def _rtdose_in_place(path: Path) -> Path:
    """Replace a CT/MR slice by an RTDOSE intruder that joins its series (same UIDs, InstanceNumber, position)."""
    return write_rtdose(path, like=path)


# ------------------------------------------------------------------------------------------ geometry rewrites


def _dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm" and p.is_file())


def _holders(ds: Dataset, keyword: str, sequence: str) -> Iterator[Dataset]:
    """Datasets holding `keyword`: the top level and the functional-group items of `sequence`."""
    if keyword in ds:
        yield ds
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups) or []:
            for item in group.get(sequence) or []:
                if keyword in item:
                    yield item


def _rewrite(files: Sequence[Path], edit: Callable[[Dataset], None]) -> list[Path]:
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
        out.append(Path(path))
    return out


def _set_orientation(ds: Dataset, value: Callable[[list[float]], list[float]]) -> None:
    for holder in _holders(ds, "ImageOrientationPatient", "PlaneOrientationSequence"):
        holder.ImageOrientationPatient = value([float(v) for v in holder.ImageOrientationPatient])


def zero_orientation(folder: Path) -> list[Path]:
    """Set ImageOrientationPatient to six zeros in every file of a series folder (returns the files rewritten)."""
    return _rewrite(_dcm_files(folder), lambda ds: _set_orientation(ds, lambda iop: [0.0] * 6))


def collinear_orientation(folder: Path) -> list[Path]:
    """Make ImageOrientationPatient's column vector equal its row vector in every file of a series folder."""
    return _rewrite(_dcm_files(folder), lambda ds: _set_orientation(ds, lambda iop: iop[:3] + iop[:3]))


def identical_positions(folder: Path) -> list[Path]:
    """Give every file (and frame) of a series folder the first file's first ImagePositionPatient."""
    files = _dcm_files(folder)
    first = next(_holders(pydicom.dcmread(files[0], stop_before_pixels=True), "ImagePositionPatient",
                          "PlanePositionSequence"))
    reference = [float(v) for v in first.ImagePositionPatient]

    def edit(ds: Dataset) -> None:
        for holder in _holders(ds, "ImagePositionPatient", "PlanePositionSequence"):
            holder.ImagePositionPatient = list(reference)

    return _rewrite(files, edit)


def drop_orientation(folder: Path, *, start: int = 0, every: int = 2) -> list[Path]:
    """Remove ImageOrientationPatient (top level and functional groups) from files[start::every] of a folder."""

    def edit(ds: Dataset) -> None:
        for holder in list(_holders(ds, "ImageOrientationPatient", "PlaneOrientationSequence")):
            del holder.ImageOrientationPatient

    return _rewrite(_dcm_files(folder)[start::every], edit)


def drop_rescale(folder: Path, *, start: int = 0, every: int = 2) -> list[Path]:
    """Remove RescaleSlope, RescaleIntercept and RescaleType (top level and functional groups) from
    files[start::every] of a folder (the others keep theirs: a phantom CT's intercept is -1024)."""

    def edit(ds: Dataset) -> None:
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            for holder in list(_holders(ds, keyword, "PixelValueTransformationSequence")):
                delattr(holder, keyword)

    return _rewrite(_dcm_files(folder)[start::every], edit)


def add_second_series(folder: Path, *, like: SeriesSpec, num_slices: int, shift_mm: float, seed: int = 1
                      ) -> list[Path]:
    """Write another phantom series into a series folder: other Study/Series/FrameOfReference/SOP UIDs, the same
    grid as `like` (size, spacing, orientation, compression), its slices shifted by `shift_mm` along the normal
    (half the slice spacing: between the first series' slices; 0: at the same positions).

    Returns:
        The files written, named ``zz-<SOPInstanceUID>.dcm`` (after the first series' files).
    """
    acq = like.acquisition
    centre = tuple(float(v) for v in np.asarray(acq.centre) + shift_mm * np.asarray(acq.normal))
    grid = Acquisition(plane=acq.plane, rows=acq.rows, cols=acq.cols, num_slices=num_slices,
                       pixel_spacing=acq.pixel_spacing, slice_spacing=acq.slice_spacing, centre=centre,
                       compression=acq.compression)
    spec = series_spec(seed, modality=like.modality, acquisition=grid)
    if spec.series_uid == like.series_uid:
        raise ValueError("the second series needs another seed: its UID equals the first one's")
    staging = Path(folder) / ".second"
    write_series(spec, staging)
    out = []
    for uid in spec.sop_instance_uids():
        target = Path(folder) / f"zz-{uid}.dcm"
        (staging / f"{uid}.dcm").rename(target)
        out.append(target)
    staging.rmdir()
    return out


# ------------------------------------------------------------------------------------------ registry and series


@dataclass(frozen=True)
class HostileCase:
    """One registered case.

    Attributes:
        name: the registry key.
        compression: the phantom compression of the good slices and of the hostile file before corruption.
        corrupt: file cases: turns the valid file at the slot into the hostile file, in place.
        rewrite: series cases: rewrites the series folder, given the slot and the valid series' spec; returns
            the files it changed or added.
        summary: one line.
    """

    name: str
    compression: str | None
    corrupt: Callable[[Path], Path] | None = None
    rewrite: Callable[[Path, int, SeriesSpec], list[Path]] | None = None
    summary: str = ""


def _file_case(name: str, compression: str | None, corrupt: Callable[[Path], Path]) -> HostileCase:
    return HostileCase(name, compression, corrupt=corrupt, summary=(corrupt.__doc__ or "").splitlines()[0])


def _series_case(name: str, rewrite: Callable[[Path, int, SeriesSpec], list[Path]], summary: str) -> HostileCase:
    return HostileCase(name, None, rewrite=rewrite, summary=summary)


HOSTILE_CASES: dict[str, HostileCase] = {case.name: case for case in (
    _file_case("jpegls_zero_width", "jpegls", jpegls_zero_width),
    _file_case("jpegls_precision_31", "jpegls", jpegls_precision_31),
    _file_case("jpegls_zero_lines", "jpegls", jpegls_zero_lines),
    _file_case("jpeg2000_ssiz_255", "jpeg2000", jpeg2000_ssiz_255),
    _file_case("truncated", None, truncate_file),
    _file_case("truncated_jpegls", "jpegls", truncate_file),
    _file_case("truncated_jpeg2000", "jpeg2000", truncate_file),
    _file_case("zero_byte", None, zero_byte_file),
    _file_case("rtdose_intruder", None, _rtdose_in_place),
    _series_case("zero_orientation", lambda folder, slot, spec: zero_orientation(folder),
                 "ImageOrientationPatient all zeros in every file"),
    _series_case("collinear_orientation", lambda folder, slot, spec: collinear_orientation(folder),
                 "ImageOrientationPatient row vector == column vector in every file"),
    _series_case("identical_positions", lambda folder, slot, spec: identical_positions(folder),
                 "every file has the same ImagePositionPatient"),
    _series_case("missing_orientation", lambda folder, slot, spec: drop_orientation(folder, start=slot),
                 "ImageOrientationPatient removed from every second file, from the slot on"),
    _file_case("declared_65535", "jpegls", declared_65535),
    _series_case("second_series", lambda folder, slot, spec: add_second_series(
        folder, like=spec, num_slices=max(1, spec.acquisition.num_slices - 2),
        shift_mm=spec.acquisition.slice_spacing / 2, seed=spec.seed + 1),
        "a second series (other UIDs, same size, 2 slices fewer) between the first one's slices"),
    _series_case("second_series_same_pos", lambda folder, slot, spec: add_second_series(
        folder, like=spec, num_slices=spec.acquisition.num_slices, shift_mm=0.0, seed=spec.seed + 1),
        "a second series (other UIDs, same size, as many slices) at the first one's positions"),
    _series_case("rescale_missing", lambda folder, slot, spec: drop_rescale(folder, start=slot),
                 "RescaleSlope/Intercept removed from every second file, from the slot on"),
)}


@dataclass(frozen=True)
class HostileSeries:
    """What `write_hostile_series` wrote.

    Attributes:
        folder: the series folder.
        files: every file, sorted by name (= InstanceNumber = position order of the valid series).
        bad: the hostile (corrupted or rewritten) files.
        slot: index in `files` of the hostile file (file cases; 0 or the middle for geometry cases).
        spec: the phantom spec of the valid series (ground truth: geometry, anatomy).
    """

    folder: Path
    files: list[Path]
    bad: list[Path]
    slot: int
    spec: SeriesSpec


def hostile_acquisition(num_slices: int, *, size: int = 32, compression: str | None = None) -> Acquisition:
    """A small axial grid (size x size x num_slices, 3.2 mm pixels, 3 mm slices), positions rising with k."""
    return Acquisition(rows=size, cols=size, num_slices=num_slices, pixel_spacing=(3.2, 3.2), slice_spacing=3.0,
                       centre=(0.0, 0.0, -15.0), compression=compression)


def write_hostile_series(name: str, folder: Path, *, position: Position = "first", n_good: int = 8, size: int = 32,
                         seed: int = 0, modality: str = "CTA") -> HostileSeries:
    """Write a series folder of `n_good` valid slices plus one hostile file at `position` (or a geometry rewrite).

    Args:
        name: a key of HOSTILE_CASES.
        folder: the series folder (created; should be empty). Its name is the SeriesInstanceUID when it is a
            valid UID (digits and dots, as on Kaggle), else the UID is derived from `seed`.
        position: "first": the hostile file is slot 0 (first by file name, InstanceNumber and position);
            "middle": slot (n_good + 1) // 2.
        n_good: valid slices besides the hostile one (0: the hostile file alone).
        size: rows = columns of the valid slices.
        seed: phantom seed (anatomy, noise, UIDs).
        modality: competition modality label of the valid slices ("CTA", "MRA", ...).
    Returns:
        The HostileSeries (files in name order, the hostile files, the slot, the spec).
    """
    case = HOSTILE_CASES[name]
    if position not in ("first", "middle"):
        raise ValueError(f"position must be 'first' or 'middle', got {position!r}")
    total = n_good + 1
    if case.rewrite is not None and total < 2:
        raise ValueError(f"{name} rewrites a series: n_good must be >= 1")
    spec, files = write_valid_series(folder, total, size=size, seed=seed, modality=modality,
                                     compression=case.compression)
    slot = 0 if position == "first" else total // 2
    if case.corrupt is not None:
        bad = [case.corrupt(files[slot])]
    else:
        assert case.rewrite is not None
        bad = case.rewrite(folder, slot, spec)
    return HostileSeries(folder=folder, files=files, bad=bad, slot=slot, spec=spec)


def write_valid_series(folder: Path, num_slices: int, *, size: int = 32, seed: int = 0, modality: str = "CTA",
                       compression: str | None = None) -> tuple[SeriesSpec, list[Path]]:
    """Write a valid phantom series (`hostile_acquisition`) named ``NNNN-<SOPInstanceUID>.dcm``.

    Its SeriesInstanceUID is the folder's name when that is a valid UID (digits and dots, as on Kaggle), else
    derived from `seed`. Returns the spec and the files, in name = InstanceNumber = position order.
    """
    folder = Path(folder)
    is_uid = bool(folder.name) and all(ch.isdigit() or ch == "." for ch in folder.name)
    spec = series_spec(seed, modality=modality, series_uid=folder.name if is_uid else None,
                       acquisition=hostile_acquisition(num_slices, size=size, compression=compression))
    write_series(spec, folder)
    files = []
    for k, uid in enumerate(spec.sop_instance_uids()):  # file order k = InstanceNumber k + 1 = rising position
        target = folder / f"{k:04d}-{uid}.dcm"
        (folder / f"{uid}.dcm").rename(target)
        files.append(target)
    return spec, files


def write_hostile_file(name: str, folder: Path, *, size: int = 32, seed: int = 0, modality: str = "CTA") -> Path:
    """Write the hostile file of a file case alone into `folder` (a one-slice series) and return its path."""
    if HOSTILE_CASES[name].corrupt is None:
        raise ValueError(f"{name} is a series rewrite, not a file case: use write_hostile_series")
    return write_hostile_series(name, folder, n_good=0, size=size, seed=seed, modality=modality).bad[0]


# ------------------------------------------------------------------------------------------ running a case

PREDICT_DRIVER = """
import json, logging, os, resource, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
start = time.monotonic()
from inference import kernel
frame = kernel.predict(sys.argv[1])
elapsed = time.monotonic() - start
runtime = kernel._RUNTIME
report = runtime.reports.get(Path(sys.argv[1]).name)
runtime.close()  # the decoding workers are reaped: their peak memory counts in RUSAGE_CHILDREN
print("RESULT " + json.dumps({
    "columns": frame.columns, "row": list(frame.row(0)), "elapsed_s": elapsed,
    "answer": report.answer if report else "", "slices": report.slices if report else 0,
    "modality": report.modality if report else "",
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


@dataclass
class CaseRun:
    """What `predict` did with one hostile series in a fresh process."""

    returncode: int
    result: dict | None
    log: str
    wall_s: float


def run_predict_in_subprocess(series: Path, weights: Path, *, cwd: Path, timeout_s: float = 120.0,
                              env: dict[str, str] | None = None) -> CaseRun:
    """Run `inference.kernel.predict(series)` in a fresh interpreter (a crash there costs this case only)."""
    import os
    import subprocess
    import sys
    import time

    environ = {k: v for k, v in os.environ.items() if not k.startswith("RSNA_")}
    environ.update({"RSNA_WEIGHTS_DIR": str(weights), "RSNA_DECODE_TIMEOUT_S": "4", "RSNA_DECODE_MEMORY_MB": "1024",
                    "RSNA_DECODE_WORKERS": "2", "RSNA_CALL_BUDGET_S": "60", "PYTHONPATH": str(cwd)})
    environ.update(env or {})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PREDICT_DRIVER, str(series)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout_s)
    wall = time.monotonic() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    import json

    result = json.loads(lines[-1][len("RESULT "):]) if lines else None
    return CaseRun(proc.returncode, result, proc.stdout + proc.stderr, wall)
