"""build(): check the weights and options first, then write dataset/ and kernel/ through a staging folder."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.blend import Blend
from inference.errors import ManifestError
from inference.labels import COMPETITION_SLUG
from inference.manifest import MANIFEST_NAME, Manifest

from .checks import check_opsets, check_weights
from .modules import PACKAGE, runtime_modules, vendor_packages
from .notebook import kernel_cells, notebook_json, py_twin
from .options import BUNDLE_MARKER, REPO, BuildError, BuildOptions, check_options
from .wheels import collect_wheels, wheel_name_version

log = logging.getLogger(__name__)

__all__ = ["BuildResult", "build", "print_sizes"]


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


def _given(**values: Any) -> dict[str, Any]:
    """The options that were set (None keeps the manifest's value)."""
    return {name: value for name, value in values.items() if value is not None}


def _adjusted_manifest(manifest: Manifest, options: BuildOptions) -> Manifest:
    """Apply the TTA, aggregation, batch, stride, fold and budget options as config fields (the ONNX files and
    hashes stay).

    Raises:
        BuildError: `--aggregation learned` for weights without a usable learned aggregator.
    """
    windows = dataclasses.replace(manifest.windows, **_given(
        batch_size=options.batch_size, stride=options.stride, gpu_batch_size=options.gpu_batch_size))
    budget = dataclasses.replace(manifest.budget, **_given(
        degrade_steps=options.degrade_steps, expected_series=options.expected_series, min_series=options.min_series))
    aggregation = manifest.aggregation
    if options.tta is not None:
        aggregation = dataclasses.replace(aggregation, tta_flip=options.tta)
    if options.aggregation is not None and manifest.kind_spec.windowed:  # a volume model answers per series
        aggregation = dataclasses.replace(aggregation, method=options.aggregation)
    folds = manifest.folds
    if options.folds is not None:
        folds = tuple(f for f in manifest.folds if f.fold in set(options.folds))
    provenance = dict(manifest.provenance)
    if aggregation.method == "learned" and aggregation != manifest.aggregation:
        from inference.aggregate import LearnedAggregator

        if manifest.aggregator is None:
            raise BuildError("--aggregation learned: the weights hold no aggregator (train with export.oof and "
                             "export.stack on: the trainer fits it on the out-of-fold windows)")
        try:
            LearnedAggregator.from_dict(manifest.aggregator)
        except ManifestError as exc:
            raise BuildError(f"--aggregation learned: {exc}") from exc
    provenance["bundle"] = {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "tta_flip": aggregation.tta_flip, "aggregation": aggregation.method,
                            "batch_size": windows.batch_size,
                            "stride": windows.stride, "gpu_batch_size": windows.gpu_batch_size,
                            "degrade_steps": list(budget.degrade_steps), "folds": [f.fold for f in folds]}
    return dataclasses.replace(manifest, windows=windows, aggregation=aggregation, folds=folds,
                               provenance=provenance, budget=budget)


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


def _size_report(dataset: Path, kernel: Path, members: list[tuple[str, Manifest]]) -> list[tuple[str, int, int]]:
    rows = [("runtime package (inference/)", *_tree_size(dataset / PACKAGE))]
    for part, manifest in members:
        where = f"{part}: " if part else ""
        for entry in manifest.folds:
            rows.append((f"weights {where}fold {entry.fold} ({entry.file})",
                         *_tree_size(dataset / "weights" / part / entry.file)))
        rows.append((f"weights {where}manifest", *_tree_size(dataset / "weights" / part / MANIFEST_NAME)))
    rows.append(("vendored libraries (vendor/)", *_tree_size(dataset / "vendor")))
    if (dataset / "wheels").is_dir():
        for wheel in sorted((dataset / "wheels").glob("*.whl")):
            name, version = wheel_name_version(wheel)
            rows.append((f"wheel {name} {version}", 1, wheel.stat().st_size))
    rows.append(("dataset metadata + marker", 2,
                 (dataset / "dataset-metadata.json").stat().st_size + (dataset / BUNDLE_MARKER).stat().st_size))
    rows.append(("kernel (notebook, .py twin, metadata)", *_tree_size(kernel)))
    return rows


def print_sizes(rows: list[tuple[str, int, int]]) -> None:
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
    kernel_title = check_options(options)
    weights = Path(options.weights)
    try:
        blend = Blend.read(weights)
    except ManifestError as exc:
        raise BuildError(f"weights check failed: {exc}") from exc
    bundled_blend = blend.weighted() if blend is not None else None  # the kernel never loads a zero-weight member
    if bundled_blend is not None and bundled_blend is not blend:
        log.warning("build: blend members %s have zero weight and are not bundled",
                    bundled_blend.provenance["left_out_members"])
        blend = bundled_blend
    # one model, or each member of a blend (its folder under the weights folder)
    parts = [""] if blend is None else [m.folder for m in blend.members]
    members, opsets = [], {}
    for part in parts:
        manifest, member_opsets = check_weights(weights / part, folds=options.folds)
        members.append((part, _adjusted_manifest(manifest, options)))
        opsets.update({str(Path(part) / file): opset for file, opset in member_opsets.items()})
    bundled = members[0][1]
    modules = runtime_modules()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        dataset, kernel = staging / "dataset", staging / "kernel"
        (dataset / PACKAGE).mkdir(parents=True)
        for name in modules:
            shutil.copy2(REPO / PACKAGE / f"{name}.py", dataset / PACKAGE / f"{name}.py")
        for part, member in members:
            for entry in member.folds:
                source = weights / part / entry.file
                target = dataset / "weights" / part / entry.file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                for extra in source.parent.glob(source.name + ".*"):  # external tensor data (fold_0.onnx.data)
                    shutil.copy2(extra, target.parent / extra.name)
            if member.region is not None:  # issue 21: the region locator travels with its model
                shutil.copy2(weights / part / member.region["file"], dataset / "weights" / part / member.region["file"])
            member.write(dataset / "weights" / part)
            Manifest.read(dataset / "weights" / part, verify=True)  # the copy is what the kernel will read
        if blend is not None:
            blend.write(dataset / "weights")
        vendor_packages(dataset / "vendor")
        _, wheel_versions = collect_wheels(options, dataset)
        check_opsets(opsets, wheel_versions.get("onnxruntime-gpu"))
        dataset_id = f"{options.username}/{options.dataset_slug}"
        (dataset / "dataset-metadata.json").write_text(json.dumps(
            {"title": options.dataset_title, "id": dataset_id, "licenses": [{"name": options.license}]},
            indent=2) + "\n")
        import onnxruntime

        (dataset / BUNDLE_MARKER).write_text(json.dumps({
            "dataset_id": dataset_id, "modules": modules, "folds": [f.fold for f in bundled.folds],
            "members": {part or "model": member.kind for part, member in members},
            "region": {part or "model": member.region is not None for part, member in members},  # issue 21
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
    result.sizes = _size_report(dataset, kernel, members)
    return result


