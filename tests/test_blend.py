"""Several models in one bundle: the volume model (trained, exported, run by the kernel) and the per-label blend."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evaluation.metric import roc_auc
from inference.blend import BLEND_NAME, Blend, BlendMember
from inference.errors import InferenceError, ManifestError
from inference.labels import LABELS, PRESENT_INDEX
from inference.manifest import Manifest
from inference.normalize import resample_depth
from inference.predict import Predictor
from training.blend import blend_members, fit_blend_weights, simplex_grid

ROOT = Path(__file__).resolve().parents[1]
import phantom  # noqa: E402

TINY = ["train.epochs=1", "train.windows_per_epoch=64", "train.batch_size=8", "train.num_folds=3",
        "train.val_every=1", "train.warmup_steps=2", "export.parity_windows=4", "cache.workers=1",
        "train.threads=1", "preprocess.image_size=32", "train.seed=3"]


def test_resample_depth_spreads_the_slices_from_first_to_last():
    stack = (np.arange(5)[:, None, None] * 50 + np.zeros((1, 3, 3))).astype(np.uint8)  # 0, 50, ..., 200
    out = resample_depth(stack, 9)
    assert out.shape == (9, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0, 0], [0, 25, 50, 75, 100, 125, 150, 175, 200])
    np.testing.assert_array_equal(resample_depth(stack, 5), stack)
    assert resample_depth(stack[:1], 4).shape == (4, 3, 3)  # one slice: repeated
    with pytest.raises(InferenceError):
        resample_depth(stack, 0)


def _two_members(split: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth and two members: `a` ranks the labels where `split` is True well (noise elsewhere), `b` the others."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((200, len(LABELS))) < 0.3).astype(float)
    good = truth * 0.6 + rng.random(truth.shape) * 0.5
    noise = rng.random(truth.shape)
    return truth, np.where(split, good, noise), np.where(split, noise, good)


def test_per_label_blend_weights_follow_the_member_that_ranks_each_label_best():
    truth, a, b = _two_members(np.arange(len(LABELS)) < 7)  # member a knows labels 0-6, b the others
    weights = fit_blend_weights(np.stack([a, b]), truth, per_label=True)
    assert weights.shape == (len(LABELS), 2) and np.allclose(weights.sum(axis=1), 1)
    assert (weights[:7, 0] > 0.5).all() and (weights[7:, 1] > 0.5).all()
    blend = np.einsum("lm,mnl->nl", weights, np.stack([a, b]))
    for j in range(len(LABELS)):
        assert roc_auc(truth[:, j], blend[:, j]) >= max(roc_auc(truth[:, j], a[:, j]),
                                                        roc_auc(truth[:, j], b[:, j])) - 1e-12
    assert len(simplex_grid(3, 0.5)) == 6


def test_blend_weights_give_present_its_own_and_share_one_set_across_the_locations():
    truth, a, b = _two_members(np.arange(len(LABELS)) == PRESENT_INDEX)  # a knows Present only, b the locations
    weights = fit_blend_weights(np.stack([a, b]), truth)
    locations = [j for j in range(len(LABELS)) if j != PRESENT_INDEX]
    assert np.allclose(weights[locations], weights[locations[0]]) and weights[locations[0], 1] > 0.5
    assert weights[PRESENT_INDEX, 0] > 0.5
    truth, a, _ = _two_members(np.ones(len(LABELS), bool))
    alone = fit_blend_weights(np.stack([a, a]), truth)  # members that agree: a tie keeps the best member alone
    np.testing.assert_array_equal(alone, np.tile([1.0, 0.0], (len(LABELS), 1)))


def test_a_blend_file_is_checked_when_read(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text("{}")
    weights = np.full((len(LABELS), 1), 1.0)
    Blend((BlendMember("a", "a"),), weights).write(tmp_path)
    assert Blend.read(tmp_path).members[0].name == "a"
    data = json.loads((tmp_path / BLEND_NAME).read_text())
    for change, match in (({"format_version": 9}, "format_version"), ({"weights": [[0.5]] * len(LABELS)}, "sum"),
                          ({"members": [{"name": "b", "folder": "b"}]}, "no manifest")):
        (tmp_path / BLEND_NAME).write_text(json.dumps({**data, **change}))
        with pytest.raises(ManifestError, match=match):
            Blend.read(tmp_path)
    assert Blend.read(tmp_path / "a") is None  # a plain model folder


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict:
    """The same tiny phantom, trained twice on fold 0: the 2.5D model and the volume model (depth 8)."""
    import train_minimal

    root = tmp_path_factory.mktemp("blend")
    data = root / "data"
    phantom.make_dataset(data, series=9, test_series=0, seed=5, slices=(12, 16), size=(40, 48),
                         positive_fraction=0.5, workers=1)
    out = {}
    volume = ["model.kind=volume32", "volume.depth=8", "model.heatmap_weight=0"]  # tiny.yaml's heatmaps are 2.5D's
    for name, extra in (("window25d", []), ("volume32", volume)):
        argv = ["--data-dir", str(data), "--config", str(ROOT / "configs" / "tiny.yaml"), "--folds", "0",
                "--out", str(root / name), "--cache-dir", str(root / "cache"), "--checkpoint-dir",
                str(root / f"ckpt_{name}"), "--quiet"]
        for item in TINY + extra:
            argv += ["--set", item]
        assert train_minimal.main(argv) == 0
        out[name] = root / name
    return {"root": root, "data": data, **out}


def _mixed_blend(members: dict, out: Path) -> dict:
    """The two members blended by training.blend, then given fixed weights that use both (3 out-of-fold series
    fit weights that may leave a member out; these tests are about serving a blend)."""
    report = blend_members({"window25d": members["window25d"], "volume32": members["volume32"]}, members["data"],
                           out, force=True, progress=False)
    fitted = Blend.read(out)
    Blend(fitted.members, np.tile([0.7, 0.3], (len(LABELS), 1)), fitted.provenance).write(out)
    return report


def test_the_volume_model_trains_exports_and_runs_in_the_kernel(members):
    manifest = Manifest.read(members["volume32"], verify=True)
    assert manifest.kind == "volume32" and manifest.volume.depth == 8
    assert manifest.input_name == "volume" and tuple(manifest.input_shape[1:]) == (8, 32, 32)
    assert manifest.provenance["parity"]["0"] <= 1e-4
    uid = (members["data"] / "train.csv").read_text().splitlines()[1].split(",")[0]
    probs, report = Predictor(members["volume32"], providers=["CPUExecutionProvider"]).predict_series(
        members["data"] / "series" / uid)
    assert report.answer == "model" and probs.shape == (len(LABELS),) and ((probs >= 0) & (probs <= 1)).all()
    oof = json.loads((members["volume32"] / "oof_report.json").read_text())
    assert oof["overall"]["series"] == 3


def test_blended_bundle_answers_the_weighted_members_and_the_build_bundles_it(members, tmp_path):
    from bundle import BuildOptions, build

    out = tmp_path / "blend"
    report = _mixed_blend(members, out)
    assert report["series"] == 3 and set(report["members"]) == {"window25d", "volume32"}
    blend = Blend.read(out)
    assert [m.name for m in blend.members] == ["window25d", "volume32"]
    uid = (members["data"] / "train.csv").read_text().splitlines()[2].split(",")[0]
    series = members["data"] / "series" / uid
    probs, series_report = Predictor(out, providers=["CPUExecutionProvider"]).predict_series(series)
    each = [Predictor(out / name, providers=["CPUExecutionProvider"]).predict_probabilities(series)
            for name in ("window25d", "volume32")]
    np.testing.assert_allclose(probs, blend.combine(dict(zip(("window25d", "volume32"), each))), atol=1e-9)
    assert set(series_report.members_s) == {"window25d", "volume32"}
    _, alone = Predictor(out / "window25d", providers=["CPUExecutionProvider"]).predict_series(series)
    assert series_report.answer == "model" and series_report.windows == alone.windows > 1
    assert series_report.overlapped  # the 2.5D member prepared its slices under the model, as one model does
    np.testing.assert_allclose(series_report.member_probs["volume32"], each[1], atol=1e-9)
    result = build(BuildOptions(weights=out, out=tmp_path / "dist"))
    weights = result.dataset_dir / "weights"
    assert Blend.read(weights) is not None
    assert Manifest.read(weights / "volume32", verify=True).kind == "volume32"
    bundled = Predictor(weights, providers=["CPUExecutionProvider"]).predict_probabilities(series)
    np.testing.assert_allclose(bundled, probs, atol=1e-9)


def test_the_bundled_kernel_serves_a_blend_and_records_each_member(members, tmp_path):
    import subprocess
    import sys

    import polars as pl
    from kernel_env import clean_kernel_env

    from bundle import BuildOptions, build
    from evaluation.__main__ import summarize_run
    from inference.labels import ID_COLUMN

    blended = tmp_path / "blend"
    _mixed_blend(members, blended)
    result = build(BuildOptions(weights=blended, out=tmp_path / "dist"))
    phantom.make_dataset(tmp_path / "phantom", series=0, test_series=3, seed=8, slices=(12, 16), size=(40, 48),
                         workers=1)
    test_dir = tmp_path / "phantom" / "test"
    working = tmp_path / "working"
    working.mkdir()
    env = clean_kernel_env(tmp_path, result.dataset_dir, test_dir)
    proc = subprocess.run([sys.executable, str(result.script)], cwd=working, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    submission = pl.read_parquet(working / "submission.parquet")
    predictor = Predictor(blended, providers=["CPUExecutionProvider"])
    for row in submission.iter_rows(named=True):
        expected = predictor.predict_probabilities(test_dir / "series" / row[ID_COLUMN])
        np.testing.assert_allclose([row[label] for label in LABELS], expected, atol=1e-6)
    summary = summarize_run(working / "gateway_run.json", labels_csv=test_dir / "test_labels.csv")
    assert summary["answers"] == {"model": 3}
    assert set(summary["members"]) == {"window25d", "volume32"}
    assert all(m["seconds"] > 0 for m in summary["members"].values())


def test_a_member_that_fails_costs_only_its_share_of_the_blend(members, tmp_path, caplog):
    blend = Blend((BlendMember("a", "a"), BlendMember("b", "b")),
                  np.tile([[1.0, 0.0]], (len(LABELS), 1)) * 0.25 + np.tile([[0.0, 1.0]], (len(LABELS), 1)) * 0.75)
    a, b = np.full(len(LABELS), 0.2), np.full(len(LABELS), 0.6)
    np.testing.assert_allclose(blend.combine({"a": a, "b": b}), 0.25 * 0.2 + 0.75 * 0.6)
    np.testing.assert_allclose(blend.combine({"a": a}), a)  # renormalised over the members that answered
    only_b = Blend(blend.members, np.tile([[0.0, 1.0]], (len(LABELS), 1)))
    np.testing.assert_allclose(only_b.combine({"a": a}), a)  # no weight left: equal shares of those that answered
    with pytest.raises(InferenceError, match="no member"):
        blend.combine({})

    out = tmp_path / "blend"
    _mixed_blend(members, out)
    fold = Manifest.read(out / "volume32", verify=False).folds[0].file
    (out / "volume32" / fold).write_bytes(b"not a model any more")  # the member's sessions cannot be built
    uid = (members["data"] / "train.csv").read_text().splitlines()[1].split(",")[0]
    series = members["data"] / "series" / uid
    with caplog.at_level("ERROR", logger="inference.predict"):
        probs, report = Predictor(out, providers=["CPUExecutionProvider"]).predict_series(series)
    alone = Predictor(out / "window25d", providers=["CPUExecutionProvider"]).predict_probabilities(series)
    np.testing.assert_allclose(probs, alone, atol=1e-9)
    assert report.answer == "partial" and "member volume32" in report.error
    assert set(report.member_probs) == {"window25d"} and "blend member volume32 failed" in caplog.text


def test_a_blend_that_does_not_beat_its_best_member_out_of_fold_answers_with_that_member_alone(members, tmp_path,
                                                                                               caplog):
    twin = Path(shutil.copytree(members["window25d"], tmp_path / "twin"))  # blending a model with itself gains 0
    out = tmp_path / "blend"
    with caplog.at_level("WARNING", logger="training.blend"):
        report = blend_members({"window25d": members["window25d"], "twin": twin}, members["data"], out,
                               progress=False)
    assert report["used"] == "window25d alone" and "not 0.005 above window25d alone" in caplog.text
    blend = Blend.read(out)
    np.testing.assert_array_equal(blend.weights, np.tile([1.0, 0.0], (len(LABELS), 1)))
    assert [m.name for m in blend.weighted_members()] == ["window25d"]
    uid = (members["data"] / "train.csv").read_text().splitlines()[1].split(",")[0]
    series = members["data"] / "series" / uid
    predictor = Predictor(out, providers=["CPUExecutionProvider"])
    assert list(predictor.members) == ["window25d"]  # the zero-weight member is not loaded, never run
    probs, report = predictor.predict_series(series)
    alone = Predictor(members["window25d"], providers=["CPUExecutionProvider"]).predict_probabilities(series)
    np.testing.assert_allclose(probs, alone, atol=1e-9)
    assert report.answer == "model" and set(report.members_s) == {"window25d"}
    from bundle import BuildOptions, build

    with caplog.at_level("WARNING", logger="bundle.build"):
        result = build(BuildOptions(weights=out, out=tmp_path / "dist"))
    weights = result.dataset_dir / "weights"
    bundled = Blend.read(weights)
    assert [m.name for m in bundled.members] == ["window25d"] and not (weights / "twin").exists()
    assert bundled.provenance["left_out_members"] == ["twin"] and "['twin'] have zero weight" in caplog.text
    np.testing.assert_allclose(Predictor(weights, providers=["CPUExecutionProvider"]).predict_probabilities(series),
                               alone, atol=1e-9)
    forced = blend_members({"window25d": members["window25d"], "twin": twin}, members["data"], tmp_path / "forced",
                           force=True, progress=False)
    assert forced["used"] == "blend"
    lenient = blend_members({"window25d": members["window25d"], "twin": twin}, members["data"],
                            tmp_path / "lenient", min_gain=-0.01, progress=False)  # a tie now clears the bar
    assert lenient["used"] == "blend"


def test_members_of_other_fold_assignments_are_refused(members, tmp_path):
    from inference.errors import ConfigError

    other = Path(shutil.copytree(members["volume32"], tmp_path / "other"))
    manifest = Manifest.read(other, verify=False)
    assignment = {u: (f + 1) % 3 for u, f in manifest.provenance["fold_assignment"].items()}
    from dataclasses import replace

    replace(manifest, provenance={**manifest.provenance, "fold_assignment": assignment}).write(other)
    with pytest.raises(ConfigError, match="another fold assignment"):
        blend_members({"a": members["window25d"], "b": other}, members["data"], tmp_path / "out", progress=False)


def test_an_unknown_model_kind_is_refused_with_a_clear_message(members, tmp_path):
    folder = Path(shutil.copytree(members["volume32"], tmp_path / "future"))
    data = json.loads((folder / "manifest.json").read_text())
    data["kind"] = "transformer3d"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="kind 'transformer3d' is not one this kernel runs"):
        Manifest.read(folder, verify=True)
