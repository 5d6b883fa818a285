"""Load one DICOM series folder into a canonical (slices, rows, cols) float32 Volume, filled as its files decode."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode_pool import DecodeJob, DecodePool, pool_missing_reason, shared_pool
from .dicom_io import DEFAULT_BACKENDS, DicomFileError, DicomImage, read_dicom
from .errors import SeriesLoadError
from .fill import ProgressiveFill
from .stack import FrameTable, Stack, choose_stack, fallback_slice_spacing, pixel_spacing
from .volume import SliceSource, Volume, canonical_transform

__all__ = ["load_series", "stream_series", "SeriesStream", "SeriesRestacked", "plan_series", "SeriesPlan",
           "series_files"]

LOGGER = logging.getLogger(__name__)

_AXIAL = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


First = Iterable[int] | Callable[[Volume], Iterable[int]]  # slices to fill first, or a function of the skeleton
# once the `first` slices are in: the canonical slices still worth decoding (None: all of them)
Narrow = Callable[[Volume], Iterable[int] | None]


class SeriesRestacked(SeriesLoadError):
    """A file of the stack was lost while it streamed in: the volume was rebuilt from the files that did load."""


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
    stream = SeriesStream(plan_series(folder, backends=backends), pool=pool, in_process=in_process,
                          backends=backends, deadline=deadline)
    stream.run()
    return stream.result()


def stream_series(folder: str | Path, *, pool: DecodePool | None = None, in_process: bool = False,
                  backends: Sequence[str] = DEFAULT_BACKENDS, deadline: float | None = None,
                  first: First = (), narrow: Narrow | None = None) -> SeriesStream:
    """Start loading a series in a background thread; its volume fills while the caller works on the first slices.

    The headers are read before this returns (so the volume's shape, spacing and sources are known); the frames are
    then read or decoded in canonical slice order, `first` (canonical slice indices, or a function of the volume
    still to fill: its shape and modality are known) before the rest; `stream.first` lists them. With `narrow`,
    the compressed files of the rest are decoded only where `narrow(volume)` (called in the loading thread once
    the `first` slices are in) asks for their slices: `stream.skipped` lists the canonical slices left unfilled.

    Raises:
        SeriesLoadError: the folder is missing, unreadable or holds no usable image.
    """
    stream = SeriesStream(plan_series(folder, backends=backends), pool=pool, in_process=in_process,
                          backends=backends, deadline=deadline, first=first, narrow=narrow)
    return stream.start()


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
    stack: Stack


def plan_series(folder: str | Path, *, backends: Sequence[str] = DEFAULT_BACKENDS) -> SeriesPlan:
    """Read every file's header and choose the image stack, as `load_series` does before decoding anything.

    Raises:
        SeriesLoadError: the folder is missing, unreadable or holds no *.dcm file.
    """
    folder = Path(folder)
    paths = series_files(folder)
    if not paths:
        raise SeriesLoadError(f"series folder {folder} holds no *.dcm file")
    images: list[DicomImage] = []
    failures: list[tuple[str, str]] = []
    for path in paths:
        try:
            images.append(read_dicom(path, backends=backends, decode=False))
        except Exception as exc:  # noqa: BLE001 - one bad file costs that file only
            failures.append((str(path), str(exc) if isinstance(exc, DicomFileError) else
                             f"{path.name}: {type(exc).__name__}: {exc}"))
    return SeriesPlan(folder=folder, files=len(paths), images=images, failures=failures,
                      stack=choose_stack(images, series_uid=folder.name))


# ----------------------------------------------------------------------------------------------- the stream


class SeriesStream:
    """A series' canonical volume, filled frame by frame as its files are read or decoded.

    `volume` has its final shape, spacing and sources from the start. `wait(n)` returns once canonical slices
    [0, n) hold their pixels (for stacks acquired along the canonical slice axis; other planes become ready all
    at once). When a file of the stack is lost on the way, `wait` raises SeriesRestacked and `result()` gives the
    volume rebuilt from the files that did load, exactly as if they had been the only ones.

    `narrow` (a stack acquired along the canonical slice axis only): once the `first` slices are in, the compressed
    files of the other slices are decoded only where `narrow(volume)` asks for them; the others stay zero and are
    listed in `skipped` (the volume is then not the whole series: `partial`). A file lost on the way, or a `narrow`
    that raises, cancels the narrowing (every file is decoded, as without it).
    """

    def __init__(self, plan: SeriesPlan, *, pool: DecodePool | None = None, in_process: bool = False,
                 backends: Sequence[str] = DEFAULT_BACKENDS, deadline: float | None = None,
                 first: First = (), narrow: Narrow | None = None) -> None:
        if not in_process and pool_missing_reason():
            LOGGER.warning("!!! compressed files are decoded in-process, without isolation: %s !!!",
                           pool_missing_reason())
            in_process = True
        if not plan.images:
            reasons = "; ".join(f"skipped {reason}" for _, reason in plan.failures)
            raise SeriesLoadError(f"series folder {plan.folder}: no usable image in {plan.files} file(s): {reasons}")
        self.plan = plan
        self.pool = None if in_process else pool
        self.in_process = in_process
        self.backends = tuple(backends)
        self.deadline = deadline
        self.volume, self._canonical_of = _skeleton(plan.folder, plan.images, plan.stack)
        self.first = [int(c) for c in (first(self.volume) if callable(first) else first)]
        # canonical slice c is stack slice k (or n-1-k) only for stacks acquired along the canonical slice axis;
        # an unknown modality is guessed from the whole volume: neither streams before it is complete
        self.streamable = self.volume.transform.axes[0] == 0 and bool(self.volume.modality)
        self._filled = np.zeros(len(plan.stack.order), dtype=bool)
        self._lost = False
        self.narrow = narrow if self.streamable else None
        self.narrowed = False  # whether `narrow` was asked (and answered without raising)
        self.skipped: list[int] = []  # canonical slices left unfilled because `narrow` did not want them
        self._progress = ProgressiveFill(f"load-{plan.folder.name[-12:]}")

    @property
    def seconds(self) -> float:
        """How long filling took, once done."""
        return self._progress.seconds

    # --- consumer side --------------------------------------------------------------------------------------
    def start(self) -> SeriesStream:
        """Fill the volume in a daemon thread."""
        self._progress.start(self._work)
        return self

    def wait(self, count: int) -> None:
        """Block until canonical slices [0, count) are filled.

        Raises:
            SeriesRestacked: a file was lost: the volume being filled is not the one `result()` gives.
            the loading error, when loading failed.
        """
        self._progress.wait_for(lambda: self._progress.ready >= count or self._lost)
        self._raise_if_lost()

    def wait_slices(self, slices: Iterable[int]) -> None:
        """Block until these canonical slices are filled (all of them, for a stack that does not stream).

        Raises:
            as `wait`.
        """
        wanted = np.asarray(list(slices), dtype=np.int64)
        stack_indices = wanted if not self.volume.transform.flips[0] else len(self._filled) - 1 - wanted
        self._progress.wait_for(lambda: self._lost or (self.streamable and bool(self._filled[stack_indices].all())))
        self._raise_if_lost()

    def _raise_if_lost(self) -> None:
        if self._lost:
            raise SeriesRestacked(f"series {self.plan.folder.name}: a file was lost while loading")

    @property
    def partial(self) -> bool:
        """Whether `narrow` left slices unfilled (zero): the volume is then not the whole series."""
        return bool(self.skipped)

    def result(self) -> Volume:
        """The complete volume (rebuilt without lost files when there were any); raises the loading error."""
        self._progress.wait_for(lambda: False)  # until the work has ended
        return self.volume

    # --- producer side --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Read and decode the frames into the volume (in this thread); the outcome goes to `result()`."""
        self._progress.run(self._work)

    def _work(self, progress: ProgressiveFill) -> None:
        self._fill()
        progress.publish(self.volume.num_slices)

    def _fill(self) -> None:
        plan, images, stack = self.plan, self.plan.images, self.plan.stack
        frames, order = stack.frames, stack.order
        position = {int(i): k for k, i in enumerate(order)}  # frame index -> stack index
        sequence = self._stack_sequence()
        needed = list(dict.fromkeys(int(frames.image[order[k]]) for k in sequence
                                    if images[int(frames.image[order[k]])].pixels is None))
        failures = list(plan.failures)
        view = self.volume.stack_view()
        for k in sequence:  # uncompressed frames are at hand: fill them first, in canonical order
            image = images[int(frames.image[order[k]])]
            if image.pixels is not None:
                self._put(k, image, frames, order, view)
        lost: list[tuple[str, str]] = []
        if self.narrow is None:
            self._decode_into(needed, lost, frames, order, position, view)
        else:
            self._decode_narrowed(needed, lost, frames, order, position, view)
        try:
            if lost:
                failures.extend(lost)
                stack = self._rebuild({path for path, _ in lost}, failures)
            for _, reason in failures:
                LOGGER.warning("%s: skipped %s", plan.folder.name, reason)
            self.volume.dropped[:0] = [f"skipped {reason}" for _, reason in failures]
            if not self.volume.modality:
                used = [images[i] for i in dict.fromkeys(stack.frames.image[stack.order].tolist())] if not lost \
                    else [im for im in images if im.pixels is not None]
                self.volume.modality = _guess_modality(used, self.volume.pixels, plan.folder.name)
            for note in self.volume.dropped:
                LOGGER.info("%s: %s", plan.folder.name, note)
        finally:
            for index in needed:  # views of the pool's shared block must not outlive its batch
                images[index].pixels = None

    def _decode_into(self, files: list[int], lost: list[tuple[str, str]], frames: FrameTable, order: np.ndarray,
                     position: dict[int, int], view: np.ndarray) -> None:
        """Decode these image indices and put their frames into the volume; a file that fails goes to `lost`."""
        images = self.plan.images
        for image_index, pixels, reason in self._decode(files):
            image = images[image_index]
            if reason:
                lost.append((image.path, reason))
                with self._progress.lock:
                    self._lost = True
                    self._progress.notify()
                continue
            image.pixels = pixels
            for frame in np.flatnonzero(frames.image == image_index):
                if int(frame) in position:
                    self._put(position[int(frame)], image, frames, order, view)

    def _decode_narrowed(self, needed: list[int], lost: list[tuple[str, str]], frames: FrameTable,
                         order: np.ndarray, position: dict[int, int], view: np.ndarray) -> None:
        """`_decode_into` in two steps: the files of the `first` slices, then those of the slices `narrow` wants
        (all of them after a loss: a rebuild needs every file); the files left out are zeroed (`_skip`). A file
        that failed is never decoded again."""
        first_files = set(self._files_of(self._first_stack_indices()))
        self._decode_into([i for i in needed if i in first_files], lost, frames, order, position, view)
        wanted = None if lost else self._ask_narrow()
        rest = [i for i in needed if i not in first_files]
        keep = set(rest) if wanted is None else set(self._files_of(wanted))
        skipped = [i for i in rest if i not in keep]
        self._decode_into([i for i in rest if i in keep], lost, frames, order, position, view)
        if lost:  # the rebuild reads every surviving file's pixels at once: decode them again in one batch (the
            # pool's shared block holds one batch's frames), the files the narrowing skipped with them
            gone = {path for path, _ in lost}
            self._decode_into([i for i in needed if self.plan.images[i].path not in gone], lost, frames, order,
                              position, view)
        elif skipped:
            self._skip(skipped, frames, order, view)

    def _first_stack_indices(self) -> list[int]:
        n = len(self._filled)
        return [int(self._canonical_of_inverse(c)) for c in self.first if 0 <= c < n]

    def _files_of(self, stack_indices: Iterable[int]) -> list[int]:
        frames, order = self.plan.stack.frames, self.plan.stack.order
        return [int(frames.image[order[k]]) for k in stack_indices if 0 <= k < len(order)]

    def _ask_narrow(self) -> list[int] | None:
        """The stack indices `narrow` wants (None: all of them, also when it raised: logged)."""
        assert self.narrow is not None
        try:
            wanted = self.narrow(self.volume)
        except Exception as exc:  # noqa: BLE001 - narrowing only saves time: without it, everything is decoded
            LOGGER.warning("%s: narrowing the decode failed (%s: %s); decoding every file", self.plan.folder.name,
                           type(exc).__name__, exc)
            return None
        self.narrowed = True
        if wanted is None:
            return None
        n = len(self._filled)
        return [self._canonical_of_inverse(int(c)) for c in wanted if 0 <= int(c) < n]

    def _skip(self, files: list[int], frames: FrameTable, order: np.ndarray, view: np.ndarray) -> None:
        """Zero the slices of the files `narrow` did not want, and say so."""
        unwanted = set(files)
        stack_indices = [k for k in range(len(order)) if int(frames.image[order[k]]) in unwanted]
        for k in stack_indices:
            view[k] = 0.0
        with self._progress.lock:
            self._filled[stack_indices] = True
        self.skipped = sorted(self._canonical_of_inverse(k) for k in stack_indices)
        self.volume.dropped.append(f"decoded {len(order) - len(stack_indices)} of {len(order)} slices: the rest "
                                   "lie outside the region")

    def _rebuild(self, gone: set[str], failures: list[tuple[str, str]]) -> Stack:
        """Rebuild the volume from the files that did load (files outside the first stack were never decoded);
        return its stack."""
        plan = self.plan
        survivors = [im for im in plan.images if im.path not in gone and im.pixels is not None]
        if not survivors:
            raise SeriesLoadError(f"series folder {plan.folder}: no usable image in {plan.files} file(s): "
                                  + "; ".join(f"skipped {reason}" for _, reason in failures))
        stack = choose_stack(survivors, series_uid=plan.folder.name)
        self.volume, _ = _skeleton(plan.folder, survivors, stack)
        _fill_all(self.volume, survivors, stack)
        return stack

    def _stack_sequence(self) -> list[int]:
        """Stack indices in the order to fill them: the `first` canonical slices, then canonical order."""
        n = len(self._filled)
        canonical_to_stack = np.empty(n, dtype=np.int64)
        canonical_to_stack[self._canonical_of] = np.arange(n)
        firsts = [int(canonical_to_stack[c]) for c in self.first if 0 <= c < n]
        return list(dict.fromkeys(firsts + canonical_to_stack.tolist()))

    def _put(self, k: int, image: DicomImage, frames: FrameTable, order: np.ndarray, view: np.ndarray) -> None:
        i = order[k]
        if image.pixels is None:
            raise SeriesLoadError(f"{Path(image.path).name}: no pixels to put into slice {k}")
        _rescale_into(image.pixels[frames.frame[i]], frames.slopes[i], frames.intercepts[i], view[k])
        with self._progress.lock:
            self._filled[k] = True
            if self.streamable:
                ready = self._progress.ready
                while ready < len(self._filled) and self._filled[self._canonical_of_inverse(ready)]:
                    ready += 1
                self._progress.publish(ready)

    def _canonical_of_inverse(self, c: int) -> int:
        n = len(self._filled)
        return n - 1 - c if self.volume.transform.flips[0] else c

    def _decode(self, needed: list[int]) -> Iterator[tuple[int, np.ndarray | None, str]]:
        """(image index, pixels, '') or (image index, None, reason) per needed image, as they complete."""
        images = self.plan.images
        if not needed:
            return
        if self.pool is None and self.in_process:
            for index in needed:
                image = images[index]
                if self.deadline is not None and time.monotonic() > self.deadline:
                    yield index, None, f"{Path(image.path).name}: not decoded before the call's deadline"
                    continue
                try:
                    yield index, _checked(image, read_dicom(image.path, backends=self.backends).pixels), ""
                except Exception as exc:  # noqa: BLE001 - one bad file costs that file only
                    yield index, None, str(exc)
            return
        pool = self.pool or shared_pool()
        jobs = [DecodeJob(images[i].path, images[i].num_frames, images[i].rows, images[i].cols,
                          images[i].pixel_dtype) for i in needed]
        with pool.decode(jobs, deadline=self.deadline) as batch:
            for k, result in batch:
                if result.error:
                    yield needed[k], None, result.error
                    continue
                try:
                    yield needed[k], _checked(images[needed[k]], result.pixels), ""
                except SeriesLoadError as exc:
                    yield needed[k], None, str(exc)


def _checked(image: DicomImage, pixels: np.ndarray | None) -> np.ndarray:
    """Decoded frames, when they are what the header announced."""
    expected = (image.num_frames, image.rows, image.cols)
    if pixels is None or pixels.shape != expected:
        got = None if pixels is None else pixels.shape
        raise SeriesLoadError(f"{Path(image.path).name}: decoded to shape {got}, its header says {expected}")
    return pixels


# ---------------------------------------------------------------------------------------------------- pixels


def _skeleton(folder: Path, images: list[DicomImage], stack: Stack) -> tuple[Volume, np.ndarray]:
    """The volume of this stack with its pixels still to fill, and each stack index's canonical slice."""
    frames, order = stack.frames, stack.order
    dropped = [f"{Path(image.path).name}: {note}" for image in images for note in image.notes] + list(stack.notes)
    orientation = stack.orientation
    if orientation is None:
        dropped.append("no usable ImageOrientationPatient: assumed axial [1, 0, 0, 0, 1, 0]")
        orientation = _AXIAL
    transform = canonical_transform(orientation[:3], orientation[3:])
    spacing, notes = pixel_spacing(frames, order)
    dropped.extend(notes)
    slice_spacing = stack.slice_spacing
    if slice_spacing is None:
        slice_spacing, notes = fallback_slice_spacing(images, frames, order)
        dropped.extend(notes)
    rows, cols = frames.shapes[order[0]]
    stack_shape = (len(order), rows, cols)
    canonical_shape = tuple(stack_shape[a] for a in transform.axes)
    used = [images[i] for i in dict.fromkeys(frames.image[order].tolist())]
    volume = Volume(
        pixels=np.empty(canonical_shape, dtype=np.float32),
        spacing=transform.spacing((slice_spacing, spacing[0], spacing[1])),
        modality=_tagged_modality(used),
        series_uid=folder.name,
        sources=[SliceSource(images[frames.image[i]].sop_instance_uid, int(frames.frame[i]),
                             images[frames.image[i]].path) for i in order],
        transform=transform,
        stack_shape=stack_shape,
        dropped=dropped,
    )
    n = len(order)
    canonical_of = np.arange(n)[::-1] if transform.flips[0] else np.arange(n)
    return volume, canonical_of


def _fill_all(volume: Volume, images: list[DicomImage], stack: Stack) -> None:
    view = volume.stack_view()
    frames = stack.frames
    for k, i in enumerate(stack.order):
        _rescale_into(images[frames.image[i]].pixels[frames.frame[i]], frames.slopes[i], frames.intercepts[i], view[k])


def _rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """out = stored * slope + intercept (pydicom's apply_modality_lut), in float32, while the slice is in cache."""
    out[...] = stored  # a plain converting copy beats a mixed-type ufunc with casting
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def _tagged_modality(images: list[DicomImage]) -> str:
    """CT or MR when the files' Modality tag says so; '' otherwise (guessed from the pixels once loaded)."""
    tags = Counter(im.modality for im in images if im.modality)
    tag = tags.most_common(1)[0][0] if tags else ""
    return tag if tag in ("CT", "MR") else ""


def _guess_modality(images: list[DicomImage], pixels: np.ndarray, series: str) -> str:
    tags = Counter(im.modality for im in images if im.modality)
    tag = tags.most_common(1)[0][0] if tags else ""
    # Hounsfield data: an air-level intercept or air-level voxels; MR intensities are never far below zero
    lowest = min(float(np.nanmin(im.intercepts, initial=0.0)) for im in images)  # NaN: not given by the file
    hounsfield = lowest <= -500 or float(pixels.min()) < -500
    guess = "CT" if hounsfield else "MR"
    LOGGER.warning("%s: Modality %r is neither CT nor MR; guessed %s from the intensities", series, tag, guess)
    return guess
