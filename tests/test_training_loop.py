"""train_fold on synthetic cached series: learns in the inference regime, keeps best/last checkpoints, resumes."""
from __future__ import annotations

import numpy as np
import torch

from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX
from training.config import load_config
from training.kinds import load_best
from training.localizers import PreparedPoint
from training.loop import WindowDataset, train_fold, validate
from training.sampling import ROI, CachedSeries, draw_epoch


def _series(count: int, seed: int) -> list[CachedSeries]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 40, (16, 32, 32)).astype(np.uint8)
        labels = np.zeros(len(LABELS), np.float32)
        points = []
        if i % 2 == 0:
            z, r, c = int(rng.integers(5, 11)), int(rng.integers(8, 24)), int(rng.integers(8, 24))
            pixels[z - 1:z + 2, r - 3:r + 3, c - 3:c + 3] = 255  # a bright blob
            loc = LOCATION_LABELS.index("Basilar Tip")
            points = [PreparedPoint(z=float(z), row=float(r), col=float(c), location=loc)]
            labels[loc] = labels[PRESENT_INDEX] = 1
        out.append(CachedSeries(uid=f"s{seed}-{i}", modality="CTA", pixels=pixels, points=points, labels=labels))
    return out


CFG = ["preprocess.image_size=32", "model.arch=mobilenetv3_small_050", "train.batch_size=16",
       "train.windows_per_epoch=96", "train.num_workers=0", "train.warmup_steps=2", "train.lr=0.003",
       "train.threads=1", "augment.rotate_deg=0"]


def test_dataset_items_follow_their_regime():
    cfg = load_config(None, CFG)
    series = _series(4, 0)
    samples = draw_epoch(series, 64, cfg.sampling, image_size=32, rng=np.random.default_rng(0))
    dataset = WindowDataset(series, samples, cfg, seed=0)
    for i, s in enumerate(samples):
        full, roi, coords, labels = dataset[i]
        assert full.shape == roi.shape == (5, 32, 32) and coords.shape == (2,) and labels.shape == (14,)
        if s.regime == ROI:
            assert coords.abs().sum() > 0 and not torch.equal(full, roi)
        else:
            assert coords.abs().sum() == 0 and torch.equal(full, roi)


def test_train_fold_checkpoints_and_resumes(tmp_path):
    torch.set_num_threads(1)
    train, val = _series(8, 1), _series(4, 2)
    cfg = load_config(None, CFG + ["train.epochs=1"])
    first = train_fold(cfg, 0, train, val, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "fold0" / "best.pt").is_file() and (tmp_path / "fold0" / "last.pt").is_file()
    assert len(first.history) == 1 and first.best_epoch == 1
    cfg2 = load_config(None, CFG + ["train.epochs=2"])
    second = train_fold(cfg2, 0, train, val, checkpoint_dir=tmp_path, progress=False)
    assert len(second.history) == 2 and second.history[0] == first.history[0]  # resumed, not retrained
    again = train_fold(cfg2, 0, train, val, checkpoint_dir=tmp_path, progress=False)
    assert again.history == second.history  # a finished fold returns at once
    report = validate(load_best(second.best_path, cfg2), val, cfg2)
    assert report["configured"]["series"] == 4 and set(report) >= {"configured", "max", "topk_mean"}
