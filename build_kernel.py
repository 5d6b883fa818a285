"""Build the Kaggle submission: a dataset (runtime package, weights, offline wheels) and the kernel notebook."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.errors import KitError, ManifestError
from inference.labels import COMPETITION_SLUG, LABELS
from inference.manifest import MANIFEST_NAME, Manifest

__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "BUNDLE_MARKER",
    "FORBIDDEN_IMPORTS",
    "runtime_modules",
    "default_wheel_packages",
    "kernel_cells",
    "notebook_json",
    "py_twin",
    "cells_from_py",
    "build",
    "main",
]

log = logging.getLogger("build_kernel")

REPO = Path(__file__).resolve().parent
PACKAGE = "inference"
ENTRY_MODULE = "kernel"
BUNDLE_MARKER = "rsna_kit_bundle.json"  # at the dataset root: the notebook finds the bundle by this file
FORBIDDEN_IMPORTS = ("torch", "timm", "torchvision", "training", "phantom", "tests", "evaluation")
# Pure-Python libraries the runtime imports that Kaggle's image may lack: copied from this environment into the
# bundle's vendor/ folder (no wheel, no pip, no network needed on Kaggle).
VENDORED_PACKAGES = ("pebble", "loky", "cloudpickle")
# pip does not widen a --platform tag to older manylinux tags: list every tag the kernel's glibc accepts. Kaggle's
# image is Ubuntu 22.04 (glibc 2.35); pylibjpeg-libjpeg 2.5 ships manylinux_2_31 wheels only.
WHEEL_PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
                   "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
DECODER_PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
                    "python-gdcm")
# Highest ai.onnx opset implemented by onnxruntime releases (docs/Versioning.md of onnxruntime); later releases
# are assumed to support at least the last entry.
ORT_MAX_OPSET = {(1, 12): 17, (1, 13): 17, (1, 14): 18, (1, 15): 19, (1, 16): 19, (1, 17): 20, (1, 18): 21,
                 (1, 19): 21, (1, 20): 21, (1, 21): 21, (1, 22): 22}
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
    wheel_packages: tuple[str, ...] | None = None  # default: default_wheel_packages()
    wheel_platforms: tuple[str, ...] = WHEEL_PLATFORMS
    python_version: str = "3.11"
    tta: bool | None = None  # None keeps the manifest's aggregation.tta_flip
    batch_size: int | None = None  # None keeps the manifest's windows.batch_size
    stride: int | None = None  # None keeps the manifest's windows.stride
    folds: tuple[int, ...] | None = None  # None bundles every fold of the manifest


@dataclass
class BuildResult:
    """Where the bundle went and what it holds."""

    dataset_dir: Path
    kernel_dir: Path
    notebook: Path
    script: Path
    modules: list[str]
    manifest: Manifest
    opsets: dict[str, int]
    sizes: list[tuple[str, int, int]] = field(default_factory=list)  # (part, files, bytes)


# --- runtime package ------------------------------------------------------------------------------------------
def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules of the package, top-level external modules) imported anywhere in `path`, lazily too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    siblings: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    if len(parts) > 1:
                        siblings.add(parts[1])
                else:
                    external.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != PACKAGE:
                    external.add(parts[0])
                    continue
                rest = parts[1:]
            elif node.level == 1:
                rest = (node.module or "").split(".") if node.module else []
            else:
                raise BuildError(f"{path}: imports from outside the {PACKAGE} package (level {node.level})")
            if rest:
                siblings.add(rest[0])
            else:  # from . import x: x is a module only when its file exists
                siblings.update(a.name for a in node.names if (path.parent / f"{a.name}.py").is_file())
    return siblings, external


def runtime_modules(package_dir: Path = REPO / PACKAGE, *, entry: str = ENTRY_MODULE) -> list[str]:
    """The package's modules reachable by imports from `entry` (plus `__init__`), sorted.

    Raises:
        BuildError: a reachable module is missing or imports torch, timm, the trainer, the phantom or the tests.
    """
    todo, seen = [entry, "__init__"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = package_dir / f"{name}.py"
        if not path.is_file():
            raise BuildError(f"the kernel needs {PACKAGE}.{name}, but {path} does not exist")
        seen.add(name)
        siblings, external = _imports(path)
        bad = sorted(external & set(FORBIDDEN_IMPORTS))
        if bad:
            raise BuildError(f"{path} imports {bad}: the kernel runtime must not import {list(FORBIDDEN_IMPORTS)}")
        todo.extend(siblings - seen)
    return sorted(seen)


def _vendor_packages(target: Path, names: Sequence[str] = VENDORED_PACKAGES) -> None:
    """Copy the installed pure-Python packages `names` (source only) into `target`."""
    import importlib

    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise BuildError(f"the kernel needs {name} ({exc}): pip install -r requirements-kernel.txt") from exc
        source = Path(module.__file__).parent
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))


# --- offline wheels -------------------------------------------------------------------------------------------
def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def default_wheel_packages() -> tuple[str, ...]:
    """onnxruntime-gpu (no newer than the onnxruntime that validates the models) and the DICOM decoders, pinned
    as in requirements-kernel.txt."""
    import onnxruntime

    pins = _pins(REPO / "requirements-kernel.txt")
    specs = [f"onnxruntime-gpu<={onnxruntime.__version__}"]
    specs += [f"{name}=={pins[_norm(name)]}" if _norm(name) in pins else name for name in DECODER_PACKAGES]
    return tuple(specs)


def _spec_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])


def _wheel_name_version(path: Path) -> tuple[str, str]:
    parts = path.name.split("-")
    if len(parts) < 5 or not path.name.endswith(".whl"):
        raise BuildError(f"{path} is not a wheel file name (name-version-python-abi-platform.whl)")
    return _norm(parts[0]), parts[1]


def _download_wheels(options: BuildOptions, packages: Sequence[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version",
           options.python_version, "--implementation", "cp", "--dest", str(dest)]
    for platform in options.wheel_platforms:
        cmd += ["--platform", platform]
    cmd += list(packages)
    log.info("downloading wheels: %s", " ".join(cmd))
    proc = subprocess.run(cmd, text=True)
    if proc.returncode != 0:
        raise BuildError(f"pip download failed (exit {proc.returncode}); see the output above. Check the package "
                         f"names/versions in --wheel-packages or bring the wheels with --wheel-dir")


def _collect_wheels(options: BuildOptions, staging: Path) -> tuple[Path | None, dict[str, str]]:
    """Fill staging/wheels; return the folder and {top-level name: version} written to its requirements.txt."""
    if not options.download_wheels and options.wheel_dir is None:
        return None, {}
    packages = options.wheel_packages or default_wheel_packages()
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    if options.wheel_dir is not None:
        found = sorted(Path(options.wheel_dir).glob("*.whl"))
        if not found:
            raise BuildError(f"--wheel-dir {options.wheel_dir} holds no .whl files")
        for path in found:
            shutil.copy2(path, wheels / path.name)
    if options.download_wheels:
        _download_wheels(options, packages, wheels)
    available = {}
    for path in wheels.glob("*.whl"):
        name, version = _wheel_name_version(path)
        available[name] = version
    top = {}
    for spec in packages:
        name = _spec_name(spec)
        if name in available:
            top[name] = available[name]
        else:
            log.warning("no wheel for %s in the bundle: the kernel relies on Kaggle's image for it", spec)
    if not top:
        raise BuildError(f"none of {list(packages)} has a wheel in the bundle; nothing for the kernel to install")
    lines = [f"{name}=={version}" for name, version in sorted(top.items())]
    (wheels / "requirements.txt").write_text("\n".join(lines) + "\n")
    return wheels, top


# --- checks ---------------------------------------------------------------------------------------------------
def _model_opset(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        log.warning("onnx is not installed: cannot read the opset of %s", path)
        return None
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _max_opset(version: str) -> int:
    key = _version_tuple(version)[:2]
    known = [v for k, v in ORT_MAX_OPSET.items() if k <= key]
    return max(known) if known else 0


def check_weights(weights: Path, *, folds: Sequence[int] | None = None) -> tuple[Manifest, dict[str, int]]:
    """Hashes, label order, every fold loaded and run in onnxruntime (CPU); returns the manifest and the opsets.

    Raises:
        BuildError: with the reason (the manifest's own error text included).
    """
    from inference.ensemble import load_ensemble

    try:
        manifest = Manifest.read(weights, verify=True)
    except ManifestError as exc:
        raise BuildError(f"weights check failed: {exc}") from exc
    if tuple(manifest.labels) != LABELS:
        raise BuildError(f"weights check failed: label order {list(manifest.labels)} is not the competition's")
    try:
        ensemble = load_ensemble(weights, providers=["CPUExecutionProvider"], folds=folds, manifest=manifest,
                                 threads=1)
    except ManifestError as exc:
        raise BuildError(f"weights check failed: {exc}") from exc
    channels, size = manifest.windows.channels, manifest.preprocess.image_size
    for session, fold in zip(ensemble.sessions, ensemble.fold_ids):
        batch = np.zeros((2, channels, size, size), dtype=manifest.input_dtype)
        (out,) = session.run([manifest.output_name], {manifest.input_name: batch})
        if np.shape(out) != (2, len(LABELS)) or not np.isfinite(out).all():
            raise BuildError(f"fold {fold}: a zero batch gives output of shape {np.shape(out)} "
                             f"(finite: {bool(np.isfinite(out).all())}); expected (2, {len(LABELS)}) finite logits")
    opsets = {}
    chosen = {e.fold for e in manifest.folds} if folds is None else set(folds)
    for entry in manifest.folds:
        if entry.fold in chosen:
            opset = _model_opset(weights / entry.file)
            if opset is not None:
                opsets[entry.file] = opset
    return manifest, opsets


def _check_opsets(opsets: dict[str, int], bundled_ort: str | None) -> None:
    import onnxruntime

    installed = onnxruntime.__version__
    if bundled_ort is None:
        log.info("no onnxruntime wheel bundled: the kernel uses the image's onnxruntime; models need opset %s "
                 "(checked here with onnxruntime %s)", max(opsets.values(), default="?"), installed)
        return
    if _version_tuple(bundled_ort) >= _version_tuple(installed):
        return  # the installed onnxruntime ran every fold, and onnxruntime keeps backward compatibility
    limit = _max_opset(bundled_ort)
    too_new = {f: o for f, o in opsets.items() if o > limit}
    if too_new:
        raise BuildError(f"the bundled onnxruntime-gpu {bundled_ort} implements opsets up to {limit}, but "
                         f"{too_new} need more: export with a lower opset or bundle a newer onnxruntime-gpu")


# --- kernel notebook ------------------------------------------------------------------------------------------
_CELL_MARK = "# %%"

_CELLS = [
    '''\
# RSNA Intracranial Aneurysm Detection: submission kernel, built by the kit's build_kernel.py.
# Runs offline (internet off): the runtime package, the weights and the wheels come from the bundle dataset.
import glob
import logging
import os
import subprocess
import sys
import time

# Every action sits under `if __name__ == "__main__"`: the runtime's decoding pool starts its workers with
# forkserver, and a worker re-imports a script run as `python kernel.py` (as __mp_main__); unguarded, each worker
# would rerun the whole kernel (unpack, pip, gateway) and delete the files the real run is reading.
log = logging.getLogger("kernel")
DATASET_SLUG = @DATASET_SLUG@
MARKER = @MARKER@


def find_bundle():
    """The bundle dataset folder: $RSNA_BUNDLE_DIR, else the folder under /kaggle/input holding the marker file."""
    if os.environ.get("RSNA_BUNDLE_DIR"):
        return os.environ["RSNA_BUNDLE_DIR"]
    hits = []
    for depth in range(1, 5):
        hits += sorted(glob.glob("/kaggle/input/" + "*/" * depth + MARKER))
    if not hits:
        raise FileNotFoundError(f"no {MARKER} under /kaggle/input: attach the bundle dataset {DATASET_SLUG}")
    hits.sort(key=lambda p: ("/" + DATASET_SLUG + "/") not in p)
    return os.path.dirname(hits[0])


def unpack_archives(bundle):
    """Folders uploaded with `kaggle datasets create --dir-mode zip|tar` may stay archives: unpack them into a
    writable copy of the bundle (the other files are linked)."""
    import shutil
    import tarfile
    import zipfile

    packed = {}
    for name in ("inference", "weights", "wheels"):
        for ext in (".zip", ".tar"):
            path = os.path.join(bundle, name + ext)
            if not os.path.isdir(os.path.join(bundle, name)) and os.path.isfile(path):
                packed[name] = path
    if not packed:
        return bundle
    target = os.environ.get("RSNA_UNPACK_DIR", "/tmp/rsna_bundle")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for name, path in packed.items():
        opener = zipfile.ZipFile if path.endswith(".zip") else tarfile.open
        with opener(path) as archive:
            archive.extractall(os.path.join(target, name))
        log.info("unpacked %s", path)
    for name in os.listdir(bundle):
        if name.rsplit(".", 1)[0] not in packed and not os.path.exists(os.path.join(target, name)):
            os.symlink(os.path.join(bundle, name), os.path.join(target, name))
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    BUNDLE = unpack_archives(find_bundle())
    log.info("bundle: %s", BUNDLE)''',
    '''\
def install_wheels(bundle):
    """pip install the bundled wheels offline (--no-index): nothing comes from the network."""
    wheel_dir = os.path.join(bundle, "wheels")
    requirements = os.path.join(wheel_dir, "requirements.txt")
    if os.environ.get("RSNA_SKIP_WHEELS") or not os.path.isfile(requirements):
        log.info("no bundled wheels to install: using the image's packages")
        return
    if glob.glob(os.path.join(wheel_dir, "onnxruntime_gpu-*.whl")):
        from importlib import metadata
        try:  # the CPU and GPU builds share the onnxruntime module: keep only the GPU one
            metadata.version("onnxruntime")
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=False)
        except metadata.PackageNotFoundError:
            pass
    start = time.time()
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheel_dir, "-q", "-r",
           requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log.error("!!! offline wheel install failed (exit %s); going on with the image's packages !!!\\n%s",
                  proc.returncode, proc.stderr[-4000:])
    else:
        log.info("bundled wheels installed in %.1f s", time.time() - start)


if __name__ == "__main__":
    install_wheels(BUNDLE)''',
    '''\
def run_kernel(bundle):
    """Put the bundled runtime package on sys.path and run its kernel entry (evaluation server or gateway)."""
    package = sorted(glob.glob(os.path.join(bundle, "inference", "kernel.py"))
                     + glob.glob(os.path.join(bundle, "*", "inference", "kernel.py")))
    if not package:
        raise FileNotFoundError(f"no inference/kernel.py in the bundle {bundle}")
    root = os.path.dirname(os.path.dirname(package[0]))
    sys.path.insert(0, root)
    if os.path.isdir(os.path.join(root, "vendor")):  # pure-Python libraries the image may lack (pebble, loky)
        sys.path.insert(1, os.path.join(root, "vendor"))
    if not os.environ.get("RSNA_WEIGHTS_DIR"):
        manifests = sorted(glob.glob(os.path.join(bundle, "weights", "manifest.json"))
                           + glob.glob(os.path.join(bundle, "*", "weights", "manifest.json")))
        if manifests:
            os.environ["RSNA_WEIGHTS_DIR"] = os.path.dirname(manifests[0])

    import inference
    from inference.kernel import main as kernel_main

    log.info("runtime package: %s", os.path.dirname(inference.__file__))
    status = kernel_main([])
    if status != 0:
        raise RuntimeError(f"the kernel failed with status {status}: see the log above")


if __name__ == "__main__":
    run_kernel(BUNDLE)''',
]


def kernel_cells(*, dataset_slug: str) -> list[str]:
    """The notebook's code cells, with the bundle's names filled in."""
    return [cell.replace("@DATASET_SLUG@", repr(dataset_slug)).replace("@MARKER@", repr(BUNDLE_MARKER))
            for cell in _CELLS]


def notebook_json(cells: Sequence[str]) -> dict:
    """An nbformat 4 notebook with one code cell per source."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.11"},
        },
        "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": source.splitlines(keepends=True)} for i, source in enumerate(cells)],
    }


def py_twin(cells: Sequence[str]) -> str:
    """The plain-script twin of the notebook: the same cells, separated by '# %%' markers."""
    return "\n\n".join(f"{_CELL_MARK}\n{source}" for source in cells) + "\n"


def cells_from_py(text: str) -> list[str]:
    """Inverse of `py_twin`."""
    chunks = text.rstrip("\n").split(f"\n\n{_CELL_MARK}\n")
    chunks[0] = chunks[0].removeprefix(f"{_CELL_MARK}\n")
    return chunks


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _check_options(options: BuildOptions) -> str:
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
    if options.stride is not None and options.stride < 1:
        problems.append(f"stride must be >= 1, got {options.stride}")
    if options.wheel_dir is not None and not Path(options.wheel_dir).is_dir():
        problems.append(f"--wheel-dir {options.wheel_dir} is not a folder")
    if problems:
        raise BuildError("; ".join(problems))
    return kernel_title


# --- build ----------------------------------------------------------------------------------------------------
def _adjusted_manifest(manifest: Manifest, options: BuildOptions) -> Manifest:
    """Apply the TTA, batch, stride and fold options as config fields (the ONNX files and hashes stay as they are)."""
    windows = manifest.windows
    if options.batch_size is not None:
        windows = dataclasses.replace(windows, batch_size=options.batch_size)
    if options.stride is not None:
        windows = dataclasses.replace(windows, stride=options.stride)
    aggregation = manifest.aggregation
    if options.tta is not None:
        aggregation = dataclasses.replace(aggregation, tta_flip=options.tta)
    folds = manifest.folds
    if options.folds is not None:
        folds = tuple(f for f in manifest.folds if f.fold in set(options.folds))
    provenance = dict(manifest.provenance)
    provenance["bundle"] = {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "tta_flip": aggregation.tta_flip, "batch_size": windows.batch_size,
                            "stride": windows.stride, "folds": [f.fold for f in folds]}
    return dataclasses.replace(manifest, windows=windows, aggregation=aggregation, folds=folds,
                               provenance=provenance)


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


def _size_report(dataset: Path, kernel: Path, manifest: Manifest) -> list[tuple[str, int, int]]:
    rows = [("runtime package (inference/)", *_tree_size(dataset / PACKAGE))]
    for entry in manifest.folds:
        rows.append((f"weights fold {entry.fold} ({entry.file})", *_tree_size(dataset / "weights" / entry.file)))
    rows.append(("weights manifest", *_tree_size(dataset / "weights" / MANIFEST_NAME)))
    if (dataset / "wheels").is_dir():
        for wheel in sorted((dataset / "wheels").glob("*.whl")):
            name, version = _wheel_name_version(wheel)
            rows.append((f"wheel {name} {version}", 1, wheel.stat().st_size))
    rows.append(("dataset metadata + marker", 2,
                 (dataset / "dataset-metadata.json").stat().st_size + (dataset / BUNDLE_MARKER).stat().st_size))
    rows.append(("kernel (notebook, .py twin, metadata)", *_tree_size(kernel)))
    return rows


def _print_sizes(rows: list[tuple[str, int, int]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'part':<{width}}  files        size")
    for name, files, size in rows:
        print(f"{name:<{width}}  {files:5d}  {size / 1e6:9.2f} MB")
    print(f"{'total':<{width}}  {sum(r[1] for r in rows):5d}  {sum(r[2] for r in rows) / 1e6:9.2f} MB")


def build(options: BuildOptions) -> BuildResult:
    """Check the weights, then write `out/dataset` and `out/kernel` (replacing earlier builds there).

    Every check runs before anything is written to `out`: a failed build leaves `out` as it was.

    Raises:
        BuildError: bad options, weights that fail a check, or a failed wheel download.
    """
    kernel_title = _check_options(options)
    weights = Path(options.weights)
    manifest, opsets = check_weights(weights, folds=options.folds)
    bundled = _adjusted_manifest(manifest, options)
    modules = runtime_modules()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        dataset, kernel = staging / "dataset", staging / "kernel"
        (dataset / PACKAGE).mkdir(parents=True)
        for name in modules:
            shutil.copy2(REPO / PACKAGE / f"{name}.py", dataset / PACKAGE / f"{name}.py")
        for entry in bundled.folds:
            source = weights / entry.file
            target = dataset / "weights" / entry.file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            for extra in source.parent.glob(source.name + ".*"):  # external tensor data (fold_0.onnx.data)
                shutil.copy2(extra, target.parent / extra.name)
        _vendor_packages(dataset / "vendor")
        bundled.write(dataset / "weights")
        Manifest.read(dataset / "weights", verify=True)  # the copy is what the kernel will read
        _, wheel_versions = _collect_wheels(options, dataset)
        _check_opsets(opsets, wheel_versions.get("onnxruntime-gpu"))
        dataset_id = f"{options.username}/{options.dataset_slug}"
        (dataset / "dataset-metadata.json").write_text(json.dumps(
            {"title": options.dataset_title, "id": dataset_id, "licenses": [{"name": options.license}]},
            indent=2) + "\n")
        import onnxruntime

        (dataset / BUNDLE_MARKER).write_text(json.dumps({
            "dataset_id": dataset_id, "modules": modules, "folds": [f.fold for f in bundled.folds],
            "opsets": opsets, "checked_with_onnxruntime": onnxruntime.__version__, "wheels": wheel_versions,
            "aggregation": dataclasses.asdict(bundled.aggregation), "windows": dataclasses.asdict(bundled.windows),
        }, indent=2) + "\n")
        kernel.mkdir()
        cells = kernel_cells(dataset_slug=options.dataset_slug)
        notebook = kernel / f"{options.kernel_slug}.ipynb"
        notebook.write_text(json.dumps(notebook_json(cells), indent=1) + "\n")
        script = kernel / f"{options.kernel_slug}.py"
        script.write_text(py_twin(cells))
        (kernel / "kernel-metadata.json").write_text(json.dumps({
            "id": f"{options.username}/{options.kernel_slug}",
            "title": kernel_title,
            "code_file": notebook.name,
            "language": "python",
            "kernel_type": "notebook",
            "is_private": options.private,
            "enable_gpu": options.gpu,
            "enable_tpu": False,
            "enable_internet": False,
            "dataset_sources": [dataset_id],
            "competition_sources": [COMPETITION_SLUG],
            "kernel_sources": [],
            "model_sources": [],
        }, indent=2) + "\n")
        for name in ("dataset", "kernel"):
            final = out / name
            if final.exists():
                shutil.rmtree(final)
            (staging / name).rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    dataset, kernel = out / "dataset", out / "kernel"
    result = BuildResult(dataset_dir=dataset, kernel_dir=kernel, notebook=kernel / notebook.name,
                         script=kernel / script.name, modules=modules, manifest=bundled, opsets=opsets)
    result.sizes = _size_report(dataset, kernel, bundled)
    return result


def _fold_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold ids, got {text!r}") from None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = BuildOptions()
    parser = argparse.ArgumentParser(
        prog="build_kernel.py",
        description="Build the Kaggle submission from a weights folder: OUT/dataset (runtime package, weights, "
                    "optional offline wheels, dataset-metadata.json) and OUT/kernel (notebook, .py twin, "
                    "kernel-metadata.json). The weights are checked first (hashes, labels, onnxruntime load, opset).")
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
    parser.add_argument("--batch-size", type=int, default=None, help="windows per onnxruntime run (GPU: 64-128)")
    parser.add_argument("--stride", type=int, default=None, help="visit every n-th centre slice (speed vs accuracy)")
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
        batch_size=args.batch_size, stride=args.stride, folds=args.folds,
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
          f"tta_flip={agg.tta_flip}, batch_size={win.batch_size}, stride={win.stride}")
    _print_sizes(result.sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
