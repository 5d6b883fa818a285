"""The full-frame 2.5D baseline on the competition-scale phantom: held out and fold by fold, with CPU-minutes.

    python benchmarks/bench_competition_baseline.py --out runs/baseline_c3 --blob-contrast 3.0   # the demo's contrast
    python benchmarks/bench_competition_baseline.py --out runs/baseline_c1.6 --blob-contrast 1.6 # the phantom's own

Writes the phantom at the competition's scale (`python -m phantom --scale competition --downscale 4`: the real
data's slices and millimetres, 128 px a side; aneurysms 2-10 mm across; 600 training series), trains
`configs/competition_phantom.yaml` (the tiny preset's model at 96 px; `--config configs/competition_region.yaml`:
the region stage at the same budget) on fold 0 (`--folds`), builds the Kaggle bundle, runs the bundled kernel
through the local gateway on the held-out series and scores it (`python -m evaluation`), then scores each fold
alone on the same held-out series through the kernel's Predictor. Prints one table: score, Aneurysm Present AUC,
mean location AUC (held out: the ensemble and each fold; each fold's best validation score), windows scored per
series by modality, kernel seconds per series, and each step's wall and CPU minutes; writes it as baseline.json in
--out. A data folder that already holds train.csv is reused (--data), and finished folds are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.metric import score_predictions  # noqa: E402
from evaluation.submission import read_labels  # noqa: E402
from inference.labels import LABELS  # noqa: E402
from inference.manifest import Manifest  # noqa: E402

KERNEL_SLUG = "rsna-aneurysm-kit-submission"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--data", type=Path, default=None, help="phantom folder (default OUT/data; reused if written)")
    parser.add_argument("--series", type=int, default=600, help="phantom train series (default 600)")
    parser.add_argument("--test-series", type=int, default=60, help="held-out series (default 60)")
    parser.add_argument("--downscale", type=int, default=4, help="phantom --downscale (default 4: 128 px)")
    parser.add_argument("--blob-contrast", type=float, default=3.0,
                        help="3.0: the demo's contrast; 1.6: the phantom's default (default 3.0)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed (default 0)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "competition_phantom.yaml")
    parser.add_argument("--folds", default="0", help="folds to train, comma-separated (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="phantom writer processes (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra trainer config override (repeatable)")
    return parser.parse_args(argv)


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list, steps: dict, name: str, **kwargs) -> None:
    """Run one step; record its wall and CPU seconds (the step's processes and their children)."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    wall, cpu = time.perf_counter(), _cpu_children()
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)
    steps[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu_children() - cpu, 1)}


def _kernel_env(out: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")}
    env.update({"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "RSNA_BUNDLE_DIR": str(out / "dist" / "dataset"),
                "RSNA_COMPETITION_DIR": str(data), "RSNA_TEST_CSV": str(data / "test" / "test.csv"),
                "RSNA_SERIES_DIR": str(data / "test" / "series"), "RSNA_GATEWAY_SEED": "0"})
    return env


def _score(y: np.ndarray, p: np.ndarray) -> dict[str, float | str | None]:
    r = score_predictions(y, p)  # lenient: a location with one class in the split is left out of the mean
    return {k: r[k] for k in ("score", "present_auc", "mean_location_auc")}


def _folds_held_out(weights: Path, data: Path, folds: list[int], steps: dict) -> dict[str, dict]:
    """Each fold alone on the held-out series, through the kernel's Predictor."""
    from training.oof import predict_series

    labels = read_labels(data / "test" / "test_labels.csv")
    uids = labels["SeriesInstanceUID"].to_list()
    y = labels.select(list(LABELS)).to_numpy().astype(int)
    folders = [data / "test" / "series" / uid for uid in uids]
    out = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for fold in folds:
        probs, _ = predict_series(weights, folders, folds=[fold], desc=f"fold {fold} held out")
        out[str(fold)] = _score(y, probs)
    steps["folds held out"] = {"wall_s": round(time.perf_counter() - wall, 1),
                               "cpu_s": round(time.process_time() - cpu, 1)}
    return out


def _per_modality(run: dict, modality_of: dict[str, str]) -> dict[str, dict[str, float]]:
    windows: dict[str, list[int]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    slices: dict[str, list[int]] = defaultdict(list)
    for uid, report in run["series"].items():
        m = modality_of.get(uid) or report.get("modality") or "?"
        windows[m].append(int(report.get("windows", 0)))
        slices[m].append(int(report.get("slices", 0)))
        seconds[m].append(float(run["durations_s"][uid]))
    return {m: {"series": len(windows[m]), "slices_mean": float(np.mean(slices[m])),
                "windows_mean": float(np.mean(windows[m])), "kernel_s_p50": float(np.median(seconds[m])),
                "kernel_s_mean": float(np.mean(seconds[m]))} for m in sorted(windows)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    py = sys.executable
    out = args.out.absolute()
    data = (args.data or out / "data").absolute()
    weights, working = out / "weights", out / "kaggle" / "working"
    steps: dict[str, dict] = {}
    folds = [int(f) for f in args.folds.split(",")]
    if not (data / "train.csv").is_file():
        _run([py, "-m", "phantom", "--out", data, "--scale", "competition", "--downscale", args.downscale,
              "--series", args.series, "--test-series", args.test_series, "--seed", args.seed, "--workers",
              args.workers, "--blob-contrast", args.blob_contrast, "--overwrite", "--quiet"], steps, "phantom",
             cwd=ROOT)
    _run([py, "train_minimal.py", "--config", args.config, "--data-dir", data, "--out", weights, "--cache-dir",
          out / "cache", "--checkpoint-dir", out / "checkpoints", "--folds", args.folds, "--seed", args.seed,
          "--no-oof", *[a for o in args.set for a in ("--set", o)]], steps, "train + export", cwd=ROOT)
    _run([py, "build_kernel.py", "--weights", weights, "--out", out / "dist", "--username", "baseline-user"],
         steps, "build bundle", cwd=ROOT)
    if working.exists():
        shutil.rmtree(working)
    working.mkdir(parents=True)
    _run([py, out / "dist" / "kernel" / f"{KERNEL_SLUG}.py"], steps, "bundled kernel", cwd=working,
         env=_kernel_env(out, data))
    _run([py, "-m", "evaluation", "--run", working / "gateway_run.json", "--labels",
          data / "test" / "test_labels.csv", "--series-dir", data / "test" / "series"], steps, "score", cwd=ROOT)
    summary = json.loads((working / "gateway_summary.json").read_text())
    run = json.loads((working / "gateway_run.json").read_text())
    manifest = Manifest.read(weights, verify=False)
    labels = read_labels(data / "test" / "test_labels.csv")
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "data": str(data), "config": str(args.config), "blob_contrast": args.blob_contrast,
        "held_out": {k: summary["score"][k] for k in ("score", "present_auc", "mean_location_auc")}
        if "score" in summary else {"error": summary.get("score_error")},
        "held_out_per_modality": summary.get("score", {}).get("per_modality"),
        "fold_val_score": {str(f.fold): f.val_score for f in manifest.folds},
        "folds_held_out": _folds_held_out(weights, data, folds, steps),
        "per_modality": _per_modality(run, dict(zip(labels["SeriesInstanceUID"], labels["Modality"]))),
        "timing": summary["timing"], "steps": steps,
    }
    (out / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return 0


def _print(r: dict) -> None:
    def f(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    print(f"\nbaseline ({r['config']}, blob contrast {r['blob_contrast']}, data {r['data']})")
    h = r["held_out"]
    print(f"held out, ensemble: score {f(h.get('score'))}  Present AUC {f(h.get('present_auc'))}  "
          f"location AUC {f(h.get('mean_location_auc'))}")
    for fold, s in r["folds_held_out"].items():
        print(f"held out, fold {fold} alone: score {f(s.get('score'))}  Present AUC {f(s.get('present_auc'))}  "
              f"location AUC {f(s.get('mean_location_auc'))}  (best validation score "
              f"{f(r['fold_val_score'].get(fold))})")
    for m, s in r["per_modality"].items():
        score = (r.get("held_out_per_modality") or {}).get(m, "-")
        print(f"  {m:<11} {s['series']:3d} series  {s['slices_mean']:6.0f} slices  {s['windows_mean']:6.0f} windows "
              f"scored  kernel p50 {s['kernel_s_p50']:.2f} s  mean {s['kernel_s_mean']:.2f} s  score {f(score)}")
    t = r["timing"]
    print(f"kernel: p50 {t['p50_s']:.2f} s, p95 {t['p95_s']:.2f} s a series; projection {t['projected_series']} "
          f"series -> {t['projected_total_s'] / 3600:.2f} h")
    for name, s in r["steps"].items():
        print(f"  step {name:<16} wall {s['wall_s'] / 60:6.1f} min  CPU {s['cpu_s'] / 60:6.1f} min")


if __name__ == "__main__":
    raise SystemExit(main())
