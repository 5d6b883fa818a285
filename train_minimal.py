"""Train the dual-stream 2.5D model in K folds and export an ONNX fold ensemble + manifest the kernel runs."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "config_from_args", "main"]

_EXAMPLES = """\
examples:
  python train_minimal.py --data-dir data/rsna --config configs/competition.yaml --out weights
  python train_minimal.py --data-dir runs/phantom --config configs/tiny.yaml --folds 0,1 --out runs/w
  python train_minimal.py --data-dir runs/phantom --config configs/tiny.yaml --set train.epochs=2 --no-guard
  torchrun --nproc_per_node 2 train_minimal.py --data-dir ... --config ...   # DDP (gloo on CPU, nccl on GPU)

config keys (YAML sections; override any with --set section.key=value):
"""


def build_parser() -> argparse.ArgumentParser:
    """The CLI; its epilog lists every config key with its default and meaning."""
    from training.config import describe_keys

    parser = argparse.ArgumentParser(
        prog="train_minimal.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXAMPLES + describe_keys())
    parser.add_argument("--data-dir", required=True,
                        help="competition layout: train.csv, train_localizers.csv, series/<uid>/*.dcm")
    parser.add_argument("--config", default=None, help="YAML preset (configs/competition.yaml, configs/tiny.yaml)")
    parser.add_argument("--out", default="weights", help="weights folder: fold_<k>.onnx, manifest.json, "
                        "oof_report.json, train_config.yaml (default: weights)")
    parser.add_argument("--cache-dir", default="cache", help="preprocessed-volume cache root (default: cache)")
    parser.add_argument("--checkpoint-dir", default="runs/checkpoints",
                        help="per-fold checkpoints last.pt/best.pt (default: runs/checkpoints)")
    parser.add_argument("--folds", default=None, help="comma-separated folds to train, e.g. 0,2 (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set train.lr=3e-4")
    parser.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    parser.add_argument("--arch", default=None, help="shortcut for --set model.arch=NAME (any timm model)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from timm's pretrained weights (the competition preset does; they are "
                             "fetched once, or read from the Hugging Face cache at HF_HOME); --no-pretrained "
                             "trains from random weights on purpose")
    parser.add_argument("--no-guard", action="store_true",
                        help="switch the inference-regime guard off (the flawed design; for measuring it only)")
    parser.add_argument("--fp16", action="store_true", help="export float16 ONNX folds (GPU kernels)")
    parser.add_argument("--no-oof", action="store_true", help="skip the out-of-fold report through the Predictor")
    parser.add_argument("--no-resume", action="store_true", help="retrain folds from scratch")
    parser.add_argument("--seed", type=int, default=None, help="shortcut for --set train.seed=N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def config_from_args(args: argparse.Namespace):
    """The resolved TrainConfig: preset, then --set overrides, then the explicit flags."""
    from training.config import load_config

    overrides = list(args.overrides)
    if args.folds is not None:
        overrides.append(f"train.folds=[{args.folds}]")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.arch is not None:
        overrides.append(f"model.arch={args.arch}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.pretrained is not None:
        overrides.append(f"model.pretrained={'true' if args.pretrained else 'false'}")
    if args.no_guard:
        overrides.append("sampling.guard=false")
    if args.fp16:
        overrides.append("export.fp16=true")
    if args.no_oof:
        overrides.append("export.oof=false")
    if args.no_resume:
        overrides.append("train.resume=false")
    return load_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (2 for configuration errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import os

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO) if rank == 0
                        else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from inference.errors import KitError
    from training.pipeline import run_training

    try:
        cfg = config_from_args(args)
        summary = run_training(cfg, data_dir=args.data_dir, out_dir=args.out, cache_dir=args.cache_dir,
                               checkpoint_dir=args.checkpoint_dir, progress=not args.quiet)
    except KitError as exc:
        logging.getLogger("train_minimal").error("%s", exc)
        return 2
    if rank == 0:
        brief = {k: v for k, v in summary.items() if k != "oof"}
        if "oof" in summary:
            overall = summary["oof"]["overall"]
            brief["oof"] = {k: overall[k] for k in ("score", "present_auc", "mean_location_auc", "series")}
        if "aggregation" in summary:  # fixed reductions vs the learned aggregator, on the same OOF series
            brief["aggregation"] = summary["aggregation"]
        print(json.dumps(brief, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
