"""Full frame vs region (issue 21) on held-out series: score, windows and seconds per series, locator recall and
box size, from the kernel's own Predictor.

    python benchmarks/bench_region.py --weights W_FULL --weights W_REGION --data-dir DATA [--json out.json]

DATA holds the phantom's (or any) competition layout with a held-out split in DATA/test (test.csv with labels in
test_labels.csv, test_localizers.csv, series/). Each weights folder answers every held-out series through
`inference.predict.Predictor` (CPU); a bundle with a region locator is also measured on its own: the share of the
held-out localizer points inside the locator's box (recall), the box's share of the slices and of the in-plane
area, and the series answered on the whole volume (fallback). Train the rows at the same budget, e.g.:

    python train_minimal.py --config configs/tiny.yaml --data-dir DATA --out W_FULL --folds 0,1 --no-oof
    python train_minimal.py --config configs/tiny_region.yaml --data-dir DATA --out W_REGION --folds 0,1 --no-oof

Measured figures (issue 21, the competition-scale phantom): README.md, "The region stage at the competition's
scale". `--locator-only` gives the locator's rows of that table on any number of held-out series.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.metric import score_predictions  # noqa: E402
from inference.load import load_series  # noqa: E402
from inference.predict import Predictor  # noqa: E402
from inference.region import Locator  # noqa: E402
from inference.runners import RegionRunner  # noqa: E402
from training.data import read_localizers, read_train_table, series_folder  # noqa: E402
from training.localizers import place_points  # noqa: E402
from training.region import CanonicalPlacement  # noqa: E402

log = logging.getLogger("bench_region")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, action="append", required=True, help="a weights folder (repeat)")
    parser.add_argument("--data-dir", type=Path, required=True, help="dataset root with a test/ split")
    parser.add_argument("--limit", type=int, default=0, help="only the first N held-out series (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--locator-only", action="store_true",
                        help="only the locator's figures (recall, box size) on the held-out series: no scoring")
    return parser.parse_args(argv)


def _locator_figures(locator: Locator, folders: dict[str, Path], localizers: dict, modality: dict) -> dict:
    """Recall of the held-out localizer points and the box's size, per modality, from the bundle's locator."""
    inside, total = 0, 0
    shares: dict[str, list[tuple[float, float]]] = defaultdict(list)
    fallbacks, missed = [], []
    for uid, folder in folders.items():
        volume = load_series(folder, in_process=True)
        answer = locator.locate(volume)
        points, _ = place_points(volume, CanonicalPlacement(volume.pixels), localizers.get(uid, []))
        if answer.region is None:
            fallbacks.append(f"{uid}: {answer.note}")
            inside, total = inside + len(points), total + len(points)  # the whole volume holds them
            shares[modality[uid]].append((1.0, 1.0))
            continue
        shares[modality[uid]].append((answer.region.slice_share, answer.region.area_share))
        for p in points:
            total += 1
            if answer.region.holds(p.z, p.row, p.col):
                inside += 1
            else:
                missed.append(f"{uid}: point {p.location} at {(round(p.z), round(p.row), round(p.col))}")
    return {"recall": inside / total if total else None, "points": total, "missed": missed, "fallbacks": fallbacks,
            "box_share": {m: {"slices": round(float(np.mean([s for s, _ in v])), 3),
                              "area": round(float(np.mean([a for _, a in v])), 3), "series": len(v)}
                          for m, v in sorted(shares.items())}}


def locator_only(weights: Path, data_dir: Path, *, limit: int = 0) -> dict[str, Any]:
    """The bundle's locator alone on the held-out series: recall and box size."""
    table = read_train_table(data_dir / "test" / "test_labels.csv")
    uids = list(table.uids[:limit] if limit else table.uids)
    predictor = Predictor(weights, providers=["CPUExecutionProvider"], threads=1)
    predictor.load()
    locator = predictor.runner.locator if isinstance(predictor.runner, RegionRunner) else None
    if locator is None:
        raise SystemExit(f"{weights}: no region locator in this bundle")
    figures = _locator_figures(locator, {u: series_folder(data_dir / "test", u) for u in uids},
                               read_localizers(data_dir / "test" / "test_localizers.csv"),
                               {u: table.modality[table.index(u)] for u in uids})
    return {"weights": str(weights), "series": len(uids), "locator": {**figures, "trainer_oof": locator.spec.stats}}


def measure(weights: Path, data_dir: Path, *, limit: int = 0, threads: int = 1) -> dict[str, Any]:
    """Every held-out series answered by the bundle in `weights`; the figures of one row of the table."""
    table = read_train_table(data_dir / "test" / "test_labels.csv")
    uids = list(table.uids[:limit] if limit else table.uids)
    modality = {u: table.modality[table.index(u)] for u in uids}
    folders = {u: series_folder(data_dir / "test", u) for u in uids}
    predictor = Predictor(weights, providers=["CPUExecutionProvider"], threads=threads)
    predictor.load()
    probs, windows, seconds, regions = [], defaultdict(list), defaultdict(list), defaultdict(int)
    locate = []
    for uid in uids:
        t0 = time.perf_counter()
        values, report = predictor.predict_series(folders[uid])
        probs.append(values)
        windows[modality[uid]].append(report.windows)
        seconds[modality[uid]].append(time.perf_counter() - t0)
        locate.append(report.locate_s)
        regions["region" if report.region.startswith("region") else "whole" if report.region else "no locator"] += 1
    y_true = np.stack([table.labels[table.index(u)] for u in uids])
    score = score_predictions(y_true, np.stack(probs))
    row = {"weights": str(weights), "series": len(uids), "score": score["score"],
           "present_auc": score["present_auc"], "mean_location_auc": score["mean_location_auc"],
           "windows_per_series": {m: round(float(np.mean(v)), 1) for m, v in sorted(windows.items())},
           "seconds_per_series": {m: round(float(np.mean(v)), 3) for m, v in sorted(seconds.items())},
           "seconds_per_series_all": round(float(np.mean([s for v in seconds.values() for s in v])), 3),
           "answered_on": dict(regions), "locator_s_per_series": round(float(np.mean(locate)), 4)}
    locator = predictor.runner.locator if isinstance(predictor.runner, RegionRunner) else None
    if locator is not None:
        localizers = read_localizers(data_dir / "test" / "test_localizers.csv")
        row["locator"] = _locator_figures(locator, folders, localizers, modality)
        row["locator"]["trainer_oof"] = locator.spec.stats
    return row


def _print_locator(loc: dict[str, Any]) -> None:
    print(f"  locator recall {loc['recall']:.4f} of {loc['points']} held-out points; box share "
          f"{loc['box_share']}; fallbacks {len(loc['fallbacks'])}")
    for line in loc["missed"][:10]:
        print(f"    missed {line}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.locator_only:
        rows = [locator_only(w, args.data_dir, limit=args.limit) for w in args.weights]
    else:
        rows = [measure(w, args.data_dir, limit=args.limit, threads=args.threads) for w in args.weights]
    for row in rows:
        print(f"\n{row['weights']}: {row['series']} held-out series")
        if "score" not in row:
            _print_locator(row["locator"])
            continue
        print(f"  score {row['score']:.4f}  Present AUC {row['present_auc']:.4f}  location AUC "
              f"{row['mean_location_auc']:.4f}")
        print(f"  windows per series {row['windows_per_series']}")
        print(f"  kernel s per series {row['seconds_per_series']} (all {row['seconds_per_series_all']})")
        print(f"  answered on {row['answered_on']}; locator {row['locator_s_per_series']:.3f} s per series")
        if "locator" in row:
            _print_locator(row["locator"])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
