"""Load one DICOM series folder into a canonical (slices, rows, cols) float32 Volume."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid

from .decode_pool import DecodeJob, DecodePool, pool_available, shared_pool
from .dicom_io import DEFAULT_BACKENDS, DicomFileError, DicomImage, read_dicom
from .errors import SeriesLoadError
from .volume import SliceSource, Volume, canonical_transform

__all__ = ["load_series", "plan_series", "SeriesPlan", "series_files"]

LOGGER = logging.getLogger(__name__)

_AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
_DUPLICATE_MM = 1e-3  # slices closer than this along the normal share one position
_MIN_IMAGE_SIDE = 64  # frames smaller than this (dose grids, thumbnails) never outvote the image stack
_IMAGE_MODALITIES = frozenset({"CT", "MR", ""})  # the competition's test files say CT or MR; "" when stripped
_IMAGE_SOP_CLASSES = frozenset({
    uid.CTImageStorage, uid.EnhancedCTImageStorage, uid.LegacyConvertedEnhancedCTImageStorage,
    uid.MRImageStorage, uid.EnhancedMRImageStorage, uid.LegacyConvertedEnhancedMRImageStorage,
    uid.EnhancedMRColorImageStorage, "",  # "": the tag was stripped
})


def series_files(folder: str | Path) -> list[Path]:
    """Every *.dcm file directly inside `folder` (not recursive), sorted by name.

    Raises:
        SeriesLoadError: the folder does not exist or cannot be listed (permissions).
    """
    folder = Path(folder)
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    except FileNotFoundError:
        raise SeriesLoadError(f"series folder {folder} does not exist") from None
    except NotADirectoryError:
        raise SeriesLoadError(f"series folder {folder} is not a folder") from None
    except OSError as exc:  # PermissionError above all
        raise SeriesLoadError(f"series folder {folder} cannot be listed: {exc.strerror or exc}") from None


def load_series(
    folder: str | Path,
    *,
    pool: DecodePool | None = None,
    in_process: bool = False,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    deadline: float | None = None,
) -> Volume:
    """Read every *.dcm file in a series folder and return it in canonical orientation.

    Headers are read first, in this process; the frames of the image stack are chosen and ordered from them;
    then only the files that hold those frames are decoded. Uncompressed frames are numpy views of the mapped
    files. Compressed ones are decoded in `pool`'s worker processes, where a decoder that crashes, hangs or
    runs out of memory costs its file only.

    Args:
        folder: the series folder; its basename becomes `Volume.series_uid`.
        pool: the decoding pool (default: the process-wide `inference.decode_pool.shared_pool()`).
        in_process: decode compressed files in this process instead (a caller that is itself an isolated
            worker, like the trainer's cache; also the fallback when pebble or loky is missing).
        backends: the file readers tried in turn (see `inference.dicom_io.read_dicom`).
        deadline: `time.monotonic()` after which files still decoding are given up (they cost themselves).
    Returns:
        A Volume: float32 rescaled pixels (inferior->superior, anterior->posterior, right->left), spacing in mm,
        one SliceSource per stack slice, and notes on whatever was skipped.
    Raises:
        SeriesLoadError: the folder is missing or unreadable, or holds no usable image; the message lists each
            file's reason.
    Example:
        >>> volume = load_series("series/1.2.826.0.1.3680043.8.498.1")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not in_process and pool_available():
        LOGGER.warning("!!! compressed files are decoded in-process, without isolation: %s !!!", pool_available())
        in_process = True
    plan = plan_series(folder, backends=backends)
    images, failures, stack = plan.images, list(plan.failures), plan.stack
    needed = sorted({int(i) for i in stack.frames.image[stack.order] if images[int(i)].pixels is None})
    with _decoded(images, needed, pool=None if in_process else (pool or shared_pool()), backends=backends,
                  deadline=deadline) as lost:
        if lost:
            failures.extend(lost)
            gone = {path for path, _ in lost}
            # the stack of the files that did decode (files outside the first choice were never decoded)
            images = [im for im in images if im.path not in gone and im.pixels is not None]
            stack = _choose_stack(images)
        for _, reason in failures:
            LOGGER.warning("%s: skipped %s", folder.name, reason)
        dropped = [f"skipped {reason}" for _, reason in failures]
        if not images:
            raise SeriesLoadError(
                f"series folder {folder}: no usable image in {plan.files} file(s): " + "; ".join(dropped))
        return _assemble(folder, images, stack, dropped + stack.notes)


@dataclass
class SeriesPlan:
    """What loading a series would do, read from its headers alone (nothing compressed is decoded).

    Attributes:
        folder: the series folder.
        files: how many *.dcm files it holds.
        images: the header of every readable file (`pixels` set for uncompressed files only).
        failures: (path, reason) of each file that cannot be read.
        stack: the frames chosen for the volume, in slice order, and the notes on what was left out.
    """

    folder: Path
    files: int
    images: list[DicomImage]
    failures: list[tuple[str, str]]
    stack: _Stack

    @property
    def sources(self) -> list[SliceSource]:
        """The chosen frames in slice order (before the canonical transform): file, SOPInstanceUID, frame."""
        frames, images = self.stack.frames, self.images
        return [SliceSource(images[frames.image[i]].sop_instance_uid, int(frames.frame[i]),
                            images[frames.image[i]].path) for i in self.stack.order]

    @property
    def orientation(self) -> np.ndarray | None:
        """The stack's ImageOrientationPatient (row direction, column direction), None when no file has one."""
        return self.stack.orientation

    @property
    def notes(self) -> list[str]:
        """Files that cannot be read, and what choosing the stack dropped or assumed."""
        return [f"skipped {reason}" for _, reason in self.failures] + self.stack.notes


def plan_series(folder: str | Path, *, backends: Sequence[str] = DEFAULT_BACKENDS) -> SeriesPlan:
    """Read every file's header and choose the image stack, as `load_series` does before decoding anything.

    Raises:
        SeriesLoadError: the folder is missing, unreadable or holds no *.dcm file.
    """
    folder = Path(folder)
    paths = series_files(folder)
    if not paths:
        raise SeriesLoadError(f"series folder {folder} holds no *.dcm file")
    images, failures = _read_headers(paths, backends)
    return SeriesPlan(folder=folder, files=len(paths), images=images, failures=failures, stack=_choose_stack(images))


# ---------------------------------------------------------------------------------------------------- reading


def _read_headers(paths: list[Path], backends: Sequence[str]) -> tuple[list[DicomImage], list[tuple[str, str]]]:
    """Every file's header (and its uncompressed frames); a bad file costs itself: (images, [(path, reason)])."""
    images: list[DicomImage] = []
    failures: list[tuple[str, str]] = []
    for path in paths:
        try:
            images.append(read_dicom(path, backends=backends, decode=False))
        except Exception as exc:  # noqa: BLE001 - one bad file costs that file only
            failures.append((str(path), str(exc) if isinstance(exc, DicomFileError) else
                             f"{path.name}: {type(exc).__name__}: {exc}"))
    return images, failures


@contextmanager
def _decoded(images: list[DicomImage], needed: list[int], *, pool: DecodePool | None, backends: Sequence[str],
             deadline: float | None) -> Iterator[list[tuple[str, str]]]:
    """Decode the compressed images `needed` (in `pool`'s workers, or in-process when pool is None).

    Yields the files lost on the way [(path, reason)]; inside the block the images' pixels are set (views of
    the pool's shared block: valid inside the block only).
    """
    lost: list[tuple[str, str]] = []
    if not needed:
        yield lost
        return
    if pool is None:
        for i in needed:
            image = images[i]
            if deadline is not None and time.monotonic() > deadline:
                lost.append((image.path, f"{Path(image.path).name}: not decoded before the call's deadline"))
                continue
            try:
                _accept(image, read_dicom(image.path, backends=backends).pixels)
            except Exception as exc:  # noqa: BLE001 - one bad file costs that file only
                lost.append((image.path, str(exc)))
        yield lost
        return
    jobs = [DecodeJob(images[i].path, images[i].num_frames, images[i].rows, images[i].cols, images[i].pixel_dtype)
            for i in needed]
    try:
        with pool.decode(jobs, deadline=deadline) as batch:
            for k, result in batch:
                image = images[needed[k]]
                try:
                    if result.error:
                        raise SeriesLoadError(result.error)
                    _accept(image, result.pixels)
                except SeriesLoadError as exc:
                    lost.append((image.path, str(exc)))
            yield lost
    finally:
        for i in needed:  # views of the shared block must not outlive the batch
            images[i].pixels = None


def _accept(image: DicomImage, pixels: np.ndarray | None) -> None:
    """Attach decoded frames to their header, when they are what the header announced."""
    expected = (image.num_frames, image.rows, image.cols)
    if pixels is None or pixels.shape != expected:
        got = None if pixels is None else pixels.shape
        raise SeriesLoadError(f"{Path(image.path).name}: decoded to shape {got}, its header says {expected}")
    image.pixels = pixels


# ------------------------------------------------------------------------------------------------ frame table


@dataclass
class _FrameTable:
    """One row per frame of every image read: which image/frame, its size, position, orientation, rescale."""

    image: np.ndarray  # (N,) index into the images list
    frame: np.ndarray  # (N,) frame inside that image
    shapes: list[tuple[int, int]]
    positions: np.ndarray  # (N, 3)
    orientations: np.ndarray  # (N, 6), NaN where missing or unusable
    slopes: np.ndarray
    intercepts: np.ndarray
    spacing: np.ndarray  # (N, 2)
    instance: np.ndarray  # (N,) InstanceNumber, inf when missing
    name: list[str]
    image_object: np.ndarray  # (N,) bool: a CT/MR image SOP class and modality (not a dose grid, not a report)

    @classmethod
    def build(cls, images: list[DicomImage]) -> _FrameTable:
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
class _Stack:
    """The frames chosen for the volume, in slice order, and what was learnt choosing them."""

    frames: _FrameTable
    order: np.ndarray  # frame indices, sorted along the slice normal
    orientation: np.ndarray | None  # the stack's ImageOrientationPatient, None when no frame has a usable one
    slice_spacing: float | None  # from positions; None when they cannot tell
    notes: list[str]


def _choose_stack(images: list[DicomImage]) -> _Stack:
    frames = _FrameTable.build(images)
    if not images:
        return _Stack(frames, np.zeros(0, np.int64), None, None, [])
    keep, notes = _select_frames(frames)
    order, slice_spacing, orientation, more = _order_frames(frames, keep)
    return _Stack(frames, order, orientation, slice_spacing, notes + more)


def _select_frames(frames: _FrameTable) -> tuple[np.ndarray, list[str]]:
    """CT/MR image frames first, then the majority image size, then the majority orientation.

    Frames of non-image objects (dose grids, other SOP classes or modalities) and tiny frames are used only when
    nothing else is there. A frame without a usable orientation stays when its size fits the stack (it is
    placed by its position along the stack's normal).
    """
    notes: list[str] = []
    large = np.array([min(shape) >= _MIN_IMAGE_SIDE for shape in frames.shapes], dtype=bool)
    # the first non-empty tier wins: CT/MR image objects of a plausible size, any CT/MR image object, any frame
    # of a plausible size, every frame
    for keep in (frames.image_object & large, frames.image_object, large, np.ones_like(large)):
        if keep.any():
            break
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} frames of non-image objects (another SOP class or modality) "
                     f"or under {_MIN_IMAGE_SIDE} pixels")
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


def _order_frames(frames: _FrameTable, keep: np.ndarray
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


def _majority_orientation(frames: _FrameTable, indices: Sequence[int]) -> np.ndarray | None:
    """The most common orientation (rounded to 0.01) among these frames, as the first frame that has it."""
    if not len(indices):
        return None
    rounded = [tuple(np.round(frames.orientations[i], 2)) for i in indices]
    majority = Counter(rounded).most_common(1)[0][0]
    return frames.orientations[indices[rounded.index(majority)]]


def _pixel_spacing(frames: _FrameTable, order: np.ndarray) -> tuple[tuple[float, float], list[str]]:
    spacing = frames.spacing[order]
    valid = spacing[np.isfinite(spacing).all(axis=1) & (spacing > 0).all(axis=1)]
    if len(valid) == 0:
        return (1.0, 1.0), ["no PixelSpacing: assumed 1 mm"]
    row, col = np.median(valid, axis=0)
    return (float(row), float(col)), []


def _fallback_slice_spacing(
    images: list[DicomImage], frames: _FrameTable, order: np.ndarray
) -> tuple[float, list[str]]:
    used = [images[i] for i in dict.fromkeys(frames.image[order].tolist())]
    for attr in ("spacing_between_slices", "slice_thickness"):
        values = [getattr(im, attr) for im in used if getattr(im, attr) is not None and getattr(im, attr) > 0]
        if values:
            return float(np.median(values)), []
    return 1.0, ["no slice positions, SpacingBetweenSlices or SliceThickness: assumed 1 mm"]


# ---------------------------------------------------------------------------------------------------- pixels


def _assemble(folder: Path, images: list[DicomImage], stack: _Stack, dropped: list[str]) -> Volume:
    """Orient the chosen frames and write the canonical float32 volume."""
    frames, order = stack.frames, stack.order
    for image in images:
        dropped.extend(f"{Path(image.path).name}: {note}" for note in image.notes)
    orientation = stack.orientation
    if orientation is None:
        dropped.append("no usable ImageOrientationPatient: assumed axial [1, 0, 0, 0, 1, 0]")
        orientation = _AXIAL
    transform = canonical_transform(orientation[:3], orientation[3:])
    pixel_spacing, notes = _pixel_spacing(frames, order)
    dropped.extend(notes)
    slice_spacing = stack.slice_spacing
    if slice_spacing is None:
        slice_spacing, notes = _fallback_slice_spacing(images, frames, order)
        dropped.extend(notes)
    rows, cols = frames.shapes[order[0]]
    stack_shape = (len(order), rows, cols)
    pixels = _fill_canonical(images, frames, order, transform, stack_shape)
    for note in dropped:
        LOGGER.info("%s: %s", folder.name, note)
    used = [images[i] for i in dict.fromkeys(frames.image[order].tolist())]
    return Volume(
        pixels=pixels,
        spacing=transform.spacing((slice_spacing, pixel_spacing[0], pixel_spacing[1])),
        modality=_modality(used, pixels, folder.name),
        series_uid=folder.name,
        sources=[
            SliceSource(images[frames.image[i]].sop_instance_uid, int(frames.frame[i]), images[frames.image[i]].path)
            for i in order
        ],
        transform=transform,
        stack_shape=stack_shape,
        dropped=dropped,
    )


def _fill_canonical(images, frames: _FrameTable, order: np.ndarray, transform, stack_shape) -> np.ndarray:
    """Write each sorted frame straight into a C-contiguous canonical array (through a stack-shaped view)."""
    canonical_shape = tuple(stack_shape[a] for a in transform.axes)
    out = np.empty(canonical_shape, dtype=np.float32)
    flip_axes = tuple(c for c, f in enumerate(transform.flips) if f)
    stack_view = (np.flip(out, axis=flip_axes) if flip_axes else out).transpose(np.argsort(transform.axes))
    for k, i in enumerate(order):
        _rescale_into(images[frames.image[i]].pixels[frames.frame[i]], frames.slopes[i], frames.intercepts[i],
                      stack_view[k])
    return out


def _rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """out = stored * slope + intercept (pydicom's apply_modality_lut), in float32, while the slice is in cache."""
    out[...] = stored  # a plain converting copy beats a mixed-type ufunc with casting
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def _modality(images: list[DicomImage], pixels: np.ndarray, series: str) -> str:
    tags = Counter(im.modality for im in images if im.modality)
    tag = tags.most_common(1)[0][0] if tags else ""
    if tag in ("CT", "MR"):
        return tag
    # Hounsfield data: an air-level intercept or air-level voxels; MR intensities are never far below zero
    hounsfield = min(float(im.intercepts.min()) for im in images) <= -500 or float(pixels.min()) < -500
    guess = "CT" if hounsfield else "MR"
    LOGGER.warning("%s: Modality %r is neither CT nor MR; guessed %s from the intensities", series, tag, guess)
    return guess
