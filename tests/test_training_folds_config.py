"""Fold stratification, the trainer's YAML config with overrides, its CLI, and the scoring helpers vs sklearn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.metric import score_by_modality, score_predictions
from inference.errors import ConfigError
from inference.labels import LABELS, PRESENT_INDEX
from training.config import TrainConfig, apply_overrides, describe_keys, load_config
from training.folds import make_folds

ROOT = Path(__file__).resolve().parent.parent


def test_folds_are_stratified_on_present_and_modality():
    rng = np.random.default_rng(0)
    n = 200
    present = rng.integers(0, 2, n)
    modality = rng.choice(["CTA", "MRA", "MRI T2", "MRI T1post"], n, p=[0.4, 0.3, 0.2, 0.1])
    folds = make_folds(present, modality, num_folds=5, seed=0)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 2
    for f in range(5):
        part = folds == f
        assert abs(present[part].mean() - present.mean()) < 0.06
        for m in ("CTA", "MRA", "MRI T2"):
            expected = (modality == m).sum() / 5
            assert abs(((modality == m) & part).sum() - expected) <= 2, (f, m)
            # positives of each modality are spread too
            pos = ((modality == m) & (present == 1))
            assert abs((pos & part).sum() - pos.sum() / 5) <= 2, (f, m)
    assert np.array_equal(folds, make_folds(present, modality, num_folds=5, seed=0))  # deterministic
    assert not np.array_equal(folds, make_folds(present, modality, num_folds=5, seed=1))


def test_folds_survive_rare_strata_and_reject_too_few_series():
    present = [1, 0, 1, 0, 1, 0, 1, 0, 1]
    modality = ["CTA"] * 8 + ["MRI T1post"]  # one-series stratum
    folds = make_folds(present, modality, num_folds=3, seed=0)
    assert sorted(np.bincount(folds)) == [3, 3, 3]
    with pytest.raises(ConfigError, match="cannot make"):
        make_folds([1, 0], ["CTA", "CTA"], num_folds=3)


def test_presets_load_and_overrides_apply():
    tiny = load_config(ROOT / "configs" / "tiny.yaml")
    comp = load_config(ROOT / "configs" / "competition.yaml")
    assert comp.model.arch == "tf_efficientnet_b0" and comp.preprocess.image_size == 224
    assert comp.train.num_folds == 5 and comp.windows.offsets == (-2, -1, 0, 1, 2)
    assert tiny.preprocess.image_size <= 96 and tiny.sampling.guard
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      ["train.epochs=3", "sampling.guard=false", "windows.offsets=[-1, 0, 1]", "train.folds=[0, 2]"])
    assert cfg.train.epochs == 3 and cfg.sampling.guard is False
    assert cfg.windows.offsets == (-1, 0, 1) and cfg.train.folds == (0, 2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round trip (what provenance stores)


def test_every_preset_loads_and_the_volume_presets_match_the_competition_folds():
    presets = {p.stem: load_config(p) for p in sorted((ROOT / "configs").glob("*.yaml"))}
    assert {"competition", "competition_volume", "tiny", "tiny_volume", "phantom_default"} <= set(presets)
    volume = presets["competition_volume"]
    assert volume.model.kind == "volume32" and volume.input_channels == 32 and volume.preprocess.image_size == 384
    assert volume.model.arch == "tf_efficientnetv2_s" and volume.augment.flip_lr > 0
    for big, small in (("competition", "competition_volume"), ("tiny", "tiny_volume")):  # blendable: same folds
        assert presets[big].train.num_folds == presets[small].train.num_folds
        assert presets[big].train.seed == presets[small].train.seed
        assert presets[big].model.kind == "window25d" and presets[small].model.kind == "volume32"


@pytest.mark.parametrize("override, match", [
    ("train.epoch=3", "no key"), ("nosection.x=1", "unknown section"), ("train.epochs", "section.key=value"),
    ("sampling.positive_inference_share=0.2", "positive_inference_share"), ("train.folds=[7]", "outside"),
    ("export.opset=13", "opset"),
])
def test_bad_overrides_raise_config_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs" / "tiny.yaml", [override])


def test_apply_overrides_parses_yaml_values():
    data = apply_overrides({}, ["train.lr=3e-4", "model.pretrained=true", "aggregation.method=topk_mean"])
    assert data == {"train": {"lr": 3e-4}, "model": {"pretrained": True}, "aggregation": {"method": "topk_mean"}}


def test_cli_help_documents_every_key_and_flags_map_to_config(capsys):
    import train_minimal

    with pytest.raises(SystemExit) as exc:
        train_minimal.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for key in ("sampling.guard", "sampling.positive_inference_share", "train.folds", "export.fp16",
                "model.arch", "--folds", "--data-dir", "--cache-dir", "--config", "--set"):
        assert key in text
    assert "sampling.roi_fraction" in describe_keys()
    args = train_minimal.build_parser().parse_args(
        ["--data-dir", "d", "--config", str(ROOT / "configs" / "tiny.yaml"), "--folds", "0,2", "--no-guard",
         "--epochs", "2", "--set", "train.lr=0.01", "--fp16"])
    cfg = train_minimal.config_from_args(args)
    assert cfg.train.folds == (0, 2) and not cfg.sampling.guard and cfg.train.epochs == 2
    assert cfg.train.lr == 0.01 and cfg.export.fp16


def test_cli_reports_a_bad_data_dir_with_status_2(tmp_path):
    import train_minimal

    assert train_minimal.main(["--data-dir", str(tmp_path), "--config", str(ROOT / "configs" / "tiny.yaml"),
                               "--out", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 2


def test_scores_match_sklearn_and_skip_one_class_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    from evaluation.metric import competition_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, len(LABELS)))
    p = np.clip(y * 0.3 + rng.random(y.shape), 0, 1)
    report = score_predictions(y, p)
    for i, name in enumerate(LABELS):
        assert report["per_label"][name] == pytest.approx(metrics.roc_auc_score(y[:, i], p[:, i]), abs=1e-12)
    assert report["complete"] and report["score"] == pytest.approx(competition_score(y, p).score)
    y[:, 0] = 0  # one class: undefined, skipped, reported
    partial = score_predictions(y, p)
    assert partial["per_label"][LABELS[0]] is None and not partial["complete"]
    expected_loc = np.mean([metrics.roc_auc_score(y[:, i], p[:, i]) for i in range(1, PRESENT_INDEX)])
    assert partial["mean_location_auc"] == pytest.approx(expected_loc)
    by_mod = score_by_modality(y, p, ["CTA"] * 30 + ["MRA"] * 30)
    assert set(by_mod) == {"CTA", "MRA"} and by_mod["CTA"]["series"] == 30
