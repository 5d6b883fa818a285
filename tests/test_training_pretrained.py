"""Pretrained starts: loaded from a local Hugging Face cache offline, a clear stop without it, --no-pretrained trains.

No network is used: Hugging Face's cache is written by the test (random weights in timm's own layout), and
HF_HUB_OFFLINE=1 keeps timm off the network. huggingface_hub reads its environment at import, so each case runs
in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCH = "mobilenetv3_small_050"  # the tiny preset's backbone: small weights, quick to write


def _env(hf_home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def _run(code: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> Path:
    """A Hugging Face cache holding `ARCH`'s default timm weights (random values, saved with safetensors)."""
    home = tmp_path_factory.mktemp("hf_home")
    proc = _run(f"""
        import os, timm
        from pathlib import Path
        from safetensors.torch import save_file
        cfg = timm.models.get_pretrained_cfg({ARCH!r})
        repo = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + cfg.hf_hub_id.replace("/", "--"))
        commit = "0" * 40
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        state = timm.create_model({ARCH!r}, pretrained=False).state_dict()
        weights = repo / "snapshots" / commit / "model.safetensors"
        save_file({{k: v.contiguous() for k, v in state.items()}}, str(weights))
    """, _env(home))
    assert proc.returncode == 0, proc.stderr
    return home


def test_pretrained_weights_load_offline_from_the_cache_into_both_streams(hf_cache):
    proc = _run(f"""
        import json, os, torch
        from pathlib import Path
        from safetensors.torch import load_file
        from training.config import ModelConfig
        from training.model import build_model
        from training.pretrained import ensure_pretrained
        source = ensure_pretrained({ARCH!r}, in_chans=5)
        net = build_model(ModelConfig(arch={ARCH!r}, pretrained=True), in_chans=5)
        saved = load_file(next(Path(os.environ["HF_HOME"]).rglob("model.safetensors")))
        same = {{}}
        for name, stream in (("full", net.full_stream), ("roi", net.roi_stream)):
            state = stream.state_dict()
            same[name] = [k for k in state if k in saved and state[k].shape == saved[k].shape
                          and torch.equal(state[k], saved[k])]
        stem = net.full_stream.state_dict()["conv_stem.weight"]
        print(json.dumps({{"describe": source.describe(), "same": {{k: len(v) for k, v in same.items()}},
                          "total": len(net.full_stream.state_dict()), "stem": list(stem.shape)}}))
    """, _env(hf_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "hf-hub:timm/mobilenetv3_small_050" in result["describe"]
    assert result["same"]["full"] == result["same"]["roi"] == result["total"] - 1  # every weight but the stem
    assert result["stem"][1] == 5  # timm adapted the first convolution to the 5 window channels


def test_a_missing_cache_stops_before_the_cache_step_with_the_ways_to_fix_it(tmp_path, phantom_dataset):
    env = _env(tmp_path / "empty_hf_home")
    proc = _run(f"""
        import sys
        from train_minimal import main
        sys.exit(main(["--data-dir", {str(phantom_dataset)!r}, "--config", "configs/tiny.yaml", "--pretrained",
                       "--out", {str(tmp_path / "w")!r}, "--cache-dir", {str(tmp_path / "c")!r}, "--quiet"]))
    """, env, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "are not in the local cache" in log and "--no-pretrained" in log and "HF_HOME" in log
    assert not (tmp_path / "c").exists() and not (tmp_path / "w").exists()  # stopped before any work


def test_no_pretrained_trains_from_scratch_and_the_manifest_says_so(tmp_path, phantom_dataset):
    # the preset as users run it, region stage included, but a 20-step locator: the preset's 400 steps x 3 models
    # took about 3 of this test's 5 minutes on two shared cores, and the locator is not what this test checks
    env = _env(tmp_path / "empty_hf_home")
    proc = _run(f"""
        import sys
        from train_minimal import main
        sys.exit(main(["--data-dir", {str(phantom_dataset)!r}, "--config", "configs/competition.yaml",
                       "--no-pretrained", "--arch", {ARCH!r}, "--epochs", "1", "--folds", "0", "--no-oof",
                       "--set", "preprocess.image_size=32", "--set", "train.windows_per_epoch=64",
                       "--set", "train.batch_size=16", "--set", "train.num_workers=0", "--set", "cache.workers=1",
                       "--set", "train.num_folds=2", "--set", "export.parity_windows=4",
                       "--set", "region.steps=20", "--set", "region.augment_copies=2", "--set", "region.workers=1",
                       "--out", {str(tmp_path / "w")!r}, "--cache-dir", {str(tmp_path / "c")!r},
                       "--checkpoint-dir", {str(tmp_path / "ck")!r}, "--quiet"]))
    """, env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    start = manifest["provenance"]["start_weights"]
    assert start["pretrained"] is False and "random initialisation" in start["description"]


def test_the_competition_preset_starts_from_pretrained_weights():
    from training.config import load_config

    assert load_config(REPO / "configs" / "competition.yaml").model.pretrained is True
    assert load_config(REPO / "configs" / "tiny.yaml").model.pretrained is False  # the CPU preset stays offline
