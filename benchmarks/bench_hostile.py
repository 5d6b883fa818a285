"""Time and peak memory of `predict` on every hostile case, each in a fresh process (the note's table).

    python benchmarks/bench_hostile.py [--n-good 8] [--size 64]
    # one hanging file in a 32-file JPEG-LS series, at the kernel's default decode timeout and memory cap:
    python benchmarks/bench_hostile.py --cases jpegls_zero_lines --positions middle --n-good 31 \
        --decode-timeout 20 --decode-memory 4096

Prints, per case and position: the answer (model/priors), the slices kept, the wall time of the whole process
and of the predict call, and the peak resident memory of the kernel process and of its decoding workers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.config import PreprocessConfig, WindowConfig  # noqa: E402
from tests.hostile_dicom import HOSTILE_CASES, run_predict_in_subprocess, write_hostile_series  # noqa: E402
from tests.onnx_models import PlantedModel, export_onnx, write_bundle  # noqa: E402

CODESTREAM = ("jpegls_zero_width", "jpegls_precision_31", "jpegls_zero_lines", "jpeg2000_ssiz_255")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-good", type=int, default=8, help="valid slices beside the hostile file")
    parser.add_argument("--size", type=int, default=64, help="rows = columns of the slices")
    parser.add_argument("--decode-timeout", default="4", help="RSNA_DECODE_TIMEOUT_S for the runs (default 4)")
    parser.add_argument("--decode-memory", default="1024", help="RSNA_DECODE_MEMORY_MB for the runs (default 1024)")
    parser.add_argument("--workers", default="2", help="RSNA_DECODE_WORKERS for the runs (default 2)")
    parser.add_argument("--cases", nargs="+", choices=sorted(HOSTILE_CASES), default=list(HOSTILE_CASES),
                        help="the cases to run (default: all)")
    parser.add_argument("--positions", nargs="+", choices=("first", "middle"), default=None,
                        help="slots of the hostile file (default: both for codestream cases, middle otherwise)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a case's process may take")
    args = parser.parse_args(argv)
    env = {"RSNA_DECODE_TIMEOUT_S": args.decode_timeout, "RSNA_DECODE_MEMORY_MB": args.decode_memory,
           "RSNA_DECODE_WORKERS": args.workers, "RSNA_CALL_BUDGET_S": "600"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = work / "weights"
        weights.mkdir()
        onnx = export_onnx(PlantedModel(5), weights / "fold0.onnx", channels=5, size=32)
        write_bundle(weights, [onnx], preprocess=PreprocessConfig(image_size=32), windows=WindowConfig())
        print(f"{'case':<24}{'position':<9}{'answer':<8}{'slices':>7}{'process s':>11}{'predict s':>11}"
              f"{'kernel MB':>11}{'workers MB':>12}")
        for name in args.cases:
            positions = args.positions or (("first", "middle") if name in CODESTREAM else ("middle",))
            for position in positions:
                folder = work / f"{name}-{position}" / "1.2.826.0.1.3680043.8.498.77"
                write_hostile_series(name, folder, position=position, n_good=args.n_good, size=args.size)
                run = run_predict_in_subprocess(folder, weights, cwd=ROOT, env=env, timeout_s=args.timeout)
                r = run.result or {}
                print(f"{name:<24}{position:<9}{r.get('answer', 'FAILED'):<8}{r.get('slices', 0):>7}"
                      f"{run.wall_s:>11.2f}{r.get('elapsed_s', float('nan')):>11.2f}"
                      f"{r.get('peak_mb', float('nan')):>11.0f}{r.get('worker_peak_mb', float('nan')):>12.0f}",
                      flush=True)
    print(f"{args.workers} decoding workers, decode timeout {args.decode_timeout} s (+2 s/MB), worker memory "
          f"limit {args.decode_memory} MiB; predict s includes importing the runtime and starting the decoding "
          "workers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
