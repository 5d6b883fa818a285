"""Build the Kaggle submission from a weights folder: `python build_kernel.py --weights weights --username YOU`.

Writes OUT/dataset (the runtime package, the weights, vendored pure-Python libraries, optional offline wheels,
dataset-metadata.json) and OUT/kernel (the notebook, its .py twin, kernel-metadata.json). The weights are checked
first (hashes, labels, every fold run in onnxruntime, opsets); a failed build writes nothing. The work is done by
the `bundle` package; this file is its command line.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from bundle import BuildError, BuildOptions, build
from bundle.build import print_sizes
from bundle.options import WHEEL_PLATFORMS
from inference.errors import KitError

__all__ = ["main"]

log = logging.getLogger("build_kernel")


def _fold_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold ids, got {text!r}") from None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = BuildOptions()
    parser = argparse.ArgumentParser(
        prog="build_kernel.py",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--weights", type=Path, default=defaults.weights, help="manifest.json + ONNX folds "
                        "(default: weights/)")
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder (default: dist/)")
    parser.add_argument("--username", default=os.environ.get("KAGGLE_USERNAME", defaults.username),
                        help="Kaggle user name (default: $KAGGLE_USERNAME)")
    parser.add_argument("--dataset-slug", default=defaults.dataset_slug, help="bundle dataset slug")
    parser.add_argument("--dataset-title", default=defaults.dataset_title, help="bundle dataset title (6-50 chars)")
    parser.add_argument("--kernel-slug", default=defaults.kernel_slug, help="kernel slug")
    parser.add_argument("--kernel-title", default=None, help="kernel title (default: the slug with spaces; it must "
                        "resolve to the slug)")
    parser.add_argument("--license", default=defaults.license, help="dataset license name (default CC0-1.0)")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True,
                        help="run the kernel on a GPU (default: on)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the kernel private (default: on)")
    parser.add_argument("--wheels", action="store_true",
                        help="download offline wheels with pip download (manylinux, CPython 3.11)")
    parser.add_argument("--wheel-dir", type=Path, default=None, help="take the offline wheels from this folder")
    parser.add_argument("--wheel-packages", default=None,
                        help="comma-separated requirement specs to bundle (default: onnxruntime-gpu no newer than "
                             "the installed onnxruntime, pydicom and the pylibjpeg/gdcm decoders, pinned as in "
                             "requirements-kernel.txt)")
    parser.add_argument("--wheel-platform", action="append", default=None,
                        help=f"pip --platform tag, repeatable (default: {', '.join(WHEEL_PLATFORMS)})")
    parser.add_argument("--python-version", default=defaults.python_version, help="Kaggle's Python (default 3.11)")
    parser.add_argument("--tta", choices=("keep", "on", "off"), default="keep",
                        help="left-right flip TTA, written into the bundled manifest (default: keep the manifest's)")
    parser.add_argument("--aggregation", choices=("keep", "max", "topk_mean", "learned"), default="keep",
                        help="window -> series reduction written into the bundled manifest (default: keep the "
                             "trainer's choice; learned needs the aggregator the trainer fitted)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per onnxruntime run (GPU: 64-128)")
    parser.add_argument("--stride", type=int, default=None, help="visit every n-th centre slice (speed vs accuracy)")
    parser.add_argument("--gpu-batch-size", type=int, default=None,
                        help="windows per onnxruntime run when the folds run on CUDA (T4: 64-128)")
    parser.add_argument("--degrade", default=None,
                        help="the run budget's speed-ups, in the order the kernel may take them when the projected "
                             "run passes its margin (default tta_off,stride_2,half_folds; 'none': never)")
    parser.add_argument("--expected-series", type=int, default=None,
                        help="series the run budget projects for (default 2500, about the hidden test set)")
    parser.add_argument("--degrade-after", type=int, default=None,
                        help="series finished at a level before the run budget may change it (default 5: one slow "
                             "series is no evidence)")
    parser.add_argument("--folds", type=_fold_list, default=None, help="bundle only these folds, e.g. 0,1")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns 0 on success, 1 when the build fails (nothing written)."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = BuildOptions(
        weights=args.weights, out=args.out, username=args.username, dataset_slug=args.dataset_slug,
        dataset_title=args.dataset_title, kernel_slug=args.kernel_slug, kernel_title=args.kernel_title,
        license=args.license, gpu=args.gpu, private=args.private, download_wheels=args.wheels,
        wheel_dir=args.wheel_dir,
        wheel_packages=tuple(s.strip() for s in args.wheel_packages.split(",") if s.strip())
        if args.wheel_packages else None,
        wheel_platforms=tuple(args.wheel_platform) if args.wheel_platform else WHEEL_PLATFORMS,
        python_version=args.python_version, tta=None if args.tta == "keep" else args.tta == "on",
        aggregation=None if args.aggregation == "keep" else args.aggregation,
        batch_size=args.batch_size, stride=args.stride, folds=args.folds, gpu_batch_size=args.gpu_batch_size,
        degrade_steps=None if args.degrade is None else tuple(
            s.strip() for s in args.degrade.split(",") if s.strip() and args.degrade.strip() != "none"),
        expected_series=args.expected_series, min_series=args.degrade_after,
    )
    try:
        result = build(options)
    except (BuildError, KitError) as exc:
        log.error("build failed, nothing written: %s", exc)
        return 1
    if options.username == BuildOptions.username:
        log.warning("the Kaggle user name is the placeholder %r: rebuild with --username (or $KAGGLE_USERNAME) "
                    "before uploading", options.username)
    print(f"dataset: {result.dataset_dir}  (kaggle datasets create -p {result.dataset_dir} --dir-mode zip)")
    print(f"kernel:  {result.kernel_dir}  (kaggle kernels push -p {result.kernel_dir})")
    print(f"runtime modules: {', '.join(result.modules)}")
    agg, win = result.manifest.aggregation, result.manifest.windows
    print(f"folds {[f.fold for f in result.manifest.folds]}, opsets {sorted(set(result.opsets.values()))}, "
          f"tta_flip={agg.tta_flip}, batch_size={win.batch_size}, gpu_batch_size={win.gpu_batch_size}, "
          f"stride={win.stride}, degrade steps {list(result.manifest.budget.degrade_steps) or 'none'}")
    print_sizes(result.sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
