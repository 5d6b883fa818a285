"""weights/manifest.json: round trip, and every mismatch caught at load with a clear message."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.errors import ManifestError
from inference.labels import LABELS
from inference.manifest import FORMAT_VERSION, MANIFEST_NAME, FoldEntry, Manifest, sha256_file


@pytest.fixture()
def bundle(tmp_path):
    for i in range(2):
        (tmp_path / f"fold{i}.onnx").write_bytes(f"model {i}".encode() * 1000)
    folds = tuple(FoldEntry.for_file(tmp_path, f"fold{i}.onnx", fold=i, val_score=(0.7, 0.8)[i]) for i in range(2))
    manifest = Manifest(labels=LABELS, input_name="window", output_name="logits", input_shape=("batch", 3, 64, 64),
                        input_dtype="float16", preprocess=PreprocessConfig(image_size=64, ct_window=(-50, 450)),
                        windows=WindowConfig(offsets=(-1, 0, 1), batch_size=8),
                        aggregation=AggregationConfig(method="topk_mean", top_k=2, tta_flip=True),
                        folds=folds, priors=tuple([0.02] * 13 + [0.4]), provenance={"git_commit": "abc123"})
    manifest.write(tmp_path)
    return tmp_path, manifest


def _edit(folder, **changes):
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1_000_000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_round_trip(bundle):
    folder, manifest = bundle
    assert Manifest.read(folder) == manifest
    assert Manifest.read(folder / MANIFEST_NAME) == manifest
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert data["format_version"] == FORMAT_VERSION and data["labels"] == list(LABELS)
    assert data["folds"][1] == {"fold": 1, "file": "fold1.onnx", "sha256": manifest.folds[1].sha256, "val_score": 0.8}


def test_wrong_hash_fails_at_load(bundle):
    folder, _ = bundle
    (folder / "fold1.onnx").write_bytes(b"another model")
    with pytest.raises(ManifestError, match=r"fold 1: sha256 of .*fold1.onnx"):
        Manifest.read(folder)
    Manifest.read(folder, verify=False)  # the fields alone are fine


def test_missing_file_fails_at_load(bundle):
    folder, _ = bundle
    (folder / "fold0.onnx").unlink()
    with pytest.raises(ManifestError, match=r"fold 0: file .*fold0.onnx is missing"):
        Manifest.read(folder)


def test_wrong_label_order_fails(bundle):
    folder, _ = bundle
    labels = list(LABELS)
    labels[0], labels[1] = labels[1], labels[0]
    _edit(folder, labels=labels)
    with pytest.raises(ManifestError, match="another order"):
        Manifest.read(folder)
    _edit(folder, labels=list(LABELS[:13]) + ["Something Else"])
    with pytest.raises(ManifestError, match="unknown .*Something Else.*missing .*Aneurysm Present"):
        Manifest.read(folder)


@pytest.mark.parametrize("shape", [["batch", 5, 64, 64], ["batch", 3, 224, 224], ["batch", 3, 64]])
def test_input_shape_inconsistent_with_configs_fails(bundle, shape):
    folder, _ = bundle
    _edit(folder, input_shape=shape)
    with pytest.raises(ManifestError, match="input_shape"):
        Manifest.read(folder)


@pytest.mark.parametrize("priors,match", [([0.1] * 13, "13 values"), ([0.1] * 13 + [1.5], "in \\[0, 1\\]")])
def test_bad_priors_fail(bundle, priors, match):
    folder, _ = bundle
    _edit(folder, priors=priors)
    with pytest.raises(ManifestError, match=match):
        Manifest.read(folder)


def test_unreadable_or_foreign_manifests_fail_clearly(bundle, tmp_path_factory):
    folder, _ = bundle
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ManifestError, match="cannot read weights manifest"):
        Manifest.read(empty)
    (empty / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.read(empty)
    _edit(folder, format_version=2)
    with pytest.raises(ManifestError, match="format_version 2 is not supported"):
        Manifest.read(folder)
    _edit(folder, format_version=1, preprocess={"image_size": 64, "colour": "red"})
    with pytest.raises(ManifestError, match="unknown PreprocessConfig keys"):
        Manifest.read(folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    del data["folds"]
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"missing keys \['folds'\]"):
        Manifest.read(folder)


def test_write_refuses_an_invalid_manifest(bundle, tmp_path_factory):
    _, manifest = bundle
    bad = dataclasses.replace(manifest, input_dtype="int8", folds=())
    with pytest.raises(ManifestError, match="input_dtype.*no folds listed"):
        bad.write(tmp_path_factory.mktemp("out"))
