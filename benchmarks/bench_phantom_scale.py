"""Generation rate and disk per series of the competition-scale phantom, per modality and downscale.

    python benchmarks/bench_phantom_scale.py --downscale 1 2 4 --per-modality 2

Writes `--per-modality` series of each modality (the preset's own draws: storage options included) with one
process per downscale factor, and prints per modality the slices, seconds (wall and CPU) and megabytes a series,
then the preset's modality mix: series a minute on 2 cores (two writer processes; from CPU seconds, so other load
on the machine does not count) and the disk of a 300 + 60 series benchmark dataset.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phantom import PhantomConfig, draw_split, write_series  # noqa: E402
from phantom.dicom_writer import physical_pixels, stored_pixels  # noqa: E402
from phantom.masks import write_vessel_mask  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--downscale", type=int, nargs="+", default=[1, 2, 4], help="factors (default 1 2 4)")
    parser.add_argument("--per-modality", type=int, default=2, help="series written per modality (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=int, nargs=2, default=(300, 60), metavar=("TRAIN", "TEST"),
                        help="series of the projected benchmark dataset (default 300 60)")
    return parser.parse_args(argv)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    for factor in args.downscale:
        config = PhantomConfig.competition(factor)
        weights = dict(config.modality_weights)
        total = sum(weights.values())
        print(f"\ndownscale {factor}: {config.grids[0].size} px a side")
        mean_cpu = mean_mb = mask_mb = 0.0
        with tempfile.TemporaryDirectory(prefix="bench_phantom_") as tmp:
            for modality in weights:
                specs = draw_split(args.per_modality, seed=args.seed, split="train",
                                   config=PhantomConfig.competition(factor, modality_weights=((modality, 1.0),)))
                wall = cpu = 0.0
                size = slices = 0
                for spec in specs:
                    folder = Path(tmp) / spec.series_uid
                    t0, c0 = time.perf_counter(), time.process_time()
                    write_series(spec, folder)
                    wall += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                    size += _folder_bytes(folder)
                    slices += spec.acquisition.num_slices
                    shutil.rmtree(folder)
                n = len(specs)
                storage = stored_pixels(specs[0])
                write_vessel_mask(specs[0], Path(tmp) / "m", image=physical_pixels(storage))
                one_mask = _folder_bytes(Path(tmp) / "m") / 2**20
                shutil.rmtree(Path(tmp) / "m")
                share = weights[modality] / total
                mean_cpu += share * cpu / n
                mean_mb += share * size / n / 2**20
                mask_mb += share * one_mask
                print(f"  {modality:<11} {slices / n:5.0f} slices  {wall / n:6.2f} s wall  {cpu / n:6.2f} s CPU  "
                      f"{size / n / 2**20:7.1f} MB a series  (its vessel mask + image {one_mask:.1f} MB)")
        n_train, n_test = args.dataset
        per_minute = 2 * 60.0 / mean_cpu
        dataset_gb = ((n_train + n_test) * mean_mb + 0.04 * n_train * mask_mb) / 1024
        print(f"  preset mix: {mean_cpu:.2f} CPU s and {mean_mb:.1f} MB a series -> {per_minute:.0f} series a minute "
              f"on 2 cores; {n_train} + {n_test} series: {dataset_gb:.1f} GB, about "
              f"{(n_train + n_test) / per_minute:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
