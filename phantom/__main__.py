"""Command line: write a synthetic competition dataset (python -m phantom --out DIR --series 60 --seed 0)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from .dataset import PhantomConfig, make_dataset

__all__ = ["build_parser", "main"]

_D = PhantomConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m phantom", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (train.csv, series/, test/...)")
    p.add_argument("--series", type=int, default=60, help="train series")
    p.add_argument("--test-series", type=int, default=30, help="test series")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument("--slices", type=int, nargs=2, metavar=("MIN", "MAX"), default=_D.slices,
                   help="slice count range")
    p.add_argument("--size", type=int, nargs=2, metavar=("MIN", "MAX"), default=_D.size,
                   help="image rows/cols range (up to 512 and beyond)")
    p.add_argument("--fov", type=float, nargs=2, metavar=("MIN", "MAX"), default=_D.fov_mm,
                   help="in-plane field of view in mm (pixel spacing = fov / size)")
    p.add_argument("--slice-spacing", type=float, nargs=2, metavar=("MIN", "MAX"), default=_D.slice_spacing_mm,
                   help="slice spacing clamp in mm (slices are added when the slab must be longer)")
    p.add_argument("--blob-contrast", type=float, default=_D.blob_contrast,
                   help="blob vs vessel intensity: 1.0 = as bright as vessels (harder)")
    p.add_argument("--blob-radius", type=float, nargs=2, metavar=("MIN", "MAX"), default=_D.blob_radius,
                   help="aneurysm radius range in mm")
    p.add_argument("--positive-fraction", type=float, default=_D.positive_fraction)
    p.add_argument("--modalities", nargs="+", choices=[m for m, _ in _D.modality_weights],
                   help="only these modalities (equal weights); default mix 40/30/20/10")
    for name in ("non_axial", "flip", "reverse", "multiframe", "compressed", "stripped", "monochrome1"):
        p.add_argument(f"--{name.replace('_', '-')}-fraction", type=float,
                       default=getattr(_D, f"{name}_fraction"))
    p.add_argument("--noise", type=float, default=_D.noise, help="noise multiplier (0 = noiseless)")
    p.add_argument("--workers", type=int, default=1, help="parallel writer processes")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("phantom").setLevel(logging.INFO)
    options = dict(
        slices=tuple(args.slices), size=tuple(args.size), fov_mm=tuple(args.fov),
        slice_spacing_mm=tuple(args.slice_spacing), blob_contrast=args.blob_contrast,
        blob_radius=tuple(args.blob_radius), positive_fraction=args.positive_fraction, noise=args.noise,
        **{f"{n}_fraction": getattr(args, f"{n}_fraction") for n in
           ("non_axial", "flip", "reverse", "multiframe", "compressed", "stripped", "monochrome1")})
    if args.modalities:
        options["modality_weights"] = tuple((m, 1.0) for m in args.modalities)
    summary = make_dataset(args.out, series=args.series, test_series=args.test_series, seed=args.seed,
                           overwrite=args.overwrite, workers=args.workers, progress=not args.quiet, **options)
    logging.getLogger("phantom").info(
        "%d train (%d positive) + %d test (%d positive) series, %d files, modalities %s, %.1f s",
        summary.train_series, summary.train_positive, summary.test_series, summary.test_positive, summary.files,
        summary.modalities, summary.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
