"""Blend trained models into one bundle: per-label weights fitted on their out-of-fold answers.

    python -m training.blend --member window25d=weights_25d --member volume32=weights_volume \\
        --data-dir DATA --out weights_blend

Each member is a weights folder written by train_minimal.py on the same data with the same folds (same seed and
number of folds: the fold assignments in their provenance must agree). Every series held out by a fold that
every member trained is answered by each member's model of that fold (the kernel's Predictor); the blend weights
are the points of a simplex grid with the highest out-of-fold AUC: one for Present, one shared by the 13
locations (--per-label: one per label). The report also scores the blend cross-validated (weights
fitted on the other folds' series), next to each member.
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

from evaluation.metric import MetricError, roc_auc, score_fold_wise
from inference.blend import Blend, BlendMember
from inference.errors import ConfigError, KitError
from inference.labels import LABELS, LOCATION_INDICES, PRESENT_INDEX
from inference.manifest import Manifest

from .data import read_train_table, series_folder
from .oof import predict_series

__all__ = ["MIN_GAIN", "simplex_grid", "fit_blend_weights", "blend_members", "main"]

log = logging.getLogger(__name__)

# A blend must beat its best member out of fold by more than this to be kept: each extra member costs its
# inference time on every series, and on a few hundred out-of-fold series smaller gains are noise (measured on the
# phantom: a member at chance level got a 0.1 weight on Present for a +0.0005 out-of-fold gain and cost 0.002
# held out).
MIN_GAIN = 0.005


def simplex_grid(members: int, step: float = 0.1) -> np.ndarray:
    """Every weight vector of `members` non-negative multiples of `step` summing to 1, (points, members)."""
    n = int(round(1 / step))
    points = [c for c in itertools.product(range(n + 1), repeat=members) if sum(c) == n]
    return np.asarray(points, dtype=np.float64) / n


def _best_point(grid: np.ndarray, score) -> np.ndarray | None:
    """The grid point with the highest score (ties: the one met first); None when no point can be scored."""
    best, best_score = None, -np.inf
    for point in grid:
        value = score(point)
        if value is None:
            return None
        if value > best_score + 1e-12:
            best, best_score = point, value
    return best


def fit_blend_weights(answers: np.ndarray, truth: np.ndarray, *, step: float = 0.1,
                      per_label: bool = False) -> np.ndarray:
    """(14, members) weights fitted on the members' answers: grid points of the simplex with the highest AUC.

    By default Present gets its own weights and the 13 locations share one set, the one with the highest mean
    location AUC: a location has a few dozen positives in a few hundred series, and a weight picked per location
    on so few follows their noise (measured on the phantom: per-location weights gave one location wholly to a
    member 0.25 weaker). `per_label` fits each label alone (for large out-of-fold sets). Ties go to the grid point
    closest to the best single member's weights; a label (or every location) with one class keeps them.

    Args:
        answers: (members, n, 14) each member's answers.
        truth: (n, 14) labels.
    """
    members = answers.shape[0]

    def auc(point: np.ndarray, j: int) -> float | None:
        try:
            return roc_auc(truth[:, j], np.tensordot(point, answers[:, :, j], axes=1))
        except MetricError:
            return None

    def mean_auc(point: np.ndarray, labels: Sequence[int]) -> float | None:
        values = [v for v in (auc(point, j) for j in labels) if v is not None]
        return float(np.mean(values)) if values else None

    # the best member alone, by the competition score: where the grid starts and what a tie keeps
    solo = np.eye(members)
    scores = [mean_auc(p, [PRESENT_INDEX]) or 0.0 for p in solo]
    scores = [0.5 * a + 0.5 * (mean_auc(p, LOCATION_INDICES) or 0.0) for a, p in zip(scores, solo)]
    start = solo[int(np.argmax(scores))]
    grid = simplex_grid(members, step)
    grid = grid[np.argsort(np.abs(grid - start).sum(axis=1), kind="stable")]
    weights = np.tile(start, (len(LABELS), 1))
    groups = [[j] for j in range(len(LABELS))] if per_label else [[PRESENT_INDEX], list(LOCATION_INDICES)]
    for group in groups:
        point = _best_point(grid, lambda p, group=group: mean_auc(p, group))
        if point is not None:
            weights[group] = point
    return weights


def _fold_assignment(manifest: Manifest, name: str) -> dict[str, int]:
    assignment = manifest.provenance.get("fold_assignment")
    if not assignment:
        raise ConfigError(f"member {name}: its manifest has no fold_assignment (train it with train_minimal.py)")
    return {str(k): int(v) for k, v in assignment.items()}


def blend_members(members: dict[str, Path], data_dir: str | Path, out: str | Path, *, step: float = 0.1,
                  per_label: bool = False, force: bool = False, min_gain: float = MIN_GAIN,
                  progress: bool = True) -> dict[str, Any]:
    """Fit the blend of `members` (name -> weights folder) on their out-of-fold answers and write the bundle.

    The blend is kept only when its cross-validated score beats the best member's out-of-fold score by more than
    `min_gain` (or with `force`), both scored fold by fold (`evaluation.metric.score_fold_wise`); otherwise every
    label's weight goes to that member, and the kernel runs it alone.

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
        if (~held).any():
            weights = fit_blend_weights(answers[:, ~held], truth[~held], step=step, per_label=per_label)
        else:  # one fold only: nothing to fit on without its own series
            weights = np.full((len(LABELS), len(members)), 1.0 / len(members))
        blend = Blend(members=tuple(BlendMember(n, n) for n in members), weights=weights)
        cross[held] = [blend.combine(dict(zip(members, answers[:, i]))) for i in np.flatnonzero(held)]  # as served
    weights = fit_blend_weights(answers, truth, step=step, per_label=per_label)
    # scored fold by fold, as the learned aggregator is: each fold's answers come from its own models (and here
    # its own weights), on scales the kernel never compares, since it averages every fold for every series
    scores = {name: score_fold_wise(truth, answers[m], fold_of) for m, name in enumerate(members)}
    blend_cv = score_fold_wise(truth, cross, fold_of)
    best = max(members, key=lambda name: -np.inf if scores[name]["score"] is None else scores[name]["score"])
    if not force and (blend_cv["score"] is None or scores[best]["score"] is None
                      or blend_cv["score"] <= scores[best]["score"] + min_gain):
        log.warning("the blend scored %s out of fold (weights fitted fold by fold), not %s above %s alone (%s): "
                    "the bundle answers with %s only; the other members are bundled with zero weight and not run "
                    "(--force-blend keeps the fitted weights)", blend_cv["score"], min_gain, best,
                    scores[best]["score"], best)
        weights = np.tile(np.eye(len(members))[list(members).index(best)], (len(LABELS), 1))
        used = f"{best} alone"
    else:
        used = "blend"
    report = {"series": len(uids), "folds": folds, "members": scores, "blend_cv": blend_cv, "used": used,
              "weights": {label: dict(zip(members, map(float, w))) for label, w in zip(LABELS, weights)}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, folder in members.items():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.pt"))
    provenance = {"oof_series": len(uids), "folds": folds, "used": used,
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
    parser.add_argument("--per-label", action="store_true",
                        help="fit each label's weights alone (default: Present alone, the 13 locations together)")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help=f"out-of-fold score the blend must add over the best member to be kept "
                             f"(default {MIN_GAIN})")
    parser.add_argument("--force-blend", action="store_true",
                        help="keep the fitted weights even when the blend does not beat the best member out of fold")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = blend_members(dict(args.member), args.data_dir, args.out, step=args.step, per_label=args.per_label,
                               force=args.force_blend, min_gain=args.min_gain, progress=not args.quiet)
    except KitError as exc:
        logging.getLogger("training.blend").error("%s", exc)
        return 2
    rows = {**{name: r for name, r in report["members"].items()}, "blend (cross-validated)": report["blend_cv"]}
    print(f"out-of-fold, {report['series']} series, folds {report['folds']}:")
    for name, r in rows.items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"  {name:<26} score {fmt(r['score'])}  Present AUC {fmt(r['present_auc'])}  "
              f"location AUC {fmt(r['mean_location_auc'])}")
    print(f"bundle: {Path(args.out) / 'bundle.json'} (answers with: {report['used']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
