"""What runs inside a decoding worker process: decode files into the shared block, recording progress per file.

The parent (`inference.decode_pool`) schedules `decode_files` on workers started with `init_worker`. Each file's
frames go into its slot of the parent's shared block (a plain mapping of the file under /dev/shm), and its row of
the progress table at the head of that block records when the file started and finished and where its frames
are: the parent reads it to know which file of a task is running (and so which one hung or killed the worker).
"""
from __future__ import annotations

import mmap
import os
import resource
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom_io import DicomFileError, read_dicom
from .dicom_pixels import prefer_plugins

__all__ = ["Slot", "ProgressTable", "init_worker", "decode_files", "ready", "SHM_ROOT", "ALIGN", "STARTED",
           "FINISHED", "WHERE", "IN_SLOT", "RETURNED", "REVOKED"]

SHM_ROOT = Path("/dev/shm")  # where POSIX shared memory lives on Linux (a small tmpfs in some containers)
ALIGN = 64
# the progress table: one row per job of the batch, float64 [started, finished, where]; 0 = not yet
STARTED, FINISHED, WHERE = 0, 1, 2
IN_SLOT, RETURNED, REVOKED = 1.0, 2.0, -1.0  # where: frames in the job's slot / in the task's result / not to do


@dataclass(frozen=True)
class Slot:
    """Where a worker writes a decoded file: bytes [offset, offset + nbytes) of the shared file `name`."""

    name: str
    offset: int
    shape: tuple[int, int, int]
    dtype: str


@dataclass(frozen=True)
class ProgressTable:
    """The batch's progress table: `rows` x 3 float64 at the start of the shared file `name` (see STARTED)."""

    name: str
    rows: int

    @staticmethod
    def nbytes(rows: int) -> int:
        return -(-rows * 3 * 8 // ALIGN) * ALIGN

    def view(self, buffer: mmap.mmap) -> np.ndarray:
        return np.ndarray((self.rows, 3), dtype=np.float64, buffer=buffer, offset=0)


_WORKER_MAPS: dict[str, mmap.mmap] = {}  # per worker process: the parent's block, mapped once


def init_worker(memory_mb: int, plugins: dict[str, str]) -> None:
    """Worker initializer: cap the address space, prefer the single-threaded plugins, die at once on SIGTERM.

    pebble stops a worker with SIGTERM and waits 3 s before SIGKILL; its Python handler never runs while a
    decoder loops in native code, so each hung file cost 3 s more. The default action ends the worker at once.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    prefer_plugins(plugins)


def _worker_map(name: str) -> mmap.mmap:
    # A plain mapping of the file under /dev/shm: attaching with SharedMemory(name) would register the segment
    # with a resource tracker of the worker's own, which unlinks it when the worker exits (Python < 3.13).
    # Mapped once and kept: on these VMs a page fault costs about 4 us, 0.5 ms per 512x512 slice written into
    # freshly mapped memory.
    mapping = _WORKER_MAPS.get(name)
    if mapping is None:
        for old in _WORKER_MAPS.values():
            old.close()
        _WORKER_MAPS.clear()
        fd = os.open(SHM_ROOT / name, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        _WORKER_MAPS[name] = mapping
    return mapping


def _decode_file(path: str, backends: tuple[str, ...], slot: Slot | None) -> np.ndarray | None:
    """Worker: decode every frame of one file; into the slot when it fits (returns None), else return the array.

    Raises:
        DicomFileError: the file cannot be decoded (its reason travels back to the parent).
    """
    pixels = read_dicom(path, backends=backends).pixels
    if pixels is None:
        raise DicomFileError(f"{Path(path).name}: decoded to no pixels")
    if slot is None or pixels.shape != slot.shape or pixels.dtype != np.dtype(slot.dtype):
        return np.ascontiguousarray(pixels)
    mapping = _worker_map(slot.name)
    np.ndarray(slot.shape, dtype=slot.dtype, buffer=mapping, offset=slot.offset)[...] = pixels
    return None


def decode_files(paths: Sequence[str], backends: tuple[str, ...], slots: Sequence[Slot | None],
                  table: ProgressTable | None = None, rows: Sequence[int] = ()) -> list[tuple[np.ndarray | None, str]]:
    """Worker: `_decode_file` on each file; a file's own error (not a crash) is its result: (None, reason).

    With a progress table, each file's row (`rows`) gets its start and finish times (time.monotonic, the same
    clock in every process) and where its frames are; a row the parent revoked is skipped.
    """
    progress = table.view(_worker_map(table.name)) if table is not None else None
    out: list[tuple[np.ndarray | None, str]] = []
    for k, (path, slot) in enumerate(zip(paths, slots)):
        row = rows[k] if progress is not None else -1
        if progress is not None and row >= 0:
            if progress[row, WHERE] == REVOKED:
                out.append((None, f"{Path(path).name}: revoked"))
                continue
            progress[row, STARTED] = time.monotonic()
        try:
            result: tuple[np.ndarray | None, str] = (_decode_file(path, backends, slot), "")
        except DicomFileError as exc:
            result = (None, str(exc))
        except Exception as exc:  # noqa: BLE001 - MemoryError and any other Python failure: this file only
            result = (None, f"{Path(path).name}: {type(exc).__name__}: {exc}")
        if progress is not None and row >= 0:
            progress[row, WHERE] = IN_SLOT if result[0] is None and not result[1] else RETURNED
            progress[row, FINISHED] = time.monotonic()
        out.append(result)
    return out


def ready() -> int:
    return os.getpid()
