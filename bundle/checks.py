"""Check the weights before anything is written: manifest and hashes, every fold run in onnxruntime, opsets."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.errors import ManifestError
from inference.labels import LABELS
from inference.manifest import Manifest

from .options import BuildError
from .wheels import version_tuple

__all__ = ["ORT_MAX_OPSET", "check_weights", "check_locator", "check_opsets", "max_opset"]

log = logging.getLogger(__name__)

# Highest ai.onnx opset implemented by onnxruntime releases (onnxruntime's docs/Versioning.md). Consulted only for
# a bundled onnxruntime-gpu older than the onnxruntime that ran the folds here; a release missing from it is a
# build error, never a guess.
ORT_MAX_OPSET = {(1, 12): 17, (1, 13): 17, (1, 14): 18, (1, 15): 19, (1, 16): 19, (1, 17): 20, (1, 18): 21,
                 (1, 19): 21, (1, 20): 21, (1, 21): 21, (1, 22): 22}


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


def max_opset(version: str) -> int:
    """The highest opset onnxruntime `version` implements.

    Raises:
        BuildError: the release is not in ORT_MAX_OPSET.
    """
    key = version_tuple(version)[:2]
    if key not in ORT_MAX_OPSET:
        known = ", ".join(f"{major}.{minor}" for major, minor in sorted(ORT_MAX_OPSET))
        raise BuildError(f"the kit does not know which opsets onnxruntime {version} implements (known: {known}): "
                         "bundle an onnxruntime-gpu at least as new as the onnxruntime installed here, or add the "
                         "release to bundle.checks.ORT_MAX_OPSET from onnxruntime's docs/Versioning.md")
    return ORT_MAX_OPSET[key]


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
    if manifest.aggregation.method == "learned":  # the kernel would fall back to a fixed reduction: refuse it here
        from inference.aggregate import LearnedAggregator

        try:
            LearnedAggregator.from_dict(manifest.aggregator or {})
        except ManifestError as exc:
            raise BuildError(f"weights check failed: aggregation.method is 'learned' but {exc}") from exc
    try:
        ensemble = load_ensemble(weights, providers=["CPUExecutionProvider"], folds=folds, manifest=manifest,
                                 threads=1)
    except ManifestError as exc:
        raise BuildError(f"weights check failed: {exc}") from exc
    channels, size = manifest.input_channels, manifest.preprocess.image_size
    for session, fold in zip(ensemble.sessions, ensemble.fold_ids):
        batch = np.zeros((2, channels, size, size), dtype=manifest.input_dtype)
        (out,) = session.run([manifest.output_name], {manifest.input_name: batch})
        if np.shape(out) != (2, len(LABELS)) or not np.isfinite(out).all():
            raise BuildError(f"fold {fold}: a zero batch gives output of shape {np.shape(out)} "
                             f"(finite: {bool(np.isfinite(out).all())}); expected (2, {len(LABELS)}) finite logits")
    opsets = {}
    if manifest.region is not None:  # issue 21: the region locator is checked like a fold
        opsets.update(check_locator(weights, manifest))
    chosen = {e.fold for e in manifest.folds} if folds is None else set(folds)
    for entry in manifest.folds:
        if entry.fold in chosen:
            opset = _model_opset(weights / entry.file)
            if opset is not None:
                opsets[entry.file] = opset
    return manifest, opsets


def check_locator(weights: Path, manifest: Manifest) -> dict[str, int]:
    """The region locator (issue 21): its spec parses, and onnxruntime runs it on a zero input to 3 finite numbers.

    Raises:
        BuildError: with the reason.
    """
    import onnxruntime as ort

    from inference.region import LOCATOR_INPUT, LOCATOR_OUTPUT, RegionSpec

    try:
        spec = RegionSpec.from_dict(manifest.region or {})
        session = ort.InferenceSession(str(weights / spec.file), providers=["CPUExecutionProvider"])
        size = spec.input_size
        (out,) = session.run([LOCATOR_OUTPUT], {LOCATOR_INPUT: np.zeros((2, 6, size, size), np.float32)})
    except Exception as exc:
        raise BuildError(f"region locator check failed: {type(exc).__name__}: {exc}") from exc
    if np.shape(out) != (2, 3) or not np.isfinite(out).all():
        raise BuildError(f"region locator: a zero input gives output of shape {np.shape(out)}; expected (2, 3) finite")
    opset = _model_opset(weights / spec.file)
    return {} if opset is None else {spec.file: opset}


def check_opsets(opsets: dict[str, int], bundled_ort: str | None) -> None:
    """The bundled onnxruntime-gpu must implement every fold's opset.

    Raises:
        BuildError: a fold needs a newer opset, or the bundled release is older than the one installed here and
            unknown to ORT_MAX_OPSET.
    """
    import onnxruntime

    installed = onnxruntime.__version__
    if bundled_ort is None:
        log.info("no onnxruntime wheel bundled: the kernel uses the image's onnxruntime; models need opset %s "
                 "(checked here with onnxruntime %s)", max(opsets.values(), default="?"), installed)
        return
    if version_tuple(bundled_ort) >= version_tuple(installed):
        return  # the installed onnxruntime ran every fold, and onnxruntime keeps backward compatibility
    limit = max_opset(bundled_ort)
    too_new = {f: o for f, o in opsets.items() if o > limit}
    if too_new:
        raise BuildError(f"the bundled onnxruntime-gpu {bundled_ort} implements opsets up to {limit}, but "
                         f"{too_new} need more: export with a lower opset or bundle a newer onnxruntime-gpu")
