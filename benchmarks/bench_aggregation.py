"""Fixed reductions against the learned aggregator, on held-out series of the phantom at its default difficulty.

    python benchmarks/bench_aggregation.py --seed 0   # [--series 600 --test-series 100 --config PRESET]

Writes the phantom (aneurysms 1.6x the vessel level, 3-6 mm: the phantom's own defaults), trains the preset's
folds with the learned aggregator (train_minimal.py: out-of-fold windows, fold-wise cross-validated comparison),
then scores the held-out test series with the whole fold ensemble three ways: max, top-k mean, learned (the
aggregator fitted on every out-of-fold series). Prints both the out-of-fold and the held-out comparison. The
out-of-fold windows are recomputed here (each fold's model on its own validation series), so `--reuse` measures
today's aggregator fitting on folds trained earlier without training them again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.metric import score_predictions  # noqa: E402
from inference.aggregate import aggregate_windows  # noqa: E402
from inference.config import AggregationConfig  # noqa: E402
from inference.predict import Predictor  # noqa: E402
from training.data import read_train_table, series_folder  # noqa: E402
from training.oof import predict_windows  # noqa: E402
from training.stacking import SeriesWindows, fit_aggregator, stacking_report  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    parser.add_argument("--series", type=int, default=600, help="phantom train series (default 600)")
    parser.add_argument("--test-series", type=int, default=100, help="held-out test series (default 100)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "phantom_default.yaml")
    parser.add_argument("--folds", default="0,1", help="folds to train (default 0,1)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "aggregation", help="work folder")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra trainer overrides")
    parser.add_argument("--reuse", action="store_true", help="keep the folds already trained in the work folder")
    return parser.parse_args(argv)


def _run(cmd: list, **kwargs) -> float:
    start = time.perf_counter()
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)
    return time.perf_counter() - start


def _oof_windows(weights: Path, data: Path, manifest) -> list[SeriesWindows]:
    """Each trained fold's model on its own validation series (the fold assignment in the manifest)."""
    table = read_train_table(data / "train.csv")
    assignment = {uid: int(fold) for uid, fold in manifest.provenance["fold_assignment"].items()}
    out = []
    for fold in sorted({entry.fold for entry in manifest.folds}):
        uids = [uid for uid in table.uids if assignment.get(uid) == fold]
        windows, _ = predict_windows(weights, [series_folder(data, uid) for uid in uids], folds=[fold],
                                     progress=False)
        out += [SeriesWindows(uid, fold, modality, w, table.labels[table.index(uid)])
                for uid, (w, modality) in zip(uids, windows) if w is not None]
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out / f"seed{args.seed}"
    data, weights = out / "data", out / "weights"
    py = sys.executable
    times = {}
    if not (data / "train.csv").is_file():
        times["phantom"] = _run([py, "-m", "phantom", "--out", data, "--series", args.series, "--test-series",
                                 args.test_series, "--seed", args.seed, "--workers", "2", "--overwrite", "--quiet"],
                                cwd=ROOT)
    cmd = [py, "train_minimal.py", "--data-dir", data, "--config", args.config, "--folds", args.folds, "--out",
           weights, "--cache-dir", out / "cache", "--checkpoint-dir", out / "checkpoints", "--seed", args.seed,
           "--quiet"]
    for item in args.set:
        cmd += ["--set", item]
    if not (args.reuse and (weights / "manifest.json").is_file()):
        times["train + export + OOF"] = _run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    predictor = Predictor(weights, providers=["CPUExecutionProvider"])
    manifest = predictor.manifest
    start = time.perf_counter()
    oof_series = _oof_windows(weights, data, manifest)
    times["out-of-fold windows"] = time.perf_counter() - start
    oof = stacking_report(oof_series, top_k=manifest.aggregation.top_k)
    learned = fit_aggregator(oof_series, anchor=oof["anchor"])
    truth, answers = [], {"max": [], "topk_mean": [], "learned": []}
    test = data / "test"
    held_out = read_train_table(test / "test_labels.csv")
    labels = dict(zip(held_out.uids, held_out.labels))
    start = time.perf_counter()
    for uid, truth_row in labels.items():
        windows, report = predictor.window_answer(test / "series" / uid)
        truth.append(truth_row)
        answers["max"].append(aggregate_windows(windows, AggregationConfig(method="max")))
        answers["topk_mean"].append(aggregate_windows(windows, AggregationConfig(
            method="topk_mean", top_k=manifest.aggregation.top_k)))
        answers["learned"].append(learned(windows, report.modality))
    times["held-out windows"] = time.perf_counter() - start
    truth_array = np.stack(truth)
    held = {name: score_predictions(truth_array, np.stack(values)) for name, values in answers.items()}

    print(f"\nphantom seed {args.seed}: {args.series} train series ({args.folds} folds trained), "
          f"{len(labels)} held-out series; aggregation chosen by the trainer: {manifest.aggregation.method}")
    print(f"{'':<42}{'max':>10}{'top-k mean':>12}{'learned':>10}")
    for title, table in (("out-of-fold, fold-wise", oof), ("held-out test", held)):
        if not table:
            continue
        for key, name in (("score", "score"), ("present_auc", "Present AUC"), ("mean_location_auc", "location AUC")):
            cells = [table[m][key] for m in ("max", "topk_mean", "learned")]
            print(f"{title + ' ' + name:<42}" + "".join(f"{'-' if c is None else f'{c:.4f}':>{w}}"
                                                       for c, w in zip(cells, (10, 12, 10))))
    gain = oof.get("learned_gain")
    kept = "learned" if gain is not None and gain > 0 else oof.get("best_fixed")
    print(f"out-of-fold, fold-wise gain of learned (anchored on {oof.get('anchor')}) over the best fixed reduction: "
          + ("-" if gain is None else f"{gain:+.4f} -> the trainer keeps {kept}"))
    fixed = max(held["max"]["score"], held["topk_mean"]["score"])
    print(f"held-out gain of learned over the best fixed reduction: {held['learned']['score'] - fixed:+.4f}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    (out / "aggregation_summary.json").write_text(json.dumps({"held_out": held, "oof": oof, "times": times},
                                                             indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
