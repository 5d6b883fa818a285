"""Command line: write a synthetic competition dataset (python -m phantom --out DIR --series 60 --seed 0).

`--scale competition` writes series at the competition's proportions (PhantomConfig.competition: per modality the
real data's slices, slab and 512 px grid, neck to vertex for CTA, aneurysms 2-10 mm across, vessel masks for 4% of
the train series); `--downscale N` keeps its millimetres with N times fewer pixels a side.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from .dataset import PhantomConfig, make_dataset

__all__ = ["build_parser", "main"]

_D = PhantomConfig()
_FRACTIONS = ("non_axial", "flip", "reverse", "multiframe", "compressed", "stripped", "monochrome1", "mask")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m phantom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (train.csv, series/, test/...)")
    p.add_argument("--series", type=int, default=60, help="train series (default 60)")
    p.add_argument("--test-series", type=int, default=30, help="test series (default 30)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--scale", choices=("default", "competition"), default="default",
                   help="'default': the small phantom (the demo's); 'competition': the real data's proportions")
    p.add_argument("--downscale", type=int, default=1,
                   help="competition scale: N times fewer pixels a side, same millimetres and slices (default 1)")
    p.add_argument("--slices", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help=f"slice count range (default scale only; default {_D.slices})")
    p.add_argument("--size", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help=f"image rows/cols range, up to 512 and beyond (default scale only; default {_D.size})")
    p.add_argument("--fov", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"in-plane field of view in mm, pixel spacing = fov / size (default scale only; "
                        f"default {_D.fov_mm})")
    p.add_argument("--slice-spacing", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"slice spacing clamp in mm, slices are added when the slab must be longer (default scale "
                        f"only; default {_D.slice_spacing_mm})")
    p.add_argument("--blob-contrast", type=float,
                   help=f"blob vs vessel intensity: 1.0 = as bright as vessels (harder; default {_D.blob_contrast})")
    p.add_argument("--blob-radius", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"aneurysm radius range in mm (default {_D.blob_radius}; competition: (1, 5), the clip "
                        "range of its log-normal diameters)")
    p.add_argument("--positive-fraction", type=float, help=f"default {_D.positive_fraction}; competition 0.43")
    p.add_argument("--modalities", nargs="+", choices=[m for m, _ in _D.modality_weights],
                   help="only these modalities (equal weights); default mix 40/30/20/10")
    for name in _FRACTIONS:
        p.add_argument(f"--{name.replace('_', '-')}-fraction", type=float,
                       help=f"default {getattr(_D, f'{name}_fraction')} (the competition preset sets its own)")
    p.add_argument("--noise", type=float, help=f"noise multiplier, 0 = noiseless (default {_D.noise})")
    p.add_argument("--workers", type=int, default=1, help="parallel writer processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("phantom").setLevel(logging.INFO)
    competition = args.scale == "competition"
    if args.downscale < 1:
        parser.error("--downscale must be >= 1")
    if not competition and args.downscale != 1:
        parser.error("--downscale needs --scale competition")
    grid_options = {"slices": args.slices, "size": args.size, "fov_mm": args.fov,
                    "slice_spacing_mm": args.slice_spacing}
    if competition and any(v is not None for v in grid_options.values()):
        parser.error("--slices/--size/--fov/--slice-spacing set the default scale's grid; the competition scale "
                     "has one grid per modality (phantom/scale.py)")
    options: dict[str, object] = {k: tuple(v) for k, v in grid_options.items() if v is not None}
    for key, value in (("blob_contrast", args.blob_contrast), ("positive_fraction", args.positive_fraction),
                       ("noise", args.noise), ("blob_radius", args.blob_radius)):
        if value is not None:
            options[key] = tuple(value) if isinstance(value, list) else value
    for name in _FRACTIONS:
        value = getattr(args, f"{name}_fraction")
        if value is not None:
            options[f"{name}_fraction"] = value
    if args.modalities:
        options["modality_weights"] = tuple((m, 1.0) for m in args.modalities)
    config = PhantomConfig.competition(args.downscale) if competition else PhantomConfig()
    summary = make_dataset(args.out, series=args.series, test_series=args.test_series, seed=args.seed,
                           config=config, overwrite=args.overwrite, workers=args.workers, progress=not args.quiet,
                           **options)
    logging.getLogger("phantom").info(
        "%d train (%d positive, %d with a vessel mask) + %d test (%d positive) series, %d files, modalities %s, "
        "%.1f s", summary.train_series, summary.train_positive, summary.masks, summary.test_series,
        summary.test_positive, summary.files, summary.modalities, summary.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
