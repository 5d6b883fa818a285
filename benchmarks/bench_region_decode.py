"""What the region stage saves on compressed series: files decoded and kernel seconds, narrowed vs read whole.

    python benchmarks/bench_region_decode.py --weights W_REGION --data-dir DATA --out SCRATCH [--series 6]
        [--compression jpeg2000]

Copies the first N held-out CTA series of DATA/test (the phantom's layout) into SCRATCH, each file re-encoded
losslessly (`--compression`: jpeg2000, jpegls or rle, pydicom's encoders), then answers each series twice with the
region bundle in W_REGION through the kernel's Predictor (CPU, the shared decode pool): streamed, as the kernel
does (the locator reads the coarse copy's slices, then only the box's files are decoded), and read whole first
(every file decoded, then the same locator and box). Prints, per series and on average: slices, slices decoded,
load seconds and total seconds for both, and checks that both give the same probabilities (the crop holds the
same voxels). Run it on a quiet machine: the figures are wall-clock seconds.
"""
from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.load import load_series  # noqa: E402
from inference.predict import Predictor  # noqa: E402
from training.data import read_train_table, series_folder  # noqa: E402

log = logging.getLogger("bench_region_decode")
SYNTAX = {"jpeg2000": ("1.2.840.10008.1.2.4.90", "pylibjpeg"), "jpegls": ("1.2.840.10008.1.2.4.80", "pylibjpeg"),
          "rle": ("1.2.840.10008.1.2.5", "pylibjpeg")}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="a weights folder with a region locator")
    parser.add_argument("--data-dir", type=Path, required=True, help="dataset root with a test/ split")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder for the compressed copies")
    parser.add_argument("--series", type=int, default=6, help="held-out CTA series to measure (default 6)")
    parser.add_argument("--compression", choices=sorted(SYNTAX), default="jpeg2000",
                        help="lossless encoding of the copies (default jpeg2000)")
    return parser.parse_args(argv)


def compressed_copy(source: Path, target: Path, compression: str) -> Path:
    """Every *.dcm of `source` re-encoded into `target` (same names, same pixels)."""
    import pydicom

    syntax, plugin = SYNTAX[compression]
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
        ds.save_as(target / path.name, enforce_file_format=True)
    return target


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    table = read_train_table(args.data_dir / "test" / "test_labels.csv")
    uids = [u for u in table.uids if table.modality[table.index(u)] == "CTA"][:args.series]
    streamed = Predictor(args.weights, providers=["CPUExecutionProvider"], threads=1)
    whole = Predictor(args.weights, providers=["CPUExecutionProvider"], threads=1, loader=load_series)
    streamed.load(warm_up=True)
    whole.load(warm_up=True)
    notes = _DecodeNotes()
    load_log = logging.getLogger("inference.load")
    load_log.addHandler(notes)
    load_log.setLevel(logging.INFO)
    load_log.propagate = False
    rows = []
    for uid in uids:
        target = args.out / args.compression / uid
        if not target.is_dir():
            compressed_copy(series_folder(args.data_dir / "test", uid), target, args.compression)
        t0 = time.perf_counter()
        expected, whole_report = whole.predict_series(target)
        t1 = time.perf_counter()
        notes.counts.clear()
        values, report = streamed.predict_series(target)
        t2 = time.perf_counter()
        volume_slices = len(list(target.glob("*.dcm")))
        decoded = notes.counts[0] if notes.counts else volume_slices
        same = bool(np.array_equal(values, expected))
        rows.append((uid, volume_slices, decoded, whole_report.load_s, t1 - t0, report.load_s, t2 - t1, same,
                     report.region))
        print(f"{uid[-12:]}: {volume_slices} slices, decoded {decoded} streamed; whole: load {whole_report.load_s:.2f}"
              f" s, total {t1 - t0:.2f} s; streamed: load {report.load_s:.2f} s, total {t2 - t1:.2f} s; same answer "
              f"{same}; {report.region}", flush=True)
    if rows:
        print(f"\n{len(rows)} CTA series ({args.compression}): decoded {statistics.mean(r[2] / r[1] for r in rows):.0%}"
              f" of the slices streamed; total seconds a series whole {statistics.mean(r[4] for r in rows):.2f}, "
              f"streamed {statistics.mean(r[6] for r in rows):.2f} (load {statistics.mean(r[3] for r in rows):.2f} "
              f"-> {statistics.mean(r[5] for r in rows):.2f}); same answers {sum(r[7] for r in rows)}/{len(rows)}")
    return 0


class _DecodeNotes(logging.Handler):
    """Collects the loader's "decoded N of M slices" notes."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"decoded (\d+) of (\d+) slices", record.getMessage())
        if match:
            self.counts.append(int(match.group(1)))


if __name__ == "__main__":
    raise SystemExit(main())
