"""Blend trained models into one bundle: per-label weights fitted on their out-of-fold answers.

    python -m training.blend --member window25d=weights_25d --member volume32=weights_volume \\
        --data-dir DATA --out weights_blend

Each member is a weights folder written by train_minimal.py on the same data with the same folds (same seed and
number of folds: the fold assignments in their provenance must agree). Every series held out by a fold that
every member trained is answered by each member's model of that fold (the kernel's Predictor); per label, the
blend weights are the point of a simplex grid that maximises the out-of-fold AUC. The report also scores the
blend fold-wise cross-validated (weights fitted on the other folds' series), next to each member.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.metric import MetricError, roc_auc, score_predictions
from inference.blend import Blend, BlendMember
from inference.errors import ConfigError, KitError
from inference.labels import LABELS
from inference.manifest import Manifest

from .data import read_train_table, series_folder
from .oof import predict_series

__all__ = ["simplex_grid", "fit_blend_weights", "blend_members", "main"]

log = logging.getLogger(__name__)


def simplex_grid(members: int, step: float = 0.1) -> np.ndarray:
    """Every weight vector of `members` non-negative multiples of `step` summing to 1, (points, members)."""
    n = int(round(1 / step))
    points = [c for c in itertools.product(range(n + 1), repeat=members) if sum(c) == n]
    return np.asarray(points, dtype=np.float64) / n


def fit_blend_weights(answers: np.ndarray, truth: np.ndarray, *, step: float = 0.1) -> np.ndarray:
    """(14, members) weights: per label, the grid point with the highest AUC on these answers (ties: the point
    closest to equal weights); a label with one class gets equal weights.

    Args:
        answers: (members, n, 14) each member's answers.
        truth: (n, 14) labels.
    """
    members = answers.shape[0]
    grid = simplex_grid(members, step)
    equal = np.full(members, 1.0 / members)
    weights = np.tile(equal, (len(LABELS), 1))
    order = np.argsort(np.abs(grid - equal).sum(axis=1), kind="stable")  # ties go to the most even blend
    for j in range(len(LABELS)):
        best, best_auc = None, -np.inf
        for point in grid[order]:
            try:
                auc = roc_auc(truth[:, j], np.tensordot(point, answers[:, :, j], axes=1))
            except MetricError:
                break  # one class: keep equal weights
            if auc > best_auc + 1e-12:
                best, best_auc = point, auc
        if best is not None:
            weights[j] = best
    return weights


def _fold_assignment(manifest: Manifest, name: str) -> dict[str, int]:
    assignment = manifest.provenance.get("fold_assignment")
    if not assignment:
        raise ConfigError(f"member {name}: its manifest has no fold_assignment (train it with train_minimal.py)")
    return {str(k): int(v) for k, v in assignment.items()}


def blend_members(members: dict[str, Path], data_dir: str | Path, out: str | Path, *, step: float = 0.1,
                  progress: bool = True) -> dict[str, Any]:
    """Fit the blend of `members` (name -> weights folder) on their out-of-fold answers and write the bundle.

    Writes `out/<name>/` (a copy of each member's folder) and `out/bundle.json`.

    Returns:
        The report: out-of-fold scores of each member and of the blend (fold-wise cross-validated), the weights.
    Raises:
        ConfigError: fewer than two members, members trained on other fold assignments, or no shared fold.
    """
    if len(members) < 2:
        raise ConfigError("a blend needs at least two members")
    manifests = {name: Manifest.read(folder, verify=True) for name, folder in members.items()}
    assignments = {name: _fold_assignment(m, name) for name, m in manifests.items()}
    first = next(iter(assignments.values()))
    for name, assignment in assignments.items():
        shared = set(first) & set(assignment)
        if not shared or any(first[u] != assignment[u] for u in shared):
            raise ConfigError(f"member {name} was trained on another fold assignment: train every member with the "
                              "same --seed and train.num_folds on the same data")
    folds = sorted(set.intersection(*({f.fold for f in m.folds} for m in manifests.values())))
    if not folds:
        raise ConfigError("the members share no trained fold: nothing is out of fold for all of them")
    table = read_train_table(Path(data_dir) / "train.csv")
    uids = [u for u in table.uids if u in first and first[u] in folds]
    truth = np.stack([table.labels[table.index(u)] for u in uids])
    fold_of = np.array([first[u] for u in uids])
    answers = np.zeros((len(members), len(uids), len(LABELS)))
    for m, (name, folder) in enumerate(members.items()):
        for fold in folds:
            rows = np.flatnonzero(fold_of == fold)
            probs, failed = predict_series(folder, [series_folder(data_dir, uids[i]) for i in rows], folds=[fold],
                                           progress=progress, desc=f"{name} fold {fold}")
            answers[m, rows] = probs
            if failed:
                log.warning("%s fold %d: %d series answered with the priors", name, fold, len(failed))
    cross = np.zeros((len(uids), len(LABELS)))
    for fold in folds:  # the blend's own out-of-fold score: weights fitted without the fold's series
        held = fold_of == fold
        weights = fit_blend_weights(answers[:, ~held], truth[~held], step=step) if (~held).any() else None
        if weights is None:
            weights = np.full((len(LABELS), len(members)), 1.0 / len(members))
        blend = Blend(members=tuple(BlendMember(n, n) for n in members), weights=weights)
        cross[held] = [blend.combine(dict(zip(members, answers[:, i]))) for i in np.flatnonzero(held)]  # as served
    weights = fit_blend_weights(answers, truth, step=step)
    report = {"series": len(uids), "folds": folds,
              "members": {name: score_predictions(truth, answers[m]) for m, name in enumerate(members)},
              "blend_cv": score_predictions(truth, cross),
              "weights": {label: dict(zip(members, map(float, w))) for label, w in zip(LABELS, weights)}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, folder in members.items():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.pt"))
    provenance = {"oof_series": len(uids), "folds": folds,
                  "oof_scores": {name: report["members"][name]["score"] for name in members},
                  "blend_cv_score": report["blend_cv"]["score"]}
    Blend(members=tuple(BlendMember(name, name) for name in members), weights=weights,
          provenance=provenance).write(out)
    (out / "blend_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _member(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--member takes NAME=WEIGHTS_FOLDER, got {text!r}")
    return name, Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.blend", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", type=_member, action="append", required=True, metavar="NAME=FOLDER",
                        help="a trained weights folder (repeat for each member)")
    parser.add_argument("--data-dir", required=True, help="the competition layout the members were trained on")
    parser.add_argument("--out", required=True, help="the blended bundle's folder")
    parser.add_argument("--step", type=float, default=0.1, help="weight grid step (default 0.1)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = blend_members(dict(args.member), args.data_dir, args.out, step=args.step, progress=not args.quiet)
    except KitError as exc:
        logging.getLogger("training.blend").error("%s", exc)
        return 2
    rows = {**{name: r for name, r in report["members"].items()}, "blend (cross-validated)": report["blend_cv"]}
    print(f"out-of-fold, {report['series']} series, folds {report['folds']}:")
    for name, r in rows.items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"  {name:<26} score {fmt(r['score'])}  Present AUC {fmt(r['present_auc'])}  "
              f"location AUC {fmt(r['mean_location_auc'])}")
    print(f"bundle: {Path(args.out) / 'bundle.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
