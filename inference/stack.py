"""Choose and order a series' image stack from its headers: which frames make the volume, and in which order."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid

from .dicom_io import DicomImage
from .errors import SeriesLoadError
from .memory import format_bytes, memory_left

__all__ = ["FrameTable", "Stack", "choose_stack", "pixel_spacing", "fallback_slice_spacing", "MIN_IMAGE_SIDE"]

_DUPLICATE_MM = 1e-3  # slices closer than this along the normal share one position
_STACK_CHECK_FROM = 256 << 20  # stacks needing less than this never ask how much memory is left
MIN_IMAGE_SIDE = 64  # frames smaller than this (dose grids, thumbnails) never outvote the image stack
_IMAGE_MODALITIES = frozenset({"CT", "MR", ""})  # the competition's test files say CT or MR; "" when stripped
_IMAGE_SOP_CLASSES = frozenset({
    uid.CTImageStorage, uid.EnhancedCTImageStorage, uid.LegacyConvertedEnhancedCTImageStorage,
    uid.MRImageStorage, uid.EnhancedMRImageStorage, uid.LegacyConvertedEnhancedMRImageStorage,
    uid.EnhancedMRColorImageStorage, "",  # "": the tag was stripped
})


@dataclass
class FrameTable:
    """One row per frame of every image read: which image/frame, its size, position, orientation, rescale."""

    image: np.ndarray  # (N,) index into the images list
    frame: np.ndarray  # (N,) frame inside that image
    shapes: list[tuple[int, int]]
    positions: np.ndarray  # (N, 3)
    orientations: np.ndarray  # (N, 6), NaN where missing or unusable
    slopes: np.ndarray  # NaN where the file gives none, until choose_stack fills them
    intercepts: np.ndarray
    spacing: np.ndarray  # (N, 2)
    instance: np.ndarray  # (N,) InstanceNumber, inf when missing
    name: list[str]
    image_object: np.ndarray  # (N,) bool: a CT/MR image SOP class and modality (not a dose grid, not a report)
    series: np.ndarray  # (N,) str SeriesInstanceUID ("" when missing)
    frame_of_reference: np.ndarray  # (N,) str FrameOfReferenceUID ("" when missing)

    @classmethod
    def build(cls, images: list[DicomImage]) -> FrameTable:
        counts = [im.num_frames for im in images]
        empty = not images
        return cls(
            image=np.repeat(np.arange(len(images)), counts).astype(np.int64),
            frame=np.zeros(0, np.int64) if empty else np.concatenate([np.arange(c) for c in counts]),
            shapes=[(im.rows, im.cols) for im in images for _ in range(im.num_frames)],
            positions=np.zeros((0, 3)) if empty else np.concatenate([im.positions for im in images]),
            orientations=np.zeros((0, 6)) if empty else _usable_orientations(
                np.concatenate([im.orientations for im in images])),
            slopes=np.zeros(0) if empty else np.concatenate([im.slopes for im in images]),
            intercepts=np.zeros(0) if empty else np.concatenate([im.intercepts for im in images]),
            spacing=np.zeros((0, 2)) if empty else np.concatenate([im.pixel_spacing for im in images]),
            instance=np.repeat(
                [np.inf if im.instance_number is None else float(im.instance_number) for im in images], counts
            ),
            name=[Path(im.path).name for im in images for _ in range(im.num_frames)],
            image_object=np.repeat([_is_image_object(im) for im in images], counts).astype(bool),
            series=np.repeat(np.array([im.series_instance_uid for im in images], dtype=object), counts),
            frame_of_reference=np.repeat(np.array([im.frame_of_reference_uid for im in images], dtype=object),
                                         counts),
        )


def _is_image_object(image: DicomImage) -> bool:
    return image.sop_class_uid in _IMAGE_SOP_CLASSES and image.modality in _IMAGE_MODALITIES


def _usable_orientations(orientations: np.ndarray) -> np.ndarray:
    """NaN for orientations that cannot place a slice: zero, non-unit or parallel row and column vectors."""
    out = np.array(orientations, dtype=np.float64)
    rows, cols = out[:, :3], out[:, 3:]
    with np.errstate(invalid="ignore"):
        unit = (np.abs(np.linalg.norm(rows, axis=1) - 1) < 0.1) & (np.abs(np.linalg.norm(cols, axis=1) - 1) < 0.1)
        orthogonal = np.abs((rows * cols).sum(axis=1)) < 0.1
    out[~(np.isfinite(out).all(axis=1) & unit & orthogonal)] = np.nan
    return out


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


@dataclass
class Stack:
    """The frames chosen for the volume, in slice order, and what was learnt choosing them."""

    frames: FrameTable
    order: np.ndarray  # frame indices, sorted along the slice normal
    orientation: np.ndarray | None  # the stack's ImageOrientationPatient, None when no frame has a usable one
    slice_spacing: float | None  # from positions; None when they cannot tell
    notes: list[str]


def choose_stack(images: list[DicomImage], *, series_uid: str | None = None) -> Stack:
    """The image stack of these headers: the frames kept (see `_select_frames`), sorted (see `_order_frames`).

    Args:
        images: every readable file's header.
        series_uid: the SeriesInstanceUID the folder is named after (Kaggle names each series folder so): when
            the folder holds several series, that one wins (see `_select_frames`).
    Returns:
        The Stack; its FrameTable's slopes and intercepts are filled (see `_fill_rescale`).
    Raises:
        SeriesLoadError: the stack's volume would need more memory than is left.
    """
    frames = FrameTable.build(images)
    if not images:
        return Stack(frames, np.zeros(0, np.int64), None, None, [])
    keep, notes = _select_frames(frames, series_uid=series_uid)
    order, slice_spacing, orientation, more = _order_frames(frames, keep)
    more += _fill_rescale(frames, order)
    _check_stack_memory(frames, order)
    return Stack(frames, order, orientation, slice_spacing, notes + more)


def _select_frames(frames: FrameTable, *, series_uid: str | None = None) -> tuple[np.ndarray, list[str]]:
    """CT/MR image frames first, then one series (the folder's own, else the largest), then the majority image
    size, then the majority orientation.

    Frames of non-image objects (dose grids, other SOP classes or modalities) and tiny frames are used only when
    nothing else is there. When the frames carry more than one SeriesInstanceUID (then FrameOfReferenceUID), each
    group's stack is chosen on its own (majority size, then orientation) and one group wins: the series named
    `series_uid` when it is there, else the group whose stack keeps the most frames; frames without the tag join
    every group. A frame without a usable orientation stays when its size fits the stack (it is placed by its
    position along the stack's normal).
    """
    notes: list[str] = []
    large = np.array([min(shape) >= MIN_IMAGE_SIDE for shape in frames.shapes], dtype=bool)
    # the first non-empty tier wins: CT/MR image objects of a plausible size, any CT/MR image object, any frame
    # of a plausible size, every frame
    for keep in (frames.image_object & large, frames.image_object, large, np.ones_like(large)):
        if keep.any():
            break
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} frames of non-image objects (another SOP class or modality) "
                     f"or under {MIN_IMAGE_SIDE} pixels")
    groups = _identity_groups(frames, keep)
    if len(groups) == 1:
        chosen, more = _select_in_group(frames, keep)
        return chosen, notes + more
    picks = [(label, mask, *_select_in_group(frames, mask)) for label, mask in groups]
    named = [series_uid is not None and bool(series_uid) and label[0] == series_uid for label, *_ in picks]
    best = max(range(len(picks)), key=lambda g: (named[g], len(picks[g][2]), -g))
    label, mask, chosen, more = picks[best]
    why = "the folder's own series" if named[best] else "the most frames"
    for g, (other, other_mask, other_chosen, _) in enumerate(picks):
        if g == best:
            continue
        lost = int((other_mask & ~mask).sum())
        if lost:
            level, tag = _level(other, label)
            notes.append(f"dropped {lost} frames of another {level} in the folder ({tag} {_text(other, tag)}: "
                         f"{len(other_chosen)} frames in its stack); kept {tag} {_text(label, tag)} "
                         f"({len(chosen)} frames: {why})")
    return chosen, notes + more


def _identity_groups(frames: FrameTable, keep: np.ndarray) -> list[tuple[tuple[str, str], np.ndarray]]:
    """The kept frames split by SeriesInstanceUID, then FrameOfReferenceUID: ((series, frame of reference), mask).

    A frame that lacks a tag joins every group of that level (it cannot say which it belongs to). One group
    (labelled ("", "")) when the tags do not separate anything.
    """
    groups: list[tuple[tuple[str, str], np.ndarray]] = []
    for series, series_mask in _split(frames.series, keep):
        for reference, mask in _split(frames.frame_of_reference, series_mask):
            groups.append(((series, reference), mask))
    return groups


def _split(values: np.ndarray, keep: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """`keep` split by the distinct non-empty values among its frames; empty values join every part."""
    known = sorted({str(v) for v in values[keep] if v})
    if len(known) <= 1:
        return [(known[0] if known else "", keep)]
    blank = keep & (values == "")
    return [(value, keep & ((values == value) | blank)) for value in known]


def _level(label: tuple[str, str], other: tuple[str, str]) -> tuple[str, str]:
    """The level at which two groups differ: ('series', 'SeriesInstanceUID') or the frame of reference's."""
    return ("series", "SeriesInstanceUID") if label[0] != other[0] else \
        ("frame of reference", "FrameOfReferenceUID")


def _text(label: tuple[str, str], tag: str) -> str:
    value = label[0] if tag == "SeriesInstanceUID" else label[1]
    return value or "(missing)"


def _select_in_group(frames: FrameTable, keep: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The majority image size among `keep`, then the majority orientation (see `_select_frames`)."""
    notes: list[str] = []
    sizes = Counter(s for s, k in zip(frames.shapes, keep) if k)
    size = max(sizes, key=lambda s: (sizes[s], s[0] * s[1]))
    fits = np.array([s == size for s in frames.shapes]) & keep
    if (keep & ~fits).any():
        other = ", ".join(f"{n} of {r}x{c}" for (r, c), n in sizes.items() if (r, c) != size)
        notes.append(f"kept {int(fits.sum())} frames of the majority size {size[0]}x{size[1]}; dropped {other}")
    keep = fits
    known = keep & np.isfinite(frames.orientations).all(axis=1)
    unknown = keep & ~known
    if known.any():
        rounded = [tuple(np.round(o, 2)) for o in frames.orientations[known]]
        majority = np.array(Counter(rounded).most_common(1)[0][0])
        close = known & (np.abs(frames.orientations - majority).max(axis=1) < 0.02)
        if (known & ~close).any():
            notes.append(f"dropped {int((known & ~close).sum())} frames with another orientation (scout/localizer)")
        placeable = unknown & np.isfinite(frames.positions).all(axis=1)
        if (unknown & ~placeable).any():
            notes.append(f"dropped {int((unknown & ~placeable).sum())} frames with neither a usable "
                         "ImageOrientationPatient nor ImagePositionPatient")
        if placeable.any():
            notes.append(f"{int(placeable.sum())} frames without a usable ImageOrientationPatient placed by "
                         "their position along the stack's normal")
        keep = close | placeable
    return np.flatnonzero(keep), notes


def _fill_rescale(frames: FrameTable, order: np.ndarray) -> list[str]:
    """Fill the RescaleSlope/Intercept that files do not give, in place; returns notes.

    A stack frame without one takes the majority value of the stack's frames that have it (a CT stored with
    intercept -1024 whose tag is missing on some files would otherwise come out 1024 HU too high on those
    slices); when no frame of the stack has it, 1 and 0 (pydicom's rule, the modality LUT's identity).
    """
    notes: list[str] = []
    for values, name, default in ((frames.slopes, "RescaleSlope", 1.0), (frames.intercepts, "RescaleIntercept", 0.0)):
        chosen = values[order]
        missing = ~np.isfinite(chosen)
        if missing.any() and not missing.all():
            given, counts = np.unique(chosen[~missing], return_counts=True)
            value = float(given[np.argmax(counts)])
            values[order[missing]] = value
            notes.append(f"{name} missing on {int(missing.sum())} of {len(order)} frames: took the value "
                         f"{value:g} of {int(counts.max())} of the stack's {int((~missing).sum())} frames that "
                         "give one")
        values[~np.isfinite(values)] = default
    return notes


def _check_stack_memory(frames: FrameTable, order: np.ndarray) -> None:
    """Refuse a stack whose float32 volume (plus the decoded stored values) would not fit in the memory left."""
    if not len(order):
        return
    rows, cols = frames.shapes[order[0]]
    needed = float(len(order)) * rows * cols * 6  # float32 volume + 16-bit stored values while it fills
    if needed < _STACK_CHECK_FROM:
        return
    left = memory_left()
    if left is not None and needed > left:
        raise SeriesLoadError(f"the image stack ({len(order)} frames of {rows} x {cols}) needs "
                              f"{format_bytes(needed)}, more than the {format_bytes(left)} of memory left: refused "
                              "before decoding")


def _order_frames(frames: FrameTable, keep: np.ndarray
                  ) -> tuple[np.ndarray, float | None, np.ndarray | None, list[str]]:
    """Sort along the slice normal (fallback InstanceNumber, file name, frame); drop duplicate positions.

    Positions that do not separate the slices (all equal, or more than half the frames sharing positions)
    are not trusted: the frames keep the InstanceNumber order and none is dropped.

    Returns the sorted frame indices, the median slice spacing from positions (None when positions are
    unusable), the stack's orientation (None when unknown) and notes.
    """
    notes: list[str] = []
    names = np.array([frames.name[i] for i in keep])
    tie = np.lexsort((frames.frame[keep], names, frames.instance[keep]))  # InstanceNumber, name, frame
    fallback = keep[tie]
    known = [i for i in fallback if np.isfinite(frames.orientations[i]).all()]
    orientation = _majority_orientation(frames, known)
    if len(fallback) == 1:
        return fallback, None, orientation, notes
    positions = frames.positions[fallback]
    if orientation is None or not np.isfinite(positions).all():
        notes.append("slices ordered by InstanceNumber, then file name (ImagePositionPatient or "
                     "ImageOrientationPatient missing)")
        return fallback, None, orientation, notes
    distance = positions @ _normal(orientation)
    by_distance = np.argsort(distance, kind="stable")  # ties keep the InstanceNumber order
    sorted_distance = distance[by_distance]
    first = np.concatenate([[True], np.diff(sorted_distance) > _DUPLICATE_MM])
    distinct = int(first.sum())
    if distinct < max(2, len(fallback) / 2):
        notes.append(f"ImagePositionPatient gives {distinct} distinct positions for {len(fallback)} frames: "
                     "slices ordered by InstanceNumber, then file name")
        return fallback, None, orientation, notes
    order = fallback[by_distance]
    if not first.all():
        notes.append(f"dropped {int((~first).sum())} frames at duplicate positions (kept the lowest InstanceNumber)")
        order = order[first]
        sorted_distance = sorted_distance[first]
    return order, float(np.median(np.diff(sorted_distance))), orientation, notes


def _majority_orientation(frames: FrameTable, indices: Sequence[int]) -> np.ndarray | None:
    """The most common orientation (rounded to 0.01) among these frames, as the first frame that has it."""
    if not len(indices):
        return None
    rounded = [tuple(np.round(frames.orientations[i], 2)) for i in indices]
    majority = Counter(rounded).most_common(1)[0][0]
    return frames.orientations[indices[rounded.index(majority)]]


def pixel_spacing(frames: FrameTable, order: np.ndarray) -> tuple[tuple[float, float], list[str]]:
    spacing = frames.spacing[order]
    valid = spacing[np.isfinite(spacing).all(axis=1) & (spacing > 0).all(axis=1)]
    if len(valid) == 0:
        return (1.0, 1.0), ["no PixelSpacing: assumed 1 mm"]
    row, col = np.median(valid, axis=0)
    return (float(row), float(col)), []


def fallback_slice_spacing(
    images: list[DicomImage], frames: FrameTable, order: np.ndarray
) -> tuple[float, list[str]]:
    used = [images[i] for i in dict.fromkeys(frames.image[order].tolist())]
    for attr in ("spacing_between_slices", "slice_thickness"):
        values = [getattr(im, attr) for im in used if getattr(im, attr) is not None and getattr(im, attr) > 0]
        if values:
            return float(np.median(values)), []
    return 1.0, ["no slice positions, SpacingBetweenSlices or SliceThickness: assumed 1 mm"]
