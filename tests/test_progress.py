"""Progress of long loops: no bar redraws where nobody watches, a periodic log line instead (fake clock)."""
from __future__ import annotations

import logging

from inference.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_the_loop_logs_a_line_a_minute_and_one_at_the_end(caplog, capsys):
    clock = FakeClock()
    seen = []
    with caplog.at_level(logging.INFO, logger="inference.progress"):
        progress = Progress(range(10), desc="epoch 1", unit="batch", every_s=60.0, clock=clock)
        assert progress.logging  # pytest's captured stderr is not a terminal: tqdm's disable=None turns it off
        for item in progress:
            clock.now += 25.0
            seen.append(item)
            progress.set_postfix(loss="0.5")
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.progress"]
    assert seen == list(range(10))
    assert len(lines) == 4  # 60 s or more since the last line: at 75, 150 and 225 s; then the end
    assert lines[0].startswith("epoch 1: 3/10 batch (75 s") and "loss=0.5" in lines[0]
    assert lines[-1].startswith("epoch 1: 10/10 batch (250 s") and lines[-1].endswith(" done")
    assert "\r" not in capsys.readouterr().err  # no bar redraws


def test_a_disabled_or_quiet_inner_loop_writes_nothing(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="inference.progress"):
        for _ in Progress(range(5), desc="rank 1", enabled=False, clock=clock):
            clock.now += 100.0
        inner = Progress(total=3, desc="validate", leave=False, clock=clock)
        for _ in range(3):
            clock.now += 1.0
            inner.update()
        inner.close()
    assert not [r for r in caplog.records if r.name == "inference.progress"]
    assert inner.n == 3
