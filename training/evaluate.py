"""Score a weights bundle on a labelled split through the kernel's Predictor (and build the phantom's L/R copy)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from .data import read_train_table
from .oof import predict_series
from evaluation.metric import score_by_modality, score_predictions

__all__ = ["evaluate_split", "write_flipped_phantom_test", "main"]

log = logging.getLogger(__name__)


def evaluate_split(bundle_dir: str | Path, labels_csv: str | Path, series_dir: str | Path, *,
                   progress: bool = True) -> dict[str, Any]:
    """Predict every series of a labelled split with `inference.predict.Predictor` and score it.

    Args:
        bundle_dir: weights folder (manifest.json + folds).
        labels_csv: train.csv-like labels (the phantom's test/test_labels.csv).
        series_dir: folder holding series/<uid>/ of that split.
    Returns:
        score_predictions() output plus "by_modality", "failed_series" and "predictions" (uid -> 14 floats).
    """
    table = read_train_table(labels_csv)
    folders = [Path(series_dir) / uid for uid in table.uids]
    probs, failed = predict_series(bundle_dir, folders, progress=progress, desc="evaluate")
    report = score_predictions(table.labels, probs)
    report["by_modality"] = score_by_modality(table.labels, probs, table.modality)
    report["failed_series"] = failed
    report["predictions"] = {uid: [float(v) for v in p] for uid, p in zip(table.uids, probs)}
    return report


def write_flipped_phantom_test(out_dir: str | Path, *, test_series: int, seed: int, **options) -> Path:
    """Re-write a phantom dataset's test split with every series stored left-right and front-back mirrored.

    The anatomy and labels are those of `phantom.make_dataset(..., test_series=test_series, seed=seed, **options)`;
    only the storage changes (both in-plane directions negated), so canonical volumes and therefore predictions
    and location scores must be unchanged: the L/R check of the loader + trainer + kernel chain.

    Returns:
        The folder holding series/<uid>/ and test_labels.csv.
    """
    import dataclasses

    import phantom

    config = dataclasses.replace(phantom.PhantomConfig(), **options)
    specs = phantom.draw_split(test_series, seed=seed, split="test", config=config,
                               force_coverage=config.force_test_coverage)
    out = Path(out_dir)
    rows = []
    for spec in specs:
        acq = spec.acquisition
        flipped = spec.with_acquisition(flip_cols=not acq.flip_cols, flip_rows=not acq.flip_rows)
        phantom.write_series(flipped, out / "series" / spec.series_uid)
        rows.append(spec)
    header = ",".join(phantom.TRAIN_COLUMNS)
    lines = [header] + [",".join(str(spec.label_row()[c]) for c in phantom.TRAIN_COLUMNS) for spec in rows]
    (out / "test_labels.csv").write_text("\n".join(lines) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m training.evaluate --weights W --labels D/test/test_labels.csv --series D/test/series."""
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("--weights", required=True, help="bundle folder (manifest.json + fold ONNX files)")
    parser.add_argument("--labels", required=True, help="labels CSV of the split (train.csv columns)")
    parser.add_argument("--series", required=True, help="folder with one sub-folder per series")
    parser.add_argument("--json", default=None, help="write the full report here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = evaluate_split(args.weights, args.labels, args.series, progress=not args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    brief = {k: report[k] for k in ("score", "present_auc", "mean_location_auc", "series", "complete")}
    brief["by_modality"] = {m: v["score"] for m, v in report["by_modality"].items()}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
