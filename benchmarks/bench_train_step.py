"""Where GPU training time goes: the optimiser step alone vs the DataLoader alone, for a trainer preset.

Times (1) one training step of the dual-stream model on a ready batch on the device (mixed precision, grad
clipping as in training/loop.py; with and without cudnn.benchmark, channels_last and a loss read-back every
step; warm-up steps, and so cudnn.benchmark's autotuning, are not timed), and (2) the DataLoader over
WindowDataset on synthetic cached series (no GPU), with 0..N workers and with OpenCV's own thread pool on or off
in the workers. Whichever is slower bounds training.

Example:
    python benchmarks/bench_train_step.py --config configs/competition.yaml --workers 6 14
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/competition.yaml", help="trainer preset")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64], help="step batch sizes")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--windows", type=int, default=1024, help="windows per DataLoader pass")
    return parser.parse_args(argv)


def time_steps(cfg, batch: int, steps: int, *, benchmark: bool, channels_last: bool, sync_loss: bool) -> float:
    """Seconds per optimiser step on a ready batch."""
    import torch

    from training.model import build_model

    torch.backends.cudnn.benchmark = benchmark
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, chans = cfg.preprocess.image_size, cfg.windows.channels
    net = build_model(cfg.model, in_chans=chans).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    full = torch.rand(batch, chans, size, size, device=device).to(memory_format=fmt)
    roi = torch.rand(batch, chans, size, size, device=device).to(memory_format=fmt)
    coords = torch.zeros(batch, 2, device=device)
    labels = (torch.rand(batch, 14, device=device) > 0.9).float()
    criterion = torch.nn.BCEWithLogitsLoss()
    net.train()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            logits = net(full, roi, coords)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        if sync_loss:
            float(loss.detach())

    for _ in range(5):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _no_cv2_threads(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def time_loader(cfg, workers: int, windows: int, *, cv2_single: bool) -> float:
    """Windows per second out of the DataLoader (synthetic 60-slice cached series at the preset's size)."""
    from torch.utils.data import DataLoader

    from training.loop import WindowDataset
    from training.sampling import CachedSeries, draw_epoch

    rng = np.random.default_rng(0)
    size = cfg.preprocess.image_size
    series = [CachedSeries(uid=str(i), modality="CTA", pixels=rng.integers(0, 255, (60, size, size), dtype=np.uint8),
                           points=[], labels=np.zeros(14, np.float32)) for i in range(16)]
    samples = draw_epoch(series, windows, cfg.sampling, image_size=size, rng=rng, hard_negatives=None)
    dataset = WindowDataset(series, samples, cfg, seed=0)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, num_workers=workers, drop_last=True,
                        worker_init_fn=_no_cv2_threads if cv2_single and workers else None,
                        persistent_workers=False)
    start = time.perf_counter()
    count = sum(len(batch[0]) for batch in loader)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from training.config import load_config

    cfg = load_config(args.config)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.config}: {cfg.model.arch} at {cfg.preprocess.image_size} px, on {where}")
    for batch in args.batch_sizes:
        for benchmark, channels_last, sync_loss in [(False, False, True), (True, False, True), (True, True, True),
                                                    (True, True, False)]:
            seconds = time_steps(cfg, batch, args.steps, benchmark=benchmark, channels_last=channels_last,
                                 sync_loss=sync_loss)
            print(f"step batch {batch:3d} cudnn.benchmark={benchmark!s:5} channels_last={channels_last!s:5} "
                  f"loss read each step={sync_loss!s:5}: {seconds * 1e3:7.1f} ms = {batch / seconds:7.0f} windows/s")
    for workers in args.workers:
        for cv2_single in ([False, True] if workers else [False]):
            rate = time_loader(cfg, workers, args.windows, cv2_single=cv2_single)
            print(f"loader workers {workers:2d} cv2 threads {'1' if cv2_single else 'default'}: {rate:7.0f} windows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
