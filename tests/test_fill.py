"""The one progressive-fill primitive: items ready in order, waiters released at their count, errors handed over."""
from __future__ import annotations

import threading

import pytest

from inference.fill import ProgressiveFill


def test_a_waiter_is_released_once_its_prefix_is_ready_and_the_error_reaches_it():
    gate = threading.Event()

    def work(fill: ProgressiveFill) -> None:
        fill.publish(3)
        gate.wait(10)
        raise RuntimeError("decoder died")

    fill = ProgressiveFill("test").start(work)
    fill.wait(3)  # released by the first publish, while the work still runs
    assert fill.ready == 3 and not fill.done
    gate.set()
    with pytest.raises(RuntimeError, match="decoder died"):
        fill.wait(4)  # never published: the work's error ends the wait
    with pytest.raises(RuntimeError, match="decoder died"):
        fill.wait_for(lambda: False)
    assert fill.done


def test_stop_ends_the_work_early_and_a_wait_past_the_end_returns():
    steps = []

    def work(fill: ProgressiveFill) -> None:
        for k in range(1, 1000):
            if fill.stopping:
                return
            steps.append(k)
            fill.publish(k)
            threading.Event().wait(0.001)

    fill = ProgressiveFill("test").start(work)
    fill.wait(2)
    fill.stop()
    assert fill.done and len(steps) < 999
    fill.wait(5000)  # the work has ended: nothing more will come, the wait returns
    fill.publish(1)
    assert fill.ready == len(steps)  # a lower count changes nothing
