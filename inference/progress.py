"""Progress of a long loop: a tqdm bar where a person watches (a terminal), a log line now and then elsewhere."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Generic, TypeVar

__all__ = ["Progress", "LOG_EVERY_S"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # seconds between two log lines of a loop whose output is not a terminal
T = TypeVar("T")


class Progress(Generic[T]):
    """A tqdm bar with `disable=None` (tqdm turns itself off when its stream is not a terminal), and then, instead
    of `\\r` redraws in a log file, one log line every `every_s` seconds and one at the end.

    Iterate over it, or call `update(n)`; `set_postfix(**values)` shows on the bar and in the log lines; `close()`
    (or leaving a `with` block) ends it, with a closing line (for `leave=False`, an inner loop, only when it logged
    before). `enabled=False` shows nothing at all.

    Args:
        iterable: the items (optional with `total` and `update`).
        total: how many items (default `len(iterable)` when it has one).
        desc, unit, leave: as tqdm's.
        enabled: False: no bar and no log lines (a quiet caller, a worker rank).
        every_s: seconds between two log lines.
        clock: seconds, monotonic (a fake one in tests).
    """

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, enabled: bool = True, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.iterable = iterable
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total = total
        self.desc, self.unit, self.every_s, self.clock, self.leave = desc, unit, every_s, clock, leave
        self.lines = 0  # log lines written
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.bar: Any = None
        self.logging = False
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(iterable, total=self.total, desc=desc, unit=unit, leave=leave, disable=None)
                self.logging = bool(self.bar.disable)  # not a terminal: log lines instead
            except ImportError:  # the kernel's image may lack tqdm
                self.logging = True
        self.started = self._last = clock()

    def __iter__(self) -> Iterator[T]:
        source: Iterable[T] = self.bar if self.bar is not None and not self.logging else (self.iterable or ())
        counting = self.logging
        for item in source:
            yield item
            if counting:
                self._advance(1)
            else:
                self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        if self.bar is not None and not self.logging:
            self.bar.update(n)
            self.n += n
        elif self.logging:
            self._advance(n)
        else:
            self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self.bar is not None and not self.logging:
            self.bar.set_postfix(**values)

    def _advance(self, n: int) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self.lines += 1
            log.info(self.line())

    def line(self) -> str:
        """`desc: n/total unit (elapsed, rate) postfix`."""
        elapsed = self.clock() - self.started
        of = f"/{self.total}" if self.total is not None else ""
        rate = f", {self.n / elapsed:.2f} {self.unit}/s" if elapsed > 0 else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.n}{of} {self.unit} ({elapsed:.0f} s{rate}){extra}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.logging:
            self.logging = False  # one closing line only, and for an inner loop (leave=False) only after others
            if self.leave or self.lines:
                log.info(self.line() + " done")

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
