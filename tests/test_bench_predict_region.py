"""benchmarks/bench_predict.py --region: the region run scores the locator's box, fewer windows than the full frame."""
from __future__ import annotations

import re

from benchmarks.bench_predict import main

SMALL = ["--image-size", "32", "--backbone", "test_efficientnet", "--decode-workers", "1"]


def test_the_region_run_scores_the_box_with_fewer_windows(tmp_path, capsys):
    assert main(["--region", "--slices", "200", "--size", "256", "--workdir", str(tmp_path), *SMALL]) == 0
    out = capsys.readouterr().out
    found = re.search(r"region vs full frame: windows (\d+) -> (\d+) ", out)
    assert found, out
    full, region = int(found[1]), int(found[2])
    assert full == 200 and 0 < region < full / 1.8  # the measured box is 59 mm of the series' 120 mm
    assert re.search(r"^region: .*; region \(", out, re.MULTILINE), out  # answered on the box, not the whole volume


def test_a_region_run_that_falls_back_to_the_whole_volume_fails(tmp_path, capsys):
    # 32 px of 0.45 mm: too narrow for the locator (under its 20 mm), so the series is answered on the whole volume
    assert main(["--region", "--slices", "20", "--size", "32", "--workdir", str(tmp_path), *SMALL]) == 1
    assert "the region run fell back to whole volume" in capsys.readouterr().err
