"""One series to answer: its folder and how to read it (whole, or streamed); the volume kept once read."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .decode_pool import DecodePool
from .load import Narrow, SeriesStream, load_series, stream_series
from .volume import Volume

__all__ = ["SeriesSource"]


class SeriesSource:
    """One series folder and how to read it; the volume, once read, is kept for the next runner (a blend reads it
    once).

    Args:
        path: the series folder.
        loader: series folder -> Volume (default `inference.load.load_series` with `decode_pool`).
        decode_pool: the pool that decodes compressed files (default the process-wide one).
    """

    def __init__(self, path: str | Path, *, loader: Callable[[str], Volume] | None = None,
                 decode_pool: DecodePool | None = None) -> None:
        self.path = str(path)
        self.uid = Path(self.path).name
        self.loader = loader
        self.decode_pool = decode_pool
        self.volume: Volume | None = None
        self.load_s = 0.0  # seconds spent reading the series (streamed or not)

    @property
    def can_stream(self) -> bool:
        """The volume is not read yet and comes from the kit's own loader (which can stream it)."""
        return self.volume is None and self.loader is None

    def load(self, deadline: float | None) -> Volume:
        """The whole volume (read now unless read before)."""
        if self.volume is None:
            start = time.perf_counter()
            self.volume = self.loader(self.path) if self.loader is not None else \
                load_series(self.path, pool=self.decode_pool, deadline=deadline)
            self.load_s += time.perf_counter() - start
        return self.volume

    def stream(self, deadline: float | None, first: Callable[[Volume], list[int]],
               narrow: Narrow | None = None) -> SeriesStream:
        """Start reading the series in a background thread, the slices `first(skeleton)` before the others (and,
        with `narrow`, only the compressed files it asks for after them: `inference.load.stream_series`)."""
        return stream_series(self.path, pool=self.decode_pool, deadline=deadline, first=first, narrow=narrow)

    def streamed(self, stream: SeriesStream) -> Volume:
        """The volume of a finished stream, kept for the next runner unless narrowing left part of it unread
        (raises its loading error)."""
        volume = stream.result()
        self.load_s += stream.seconds
        if not stream.partial:
            self.volume = volume
        return volume
