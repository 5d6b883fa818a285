"""Model slices prepared in a background thread as the volume fills: the windows start on the first ones."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .fill import ProgressiveFill
from .normalize import SlicePlan, prepare_slices

__all__ = ["PreparedSlices"]


class PreparedSlices:
    """Prepares the slices of a volume in a background thread, chunk by chunk, into one uint8 stack.

    `wait(n)` blocks until the first n slices are ready, so the model can run on the first windows while the
    rest are prepared (cv2 and onnxruntime both release the GIL); `source(n)`, when given, blocks until the
    volume's own first n slices are loaded. The slices are those of `preprocess_volume`: the same
    `plan_slices` / `prepare_slices` code.
    """

    CHUNK = 16

    def __init__(self, pixels: np.ndarray, plan: SlicePlan, *,
                 source: Callable[[int], None] | None = None) -> None:
        size = plan.geometry.size
        self.pixels, self.plan, self.source = pixels, plan, source
        self.stack = np.zeros((pixels.shape[0], size, size), dtype=np.uint8)
        self._progress = ProgressiveFill("prepare-slices").start(self._work)

    def _work(self, progress: ProgressiveFill) -> None:
        total = self.pixels.shape[0]
        for start in range(0, total, self.CHUNK):
            if progress.stopping:
                return
            stop = min(total, start + self.CHUNK)
            if self.source is not None:
                self.source(stop)
            prepare_slices(self.pixels, self.plan, self.stack, start, stop)
            progress.publish(stop)

    @property
    def busy_s(self) -> float:
        """Seconds the preparation ran (final once closed)."""
        return self._progress.seconds

    def wait(self, count: int) -> None:
        self._progress.wait(count)

    def close(self) -> None:
        self._progress.stop()
