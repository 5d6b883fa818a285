"""Decode compressed DICOM files in isolated worker processes: a crash, a hang or a memory blow-up costs one file.

Native decoders (CharLS, OpenJPEG, GDCM, libjpeg, RLE) parse untrusted bytes and can crash the interpreter
(SIGSEGV, SIGABRT), loop forever or grow memory until the OOM killer comes. `DecodePool` owns the worker processes
that run them and the shared-memory block their frames come back through:

- every task is one file, with a timeout that grows with the file's size; a task that times out has its worker
  killed (pebble), and a worker that dies (a signal, the memory limit) costs that task only. The pool replaces
  the worker; the parent never retries the file in-process.
- each worker runs under an address-space limit (RLIMIT_AS), so a runaway allocation fails inside the worker.
- workers are started by loky's fork+exec "loky" context: nothing is forked from a parent that holds gRPC or
  onnxruntime threads (a lock held at fork time would deadlock the child), and, unlike multiprocessing's spawn
  and forkserver, a worker never imports the caller's `__main__` script (which would re-run a script without an
  `if __name__ == "__main__":` guard inside every worker).
- decoded frames travel back through one shared-memory block (pickling a 512x512 slice back cost as much as a
  JPEG-LS decode); the block is reused across series and released after an unusually large one.

Example:
    >>> with DecodePool() as pool:
    ...     with pool.decode([DecodeJob(path, frames=1, rows=512, cols=512, dtype="int16")]) as batch:
    ...         for index, result in batch:
    ...             volume[index] = result.pixels  # a view of the shared block: copy it out inside the batch
"""
from __future__ import annotations

import atexit
import logging
import mmap
import os
import resource
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
from pydicom import uid

from .dicom_io import DEFAULT_BACKENDS, DicomFileError, read_dicom
from .dicom_pixels import prefer_plugins

__all__ = ["DecodeLimits", "DecodeJob", "DecodeResult", "DecodeBatch", "DecodePool", "shared_pool",
           "pool_available", "isolated_processes", "ProcessExpired"]

LOGGER = logging.getLogger(__name__)

_SHM_ROOT = Path("/dev/shm")  # where POSIX shared memory lives on Linux (a small tmpfs in some containers)
_SHM_HEADROOM = 1.25
_ALIGN = 64
# GDCM, pydicom's first JPEG 2000 plugin, decodes on about two threads (19.6 ms wall, 33 ms CPU per 512x512 slice
# here): two such workers oversubscribe two cores. pylibjpeg-openjpeg uses one thread (29.8 ms), so workers
# finish sooner on it. The other plugins stay as fallbacks inside the worker.
_WORKER_PLUGINS = {uid.JPEG2000Lossless: "pylibjpeg", uid.JPEG2000: "pylibjpeg"}

try:  # pure-Python libraries, bundled by build_kernel.py; without them compressed files cannot be isolated
    import loky.backend
    import loky.backend.popen_loky_posix  # noqa: F401 - imported now: a lazy import in pebble's thread races
    import pebble
    from pebble import ProcessExpired

    _IMPORT_ERROR: str = ""
except ImportError as exc:  # pragma: no cover - exercised only where the libraries are missing
    pebble = None  # type: ignore[assignment]
    ProcessExpired = RuntimeError  # type: ignore[assignment,misc]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def pool_available() -> str:
    """'' when worker isolation is possible here, else why not (pebble or loky missing)."""
    return _IMPORT_ERROR


def isolated_processes(workers: int, *, initializer=None, initargs: tuple = ()):
    """A pebble ProcessPool whose workers loky starts by fork+exec: the one way the kit starts worker processes.

    A task scheduled with `timeout=` that overruns has its worker killed (TimeoutError); a worker that dies
    costs its task only (ProcessExpired) and is replaced. Workers never import the caller's `__main__`.

    Raises:
        RuntimeError: pebble or loky is not installed.
    """
    if pebble is None:
        raise RuntimeError(f"worker processes need pebble and loky ({_IMPORT_ERROR})")
    return pebble.ProcessPool(max_workers=workers, context=loky.backend.get_context("loky"),
                              initializer=initializer, initargs=initargs)


@dataclass(frozen=True)
class DecodeLimits:
    """What one decoding task may cost before it is given up.

    Attributes:
        workers: worker processes (None: min(4, the cores this process may use)).
        timeout_s: seconds a file may take, plus `timeout_s_per_mb` per MB of the file.
        timeout_s_per_mb: extra seconds per MB (a 300-frame JPEG 2000 file needs far more than one slice).
        memory_mb: address-space limit of each worker (RLIMIT_AS), in MiB; 0 switches it off.
        retain_mb: a shared block up to this size is kept for the next series; a larger one is released.
        files_per_task: files decoded by one task (fewer round trips to the workers). When a task's worker dies
            or overruns, its files are decoded again one per task, so a bad file still costs itself only.
    """

    workers: int | None = None
    timeout_s: float = 20.0
    timeout_s_per_mb: float = 2.0
    memory_mb: int = 4096
    retain_mb: int = 512
    files_per_task: int = 4

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")
        if self.timeout_s <= 0 or self.timeout_s_per_mb < 0:
            raise ValueError(f"timeouts must be positive, got {self.timeout_s}, {self.timeout_s_per_mb}")
        if self.memory_mb < 0 or self.retain_mb < 0:
            raise ValueError(f"memory_mb and retain_mb must be >= 0, got {self.memory_mb}, {self.retain_mb}")
        if self.files_per_task < 1:
            raise ValueError(f"files_per_task must be >= 1, got {self.files_per_task}")

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(4, cores))

    def file_timeout(self, path: str | Path) -> float:
        """Seconds one file may take: `timeout_s` plus `timeout_s_per_mb` per MB of the file."""
        try:
            size_mb = os.path.getsize(path) / 1e6
        except OSError:
            size_mb = 0.0
        return self.timeout_s + self.timeout_s_per_mb * size_mb


@dataclass(frozen=True)
class DecodeJob:
    """One file to decode, and the (frames, rows, cols) array of `dtype` its frames are expected to fill.

    A decoded array of another shape or dtype still comes back (pickled), so the caller can decide what to do.
    """

    path: str
    frames: int
    rows: int
    cols: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.frames * self.rows * self.cols * np.dtype(self.dtype).itemsize


@dataclass
class DecodeResult:
    """A decoded file: `pixels` (frames, rows, cols), or `error` saying why it cost the file."""

    path: str
    pixels: np.ndarray | None = None
    error: str = ""


@dataclass(frozen=True)
class _Slot:
    """Where a worker writes a decoded file: bytes [offset, offset + nbytes) of the shared file `name`."""

    name: str
    offset: int
    shape: tuple[int, int, int]
    dtype: str


# ------------------------------------------------------------------------------------------------ worker side

_WORKER_MAPS: dict[str, mmap.mmap] = {}  # per worker process: the parent's block, mapped once


def _init_worker(memory_mb: int, plugins: dict[str, str]) -> None:
    """Worker initializer: cap the address space, prefer the single-threaded plugins."""
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
        fd = os.open(_SHM_ROOT / name, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        _WORKER_MAPS[name] = mapping
    return mapping


def _decode_file(path: str, backends: tuple[str, ...], slot: _Slot | None) -> np.ndarray | None:
    """Worker: decode every frame of one file; into the slot when it fits (returns None), else return the array.

    Raises:
        DicomFileError: the file cannot be decoded (its reason travels back to the parent).
    """
    pixels = read_dicom(path, backends=backends).pixels
    if slot is None or pixels.shape != slot.shape or pixels.dtype != np.dtype(slot.dtype):
        return np.ascontiguousarray(pixels)
    mapping = _worker_map(slot.name)
    np.ndarray(slot.shape, dtype=slot.dtype, buffer=mapping, offset=slot.offset)[...] = pixels
    return None


def _decode_files(paths: Sequence[str], backends: tuple[str, ...], slots: Sequence[_Slot | None]
                  ) -> list[tuple[np.ndarray | None, str]]:
    """Worker: `_decode_file` on each file; a file's own error (not a crash) is its result: (None, reason)."""
    out: list[tuple[np.ndarray | None, str]] = []
    for path, slot in zip(paths, slots):
        try:
            out.append((_decode_file(path, backends, slot), ""))
        except DicomFileError as exc:
            out.append((None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - MemoryError and any other Python failure: this file only
            out.append((None, f"{Path(path).name}: {type(exc).__name__}: {exc}"))
    return out


def _ready() -> int:
    return os.getpid()


# ------------------------------------------------------------------------------------------------ parent side


class DecodeBatch:
    """The results of one `DecodePool.decode` call, yielded as they arrive; a context manager.

    Pixels that came through the shared block are views of it: they are valid inside the `with` block only.
    """

    def __init__(self, pool: DecodePool, jobs: Sequence[DecodeJob], deadline: float | None) -> None:
        self._pool, self._jobs, self._deadline = pool, list(jobs), deadline
        self._block: shared_memory.SharedMemory | None = None
        self._futures: dict[Future, list[int]] = {}
        self._slots: list[_Slot | None] = []

    def __enter__(self) -> DecodeBatch:
        self._pool._batch_lock.acquire()
        try:
            self._start()
        except BaseException:
            self._pool._batch_lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            for future in self._futures:
                future.cancel()
            self._pool._after_batch()
        finally:
            self._pool._batch_lock.release()

    def _start(self) -> None:
        offsets, total = [], 0
        for job in self._jobs:
            offsets.append(total)
            total += -(-job.nbytes // _ALIGN) * _ALIGN
        self._block = self._pool._block_for(total) if self._jobs else None
        for job, offset in zip(self._jobs, offsets):
            slot = None
            if self._block is not None and job.nbytes > 0:
                slot = _Slot(self._block.name, offset, (job.frames, job.rows, job.cols), job.dtype)
            self._slots.append(slot)
        limits = self._pool.limits
        # enough tasks for every worker, each at most files_per_task files (in the given order)
        size = max(1, min(limits.files_per_task, len(self._jobs) // (2 * limits.worker_count)))
        for start in range(0, len(self._jobs), size):
            self._schedule(list(range(start, min(len(self._jobs), start + size))))

    def _schedule(self, indices: list[int]) -> None:
        jobs = [self._jobs[i] for i in indices]
        future = self._pool._executor().schedule(
            _decode_files, args=([job.path for job in jobs], self._pool.backends, [self._slots[i] for i in indices]),
            timeout=sum(self._pool.limits.file_timeout(job.path) for job in jobs))
        self._futures[future] = indices

    def __iter__(self) -> Iterator[tuple[int, DecodeResult]]:
        """(job index, result) pairs in completion order; every job is answered once."""
        pending = set(self._futures)
        while pending:
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:  # the call's deadline passed: what is still decoding is given up
                for future in pending:
                    future.cancel()
                    for index in self._futures[future]:
                        yield index, DecodeResult(self._jobs[index].path, error=(
                            f"{Path(self._jobs[index].path).name}: not decoded before the call's deadline"))
                return
            for future in sorted(done, key=lambda f: self._futures[f][0]):
                indices = self._futures[future]
                failure = self._task_failure(future, indices)
                if failure is not None and len(indices) > 1:  # find the culprit: each file again, on its own
                    LOGGER.info("a decoding task of %d files failed (%s); decoding them one by one", len(indices),
                                failure)
                    for index in indices:
                        self._schedule([index])
                    pending |= {f for f, i in self._futures.items() if len(i) == 1 and i[0] in indices}
                    continue
                if failure is not None:
                    yield indices[0], DecodeResult(self._jobs[indices[0]].path, error=failure)
                    continue
                for index, (pixels, reason) in zip(indices, future.result()):
                    yield index, self._result(index, pixels, reason)

    def _task_failure(self, future: Future, indices: list[int]) -> str | None:
        """Why a whole task failed (its worker died, overran or was cancelled), else None."""
        name = Path(self._jobs[indices[0]].path).name if len(indices) == 1 else f"{len(indices)} files"
        try:
            future.result()
        except FutureTimeout:
            seconds = sum(self._pool.limits.file_timeout(self._jobs[i].path) for i in indices)
            LOGGER.warning("%s: decoding took over %.0f s; its worker was stopped", name, seconds)
            return f"{name}: decoding took over {seconds:.0f} s (worker stopped)"
        except ProcessExpired as exc:
            LOGGER.warning("%s: the decoding worker died (%s)", name, exc)
            return f"{name}: the decoder crashed its worker process ({exc})"
        except CancelledError:
            return f"{name}: decoding cancelled"
        except Exception as exc:  # noqa: BLE001 - anything else that failed the task itself
            return f"{name}: {type(exc).__name__}: {exc}"
        return None

    def _result(self, index: int, pixels: np.ndarray | None, reason: str) -> DecodeResult:
        job, slot = self._jobs[index], self._slots[index]
        if reason:
            return DecodeResult(job.path, error=reason)
        if pixels is None and slot is not None and self._block is not None:
            pixels = np.ndarray(slot.shape, dtype=slot.dtype, buffer=self._block.buf, offset=slot.offset)
        return DecodeResult(job.path, pixels=pixels)


class DecodePool:
    """Worker processes that decode compressed DICOM files, and the shared block their frames come back through.

    The workers start on first use (or `start()`) and live until `close()`; one `decode` batch runs at a time.

    Args:
        limits: timeouts, memory cap, worker count and block retention.
        backends: the file readers the workers try in turn (see `inference.dicom_io.read_dicom`).
    Raises:
        RuntimeError: from `start`/`decode` when pebble or loky is not installed (`pool_available()` says why).
    """

    def __init__(self, limits: DecodeLimits | None = None, *, backends: Sequence[str] = DEFAULT_BACKENDS) -> None:
        self.limits = limits or DecodeLimits()
        self.backends = tuple(backends)
        self._pool = None
        self._block: shared_memory.SharedMemory | None = None
        self._batch_lock = threading.RLock()  # one batch at a time: its views pin the block
        _LIVE_POOLS.add(self)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _executor(self):
        if self._pool is None:
            self._pool = isolated_processes(self.limits.worker_count, initializer=_init_worker,
                                            initargs=(self.limits.memory_mb, _WORKER_PLUGINS))
        return self._pool

    def start(self, *, wait_s: float | None = None) -> DecodePool:
        """Start the workers now (a no-op task each), so the first series does not pay for their start-up.

        Args:
            wait_s: wait up to this long for the workers to answer (None: do not wait).
        """
        with self._batch_lock:
            executor = self._executor()
            futures = [executor.schedule(_ready, timeout=120) for _ in range(self.limits.worker_count)]
        if wait_s is not None:
            wait(futures, timeout=wait_s)
        return self

    def decode(self, jobs: Sequence[DecodeJob], *, deadline: float | None = None) -> DecodeBatch:
        """Decode `jobs` in the workers; use the returned batch as a context manager and iterate it.

        Args:
            jobs: the files, with the array each is expected to fill.
            deadline: `time.monotonic()` after which files still decoding are given up.
        """
        return DecodeBatch(self, jobs, deadline)

    # --- the shared block ---------------------------------------------------------------------------------
    def _block_for(self, nbytes: int) -> shared_memory.SharedMemory | None:
        """The block, grown to `nbytes` when needed; None when /dev/shm cannot hold it (pixels come back pickled)."""
        if self._block is not None and self._block.size >= nbytes:
            return self._block
        self._release_block()
        # POSIX shared memory is only reserved when written: a block larger than the tmpfs kills the worker with
        # SIGBUS halfway through. Ask first.
        try:
            fits = _SHM_ROOT.is_dir() and shutil.disk_usage(_SHM_ROOT).free >= nbytes * _SHM_HEADROOM
        except OSError:
            fits = False
        if not fits:
            return None
        self._block = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        return self._block

    def _after_batch(self) -> None:
        if self._block is not None and self._block.size > self.limits.retain_mb * 1024 * 1024:
            self._release_block()  # an unusually large series: do not keep its memory for the next one

    @property
    def block_bytes(self) -> int:
        """Size of the shared block kept for the next series (0 when none)."""
        return 0 if self._block is None else self._block.size

    def _release_block(self) -> None:
        if self._block is not None:
            block, self._block = self._block, None
            try:
                block.close()
            except BufferError:  # a view is still alive somewhere: unlinking alone frees the name
                pass
            block.unlink()

    def close(self) -> None:
        """Stop the workers and free the shared block."""
        with self._batch_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.stop()
                pool.join(timeout=10)
            self._release_block()


_LIVE_POOLS: weakref.WeakSet[DecodePool] = weakref.WeakSet()
_SHARED: DecodePool | None = None
_SHARED_LOCK = threading.Lock()


def shared_pool() -> DecodePool:
    """The process-wide pool the loader uses when its caller passes none (created on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = DecodePool()
        return _SHARED


@atexit.register  # a block left in /dev/shm would hold its memory after we exit
def _close_all() -> None:
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
