"""Load one DICOM series folder into a canonical (slices, rows, cols) float32 Volume."""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from .dicom_io import DEFAULT_BACKENDS, DicomFileError, DicomImage, read_dicom
from .dicom_pixels import prefer_plugins
from .errors import SeriesLoadError
from .volume import SliceSource, Volume, canonical_transform

__all__ = ["load_series", "series_files", "shutdown_pool"]

LOGGER = logging.getLogger(__name__)

_AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
_DUPLICATE_MM = 1e-3  # slices closer than this along the normal share one position
_MIN_POOL_FILES = 8  # fewer compressed files than this decode faster in-process than a pool can start
# Codecs whose decoding measured faster in worker processes (pydicom's plugins hold the GIL, so threads do not
# help): JPEG 2000 (about 30 ms per 512x512 slice here) and JPEG-LS (about 4-5 ms with CharLS). Workers write the
# decoded slices into one shared-memory block, so the parent receives headers, not pixels: pickling a 512x512
# slice back cost 1.4-2.9 ms, which had eaten the whole gain for JPEG-LS. Uncompressed data (a numpy view, about
# 0.4 ms per slice) and RLE stay in-process.
_POOL_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless / near-lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossless / lossy
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
})
# GDCM, pydicom's first JPEG 2000 plugin, decodes on about two threads (19.6 ms wall, 33 ms CPU per 512x512 slice
# here): best in-process, but two such workers oversubscribe two cores. pylibjpeg-openjpeg uses one thread
# (29.8 ms), so two workers on it finish sooner.
_WORKER_PLUGINS = {"1.2.840.10008.1.2.4.90": "pylibjpeg", "1.2.840.10008.1.2.4.91": "pylibjpeg"}
_SHM_ROOT = Path("/dev/shm")  # where POSIX shared memory lives on Linux (a small tmpfs in some containers)
_SHM_HEADROOM = 1.25
_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_SHARED_BLOCK: shared_memory.SharedMemory | None = None  # parent side, kept (and its pages mapped) across series
_SHARED_LOCK = threading.RLock()  # numpy views do not pin the mapping: unmapping under one is a segfault
_WORKER_BLOCK: shared_memory.SharedMemory | None = None  # worker side: the parent's block, attached once


def series_files(folder: str | Path) -> list[Path]:
    """Every *.dcm file directly inside `folder` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm" and p.is_file())


def load_series(
    folder: str | Path,
    *,
    workers: int | None = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
) -> Volume:
    """Read every *.dcm file in a series folder and return it in canonical orientation.

    Args:
        folder: the series folder; its basename becomes `Volume.series_uid`.
        workers: processes that decode JPEG 2000 and JPEG-LS series (None: min(4, CPU count); 0 or 1:
            in-process). pydicom's decoder plugins hold the GIL, so only processes decode in parallel; the pool
            is started on first use and kept for later series (`shutdown_pool` stops it), and the decoded
            slices come back through shared memory. Other syntaxes are read in-process (measured faster).
            As with any multiprocessing program, a script that calls this keeps its actions under
            `if __name__ == "__main__":` (the workers import the script's `__main__`).
        backends: the file readers tried in turn (see `inference.dicom_io.read_dicom`).
    Returns:
        A Volume: float32 rescaled pixels (inferior->superior, anterior->posterior, right->left), spacing in mm,
        one SliceSource per stack slice, and notes on whatever was skipped.
    Raises:
        SeriesLoadError: the folder is missing or holds no usable image; the message lists each file's reason.
    Example:
        >>> volume = load_series("series/1.2.826.0.1.3680043.8.498.1")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesLoadError(f"series folder {folder} does not exist or is not a folder")
    paths = series_files(folder)
    if not paths:
        raise SeriesLoadError(f"series folder {folder} holds no *.dcm file")
    with _SHARED_LOCK:  # decoded frames may be views of the one shared block until they are copied out
        return _assemble(folder, paths, workers=_resolve_workers(workers), backends=backends)


def _assemble(folder: Path, paths: list[Path], *, workers: int, backends: Sequence[str]) -> Volume:
    """Read the files, order and orient their frames, and write the canonical float32 volume."""
    images, failures = _read_all(paths, workers=workers, backends=backends)
    dropped = [f"skipped {reason}" for _, reason in failures]
    for _, reason in failures:
        LOGGER.warning("%s: skipped %s", folder.name, reason)
    if not images:
        raise SeriesLoadError(
            f"series folder {folder}: no usable image in {len(paths)} file(s): " + "; ".join(dropped)
        )
    for image in images:
        dropped.extend(f"{Path(image.path).name}: {note}" for note in image.notes)
    frames = _FrameTable.build(images)
    keep, notes = _select_frames(frames)
    dropped.extend(notes)
    order, slice_spacing, notes = _order_frames(frames, keep, images)
    dropped.extend(notes)
    orientation = _majority_orientation(frames, order)
    if orientation is None:
        dropped.append("no ImageOrientationPatient: assumed axial [1, 0, 0, 0, 1, 0]")
        orientation = _AXIAL
    transform = canonical_transform(orientation[:3], orientation[3:])
    pixel_spacing, notes = _pixel_spacing(frames, order)
    dropped.extend(notes)
    if slice_spacing is None:
        slice_spacing, notes = _fallback_slice_spacing(images, frames, order)
        dropped.extend(notes)
    rows, cols = frames.shapes[order[0]]
    stack_shape = (len(order), rows, cols)
    pixels = _fill_canonical(images, frames, order, transform, stack_shape)
    for note in dropped:
        LOGGER.info("%s: %s", folder.name, note)
    return Volume(
        pixels=pixels,
        spacing=transform.spacing((slice_spacing, pixel_spacing[0], pixel_spacing[1])),
        modality=_modality(images, pixels, folder.name),
        series_uid=folder.name,
        sources=[
            SliceSource(images[frames.image[i]].sop_instance_uid, int(frames.frame[i]), images[frames.image[i]].path)
            for i in order
        ],
        transform=transform,
        stack_shape=stack_shape,
        dropped=dropped,
    )


# ---------------------------------------------------------------------------------------------------- reading


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        return min(4, os.cpu_count() or 1)
    return max(1, int(workers))


def _read_one(path: str, backends: Sequence[str]) -> tuple[DicomImage | None, str]:
    """Worker-safe read: (image, "") or (None, reason); never raises for a bad file."""
    try:
        return read_dicom(path, backends=backends), ""
    except Exception as exc:  # noqa: BLE001 - one bad file costs that file only
        return None, str(exc) if isinstance(exc, DicomFileError) else f"{Path(path).name}: {exc}"


def _read_all(
    paths: list[Path], *, workers: int, backends: Sequence[str]
) -> tuple[list[DicomImage], list[tuple[str, str]]]:
    """Read the first file in-process; ship the rest to the process pool only for the slow codecs."""
    images: list[DicomImage] = []
    failures: list[tuple[str, str]] = []
    names = [str(p) for p in paths]
    index = 0
    while index < len(names) and not images:  # the first readable file's transfer syntax picks the strategy
        image, reason = _read_one(names[index], backends)
        if image is None:
            failures.append((names[index], reason))
        else:
            images.append(image)
        index += 1
    rest = names[index:]
    results = None
    # never from inside a worker process: nested pools multiply processes and cannot share the one block
    in_worker = multiprocessing.parent_process() is not None
    if (images and workers > 1 and not in_worker and len(rest) >= _MIN_POOL_FILES
            and images[0].transfer_syntax in _POOL_SYNTAXES):
        results = _read_in_pool(rest, workers, backends, like=images[0])
    if results is None:
        results = [_read_one(path, backends) for path in rest]
    for path, (image, reason) in zip(rest, results):
        if image is None:
            failures.append((path, reason))
        else:
            images.append(image)
    return images, failures


@dataclass(frozen=True)
class _SharedSlots:
    """Where a worker puts a decoded single-frame file: slot `index` of a (files, rows, cols) view of the block."""

    name: str
    shape: tuple[int, int, int]
    dtype: str


def _attach_worker_block(name: str) -> shared_memory.SharedMemory:
    # Attach once and keep the mapping: on these VMs a page fault costs about 4 us, i.e. 0.5 ms per 512x512 slice
    # written into freshly mapped memory, a tenth of a JPEG-LS decode.
    global _WORKER_BLOCK
    if _WORKER_BLOCK is None or _WORKER_BLOCK.name != name:
        if _WORKER_BLOCK is not None:
            _WORKER_BLOCK.close()
        _WORKER_BLOCK = shared_memory.SharedMemory(name=name)
    return _WORKER_BLOCK


def _read_into_slot(path: str, backends: Sequence[str], slots: _SharedSlots, index: int
                    ) -> tuple[DicomImage | None, str, bool]:
    """Worker: read one file; a frame that fits the slot goes to shared memory (True), anything else is returned."""
    image, reason = _read_one(path, backends)
    if image is None or image.pixels.shape != (1, *slots.shape[1:]) or image.pixels.dtype != np.dtype(slots.dtype):
        return image, reason, False
    block = _attach_worker_block(slots.name)
    np.ndarray(slots.shape, dtype=slots.dtype, buffer=block.buf)[index] = image.pixels[0]
    image.pixels = image.pixels[:0]  # the frame travels through shared memory; the header goes back pickled
    return image, reason, True


def _shared_block(nbytes: int) -> shared_memory.SharedMemory | None:
    """The parent's block, grown to `nbytes` when needed; None when /dev/shm cannot hold it."""
    global _SHARED_BLOCK
    if _SHARED_BLOCK is not None and _SHARED_BLOCK.size >= nbytes:
        return _SHARED_BLOCK
    _release_shared_block()
    # POSIX shared memory is only reserved when written: a block larger than the tmpfs kills the worker with
    # SIGBUS halfway through. Ask first, and ship pixels the slow way when it would not fit.
    if not _shared_block_fits(nbytes):
        return None
    _SHARED_BLOCK = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
    return _SHARED_BLOCK


def _shared_block_fits(nbytes: int) -> bool:
    try:
        return _SHM_ROOT.is_dir() and shutil.disk_usage(_SHM_ROOT).free >= nbytes * _SHM_HEADROOM
    except OSError:
        return False


def _release_shared_block() -> None:
    global _SHARED_BLOCK
    if _SHARED_BLOCK is not None:
        block, _SHARED_BLOCK = _SHARED_BLOCK, None
        try:
            block.close()
        except BufferError:  # a view is still alive somewhere: unlinking alone frees the name
            pass
        block.unlink()


def _read_in_pool(
    paths: list[str], workers: int, backends: Sequence[str], *, like: DicomImage
) -> list[tuple[DicomImage | None, str]] | None:
    """Decode in worker processes; None when the pool cannot run (the caller then reads in-process).

    When the first file is a single frame, every file that decodes to a frame of its shape and dtype comes back
    as a view of one shared-memory block (valid until the next pooled read; callers hold `_SHARED_LOCK`); others
    (multi-frame, another size) come back pickled.
    """
    try:
        pool = _get_pool(workers)
        chunk = max(1, min(8, len(paths) // (4 * workers)))
        shape = (len(paths), *like.pixels.shape[1:])
        nbytes = int(np.prod(shape)) * like.pixels.dtype.itemsize
        block = _shared_block(nbytes) if like.num_frames == 1 else None
        if block is None:
            return list(pool.map(_read_one, paths, [tuple(backends)] * len(paths), chunksize=chunk))
        slots = _SharedSlots(block.name, shape, like.pixels.dtype.str)
        results = list(pool.map(_read_into_slot, paths, [tuple(backends)] * len(paths), [slots] * len(paths),
                                range(len(paths)), chunksize=chunk))
        stack = np.ndarray(shape, dtype=like.pixels.dtype, buffer=block.buf)
        for index, (image, _, in_slot) in enumerate(results):
            if in_slot:
                image.pixels = stack[index:index + 1]
        return [(image, reason) for image, reason, _ in results]
    except (BrokenProcessPool, OSError, RuntimeError) as exc:
        LOGGER.warning("decoding pool failed (%s); decoding in-process", exc)
        shutdown_pool()
        return None


def _get_pool(workers: int) -> ProcessPoolExecutor:
    """The decoding pool, started on first use and kept for later series."""
    global _POOL, _POOL_WORKERS
    if _POOL is None or _POOL_WORKERS != workers:
        shutdown_pool()
        # forkserver, not fork: on Kaggle this process runs gRPC, onnxruntime and preparation threads, and a
        # forked child inherits any lock they hold at that instant; a deadlocked worker would hang predict
        # past the 30-minute limit and fail the whole submission. Workers fork from a clean single-threaded
        # server that preloads this module; each still imports the caller's __main__ (hence the __main__ guard
        # that load_series asks of scripts).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _POOL = ProcessPoolExecutor(workers, mp_context=context, initializer=prefer_plugins,
                                    initargs=(_WORKER_PLUGINS,))
        _POOL_WORKERS = workers
    return _POOL


@atexit.register  # a block left in /dev/shm would hold its memory after we exit
def shutdown_pool() -> None:
    """Stop the decoding worker processes and free their shared block (else both live until the interpreter exits)."""
    global _POOL, _POOL_WORKERS
    with _SHARED_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL, _POOL_WORKERS = None, 0
        _release_shared_block()


# ------------------------------------------------------------------------------------------------ frame table


@dataclass
class _FrameTable:
    """One row per frame of every image read: which image/frame, its size, position, orientation, rescale."""

    image: np.ndarray  # (N,) index into the images list
    frame: np.ndarray  # (N,) frame inside that image
    shapes: list[tuple[int, int]]
    positions: np.ndarray  # (N, 3)
    orientations: np.ndarray  # (N, 6)
    slopes: np.ndarray
    intercepts: np.ndarray
    spacing: np.ndarray  # (N, 2)
    instance: np.ndarray  # (N,) InstanceNumber, inf when missing
    name: list[str]

    @classmethod
    def build(cls, images: list[DicomImage]) -> _FrameTable:
        counts = [im.num_frames for im in images]
        return cls(
            image=np.repeat(np.arange(len(images)), counts),
            frame=np.concatenate([np.arange(c) for c in counts]),
            shapes=[tuple(im.pixels.shape[1:3]) for im in images for _ in range(im.num_frames)],
            positions=np.concatenate([im.positions for im in images]),
            orientations=np.concatenate([im.orientations for im in images]),
            slopes=np.concatenate([im.slopes for im in images]),
            intercepts=np.concatenate([im.intercepts for im in images]),
            spacing=np.concatenate([im.pixel_spacing for im in images]),
            instance=np.repeat(
                [np.inf if im.instance_number is None else float(im.instance_number) for im in images], counts
            ),
            name=[Path(im.path).name for im in images for _ in range(im.num_frames)],
        )


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _select_frames(frames: _FrameTable) -> tuple[np.ndarray, list[str]]:
    """Keep the majority image size, then the majority orientation; say what was left out."""
    notes: list[str] = []
    sizes = Counter(frames.shapes)
    size = max(sizes, key=lambda s: (sizes[s], s[0] * s[1]))
    keep = np.array([s == size for s in frames.shapes])
    if len(sizes) > 1:
        other = ", ".join(f"{n} of {r}x{c}" for (r, c), n in sizes.items() if (r, c) != size)
        notes.append(f"kept {int(keep.sum())} frames of the majority size {size[0]}x{size[1]}; dropped {other}")
    known = keep & np.isfinite(frames.orientations).all(axis=1)
    if known.any():
        rounded = [tuple(np.round(o, 2)) for o in frames.orientations[known]]
        majority = np.array(Counter(rounded).most_common(1)[0][0])
        close = np.abs(frames.orientations - majority).max(axis=1) < 0.02
        same = keep & close
        if (keep & ~same).any():
            notes.append(f"dropped {int((keep & ~same).sum())} frames with another orientation (scout/localizer)")
        keep = same
    return np.flatnonzero(keep), notes


def _order_frames(
    frames: _FrameTable, keep: np.ndarray, images: list[DicomImage]
) -> tuple[np.ndarray, float | None, list[str]]:
    """Sort along the slice normal (fallback InstanceNumber, file name, frame); drop duplicate positions.

    Returns the sorted frame indices, the median slice spacing from positions (None when positions are
    unusable) and notes.
    """
    notes: list[str] = []
    names = np.array([frames.name[i] for i in keep])
    tie = np.lexsort((frames.frame[keep], names, frames.instance[keep]))  # InstanceNumber, name, frame
    fallback = keep[tie]
    positions = frames.positions[fallback]
    orientation = frames.orientations[fallback[0]]
    if len(fallback) == 1:
        return fallback, None, notes
    if not (np.isfinite(positions).all() and np.isfinite(orientation).all()):
        notes.append("slices ordered by InstanceNumber, then file name (ImagePositionPatient missing)")
        return fallback, None, notes
    distance = positions @ _normal(orientation)
    by_distance = np.argsort(distance, kind="stable")  # ties keep the InstanceNumber order
    order = fallback[by_distance]
    sorted_distance = distance[by_distance]
    first = np.concatenate([[True], np.diff(sorted_distance) > _DUPLICATE_MM])
    if not first.all():
        n_dup = int((~first).sum())
        notes.append(f"dropped {n_dup} frames at duplicate positions (kept the lowest InstanceNumber)")
        order = order[first]
        sorted_distance = sorted_distance[first]
    if len(order) < 2:
        return order, None, notes
    return order, float(np.median(np.diff(sorted_distance))), notes


def _majority_orientation(frames: _FrameTable, order: np.ndarray) -> np.ndarray | None:
    known = [frames.orientations[i] for i in order if np.isfinite(frames.orientations[i]).all()]
    return known[0] if known else None


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
