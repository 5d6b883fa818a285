"""The timing projection says plainly whether the timed series were at the competition's scale."""
from __future__ import annotations

import pytest

from evaluation.timing import COMPETITION_SLICES_MEAN, TimingSummary, scale_note, summarize_timing


def test_small_series_are_flagged_and_projected_at_the_competitions_slices():
    small = summarize_timing([1.0, 1.0], [65, 65], startup_s=10.0, pixels=[128, 160])
    assert small.scale_note.startswith("NOT at the competition's scale") and "144 px" in small.scale_note
    # the same 65 slices a second, at about 250 slices a series
    assert small.projected_at_scale_s == pytest.approx(10.0 + 2500 * COMPETITION_SLICES_MEAN / 65.0)
    assert any(line.startswith("scale: NOT") for line in small.lines())
    again = TimingSummary(**{k: getattr(small, k) for k in small.__dataclass_fields__})  # JSON round trip shape
    assert again.lines() == small.lines()


def test_competition_scale_series_are_not_flagged():
    real = summarize_timing([8.0, 4.0, 2.0], [400, 175, 150], startup_s=10.0, pixels=[512, 512, 512])
    assert real.scale_note == "" and real.projected_at_scale_s is None
    assert "at the competition's scale (slices and pixels)" in real.lines()[-1]
    assert scale_note(240.0, 256).startswith("NOT")  # full slices, downscaled pixels: still flagged
    assert "pass --series-dir" in scale_note(60.0)  # pixel size unknown
    assert scale_note(240.0) == ""
