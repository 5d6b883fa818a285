"""Train and validate one fold: fresh windows each epoch, AdamW/Adam + cosine, AMP on CUDA, DDP, checkpoints."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from evaluation.metric import score_predictions
from inference.aggregate import aggregate_windows
from inference.config import AggregationConfig
from inference.labels import LABELS, PRESENT_INDEX
from inference.progress import Progress
from inference.windows import iter_window_batches

from .augment import WindowAugment
from .config import TrainConfig
from .heatmap import heatmap_focal_loss, render_heatmap, window_points
from .model import DualStreamNet, InferenceGraph, build_model
from .sampling import ROI, CachedSeries, Sample, draw_epoch, negative_centres, normalized_coords, roi_crop, window_at

__all__ = ["DistInfo", "init_distributed", "seed_everything", "WindowDataset", "predict_windows", "validate",
           "fixed_aggregation", "mine_hard_negatives", "FoldResult", "FoldTask", "train_fold", "fit_fold",
           "label_criterion", "heatmap_loss", "window_parity_inputs"]

log = logging.getLogger(__name__)


# How long the other ranks may wait while the main rank works alone: reading and caching every series, fitting the
# region locator on them (issue 21: a second read of every series), the out-of-fold report through the kernel. On the
# real data that takes far longer than NCCL's watchdog lets a collective wait (10 minutes by default).
MAIN_RANK_WORK_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    wait_group: Any = field(default=None, compare=False, repr=False)  # gloo, MAIN_RANK_WORK_TIMEOUT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def wait_for_main(self) -> None:
        """A barrier for the main rank's long work alone (the cache, the region locator, the out-of-fold report).

        It runs on a gloo group whose timeout is MAIN_RANK_WORK_TIMEOUT, not on the training group's collectives.
        """
        if self.world_size > 1:
            dist.barrier(group=self.wait_group)


def init_distributed() -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    wait_group = None
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        wait_group = dist.new_group(backend="gloo", timeout=MAIN_RANK_WORK_TIMEOUT)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, wait_group=wait_group)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# A GPU step of the b0 dual-stream model is launch-bound (about 95 ms at batch 32 and at 64 on an H100); reading
# the loss back every step added 18 ms of it (benchmarks/bench_train_step.py).
_LOSS_READ_EVERY = 20

class WindowDataset(Dataset):
    """Training windows: the kernel's window, augmented, and stream 2 built from the sample's regime.

    Items are (full (C,S,S), roi (C,S,S), coords (2,), labels (14,)) float32 tensors, and with
    model.heatmap_weight > 0 a fifth: the full window's localizer heatmap (1, S/stride, S/stride). In the inference
    regime roi is the window itself and coords are zeros, exactly what the exported graph feeds the network.
    """

    def __init__(self, series: list[CachedSeries], samples: list[Sample], cfg: TrainConfig, *, seed: int,
                 augment: bool = True) -> None:
        self.series = series
        self.samples = samples
        self.cfg = cfg
        self.seed = int(seed)
        self.augment = WindowAugment(cfg.augment) if augment else None
        self.heatmaps = cfg.model.heatmap_weight > 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        pixels = self.series[s.series].pixels
        size = pixels.shape[-1]
        window = window_at(pixels, s.centre, self.cfg.windows.offsets, scale=self.cfg.windows.scale)
        point, labels = s.roi_point, s.labels.copy()
        points = (window_points(self.series[s.series].points, s.centre, radius=self.cfg.sampling.label_radius)
                  if self.heatmaps else np.zeros((0, 2), np.float32))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, index])
            window, point, points, labels = self.augment.apply(window, point, points, labels, rng)
        if s.regime == ROI and point is not None:
            roi = roi_crop(window, point, fraction=self.cfg.sampling.roi_fraction, out_size=size)
            coords = normalized_coords(point, size)
        else:
            roi, coords = window, np.zeros(2, np.float32)
        item = (torch.from_numpy(np.ascontiguousarray(window)), torch.from_numpy(np.ascontiguousarray(roi)),
                torch.from_numpy(coords), torch.from_numpy(labels.astype(np.float32)))
        if self.heatmaps:
            model = self.cfg.model
            heat = render_heatmap(points, size, stride=model.heatmap_stride, sigma=model.heatmap_sigma)
            item += (torch.from_numpy(heat),)
        return item


@torch.no_grad()
def predict_windows(net: DualStreamNet, pixels: np.ndarray, cfg: TrainConfig, *, device: str = "cpu",
                    batch_size: int = 64) -> np.ndarray:
    """(N, 14) probabilities of every window of a cached stack, in the inference regime (as the kernel runs it)."""
    graph = InferenceGraph(net).eval()
    windows = dataclasses.replace(cfg.windows, stride=cfg.train.val_stride)
    out = []
    for batch in iter_window_batches(np.asarray(pixels), windows, batch_size=batch_size):
        logits = graph(torch.from_numpy(batch.inputs).to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out, axis=0)


def fixed_aggregation(agg: AggregationConfig) -> AggregationConfig:
    """The reduction a fold is scored with: the configured one, or top-k mean in place of the learned aggregator
    (which is fitted on the out-of-fold windows after the folds)."""
    return agg if agg.method != "learned" else AggregationConfig(method="topk_mean", top_k=agg.top_k)


def validate(net: DualStreamNet, series: list[CachedSeries], cfg: TrainConfig, *, device: str = "cpu",
             progress: bool = False) -> dict[str, Any]:
    """Series-level validation in the inference regime, with the configured aggregation and both alternatives."""
    was_training = net.training
    net.eval()
    window_probs = [predict_windows(net, s.pixels, cfg, device=device)
                    for s in Progress(series, desc="validate", unit="series", enabled=progress, leave=False)]
    net.train(was_training)
    y_true = np.stack([s.labels for s in series])
    report = {}
    configured = fixed_aggregation(cfg.aggregation)
    methods = {"configured": configured, "max": AggregationConfig(method="max"),
               "topk_mean": AggregationConfig(method="topk_mean", top_k=cfg.aggregation.top_k)}
    for name, agg in methods.items():
        y_pred = np.stack([aggregate_windows(p, agg) for p in window_probs])
        report[name] = score_predictions(y_true, y_pred)
        if name == "configured":
            report["y_pred"] = y_pred
    return report


def mine_hard_negatives(net: DualStreamNet, series: list[CachedSeries], cfg: TrainConfig, *, device: str = "cpu",
                        rng: np.random.Generator) -> list[tuple[int, int]]:
    """The negative windows the current model scores highest (Aneurysm Present), in the inference regime.

    Max aggregation makes one confident false window per negative series cost the whole series, so those windows
    are what the next epoch should see more of. Returns (series index, centre slice) pairs: the
    `cfg.train.mine_per_series` highest-scoring allowed negative centres of each scored series.
    """
    was_training = net.training
    net.eval()
    order = rng.permutation(len(series))[:cfg.train.mine_max_series]
    mined: list[tuple[int, int]] = []
    stride = cfg.train.val_stride
    for i in order:
        s = series[int(i)]
        allowed = negative_centres(s, cfg.sampling.negative_min_distance)
        if allowed.size == 0:
            continue
        probs = predict_windows(net, s.pixels, cfg, device=device)[:, PRESENT_INDEX]
        centres = np.arange(0, s.num_slices, stride)
        keep = np.isin(centres, allowed)
        if not keep.any():
            continue
        top = np.argsort(-probs[keep])[:cfg.train.mine_per_series]
        mined += [(int(i), int(c)) for c in centres[keep][top]]
    net.train(was_training)
    return mined


@dataclass
class FoldResult:
    """What training one fold produced."""

    fold: int
    best_path: Path
    best_score: float | None
    best_epoch: int
    val_uids: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def _make_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def _selection_score(report: dict[str, Any]) -> float:
    score = report["configured"]["score"]
    return -math.inf if score is None else float(score)


def label_criterion(cfg: TrainConfig, device: str) -> torch.nn.Module:
    """BCE over the 14 labels with Present weighted by train.present_weight (same scale as an unweighted mean)."""
    weights = torch.ones(len(LABELS), device=device)
    weights[PRESENT_INDEX] = cfg.train.present_weight
    return torch.nn.BCEWithLogitsLoss(weight=weights * len(LABELS) / weights.sum())


@dataclass
class FoldTask:
    """What differs between the model kinds; `fit_fold` does the rest (optimiser, schedule, AMP, DDP, checkpoints).

    Attributes:
        net: the network (on the device).
        items_per_epoch: training items (windows or series) per epoch, over every rank.
        epoch_dataset: (epoch, rng) -> that epoch's Dataset; items are tuples whose last element is the labels
            (with aux_loss: the labels, then the auxiliary target).
        validate: (net) -> report with "configured", "max" and "topk_mean" scores (rank 0 only).
        aux_loss: (net, auxiliary target batch) -> a loss added to the labels' loss after each forward (the
            localizer heatmap of the 2.5D model), or None.
    """

    net: torch.nn.Module
    items_per_epoch: int
    epoch_dataset: Callable[[int, np.random.Generator], Dataset]
    validate: Callable[[torch.nn.Module], dict[str, Any]]
    aux_loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None


def window_parity_inputs(series: list[CachedSeries], cfg: TrainConfig, count: int) -> np.ndarray:
    """Real validation windows for the export's parity check: at localizer slices and spread through each series."""
    windows = []
    per_series = max(2, count // max(1, len(series)) + 1)
    for s in series:
        centres = [int(round(p.z)) for p in s.points]
        centres += list(np.linspace(0, s.num_slices - 1, per_series).round().astype(int))
        for c in centres[:per_series]:
            windows.append(window_at(s.pixels, c, cfg.windows.offsets, scale=cfg.windows.scale))
        if len(windows) >= count:
            break
    return np.stack(windows[:count])


def train_fold(cfg: TrainConfig, fold: int, train_series: list[CachedSeries], val_series: list[CachedSeries], *,
               checkpoint_dir: str | Path, dist_info: DistInfo | None = None, progress: bool = True) -> FoldResult:
    """Train one fold of the 2.5D window model (`fit_fold` with fresh windows each epoch, hard negatives mined)."""
    info = dist_info or DistInfo()
    seed_everything(cfg.train.seed * 1000 + fold)
    net = build_model(cfg.model, in_chans=cfg.windows.channels).to(info.device)
    mining = cfg.sampling.hard_negative_share > 0
    state: dict[str, Any] = {"hard": None}  # the latest mined pool, reused until the next mining pass
    per_rank = max(1, cfg.train.windows_per_epoch // info.world_size)
    steps = max(1, per_rank // cfg.train.batch_size)

    def epoch_dataset(epoch: int, rng: np.random.Generator) -> Dataset:
        if mining and epoch > 0 and (epoch % cfg.train.mine_every == 0 or state["hard"] is None):
            # every rank mines the same windows (same weights after DDP sync, same rng) so epochs stay aligned
            state["hard"] = mine_hard_negatives(net, train_series, cfg, device=info.device, rng=rng)
        samples = draw_epoch(train_series, steps * cfg.train.batch_size * info.world_size, cfg.sampling,
                             image_size=cfg.preprocess.image_size, rng=rng, hard_negatives=state["hard"])
        return WindowDataset(train_series, samples, cfg, seed=hash((cfg.train.seed, fold, epoch)) % (2**31))

    task = FoldTask(net=net, items_per_epoch=cfg.train.windows_per_epoch, epoch_dataset=epoch_dataset,
                    validate=lambda trained: validate(trained, val_series, cfg, device=info.device),
                    aux_loss=heatmap_loss(cfg.model.heatmap_weight) if cfg.model.heatmap_weight > 0 else None)
    return fit_fold(cfg, fold, task, val_uids=[s.uid for s in val_series], checkpoint_dir=checkpoint_dir,
                    dist_info=info, progress=progress)


def heatmap_loss(weight: float) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """The FoldTask.aux_loss of the localizer heatmap: `weight` x the focal loss of the net's heatmap head."""
    def loss(net: torch.nn.Module, target: torch.Tensor) -> torch.Tensor:
        return weight * heatmap_focal_loss(net.heatmap_logits(), target)
    return loss


def _batch_loss(model: torch.nn.Module, task: FoldTask, batch: list[torch.Tensor], criterion: torch.nn.Module, *,
                device: str, use_amp: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch's loss (labels, plus the task's auxiliary loss when it has one) and that auxiliary part."""
    aux_target = None
    if task.aux_loss is not None:
        batch, aux_target = batch[:-1], batch[-1].to(device, non_blocking=True)
    inputs = [t.to(device, non_blocking=True) for t in batch[:-1]]
    labels = batch[-1].to(device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        logits = model(*inputs)
        aux = None if task.aux_loss is None else task.aux_loss(task.net, aux_target)
    loss = criterion(logits.float(), labels)
    return (loss, None) if aux is None else (loss + aux, aux)


def _epoch_entry(epoch: int, losses: list[torch.Tensor], aux_losses: list[torch.Tensor], *,
                 lr: float) -> dict[str, Any]:
    """The history entry of a finished epoch: its mean loss (and the auxiliary part of it, when there is one)."""
    entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(torch.stack(losses).mean()) if losses else None,
                             "lr": lr}
    if aux_losses:  # part of train_loss, reported alone to show the auxiliary target is learned
        entry["aux_loss"] = float(torch.stack(aux_losses).mean())
    return entry


def fit_fold(cfg: TrainConfig, fold: int, task: FoldTask, *, val_uids: list[str], checkpoint_dir: str | Path,
             dist_info: DistInfo | None = None, progress: bool = True) -> FoldResult:
    """Train one fold of either model kind, validating in the inference regime; keep `best.pt` (by validation
    score) and `last.pt`.

    With `cfg.train.resume`, a fold continues from `last.pt` and a finished fold returns at once.
    Under torchrun every rank trains on its share of each epoch; rank 0 validates and saves.
    """
    info = dist_info or DistInfo()
    started = time.time()
    folder = Path(checkpoint_dir) / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    last_path, best_path = folder / "last.pt", folder / "best.pt"
    device = info.device
    net = task.net
    model: torch.nn.Module = net
    if info.world_size > 1:
        device_ids = [info.local_rank] if "cuda" in device else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    optimizer = _make_optimizer(net, cfg)
    per_rank = max(1, task.items_per_epoch // info.world_size)
    steps_per_epoch = max(1, per_rank // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, cfg.train.warmup_steps, cfg.train.min_lr_ratio))
    use_amp = cfg.train.amp and "cuda" in device
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    if cfg.train.resume and last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        history = state["history"]
        if info.is_main:
            log.info("fold %d: resuming after epoch %d (best %.4f at epoch %d)", fold, start_epoch, best_score,
                     best_epoch)
    criterion = label_criterion(cfg, device)
    for epoch in range(start_epoch, cfg.train.epochs):
        rng = np.random.default_rng([cfg.train.seed, fold, epoch])
        dataset = task.epoch_dataset(epoch, rng)
        sampler = (DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False,
                                      drop_last=True) if info.world_size > 1 else None)
        loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, shuffle=False,
                            num_workers=cfg.train.num_workers, drop_last=True,
                            pin_memory="cuda" in device)
        model.train()
        losses, aux_losses = [], []
        bar = Progress(loader, desc=f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
                       enabled=progress and info.is_main, leave=False)
        for batch in bar:
            loss, aux = _batch_loss(model, task, batch, criterion, device=device, use_amp=use_amp)
            if aux is not None:
                aux_losses.append(aux.detach())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.detach())
            if len(losses) % _LOSS_READ_EVERY == 0:  # reading a CUDA loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(torch.stack(losses[-_LOSS_READ_EVERY:]).mean()):.4f}")
        entry = _epoch_entry(epoch, losses, aux_losses, lr=scheduler.get_last_lr()[0])
        last_epoch = epoch + 1 == cfg.train.epochs
        if info.is_main and ((epoch + 1) % cfg.train.val_every == 0 or last_epoch):
            report = task.validate(net)
            score = _selection_score(report)
            entry.update({name: {k: report[name][k] for k in ("score", "present_auc", "mean_location_auc")}
                          for name in ("configured", "max", "topk_mean")})
            improved = score > best_score or best_epoch < 0
            if improved:
                best_score, best_epoch = score, epoch + 1
                torch.save({"model": net.state_dict(), "epoch": epoch + 1, "score": score,
                            "config": cfg.to_dict()}, best_path)
            conf = report["configured"]
            log.info("fold %d epoch %d/%d: loss %.4f  val score %s (Present AUC %s, location AUC %s; max %s, "
                     "top-k %s)%s", fold, epoch + 1, cfg.train.epochs, entry["train_loss"] or float("nan"),
                     _fmt(conf["score"]), _fmt(conf["present_auc"]), _fmt(conf["mean_location_auc"]),
                     _fmt(report["max"]["score"]), _fmt(report["topk_mean"]["score"]), "  *best*" if improved else "")
        history.append(entry)
        if info.is_main:
            tmp = folder / ".last.pt.tmp"
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                        "best_score": best_score, "best_epoch": best_epoch, "history": history}, tmp)
            os.replace(tmp, last_path)
        info.barrier()
    return FoldResult(fold=fold, best_path=best_path, best_score=None if best_score == -math.inf else best_score,
                      best_epoch=best_epoch, val_uids=val_uids, history=history, seconds=time.time() - started)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
