"""Fast scan of a little-endian DICOM header: the loader's tags and where the (native or encapsulated) pixels lie."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from pydicom import uid

__all__ = ["ScannedHeader", "scan_header"]

_NATIVE_LE = (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian)  # every encapsulated syntax is explicit VR LE
_NOT_SCANNED = {uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian}

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_PIXEL_DATA = 0x7FE00010
_FUNCTIONAL_GROUPS = {0x52009229, 0x52009230}  # Shared / PerFrame functional groups: left to pydicom
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

# tag -> (keyword, kind): "us" unsigned short, "str" text, "num" backslash-separated numbers
_WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080060: ("Modality", "str"),
    0x00180050: ("SliceThickness", "num"),
    0x00180088: ("SpacingBetweenSlices", "num"),
    0x0020000D: ("StudyInstanceUID", "str"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00200013: ("InstanceNumber", "num"),
    0x00200032: ("ImagePositionPatient", "num"),
    0x00200037: ("ImageOrientationPatient", "num"),
    0x00200052: ("FrameOfReferenceUID", "str"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280008: ("NumberOfFrames", "num"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280030: ("PixelSpacing", "num"),
    0x00280100: ("BitsAllocated", "us"),
    0x00280101: ("BitsStored", "us"),
    0x00280103: ("PixelRepresentation", "us"),
    0x00281052: ("RescaleIntercept", "num"),
    0x00281053: ("RescaleSlope", "num"),
}
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


@dataclass
class ScannedHeader:
    """What `scan_header` found: the transfer syntax, the wanted values and the pixel data's byte range."""

    transfer_syntax: str
    values: dict[str, Any] = field(default_factory=dict)
    pixel_offset: int = -1
    pixel_length: int = 0  # bytes declared (may run past the end of a truncated file); -1: encapsulated


def scan_header(buffer: Any) -> ScannedHeader | None:
    """Scan a Part 10 little-endian file (native or encapsulated pixel data) without building a dataset.

    Args:
        buffer: the whole file (bytes, memoryview or mmap).
    Returns:
        The header, or None when the file is anything else (no preamble, another syntax, functional groups,
        a malformed element): the caller then reads it with pydicom, which also words the error.
    """
    try:
        return _scan(buffer)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError):
        return None


def _scan(buf: Any) -> ScannedHeader | None:
    size = len(buf)
    if size < 144 or buf[128:132] != b"DICM":
        return None
    pos, meta_end, ts = 132, None, None
    while pos + 8 <= size:  # file meta: always explicit VR little endian
        group, elem = _TAG.unpack_from(buf, pos)
        if group != 0x0002:
            break
        value_pos, length = _explicit_length(buf, pos)
        if length == _UNDEFINED:
            return None
        if elem == 0x0000:
            meta_end = value_pos + length + _U32.unpack_from(buf, value_pos)[0]
        elif elem == 0x0010:
            ts = bytes(buf[value_pos:value_pos + length]).decode("ascii").strip(" \0")
        pos = value_pos + length
    if meta_end is not None and meta_end != pos:
        return None
    if not ts or ts in _NOT_SCANNED:
        return None
    explicit = ts != uid.ImplicitVRLittleEndian
    header = ScannedHeader(transfer_syntax=ts)
    while pos + 8 <= size:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        value_pos, length = _explicit_length(buf, pos) if explicit else (pos + 8, _U32.unpack_from(buf, pos + 4)[0])
        if tag in _FUNCTIONAL_GROUPS:
            return None
        if tag == _PIXEL_DATA:
            encapsulated = length == _UNDEFINED
            if encapsulated == (ts in _NATIVE_LE):
                return None  # native data must have a length, encapsulated data must not
            if encapsulated and not _complete_items(buf, value_pos):
                return None  # truncated encapsulated data: pydicom words the error
            header.pixel_offset, header.pixel_length = value_pos, -1 if encapsulated else length
            return header
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, value_pos, explicit)
            continue
        if value_pos + length > size:
            return None
        wanted = _WANTED.get(tag)
        if wanted is not None:
            header.values[wanted[0]] = _decode(buf[value_pos:value_pos + length], wanted[1])
        pos = value_pos + length
    return None  # no pixel data


def _explicit_length(buf: Any, pos: int) -> tuple[int, int]:
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return pos + 12, _U32.unpack_from(buf, pos + 8)[0]
    if not vr.isalpha():
        raise ValueError("not an explicit VR")
    return pos + 8, _U16.unpack_from(buf, pos + 6)[0]


def _item_header(buf: Any, pos: int) -> tuple[int, int]:
    """(tag, length) of the item or delimiter header at `pos` (always implicit little endian)."""
    group, elem = _TAG.unpack_from(buf, pos)
    return (group << 16) | elem, _U32.unpack_from(buf, pos + 4)[0]


def _complete_items(buf: Any, pos: int) -> bool:
    """Whether encapsulated pixel data starting at `pos` is whole: defined-length items, then the delimiter."""
    size = len(buf)
    while pos + 8 <= size:
        tag, length = _item_header(buf, pos)
        if tag == _SEQUENCE_END:
            return True
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > size:
            return False
        pos += 8 + length
    return False


def _skip_sequence(buf: Any, pos: int, explicit: bool) -> int:
    """Position after the sequence delimiter of an undefined-length sequence whose items start at `pos`."""
    size = len(buf)
    while pos + 8 <= size:
        tag, length = _item_header(buf, pos)
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise ValueError("expected a sequence item")
        pos = pos + 8 + length if length != _UNDEFINED else _skip_item(buf, pos + 8, explicit)
    raise ValueError("sequence runs past the end of the file")


def _skip_item(buf: Any, pos: int, explicit: bool) -> int:
    """Position after the item delimiter of an undefined-length item whose elements start at `pos`."""
    size = len(buf)
    while pos + 8 <= size:
        group, elem = _TAG.unpack_from(buf, pos)
        if ((group << 16) | elem) == _ITEM_END:
            return pos + 8
        value_pos, length = _explicit_length(buf, pos) if explicit else (pos + 8, _U32.unpack_from(buf, pos + 4)[0])
        pos = _skip_sequence(buf, value_pos, explicit) if length == _UNDEFINED else value_pos + length
    raise ValueError("item runs past the end of the file")


def _decode(raw: Any, kind: str) -> Any:
    if kind == "us":
        return _U16.unpack_from(raw, 0)[0] if len(raw) >= 2 else None
    text = bytes(raw).decode("ascii").strip(" \0")
    if kind == "str":
        return text or None
    numbers = [float(part) for part in text.split("\\") if part.strip(" \0")]
    if not numbers:
        return None
    return numbers[0] if len(numbers) == 1 else numbers
