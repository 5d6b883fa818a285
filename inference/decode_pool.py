"""Decode compressed DICOM files in isolated worker processes: a crash, a hang or a memory blow-up costs one file.

Native decoders (CharLS, OpenJPEG, GDCM, libjpeg, RLE) parse untrusted bytes and can crash the interpreter
(SIGSEGV, SIGABRT), loop forever or grow memory until the OOM killer comes. `DecodePool` owns the worker processes
that run them (what runs inside them: `inference.decode_worker`) and the shared-memory block their frames come
back through:

- a task holds up to `files_per_task` files; each file has its own timeout, growing with its size. The worker
  records in a small table at the head of the shared block when it starts and finishes each file, so the parent
  knows which file of a task is running: a file that overruns its own timeout has its worker killed (pebble's
  cancel) and costs that file only, and a worker that dies (a signal, the memory limit) is blamed on the file it
  was decoding. The files the task had finished keep their frames, the ones it had not reached are decoded again
  one per task; the file that hung or crashed is never retried, nor decoded in-process. The pool replaces the
  worker. Without a shared block (no room in /dev/shm) every task is one file, timed out by pebble.
- each worker runs under an address-space limit (RLIMIT_AS): `memory_mb`, lowered so that all the workers
  together can hold at most `memory_share` of the machine's memory, so a runaway allocation fails inside the
  worker and four hung workers cannot exhaust the machine.
- workers are started by loky's fork+exec "loky" context: nothing is forked from a parent that holds gRPC or
  onnxruntime threads (a lock held at fork time would deadlock the child), and, unlike multiprocessing's spawn
  and forkserver, a worker never imports the caller's `__main__` script (which would re-run a script without an
  `if __name__ == "__main__":` guard inside every worker).
- decoded frames travel back through one shared-memory block (pickling a 512x512 slice back cost as much as a
  JPEG-LS decode); the block is reused across series and released after an unusually large one (or after a
  worker was stopped mid-file). Releasing only unlinks it: the parent's mapping goes with its last numpy view.

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
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid

from .decode_worker import (
    ALIGN,
    FINISHED,
    IN_SLOT,
    REVOKED,
    SHM_ROOT,
    STARTED,
    WHERE,
    ProgressTable,
    Slot,
    decode_files,
    init_worker,
    ready,
)
from .dicom_io import DEFAULT_BACKENDS
from .memory import total_memory

__all__ = ["DecodeLimits", "DecodeJob", "DecodeResult", "DecodeBatch", "DecodePool", "shared_pool",
           "pool_missing_reason", "isolated_processes", "ProcessExpired"]

LOGGER = logging.getLogger(__name__)

_SHM_HEADROOM = 1.25
_WATCH_S = 0.2  # how often the parent looks for a file that overran its timeout (and for files newly started)
_BACKSTOP_S = 5.0  # pebble's own task timeout: the sum of the files' timeouts plus this (when the table is silent)
_MIN_WORKER_MB = 1024  # a worker's address space is never capped below this by `memory_share` (decoders need ~250)
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


def pool_missing_reason() -> str:
    """Why compressed files cannot be decoded in isolated workers here (pebble or loky missing); '' when they can."""
    return _IMPORT_ERROR


def isolated_processes(workers: int, *, initializer: Callable[..., object] | None = None,
                       initargs: tuple[Any, ...] = ()) -> Any:
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
        memory_share: the share of the machine's memory (MemTotal or the cgroup limit) all the workers together
            may address: each worker's limit is lowered to `memory_share * total / workers` (not below 1 GiB).
            On Kaggle (about 30 GiB, 4 workers) that is 3 GiB a worker, 12 GiB for four hung ones. 0: no share.
        retain_mb: a shared block up to this size is kept for the next series; a larger one is released.
        files_per_task: files decoded by one task (fewer round trips to the workers). A file that overruns its
            timeout or kills its worker costs itself only: the task's other files are kept or decoded again.
    """

    workers: int | None = None
    timeout_s: float = 20.0
    timeout_s_per_mb: float = 2.0
    memory_mb: int = 4096
    memory_share: float = 0.4
    retain_mb: int = 512
    files_per_task: int = 4

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")
        if self.timeout_s <= 0 or self.timeout_s_per_mb < 0:
            raise ValueError(f"timeouts must be positive, got {self.timeout_s}, {self.timeout_s_per_mb}")
        if self.memory_mb < 0 or self.retain_mb < 0:
            raise ValueError(f"memory_mb and retain_mb must be >= 0, got {self.memory_mb}, {self.retain_mb}")
        if not 0 <= self.memory_share <= 1:
            raise ValueError(f"memory_share must be in [0, 1], got {self.memory_share}")
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

    @property
    def worker_memory_mb(self) -> int:
        """Each worker's address-space limit in MiB: `memory_mb`, lowered to its share of the machine (0: none)."""
        if self.memory_mb == 0 or self.memory_share == 0:
            return self.memory_mb
        total = total_memory()
        if total is None:
            return self.memory_mb
        share = int(total * self.memory_share / self.worker_count / (1 << 20))
        return min(self.memory_mb, max(_MIN_WORKER_MB, share))

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


class _SharedBlock:
    """A POSIX shared-memory block that the parent maps itself (as the workers do).

    `release()` only unlinks it: the mapping goes when the last numpy view of `buf` is garbage collected, so a view
    kept past its batch (or its block's release) reads stale frames, never unmapped memory.
    """

    def __init__(self, nbytes: int) -> None:
        shm = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        try:
            fd = os.open(SHM_ROOT / shm.name, os.O_RDWR)
            try:
                self.buf = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        shm.close()  # its own mapping is never used: views are made of `buf`, which nothing closes explicitly
        self._shm, self.name, self.size = shm, shm.name, shm.size

    def release(self) -> None:
        """Remove the block's name (its memory is freed once every mapping of it is gone)."""
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------------ parent side


class DecodeBatch:
    """The results of one `DecodePool.decode` call, yielded as they arrive; a context manager.

    Pixels that came through the shared block are views of it: they are valid inside the `with` block only.
    """

    def __init__(self, pool: DecodePool, jobs: Sequence[DecodeJob], deadline: float | None) -> None:
        self._pool, self._jobs, self._deadline = pool, list(jobs), deadline
        self._block: _SharedBlock | None = None
        self._futures: dict[Future, list[int]] = {}
        self._slots: list[Slot | None] = []
        self._table: ProgressTable | None = None
        self._progress: np.ndarray | None = None  # the table, seen from here
        self._timeouts = [pool.limits.file_timeout(job.path) for job in self._jobs]
        self._overran: dict[Future, int] = {}  # tasks this side stopped: the job that overran its timeout
        self._stopped_running = False  # a task was stopped mid-file (its worker may write into the block)

    def __enter__(self) -> DecodeBatch:
        self._pool._batch_lock.acquire()
        try:
            self._start()
        except BaseException:
            self._pool._batch_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            stopped = self._stop(list(self._futures)) or self._stopped_running or bool(self._overran)
            self._progress = None  # a view of the block: let the block be released
            # a worker stopped mid-file may still write into the block for a moment: the next batch gets another
            self._pool._after_batch(release=stopped)
        finally:
            self._pool._batch_lock.release()

    def _stop(self, futures: list[Future]) -> bool:
        """Cancel these tasks (their files not yet started are revoked); whether one of them was running."""
        running = False
        for future in futures:
            self._revoke(self._futures[future])
            running |= future.running()
            future.cancel()  # a running task has its worker stopped by pebble
        return running

    def _start(self) -> None:
        head = ProgressTable.nbytes(len(self._jobs))
        offsets, total = [], head
        for job in self._jobs:
            offsets.append(total)
            total += -(-job.nbytes // ALIGN) * ALIGN
        self._block = self._pool._block_for(total) if self._jobs else None
        if self._block is not None:
            self._table = ProgressTable(self._block.name, len(self._jobs))
            self._progress = self._table.view(self._block.buf)
            self._progress[...] = 0.0
        for job, offset in zip(self._jobs, offsets):
            slot = None
            if self._block is not None and job.nbytes > 0:
                slot = Slot(self._block.name, offset, (job.frames, job.rows, job.cols), job.dtype)
            self._slots.append(slot)
        limits = self._pool.limits
        # enough tasks for every worker, each at most files_per_task files (in the given order); one file per
        # task when there is no progress table (pebble's task timeout is then the file's own)
        size = max(1, min(limits.files_per_task, len(self._jobs) // (2 * limits.worker_count)))
        if self._table is None:
            size = 1
        for start in range(0, len(self._jobs), size):
            self._schedule(list(range(start, min(len(self._jobs), start + size))))

    def _schedule(self, indices: list[int]) -> Future:
        if self._progress is not None:
            self._progress[indices] = 0.0  # a file decoded again: its row starts afresh (no longer revoked)
        jobs = [self._jobs[i] for i in indices]
        timeout = sum(self._timeouts[i] for i in indices)
        future = self._pool._executor().schedule(
            decode_files, args=([job.path for job in jobs], self._pool.backends, [self._slots[i] for i in indices],
                                 self._table, indices),
            timeout=timeout if self._table is None else timeout + _BACKSTOP_S)
        self._futures[future] = indices
        return future

    def __iter__(self) -> Iterator[tuple[int, DecodeResult]]:
        """(job index, result) pairs in completion order; every job is answered once."""
        pending = set(self._futures)
        while pending:
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:  # what is still decoding is given up
                yield from self._give_up(pending)
                return
            wake = self._stop_overruns(pending, now)
            if self._deadline is not None:  # (no progress table: wake is None, the deadline alone decides)
                left = max(0.0, self._deadline - now)
                wake = left if wake is None else min(wake, left)
            done, pending = wait(pending, timeout=wake, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: self._futures[f][0]):
                retried: list[Future] = []
                yield from self._finish(future, retried)
                pending.update(retried)

    def _row(self, index: int) -> np.ndarray | None:
        return None if self._progress is None else self._progress[index]

    def _stop_overruns(self, pending: set[Future], now: float) -> float | None:
        """Stop each task whose running file overran its own timeout; seconds until the next look (None: no need)."""
        if self._progress is None:
            return None  # one file per task: pebble times each out
        wake = _WATCH_S
        for future in pending:
            for index in self._futures[future]:
                started, finished = self._progress[index, STARTED], self._progress[index, FINISHED]
                if started == 0 or finished != 0:
                    continue
                left = started + self._timeouts[index] - now
                if left <= 0 and future not in self._overran and future.cancel():
                    # pebble stops the worker of a cancelled running task and starts another
                    self._overran[future] = index
                    self._revoke(self._futures[future])
                wake = min(wake, max(0.0, left))
                break
        return wake

    def _revoke(self, indices: list[int]) -> None:
        """Mark these files, where not yet started, as not to be started by the task's worker."""
        if self._progress is None:
            return
        for index in indices:
            if self._progress[index, STARTED] == 0:
                self._progress[index, WHERE] = REVOKED

    def _finish(self, future: Future, retried: list[Future]) -> Iterator[tuple[int, DecodeResult]]:
        """The results of one finished task. A failed task costs its culprit only: the file it overran or died on.

        Files it had finished keep their frames (from the block); the ones it had not reached (or whose result
        died with it) are scheduled again, one per task, into `retried`.
        """
        indices = self._futures[future]
        failure = self._task_failure(future, indices)
        if failure is None:
            for index, (pixels, reason) in zip(indices, future.result()):
                yield index, self._result(index, pixels, reason)
            return
        culprit = self._culprit(future, indices)
        if culprit is None and len(indices) == 1:
            culprit = indices[0]
        if culprit is None:  # nothing was running (the worker died between files): each file again, on its own
            LOGGER.info("a decoding task of %d files failed (%s); decoding them one by one", len(indices), failure)
        else:
            name = Path(self._jobs[culprit].path).name
            LOGGER.warning("%s: %s; the file is not retried", name, failure)
            yield culprit, DecodeResult(self._jobs[culprit].path, error=f"{name}: {failure}")
        for index in indices:
            if index == culprit:
                continue
            row = self._row(index)
            if row is not None and row[FINISHED] != 0 and row[WHERE] == IN_SLOT:
                yield index, self._result(index, None, "")
            else:
                retried.append(self._schedule([index]))

    def _culprit(self, future: Future, indices: list[int]) -> int | None:
        """The file a failed task was decoding: the one this side stopped, else the one started and unfinished."""
        if future in self._overran:
            return self._overran[future]
        for index in indices:
            row = self._row(index)
            if row is not None and row[STARTED] != 0 and row[FINISHED] == 0:
                return index
        return None

    def _give_up(self, pending: set[Future]) -> Iterator[tuple[int, DecodeResult]]:
        """The call's deadline passed: files already in the block are kept, the rest cost themselves."""
        for future in sorted(pending, key=lambda f: self._futures[f][0]):
            self._stopped_running |= self._stop([future])
            for index in self._futures[future]:
                row = self._row(index)
                if row is not None and row[FINISHED] != 0 and row[WHERE] == IN_SLOT:
                    yield index, self._result(index, None, "")
                else:
                    yield index, DecodeResult(self._jobs[index].path, error=(
                        f"{Path(self._jobs[index].path).name}: not decoded before the call's deadline"))

    def _task_failure(self, future: Future, indices: list[int]) -> str | None:
        """Why a whole task failed (its worker died, overran or was stopped), else None."""
        try:
            future.result()
        except CancelledError:
            if future in self._overran:
                return f"decoding took over {self._timeouts[self._overran[future]]:.0f} s (worker stopped)"
            return "decoding cancelled"
        except FutureTimeout:  # pebble's own task timeout
            seconds = sum(self._timeouts[i] for i in indices)
            return f"decoding took over {seconds:.0f} s (worker stopped)"
        except ProcessExpired as exc:
            return f"the decoder crashed its worker process ({exc})"
        except Exception as exc:  # noqa: BLE001 - anything else that failed the task itself
            return f"{type(exc).__name__}: {exc}"
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
        RuntimeError: from `start`/`decode` when pebble or loky is not installed (`pool_missing_reason()` says
            why).
    """

    def __init__(self, limits: DecodeLimits | None = None, *, backends: Sequence[str] = DEFAULT_BACKENDS) -> None:
        self.limits = limits or DecodeLimits()
        self.backends = tuple(backends)
        self._pool = None
        self._block: _SharedBlock | None = None
        self._batch_lock = threading.RLock()  # one batch at a time: its views pin the block
        _LIVE_POOLS.add(self)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _executor(self) -> Any:
        if self._pool is None:
            self._pool = isolated_processes(self.limits.worker_count, initializer=init_worker,
                                            initargs=(self.limits.worker_memory_mb, _WORKER_PLUGINS))
        return self._pool

    def start(self, *, wait_s: float | None = None) -> DecodePool:
        """Start the workers now (a no-op task each), so the first series does not pay for their start-up.

        Args:
            wait_s: wait up to this long for the workers to answer (None: do not wait).
        """
        with self._batch_lock:
            executor = self._executor()
            futures = [executor.schedule(ready, timeout=120) for _ in range(self.limits.worker_count)]
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
    def _block_for(self, nbytes: int) -> _SharedBlock | None:
        """The block, grown to `nbytes` when needed; None when /dev/shm cannot hold it (pixels come back pickled)."""
        if self._block is not None and self._block.size >= nbytes:
            return self._block
        self._release_block()
        # POSIX shared memory is only reserved when written: a block larger than the tmpfs kills the worker with
        # SIGBUS halfway through. Ask first.
        try:
            fits = SHM_ROOT.is_dir() and shutil.disk_usage(SHM_ROOT).free >= nbytes * _SHM_HEADROOM
        except OSError:
            fits = False
        if not fits:
            return None
        self._block = _SharedBlock(nbytes)
        return self._block

    def _after_batch(self, *, release: bool = False) -> None:
        if self._block is not None and (release or self._block.size > self.limits.retain_mb * 1024 * 1024):
            self._release_block()  # an unusually large series (or a stopped worker): not kept for the next one

    @property
    def block_bytes(self) -> int:
        """Size of the shared block kept for the next series (0 when none)."""
        return 0 if self._block is None else self._block.size

    def _release_block(self) -> None:
        if self._block is not None:
            block, self._block = self._block, None
            block.release()

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
