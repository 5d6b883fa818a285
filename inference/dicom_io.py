"""Read one DICOM file: its frames as one-channel stored values plus per-frame geometry and rescale."""
from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid
from pydicom.uid import UID

from .dicom_header import scan_header
from .dicom_pixels import (
    correct_unused_bits,
    count_encapsulated_frames,
    decode_with_plugins,
    invert_monochrome1,
    luminance,
    native_frames,
)
from .errors import KitError
from .memory import format_bytes, memory_left

__all__ = [
    "DEFAULT_BACKENDS",
    "MAX_IMAGE_SIDE",
    "DicomFileError",
    "DeclaredSizeError",
    "DicomImage",
    "read_dicom",
    "check_declared_size",
]

# "fast" handles plain little-endian monochrome files without functional groups (the common case): a header
# scan instead of pydicom's dataset (which dominates the time of uncompressed files), then a numpy view of native
# pixels or pydicom's decoder plugins on the encapsulated ones. It declines anything else, including anything
# malformed or truncated, to "pydicom", which reads every file (decoder plugins pylibjpeg / pyjpegls / GDCM tried
# in turn) and words the errors. "dicomsdl" is opt-in only: dicomsdl 0.109.4 crashes the whole interpreter
# (segmentation fault) on a truncated file, which would cost the series instead of one file.
DEFAULT_BACKENDS: tuple[str, ...] = ("fast", "pydicom")

# CT and MR matrices are at most 1024 (2048 on ultra-high-resolution CT) a side, radiographs about 4300: a header
# declaring more is refused before anything is decoded or allocated (65535 x 65535 would be 16 GiB a frame).
MAX_IMAGE_SIDE = 8192
_CHECK_MEMORY_FROM = 64 << 20  # files declaring less than this never ask how much memory is left

_UNCOMPRESSED_LE = {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian}
_PER_FRAME = "PerFrameFunctionalGroupsSequence"
_SHARED = "SharedFunctionalGroupsSequence"

Getter = Callable[[str], Any]


class DicomFileError(KitError):
    """One file cannot be used (not DICOM, no pixel data, truncated, undecodable): the loader skips it."""


class DeclaredSizeError(DicomFileError):
    """The header declares an image larger than any scanner writes, or than the memory left: refused unread."""


def check_declared_size(rows: int, cols: int, frames: int = 1, bytes_per_pixel: float = 2.0) -> None:
    """Refuse a declared image size before anything is decoded or allocated.

    Args:
        rows, cols, frames: what the header declares.
        bytes_per_pixel: bytes one pixel will cost once read (stored values plus the float32 volume's copy).
    Raises:
        DeclaredSizeError: a side over MAX_IMAGE_SIDE, or more bytes than the memory left (when it can be read).
    """
    if rows > MAX_IMAGE_SIDE or cols > MAX_IMAGE_SIDE:
        raise DeclaredSizeError(f"declares {rows} x {cols} pixels, larger than any CT/MR scanner writes "
                                f"(at most {MAX_IMAGE_SIDE} a side): refused before decoding")
    needed = float(rows) * cols * max(1, frames) * bytes_per_pixel
    if needed >= _CHECK_MEMORY_FROM:
        left = memory_left()
        if left is not None and needed > left:
            raise DeclaredSizeError(f"declares {max(1, frames)} frame(s) of {rows} x {cols} pixels "
                                    f"({format_bytes(needed)} once read), more than the {format_bytes(left)} of "
                                    "memory left: refused before decoding")


@dataclass
class DicomImage:
    """One file's frames and what the loader needs to place them.

    Attributes:
        path: the file read.
        sop_instance_uid: SOPInstanceUID (the file stem when the tag is missing).
        sop_class_uid: SOPClassUID ("" when missing).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: the identity of the series the file
            belongs to ("" when missing): a folder can hold more than one series.
        modality: the Modality tag, upper case ("" when missing).
        instance_number: InstanceNumber, or None.
        num_frames, rows, cols: the frame count (found in the pixel data) and the frame size.
        pixels: (frames, rows, cols) stored values, one channel, MONOCHROME2 sense (MONOCHROME1 inverted,
            colour reduced to luminance as float32); rescale NOT applied. None for an encapsulated file read
            with `decode=False`: its frames are decoded later, in a worker process (`inference.decode_pool`).
        pixel_dtype: the dtype `pixels` has, or will have once decoded.
        positions: (frames, 3) ImagePositionPatient per frame, NaN where unknown.
        orientations: (frames, 6) ImageOrientationPatient per frame, NaN where unknown.
        slopes, intercepts: (frames,) RescaleSlope / RescaleIntercept per frame, NaN where the file does not
            give one (a zero slope counts as absent): the stack fills them from its other files, else 1 and 0
            (`inference.stack.choose_stack`).
        pixel_spacing: (frames, 2) PixelSpacing (row spacing, column spacing) in mm, NaN where unknown.
        slice_thickness: SliceThickness, or None.
        spacing_between_slices: SpacingBetweenSlices, or None.
        transfer_syntax: the TransferSyntaxUID the pixels were decoded from.
        backend: which reader produced this image ("fast", "pydicom" or "dicomsdl").
        notes: what was corrected on the way (frame count inferred, ...).
    """

    path: str
    sop_instance_uid: str
    modality: str
    instance_number: int | None
    num_frames: int
    rows: int
    cols: int
    pixels: np.ndarray | None
    pixel_dtype: str
    positions: np.ndarray
    orientations: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    pixel_spacing: np.ndarray
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    transfer_syntax: str = ""
    backend: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def encapsulated(self) -> bool:
        """Whether the pixel data is compressed (decoded by native plugins: worker processes only)."""
        return UID(self.transfer_syntax).is_encapsulated


def read_dicom(path: str | Path, *, backends: Sequence[str] = DEFAULT_BACKENDS, decode: bool = True) -> DicomImage:
    """Read one file once: its header, and its frames.

    Args:
        path: a DICOM file.
        backends: readers tried in turn ("fast", "pydicom", opt-in "dicomsdl"); a reader that declines the
            file or fails on it hands over to the next one.
        decode: also decode compressed (encapsulated) frames. With False such a file comes back with
            `pixels=None` and its frame count; uncompressed frames are always returned (a numpy view).
    Returns:
        The file's DicomImage.
    Raises:
        DicomFileError: every backend failed; the message lists each backend's reason.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomFileError(f"{path.name}: not a file")
    if path.stat().st_size == 0:
        raise DicomFileError(f"{path.name}: empty file (0 bytes)")
    failures: list[str] = []
    declined: list[str] = []
    for name in backends:
        reader = _BACKENDS.get(name)
        if reader is None:
            failures.append(f"{name}: unknown backend")
            continue
        try:
            return reader(path, decode)
        except DeclaredSizeError as exc:  # the header itself is refused: no other reader may allocate it either
            raise DeclaredSizeError(f"{path.name}: {exc}") from None
        except _NotApplicable as exc:
            declined.append(f"{name}: {exc}")
        except DicomFileError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any reader failure hands over to the next reader
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    raise DicomFileError(f"{path.name}: " + "; ".join(failures or declined))


class _NotApplicable(Exception):
    """A backend declines a file it is not meant for (not an error of the file)."""


# -------------------------------------------------------------------------------------------------- fast backend


def _map_file(path: Path) -> mmap.mmap:
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _read_fast(path: Path, decode: bool = True) -> DicomImage:
    """Plain little-endian monochrome files: a header scan, then a numpy view of the mapped native pixels or
    pydicom's decoders run on the mapped encapsulated pixels (no pydicom dataset is built)."""
    buffer = _map_file(path)
    header = scan_header(buffer)
    if header is None:
        raise _NotApplicable("not a plain little-endian file")
    values = header.values
    rows, cols = int(values.get("Rows") or 0), int(values.get("Columns") or 0)
    bits_allocated = int(values.get("BitsAllocated") or 0)
    photometric = str(values.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if (rows <= 0 or cols <= 0 or int(values.get("SamplesPerPixel") or 1) != 1
            or bits_allocated not in (8, 16, 32) or photometric not in ("MONOCHROME1", "MONOCHROME2")):
        raise _NotApplicable("colour, odd bit depth or missing size")
    check_declared_size(rows, cols)
    n = _declared_frames(values.get("NumberOfFrames"))
    bits_stored = int(values.get("BitsStored") or bits_allocated)
    signed = int(values.get("PixelRepresentation") or 0) == 1
    ts = header.transfer_syntax
    if header.pixel_length >= 0:
        check_declared_size(rows, cols, n, bits_allocated / 8 + 4)
        frame_bytes = rows * cols * bits_allocated // 8
        if header.pixel_length // frame_bytes != n or header.pixel_offset + header.pixel_length > len(buffer):
            raise _NotApplicable("pixel data length does not match NumberOfFrames (or the file is truncated)")
        arr = native_frames(buffer, header.pixel_offset, (n, rows, cols), bits_allocated, bits_stored, signed,
                            little_endian=True)
    else:
        encapsulated = buffer[header.pixel_offset:]  # bytes: the items up to the sequence delimiter (and after)
        if count_encapsulated_frames(encapsulated, ts, hint=n) != n:
            raise _NotApplicable("encapsulated frame count does not match NumberOfFrames")
        check_declared_size(rows, cols, n, bits_allocated / 8 + 4)
        arr = None
        if decode:
            pixel_module = dict(rows=rows, columns=cols, number_of_frames=n, samples_per_pixel=1,
                                bits_allocated=bits_allocated, bits_stored=bits_stored,
                                pixel_representation=int(signed), photometric_interpretation=photometric)
            arr = decode_with_plugins(encapsulated, ts, pixel_module).reshape(n, rows, cols)
    if arr is not None and photometric == "MONOCHROME1":
        arr = invert_monochrome1(arr, bits_stored, signed)
    get: Getter = lambda keyword: None if "." in keyword else values.get(keyword)  # noqa: E731
    dtype = _stored_dtype(bits_allocated, signed)
    return _build_image(path, _Header(get, n), arr, (rows, cols), dtype, ts, "fast", [])


# ----------------------------------------------------------------------------------------------- pydicom backend


def _read_pydicom(path: Path, decode: bool = True) -> DicomImage:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage input
        raise DicomFileError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    meta = getattr(ds, "file_meta", None)
    ts = UID(meta.get("TransferSyntaxUID", "")) if meta is not None else UID("")
    if "PixelData" not in ds:
        raise DicomFileError("no PixelData element (not an image, or not DICOM)")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise DicomFileError("missing or zero Rows/Columns")
    check_declared_size(rows, cols)
    if not ts:
        implicit, little = ds.original_encoding
        ts = uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else \
            uid.ExplicitVRBigEndian
        ds.file_meta = ds.get("file_meta") or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    notes: list[str] = []
    spp = int(ds.get("SamplesPerPixel") or 1)
    bits_allocated = int(ds.get("BitsAllocated") or 16)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    declared = _declared_frames(ds.get("NumberOfFrames"))
    pixel_data: bytes = ds.PixelData  # shorter than declared when the file is truncated

    if ts.is_encapsulated:
        n = count_encapsulated_frames(pixel_data, ts, hint=declared)
    else:
        frame_bytes = rows * cols * spp * bits_allocated // 8
        if frame_bytes == 0:
            raise DicomFileError(f"unsupported BitsAllocated {bits_allocated}")
        n = len(pixel_data) // frame_bytes
        if n == 0:
            raise DicomFileError(f"truncated pixel data ({len(pixel_data)} bytes, one frame needs {frame_bytes})")
    check_declared_size(rows, cols, n, spp * bits_allocated / 8 + 4)
    if n != declared:
        notes.append(f"NumberOfFrames {ds.get('NumberOfFrames')!r} -> {n} frames found in the pixel data")
        ds.NumberOfFrames = n
    if not ts.is_encapsulated and len(pixel_data) != n * frame_bytes:
        ds.PixelData = bytes(pixel_data[: n * frame_bytes])  # whole frames only, for pydicom's decoders

    native_ok = (
        not ts.is_encapsulated and spp == 1 and bits_allocated in (8, 16, 32) and photometric.startswith("MONO")
    )
    grey = spp == 1 and photometric != "PALETTE COLOR"
    dtype = _stored_dtype(bits_allocated, signed) if grey else "float32"
    arr: np.ndarray | None = None
    if native_ok:
        arr = native_frames(pixel_data, 0, (n, rows, cols), bits_allocated, bits_stored, signed,
                             little_endian=ts.is_little_endian)
    elif decode or not ts.is_encapsulated:
        arr = decode_with_plugins(ds, ts)
        if spp > 1:
            arr = arr.reshape(n, rows, cols, spp)
            arr = luminance(arr)
        elif photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = luminance(np.asarray(apply_color_lut(arr, ds)).reshape(n, rows, cols, 3))
        else:
            arr = arr.reshape(n, rows, cols)
    if arr is not None and photometric == "MONOCHROME1":
        arr = invert_monochrome1(arr, bits_stored, signed)

    header = _Header(_pydicom_getter(ds), n)
    return _build_image(path, header, arr, (rows, cols), dtype, str(ts), "pydicom", notes)


def _pydicom_getter(ds: Any) -> Getter:
    def get(keyword_path: str) -> Any:
        obj = ds
        for part in keyword_path.split("."):
            if obj is None:
                return None
            if part.isdigit():
                index = int(part)
                obj = obj[index] if index < len(obj) else None
            else:
                obj = obj.get(part)
        return None if obj is None or obj == "" else obj

    return get


# ---------------------------------------------------------------------------------------------- dicomsdl backend


def _read_dicomsdl(path: Path, decode: bool = True) -> DicomImage:
    try:
        import dicomsdl
    except ImportError as exc:
        raise _NotApplicable("dicomsdl is not installed") from exc

    ds = dicomsdl.open(str(path))
    ts = str(ds.TransferSyntaxUID or "")
    if ts not in _UNCOMPRESSED_LE:
        raise _NotApplicable(f"transfer syntax {ts or '?'} is left to pydicom")
    info = ds.getPixelDataInfo()
    photometric = str(info.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    spp = int(info.get("SamplesPerPixel") or 1)
    bits_allocated = int(info.get("BitsAllocated") or 0)
    if spp != 1 or bits_allocated not in (8, 16, 32) or not photometric.startswith("MONO"):
        raise _NotApplicable("colour or unusual bit depth is left to pydicom")
    element = ds.getDataElement("PixelData")
    rows, cols = int(info["Rows"]), int(info["Cols"])
    if rows <= 0 or cols <= 0:
        raise DicomFileError("missing or zero Rows/Columns")
    check_declared_size(rows, cols)
    frame_bytes = rows * cols * bits_allocated // 8
    n = int(element.length()) // frame_bytes if element is not None else 0
    declared = _declared_frames(ds.NumberOfFrames)
    if n == 0 or n != declared:
        # frame count inference and truncation notes live in the pydicom reader
        raise _NotApplicable("pixel data length does not match NumberOfFrames")
    check_declared_size(rows, cols, n, bits_allocated / 8 + 4)
    arr = np.empty((n, rows, cols), dtype=np.dtype(info["dtype"]))
    for f in range(n):
        ds.copyFrameData(f, arr[f])
    bits_stored = int(ds.BitsStored or bits_allocated)
    arr = correct_unused_bits(arr, bits_allocated, bits_stored)
    if photometric == "MONOCHROME1":
        arr = invert_monochrome1(arr, bits_stored, bool(info.get("PixelRepresentation")))
    header = _Header(_dicomsdl_getter(ds), n)
    return _build_image(path, header, arr, (rows, cols), arr.dtype.str, ts, "dicomsdl", [])


def _dicomsdl_getter(ds: Any) -> Getter:
    def get(keyword_path: str) -> Any:
        try:
            value = ds[keyword_path] if "." in keyword_path else getattr(ds, keyword_path)
        except Exception:  # noqa: BLE001 - dicomsdl raises on out-of-range items; treat as missing
            return None
        return None if value is None or value == "" else value

    return get


_BACKENDS: dict[str, Callable[[Path, bool], DicomImage]] = {
    "fast": _read_fast,
    "pydicom": _read_pydicom,
    "dicomsdl": _read_dicomsdl,
}


# ------------------------------------------------------------------------------------------- shared header logic


class _Header:
    """Looks a keyword up per frame: PerFrameFunctionalGroups, then SharedFunctionalGroups, then top level."""

    def __init__(self, get: Getter, num_frames: int) -> None:
        self.get = get
        self.num_frames = num_frames
        self.has_per_frame = get(_PER_FRAME) is not None
        self.has_shared = get(_SHARED) is not None

    def frame_value(self, frame: int, group: str, keyword: str, *, top_level_all_frames: bool = True) -> Any:
        if self.has_per_frame:
            value = self.get(f"{_PER_FRAME}.{frame}.{group}.0.{keyword}")
            if value is not None:
                return value
        if self.has_shared:
            value = self.get(f"{_SHARED}.0.{group}.0.{keyword}")
            if value is not None:
                return value
        if top_level_all_frames or frame == 0:
            return self.get(keyword)
        return None


def _build_image(path: Path, header: _Header, pixels: np.ndarray | None, shape: tuple[int, int], dtype: str,
                 ts: str, backend: str, notes: list[str]) -> DicomImage:
    n = header.num_frames
    get = header.get
    positions = np.full((n, 3), np.nan)
    orientations = np.full((n, 6), np.nan)
    slopes = np.full(n, np.nan)  # NaN: not given by this file (filled from the stack's other files)
    intercepts = np.full(n, np.nan)
    spacing = np.full((n, 2), np.nan)
    for f in range(n):
        # a top-level ImagePositionPatient locates frame 0 only (legacy multi-frame files)
        positions[f] = _floats(header.frame_value(f, "PlanePositionSequence", "ImagePositionPatient",
                                                  top_level_all_frames=False), 3)
        orientations[f] = _floats(header.frame_value(f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        slope = _float(header.frame_value(f, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(header.frame_value(f, "PixelValueTransformationSequence", "RescaleIntercept"))
        slopes[f] = np.nan if slope is None or slope == 0 else slope
        intercepts[f] = np.nan if intercept is None else intercept
        spacing[f] = _floats(header.frame_value(f, "PixelMeasuresSequence", "PixelSpacing"), 2)
    instance = get("InstanceNumber")
    return DicomImage(
        path=str(path),
        sop_instance_uid=str(get("SOPInstanceUID") or path.stem),
        sop_class_uid=str(get("SOPClassUID") or "").strip(),
        study_instance_uid=_uid(get("StudyInstanceUID")),
        series_instance_uid=_uid(get("SeriesInstanceUID")),
        frame_of_reference_uid=_uid(get("FrameOfReferenceUID")),
        modality=str(get("Modality") or "").strip().upper(),
        instance_number=None if _float(instance) is None else int(_float(instance)),  # type: ignore[arg-type]
        num_frames=n,
        rows=int(shape[0]),
        cols=int(shape[1]),
        pixels=pixels,
        pixel_dtype=np.dtype(dtype).str if pixels is None else pixels.dtype.str,
        positions=positions,
        orientations=orientations,
        slopes=slopes,
        intercepts=intercepts,
        pixel_spacing=spacing,
        slice_thickness=_float(header.frame_value(0, "PixelMeasuresSequence", "SliceThickness")),
        spacing_between_slices=_float(header.frame_value(0, "PixelMeasuresSequence", "SpacingBetweenSlices")),
        transfer_syntax=ts,
        backend=backend,
        notes=notes,
    )


def _uid(value: Any) -> str:
    return str(value or "").strip(" \0")


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _floats(value: Any, size: int) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return np.full(size, np.nan)
    return out if out.shape == (size,) else np.full(size, np.nan)


def _stored_dtype(bits_allocated: int, signed: bool) -> str:
    """The dtype pydicom's decoders give grey stored values of this depth (as `native_frames` does)."""
    return f"<{'i' if signed else 'u'}{max(1, bits_allocated // 8)}"


def _declared_frames(value: Any) -> int:
    number = _float(value)
    return int(number) if number is not None and number >= 1 else 1
