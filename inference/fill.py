"""One progressive fill: items [0, n) become ready in order in a producer thread; consumers wait for the first k."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ProgressiveFill"]


class ProgressiveFill:
    """The hand-off between one producer (a thread filling an array front to back) and its consumers.

    The producer's `work(fill)` calls `fill.publish(k)` once items [0, k) are ready (and may change shared state
    under `fill.lock`, then `fill.notify()`); its exception, if any, is handed to every consumer. Consumers call
    `wait(k)` (items [0, k) ready) or `wait_for(predicate)`; both return once the work has ended, and raise its
    error. `stop()` asks the producer to end early: `work` checks `fill.stopping`.

    Used by decoding (`inference.load.SeriesStream`: canonical slices as their files decode) and by preparation
    (`inference.prepare.PreparedSlices`: uint8 model slices as they are normalized and resized).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Condition()
        self.ready = 0  # items [0, ready) are ready
        self.done = False  # the work has ended (all items ready, or it failed or stopped)
        self.error: BaseException | None = None
        self.seconds = 0.0  # how long the work ran, once done
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- producer side --------------------------------------------------------------------------------------
    def start(self, work: Callable[[ProgressiveFill], None]) -> ProgressiveFill:
        """Run `work(self)` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, args=(work,), name=self.name, daemon=True)
        self._thread.start()
        return self

    def run(self, work: Callable[[ProgressiveFill], None]) -> None:
        """Run `work(self)` in this thread; its outcome goes to the consumers."""
        started = time.perf_counter()
        try:
            work(self)
        except BaseException as exc:  # handed to the consumers, which raise it
            with self.lock:
                self.error = exc
        finally:
            self.seconds = time.perf_counter() - started
            with self.lock:
                self.done = True
                self.lock.notify_all()

    def publish(self, ready: int) -> None:
        """Items [0, ready) are ready (a count below the current one changes nothing)."""
        with self.lock:
            if ready > self.ready:
                self.ready = ready
                self.lock.notify_all()

    def notify(self) -> None:
        """Wake the consumers after a change of shared state (made under `lock`)."""
        with self.lock:
            self.lock.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- consumer side --------------------------------------------------------------------------------------
    def wait(self, count: int) -> None:
        """Block until items [0, count) are ready or the work has ended; raise the work's error."""
        self.wait_for(lambda: self.ready >= count)

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Block until `predicate()` (called under `lock`) holds or the work has ended; raise the work's error."""
        with self.lock:
            self.lock.wait_for(lambda: predicate() or self.done or self.error is not None)
            error = self.error
        if error is not None:
            raise error

    def join(self) -> None:
        """Block until the work has ended (its error is not raised: `wait` and `wait_for` do that)."""
        with self.lock:
            self.lock.wait_for(lambda: self.done)

    def stop(self) -> None:
        """Ask the work to end early and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
