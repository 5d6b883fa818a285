"""DDP under torchrun on CPU (gloo): two processes train one short fold and write the usual manifest (~20 s)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import phantom  # noqa: E402 - a broken phantom package must fail these tests, not skip them


def test_torchrun_two_processes_train_one_fold_and_write_a_manifest(tmp_path):
    from inference.manifest import Manifest

    data = tmp_path / "data"
    phantom.make_dataset(data, series=9, test_series=0, seed=7, slices=(12, 16), size=(40, 48), workers=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_minimal.py"), "--data-dir", str(data), "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--folds", "0", "--out", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c"),
           "--checkpoint-dir", str(tmp_path / "k"), "--quiet"]
    for item in ("train.epochs=2", "train.windows_per_epoch=64", "train.batch_size=8", "train.val_every=1",
                 "export.parity_windows=4", "cache.workers=1", "preprocess.image_size=32", "train.mine_every=1",
                 "train.mine_max_series=3"):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = Manifest.read(tmp_path / "w", verify=True)
    assert [f.fold for f in manifest.folds] == [0]
    assert manifest.provenance["world_size"] == 2
