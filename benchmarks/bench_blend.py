"""A 2.5D window model and a volume model blended, against each alone, on held-out series of the demo's phantom.

    python benchmarks/bench_blend.py --seed 0   # [--window-epochs 8 --volume-epochs 55 --reference-epochs 12]

The CPU budget: `make demo` trains one 2.5D model (configs/tiny.yaml) for 12 epochs in 2 folds. Here the two
members share that budget: the 2.5D member trains fewer epochs (--window-epochs) and the volume member
(configs/tiny_volume.yaml, 32 slices of 64 px) takes the rest (--volume-epochs); the training CPU seconds of
each are measured and printed (measured on 2 cores: 8 + 55 epochs took 424 CPU seconds, 12 epochs of the 2.5D
model alone 402; the cache is shared and not counted). The blend weights are fitted on the members'
out-of-fold answers (python -m training.blend); then the held-out test split is answered by the blended bundle,
which records each member's answer and seconds, so every score below comes from the same calls. With
--reference-epochs N > 0 the 2.5D model alone at the whole budget (N epochs) is trained and scored too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from demo import DEMO_PHANTOM  # noqa: E402

from evaluation.metric import score_predictions  # noqa: E402
from inference.predict import Predictor  # noqa: E402
from training.blend import MIN_GAIN, blend_members  # noqa: E402
from training.data import read_train_table  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    parser.add_argument("--series", type=int, default=300, help="phantom train series (default 300, as the demo)")
    parser.add_argument("--test-series", type=int, default=60, help="held-out test series (default 60)")
    parser.add_argument("--folds", default="0,1", help="folds to train (default 0,1, as the demo)")
    parser.add_argument("--window-epochs", type=int, default=8, help="2.5D member's epochs (default 8)")
    parser.add_argument("--volume-epochs", type=int, default=55, help="volume member's epochs (default 55)")
    parser.add_argument("--reference-epochs", type=int, default=12,
                        help="the 2.5D model alone at the demo's budget (default 12; 0 skips it)")
    parser.add_argument("--per-label", action="store_true", help="blend weights per label (python -m "
                        "training.blend --per-label); default: Present alone, the locations together")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "blend", help="work folder")
    return parser.parse_args(argv)


def _run(cmd: list) -> tuple[float, float]:
    """Run a step; (wall seconds, CPU seconds of the step's processes)."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def _train(args: argparse.Namespace, data: Path, out: Path, name: str, config: str, epochs: int
           ) -> tuple[Path, tuple[float, float]]:
    """Train a member (kept in `<name>_e<epochs>`, reused when there); its folder and (wall, CPU) seconds."""
    folder = out / f"{name}_e{epochs}"
    times_file = folder / "bench_times.json"
    if times_file.is_file():
        print(f"{name}: already trained in {folder}")
        return folder, tuple(json.loads(times_file.read_text()))
    times = _run([sys.executable, "train_minimal.py", "--data-dir", data, "--config", ROOT / "configs" / config,
                  "--folds", args.folds, "--out", folder, "--cache-dir", out / "cache",
                  "--checkpoint-dir", out / f"checkpoints_{name}_e{epochs}", "--seed", args.seed, "--epochs",
                  epochs, "--quiet"])
    times_file.write_text(json.dumps(times))
    return folder, times


def _held_out(test: Path) -> dict[str, np.ndarray]:
    table = read_train_table(test / "test_labels.csv")
    return dict(zip(table.uids, table.labels))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out / f"seed{args.seed}"
    data = out / "data"
    times: dict[str, tuple[float, float]] = {}
    if not (data / "train.csv").is_file():
        low, high = DEMO_PHANTOM["blob_radius"]
        times["phantom"] = _run([sys.executable, "-m", "phantom", "--out", data, "--series", args.series,
                                 "--test-series", args.test_series, "--seed", args.seed, "--workers", "2",
                                 "--blob-contrast", DEMO_PHANTOM["blob_contrast"], "--blob-radius", low, high,
                                 "--overwrite", "--quiet"])
    folders = {}
    folders["window25d"], times["window25d"] = _train(args, data, out, "window25d", "tiny.yaml", args.window_epochs)
    folders["volume32"], times["volume32"] = _train(args, data, out, "volume32", "tiny_volume.yaml",
                                                    args.volume_epochs)
    if args.reference_epochs > 0:
        folders["reference"], times["reference"] = _train(args, data, out, "window25d", "tiny.yaml",
                                                          args.reference_epochs)
    start = time.perf_counter()
    blended = out / f"blend_e{args.window_epochs}_e{args.volume_epochs}{'_per_label' if args.per_label else ''}"
    # forced: the fitted weights are served whatever the out-of-fold comparison says, so both members run and the
    # fitted blend is scored; what the kit would bundle by default is scored beside it ("as built")
    oof = blend_members({"window25d": folders["window25d"], "volume32": folders["volume32"]}, data, blended,
                        per_label=args.per_label, force=True, progress=False)
    times["blend fit (out-of-fold answers)"] = (time.perf_counter() - start, 0.0)
    best = max(("window25d", "volume32"), key=lambda name: oof["members"][name]["score"])
    used = "blend" if oof["blend_cv"]["score"] > oof["members"][best]["score"] + MIN_GAIN else best

    labels = _held_out(data / "test")
    blend = Predictor(blended, providers=["CPUExecutionProvider"])
    reference = Predictor(folders["reference"], providers=["CPUExecutionProvider"]) if args.reference_epochs else None
    answers: dict[str, list[np.ndarray]] = {"window25d": [], "volume32": [], "blend": [], "reference": []}
    seconds: dict[str, list[float]] = {"window25d": [], "volume32": [], "blend": []}
    for uid in labels:
        probs, report = blend.predict_series(data / "test" / "series" / uid)
        assert report.answer == "model", f"{uid}: {report.answer} {report.error}"
        answers["blend"].append(probs)
        seconds["blend"].append(report.total_s)
        for name in ("window25d", "volume32"):
            answers[name].append(np.array(report.member_probs[name]))
            seconds[name].append(report.members_s[name])
        if reference is not None:
            answers["reference"].append(reference.predict_series(data / "test" / "series" / uid)[0])
    answers["as built"] = answers[used]
    truth = np.stack(list(labels.values()))
    held = {name: score_predictions(truth, np.stack(rows)) for name, rows in answers.items() if rows}

    print(f"\nphantom seed {args.seed} (demo difficulty): {args.series} train series, folds {args.folds}; "
          f"{len(labels)} held-out series")
    print(f"{'':<34}{'score':>8}{'Present':>9}{'location':>10}{'train CPU s':>13}{'s/series':>10}")
    rows = [("2.5D member", "window25d", f"{args.window_epochs} ep"),
            ("volume member", "volume32", f"{args.volume_epochs} ep"), ("blend, fitted weights", "blend", ""),
            (f"as built ({used if used == 'blend' else used + ' alone'})", "as built", "")]
    if reference is not None:
        rows.append(("2.5D alone, whole budget", "reference", f"{args.reference_epochs} ep"))
    for title, key, note in rows:
        r = held[key]
        cpu = sum(times[k][1] for k in ("window25d", "volume32")) if key in ("blend", "as built") \
            else times.get(key, (0, 0))[1]
        per_series = f"{np.mean(seconds[key]):.3f}" if key in seconds else "-"
        print(f"{(title + ' ' + note).strip():<34}{r['score']:8.4f}{r['present_auc']:9.4f}"
              f"{r['mean_location_auc']:10.4f}{cpu:13.0f}{per_series:>10}")
    print(f"as built, the bundle answers with: {used} (the blend is kept only when its cross-validated "
          f"out-of-fold score beats the best member's by more than {MIN_GAIN})")
    print("out-of-fold (blend cross-validated over folds): " + ", ".join(
        f"{name} {r['score']:.4f}" for name, r in {**oof["members"], "blend": oof["blend_cv"]}.items()))
    better = max(held["window25d"]["score"], held["volume32"]["score"])
    print(f"held-out: fitted blend - better member = {held['blend']['score'] - better:+.4f}; as built - better "
          f"member = {held['as built']['score'] - better:+.4f}")
    weights = np.array([[w["window25d"], w["volume32"]] for w in oof["weights"].values()])
    print(f"blend weight of the volume member per label: {np.round(weights[:, 1], 1).tolist()}")
    print("wall time: " + ", ".join(f"{k} {v[0]:.0f} s" for k, v in times.items()))
    (blended / "blend_summary.json").write_text(json.dumps(
        {"held_out": held, "oof": {k: v for k, v in oof.items() if k != "weights"}, "weights": oof["weights"],
         "times": times, "seconds_per_series": {k: float(np.mean(v)) for k, v in seconds.items()}},
        indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
