"""What a build is asked for (`BuildOptions`), its error type, and the naming rules Kaggle enforces."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from inference.config import AGGREGATION_METHODS, AggregationMethod
from inference.errors import KitError

__all__ = ["REPO", "BUNDLE_MARKER", "WHEEL_PLATFORMS", "BuildError", "BuildOptions", "check_options"]

REPO = Path(__file__).resolve().parent.parent
BUNDLE_MARKER = "rsna_kit_bundle.json"  # at the dataset root: the notebook finds the bundle by this file
# pip does not widen a --platform tag to older manylinux tags: list every tag the kernel's glibc accepts. Kaggle's
# image is Ubuntu 22.04 (glibc 2.35); pylibjpeg-libjpeg 2.5 ships manylinux_2_31 wheels only.
WHEEL_PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
                   "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")


class BuildError(KitError):
    """The bundle cannot be built (bad weights, bad options, a failed download); nothing was written."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything `build` needs; the CLI fills it from the command line."""

    weights: Path = REPO / "weights"
    out: Path = REPO / "dist"
    username: str = "your-kaggle-username"
    dataset_slug: str = "rsna-aneurysm-kit-bundle"
    dataset_title: str = "RSNA aneurysm kit bundle"
    kernel_slug: str = "rsna-aneurysm-kit-submission"
    kernel_title: str | None = None  # default: derived from kernel_slug (Kaggle wants title and slug to agree)
    license: str = "CC0-1.0"
    gpu: bool = True
    private: bool = True
    download_wheels: bool = False
    wheel_dir: Path | None = None
    wheel_packages: tuple[str, ...] | None = None  # default: wheels.default_wheel_packages()
    wheel_platforms: tuple[str, ...] = WHEEL_PLATFORMS
    python_version: str = "3.11"
    tta: bool | None = None  # None keeps the manifest's aggregation.tta_flip
    aggregation: AggregationMethod | None = None  # None keeps the manifest's aggregation.method
    batch_size: int | None = None  # None keeps the manifest's windows.batch_size
    stride: int | None = None  # None keeps the manifest's windows.stride
    gpu_batch_size: int | None = None  # None keeps the manifest's windows.gpu_batch_size
    degrade_steps: tuple[str, ...] | None = None  # None keeps the manifest's budget.degrade_steps
    expected_series: int | None = None  # None keeps the manifest's budget.expected_series
    min_series: int | None = None  # None keeps the manifest's budget.min_series
    folds: tuple[int, ...] | None = None  # None bundles every fold of the manifest


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def check_options(options: BuildOptions) -> str:
    """Every option problem at once (Kaggle's slug and title rules included); returns the kernel title.

    Raises:
        BuildError: listing each problem.
    """
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_-]+", options.username):
        problems.append(f"username {options.username!r} is not a Kaggle user name")
    for what, slug in (("dataset slug", options.dataset_slug), ("kernel slug", options.kernel_slug)):
        if not _SLUG.fullmatch(slug) or "--" in slug:
            problems.append(f"{what} {slug!r} must be 3-50 lowercase letters, digits or single hyphens")
    if not 6 <= len(options.dataset_slug) <= 50:
        problems.append(f"dataset slug {options.dataset_slug!r} must have 6 to 50 characters (Kaggle's rule)")
    if not 6 <= len(options.dataset_title) <= 50:
        problems.append(f"dataset title {options.dataset_title!r} must have 6 to 50 characters (Kaggle's rule)")
    kernel_title = options.kernel_title or options.kernel_slug.replace("-", " ")
    if _slugify(kernel_title) != options.kernel_slug:
        problems.append(f"kernel title {kernel_title!r} resolves to the slug {_slugify(kernel_title)!r}, not "
                        f"{options.kernel_slug!r}: Kaggle would create another kernel; make them agree")
    if options.batch_size is not None and options.batch_size < 1:
        problems.append(f"batch size must be >= 1, got {options.batch_size}")
    if options.aggregation is not None and options.aggregation not in AGGREGATION_METHODS:
        problems.append(f"aggregation {options.aggregation!r} is not one of {', '.join(AGGREGATION_METHODS)}")
    if options.stride is not None and options.stride < 1:
        problems.append(f"stride must be >= 1, got {options.stride}")
    if options.gpu_batch_size is not None and options.gpu_batch_size < 1:
        problems.append(f"GPU batch size must be >= 1, got {options.gpu_batch_size}")
    if options.degrade_steps is not None:
        from inference.budget import DEGRADE_STEPS

        unknown = [s for s in options.degrade_steps if s not in DEGRADE_STEPS]
        if unknown or len(set(options.degrade_steps)) != len(options.degrade_steps):
            problems.append(f"--degrade {','.join(options.degrade_steps)}: steps must be distinct names among "
                            f"{', '.join(DEGRADE_STEPS)}")
    if options.expected_series is not None and options.expected_series < 1:
        problems.append(f"expected series must be >= 1, got {options.expected_series}")
    if options.min_series is not None and options.min_series < 1:
        problems.append(f"--degrade-after must be >= 1, got {options.min_series}")
    if options.wheel_dir is not None and not Path(options.wheel_dir).is_dir():
        problems.append(f"--wheel-dir {options.wheel_dir} is not a folder")
    if problems:
        raise BuildError("; ".join(problems))
    return kernel_title
