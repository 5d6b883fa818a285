"""DDP under torchrun on CPU (gloo): two processes train one short fold and write the usual manifest (~20 s), with
and without the region stage (issue 21: rank 0 fits the locator, both ranks train inside its boxes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import phantom  # noqa: E402 - a broken phantom package must fail these tests, not skip them

SHORT_FOLD = ("train.epochs=2", "train.windows_per_epoch=64", "train.batch_size=8", "train.val_every=1",
              "export.parity_windows=4", "cache.workers=1", "preprocess.image_size=32", "train.mine_every=1",
              "train.mine_max_series=3")


def _torchrun(tmp_path: Path, config: str, *settings: str) -> subprocess.CompletedProcess:
    """Two CPU processes train fold 0 of a 9-series phantom (5 positive, each with localizer points)."""
    data = tmp_path / "data"
    phantom.make_dataset(data, series=9, test_series=0, seed=7, slices=(12, 16), size=(40, 48), workers=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_minimal.py"), "--data-dir", str(data), "--config", str(ROOT / "configs" / config),
           "--folds", "0", "--out", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c"),
           "--checkpoint-dir", str(tmp_path / "k"), "--quiet"]
    for item in SHORT_FOLD + settings:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_train_one_fold_and_write_a_manifest(tmp_path):
    from inference.manifest import Manifest

    result = _torchrun(tmp_path, "tiny.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = Manifest.read(tmp_path / "w", verify=True)
    assert [f.fold for f in manifest.folds] == [0]
    assert manifest.provenance["world_size"] == 2


def test_torchrun_trains_the_region_stage_rank_0_fits_the_locator_and_both_ranks_train_in_its_boxes(tmp_path):
    from inference.manifest import Manifest
    from training.cache import build_cache
    from training.config import load_config
    from training.data import read_localizers, read_train_table, series_folder
    from training.region import read_boxes

    result = _torchrun(tmp_path, "tiny_region.yaml", "region.steps=20", "region.augment_copies=2",
                       "region.workers=1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    manifest = Manifest.read(tmp_path / "w", verify=True)
    assert manifest.region is not None and (tmp_path / "w" / "locator.onnx").is_file()
    assert [f.fold for f in manifest.folds] == [0]
    assert manifest.provenance["world_size"] == 2
    assert "region: 9 training series in a box, 0 on the whole volume" in output, output[-6000:]
    # what rank 1 read: every series rank 0 cached in its box, found through the boxes file (without the boxes
    # none is valid: a cached entry's key holds its box)
    cfg = load_config(tmp_path / "w" / "train_config.yaml")
    data = tmp_path / "data"
    folders = {uid: series_folder(data, uid) for uid in read_train_table(data / "train.csv").uids}
    localizers = read_localizers(data / "train_localizers.csv")
    region_cache = tmp_path / "c" / "region"

    def rank_1_reads(boxes):
        return build_cache(folders, localizers, cfg.preprocess, region_cache, read_only=True, boxes=boxes).entries

    assert len(rank_1_reads(read_boxes(region_cache))) == 9
    assert not rank_1_reads(None)
