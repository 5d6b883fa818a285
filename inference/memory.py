"""How much memory this machine has, and has left: /proc/meminfo, capped by the container's cgroup limit."""
from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["total_memory", "memory_left", "format_bytes"]

_MEMINFO = Path("/proc/meminfo")
_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"
_CACHE_S = 0.5  # memory_left is asked once per large file header: a fresh reading twice a second is enough
_cache: tuple[float, int | None] = (-1.0, None)
_lock = threading.Lock()


def _meminfo(field: str) -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _cgroup_limit_and_usage() -> tuple[int | None, int | None]:
    """(limit, usage) of this process's memory cgroup in bytes; (None, None) without a limit."""
    for limit_file, usage_file in ((_CGROUP_V2 / "memory.max", _CGROUP_V2 / "memory.current"),
                                   (_CGROUP_V1 / "memory.limit_in_bytes", _CGROUP_V1 / "memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is not None:
            return limit, _read_int(usage_file)
    return None, None


def total_memory() -> int | None:
    """Bytes of memory this process's machine (or container) has: MemTotal, or the cgroup limit when lower.

    Returns:
        None when neither can be read (not Linux).
    """
    total = _meminfo("MemTotal")
    limit, _ = _cgroup_limit_and_usage()
    known = [v for v in (total, limit) if v is not None]
    return min(known) if known else None


def memory_left() -> int | None:
    """Bytes that can still be allocated: MemAvailable, or what the cgroup limit leaves when that is lower.

    Read at most twice a second (the loader asks once per large file header). None when it cannot be read.
    """
    global _cache
    now = time.monotonic()
    with _lock:
        stamp, value = _cache
        if 0 <= now - stamp < _CACHE_S:
            return value
        available = _meminfo("MemAvailable")
        limit, usage = _cgroup_limit_and_usage()
        room = None if limit is None or usage is None else max(0, limit - usage)
        known = [v for v in (available, room) if v is not None]
        value = min(known) if known else None
        _cache = (now, value)
        return value


def format_bytes(nbytes: float) -> str:
    """A short human size: '656 GiB', '1.5 GiB', '300 MiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(nbytes)} B"
