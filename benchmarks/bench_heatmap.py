"""Which answer a heatmap-trained fold should give out of fold: the classifier's, the heatmap peaks', or both.

    python benchmarks/bench_heatmap.py --weights W --checkpoint-dir CKPT --cache-dir CACHE [--fold 0] [--json F]

W, CKPT and CACHE are a finished `train_minimal.py` run's --out, --checkpoint-dir and --cache-dir, trained with
`model.heatmap_weight` > 0 (the head lives in the torch checkpoint only). The fold's validation series (its
out-of-fold series, from the manifest's fold assignment) are read from the cache, every window is scored like the
kernel scores it (the inference graph, stride `windows.stride`), and the heatmap head's peak (the sigmoid of its
largest cell) is taken from the same windows. Three answers per series are scored, each aggregated with the run's
window reduction: the classifier alone (what the kernel answers), Aneurysm Present from the heatmap peaks, and
Present from the mean of both. The heatmap has one channel, so the locations always come from the classifier
(Present is never below a location's probability, the kernel's rule).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.metric import score_predictions  # noqa: E402
from inference.aggregate import aggregate_windows  # noqa: E402
from inference.config import AggregationConfig  # noqa: E402
from inference.labels import PRESENT_INDEX  # noqa: E402
from inference.manifest import Manifest  # noqa: E402
from inference.progress import Progress  # noqa: E402
from inference.windows import iter_window_batches  # noqa: E402
from training.cache import cache_dir_for, cached_entries, load_pixels  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import read_train_table  # noqa: E402
from training.kinds import load_best  # noqa: E402
from training.loop import fixed_aggregation  # noqa: E402
from training.model import InferenceGraph  # noqa: E402
from training.pipeline import series_cache_dir  # noqa: E402

log = logging.getLogger("bench_heatmap")
ANSWERS = ("classifier", "heatmap", "both")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="the run's --out (manifest, train_config.yaml)")
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="the run's --checkpoint-dir")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the run's --cache-dir")
    parser.add_argument("--fold", type=int, default=0, help="the fold whose validation series are scored")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


@torch.no_grad()
def window_answers(net: torch.nn.Module, pixels: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(N, 14) classifier probabilities and (N,) heatmap peak probabilities of every window of a stack."""
    graph = InferenceGraph(net).eval()
    probs, peaks = [], []
    for batch in iter_window_batches(np.asarray(pixels), cfg.windows, batch_size=64):
        with net.capturing():  # the heatmap from the same forward as the logits
            probs.append(torch.sigmoid(graph(torch.from_numpy(batch.inputs))).numpy())
            heat = net.heatmap_logits()
        peaks.append(torch.sigmoid(heat.flatten(1).max(dim=1).values).numpy())
    return np.concatenate(probs), np.concatenate(peaks)


def series_answers(probs: np.ndarray, peaks: np.ndarray, agg: AggregationConfig) -> dict[str, np.ndarray]:
    """The three series answers: the window Present column replaced (heatmap) or averaged (both) before the
    run's reduction."""
    out = {}
    for name in ANSWERS:
        windows = probs.copy()
        if name == "heatmap":
            windows[:, PRESENT_INDEX] = peaks
        elif name == "both":
            windows[:, PRESENT_INDEX] = 0.5 * (probs[:, PRESENT_INDEX] + peaks)
        out[name] = aggregate_windows(windows, agg)
    return out


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.weights / "train_config.yaml")
    if cfg.model.heatmap_weight <= 0:
        raise SystemExit(f"{args.weights} was trained without heatmaps (model.heatmap_weight = 0)")
    manifest = Manifest.read(args.weights, verify=False)
    assignment = manifest.provenance["fold_assignment"]
    table = read_train_table(Path(manifest.provenance["data_dir"]) / "train.csv")
    entries = cached_entries(cache_dir_for(series_cache_dir(cfg, args.cache_dir), cfg.preprocess))
    uids = [u for u, f in assignment.items() if f == args.fold and u in entries]
    net = load_best(args.checkpoint_dir / f"fold{args.fold}" / "best.pt", cfg)
    agg = fixed_aggregation(cfg.aggregation)
    answers: dict[str, list[np.ndarray]] = {name: [] for name in ANSWERS}
    for uid in Progress(uids, desc="series", unit="series"):
        probs, peaks = window_answers(net, load_pixels(entries[uid]), cfg)
        for name, answer in series_answers(probs, peaks, agg).items():
            answers[name].append(answer)
    y_true = np.stack([table.labels[table.index(u)] for u in uids])
    report = {"fold": args.fold, "series": len(uids), "positive": int(y_true[:, PRESENT_INDEX].sum()),
              "aggregation": agg.method}
    for name in ANSWERS:
        scored = score_predictions(y_true, np.stack(answers[name]))
        report[name] = {k: scored[k] for k in ("score", "present_auc", "mean_location_auc")}
    print(f"fold {args.fold} out of fold: {report['series']} series ({report['positive']} positive), "
          f"reduction {agg.method}")
    print(f"{'answer':<12}{'score':>8}{'Present':>10}{'location':>10}")
    for name in ANSWERS:
        row = report[name]
        print(f"{name:<12}" + "".join(f"{row[k]:>{w}.4f}" if row[k] is not None else f"{'n/a':>{w}}"
                                      for k, w in (("score", 8), ("present_auc", 10), ("mean_location_auc", 10))))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
