"""Time each stage of Predictor.predict on a large CT series next to the bare model time (onnxruntime, same windows).

It also times the loading alone (decode + canonical volume, with the same decoding workers) and prints
whole / max(load, bare model): the volume streams in under the model, so a series should cost about the larger of
the two, not their sum (where the cores allow: decoding workers and onnxruntime threads share them).

Example:
    .venv/bin/python benchmarks/bench_predict.py                    # 300 slices of 512 x 512, b0 dual-stream, CPU
    .venv/bin/python benchmarks/bench_predict.py --slices 40        # quick run
    .venv/bin/python benchmarks/bench_predict.py --syntax jpeg2000  # a JPEG 2000 series: decode-bound
    .venv/bin/python benchmarks/bench_predict.py --torch-cuda       # also time the model in torch on CUDA
    .venv/bin/python benchmarks/bench_predict.py --volume           # a blend: + the 32 x 384 volume member
    .venv/bin/python benchmarks/bench_predict.py --region           # + the same fold behind the region stage
    .venv/bin/python benchmarks/bench_predict.py --region --slices 200 --size 128 --image-size 64 \
        --backbone test_efficientnet                                # quick region run

With --region the same random-weight fold is also bundled behind a region locator with the competition's measured
box (README, "The region stage at the competition's scale"), and each repeat answers the series both ways: the
windows scored, whole wall and CPU seconds, load/prep/infer seconds and the locator's seconds side by side, then
the ratios full frame / region (the issue 21 target: <= 1/3 of the windows on a CTA, seconds lower by about the
same factor less the locator's cost). The box's share of the slices follows from the series' 0.6 mm spacing.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.blend import Blend, BlendMember  # noqa: E402
from inference.report import SeriesReport  # noqa: E402

if TYPE_CHECKING:
    from inference.decode_pool import DecodePool
    from inference.predict import Predictor
    from training.region import TinyLocator

log = logging.getLogger("bench_predict")

# the competition-scale locator's box, measured out of fold (README, "The region stage at the competition's scale")
REGION_HALF_SIZE_MM = (29.5, 28.1, 49.1)  # (slice, row, column) axes
REGION_SHIFT_MM = (-3.7, 0.3, -0.3)


@dataclasses.dataclass
class Timed:
    """One predict_series call: its report and the whole call's wall and process CPU seconds."""

    report: SeriesReport
    wall: float
    cpu: float


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300, help="slices in the series (default 300)")
    parser.add_argument("--syntax", choices=("uncompressed", "jpegls", "jpeg2000"), default="uncompressed",
                        help="transfer syntax of the series (default uncompressed)")
    parser.add_argument("--decode-workers", type=int, default=None, help="decoding processes (default min(4, cores))")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each DICOM slice (default 512)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--stride", type=int, default=1, help="window stride: fewer windows, quicker run")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per onnxruntime run (default 16)")
    parser.add_argument("--backbone", default="tf_efficientnet_b0", help="timm backbone of both streams")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores)")
    parser.add_argument("--float16", action="store_true",
                        help="export the model with a float16 input (cast to float32 inside)")
    parser.add_argument("--tta", action="store_true", help="turn on the left-right flip TTA")
    parser.add_argument("--repeats", type=int, default=1, help="timed predict calls (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the series and bundle here")
    parser.add_argument("--volume", action="store_true",
                        help="bundle a volume member (kind volume32) beside the 2.5D model, blended, and print each "
                             "member's seconds per series")
    parser.add_argument("--volume-depth", type=int, default=32, help="volume member's slices (default 32)")
    parser.add_argument("--volume-size", type=int, default=384, help="volume member's image size (default 384)")
    parser.add_argument("--volume-backbone", default="tf_efficientnetv2_s",
                        help="volume member's timm backbone (default tf_efficientnetv2_s)")
    parser.add_argument("--torch-cuda", action="store_true",
                        help="also time the model in torch on CUDA (fp32/fp16, batch 32/128) when a GPU is present")
    parser.add_argument("--region", action="store_true",
                        help="also answer the series through the region stage (the same fold behind a locator with "
                             "the competition's measured box) and compare it with the full frame")
    args = parser.parse_args(argv)
    if args.region and args.volume:
        parser.error("--region times one 2.5D model: leave out --volume")
    return args


def _export(args: argparse.Namespace, bundle: Path):
    import torch

    from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
    from tests.onnx_models import DualStreamNet, export_onnx, write_bundle

    torch.manual_seed(0)
    model = DualStreamNet(args.backbone, in_chans=5).eval()
    dtype = "float16" if args.float16 else "float32"
    windowed = bundle / "window25d" if args.volume else bundle
    path = export_onnx(model, windowed / "fold0.onnx", channels=5, size=args.image_size, dtype=dtype)
    write_bundle(windowed, [path], preprocess=PreprocessConfig(image_size=args.image_size),
                 windows=WindowConfig(stride=args.stride, batch_size=args.batch_size),
                 aggregation=AggregationConfig(tta_flip=args.tta), input_dtype=dtype)
    if args.volume:
        _export_volume_member(args, bundle / "volume32")
        Blend((BlendMember("window25d", "window25d"), BlendMember("volume32", "volume32")),
              np.full((14, 2), 0.5)).write(bundle)
    return model


def _export_volume_member(args: argparse.Namespace, folder: Path) -> None:
    """A volume model with random weights, exported like the trainer does (input `volume`, parity checked)."""
    from inference.config import PreprocessConfig, VolumeConfig
    from tests.onnx_models import write_bundle
    from training.export import export_fold
    from training.volume import VolumeNet

    net = VolumeNet(args.volume_backbone, depth=args.volume_depth).eval()
    size, depth = args.volume_size, args.volume_depth
    # random weights blow activations up through a deep network (logits of 1e8 and more), so parity is measured
    # but not enforced here: the timing is what this bundle is for
    export_fold(net, folder / "fold0.onnx", fp16=args.float16, tolerance=float("inf"), fp16_tolerance=float("inf"),
                parity_windows=np.random.default_rng(0).uniform(size=(1, depth, size, size)).astype(np.float32))
    manifest = write_bundle(folder, [folder / "fold0.onnx"], preprocess=PreprocessConfig(image_size=size),
                            input_dtype="float16" if args.float16 else "float32")
    dataclasses.replace(manifest, kind="volume32", volume=VolumeConfig(depth=depth), input_name="volume",
                        input_shape=("batch", depth, size, size)).write(folder)


def _export_region_bundle(full_bundle: Path, folder: Path) -> None:
    """The full-frame bundle's fold behind a locator that answers the field's centre, with the measured box."""
    import shutil

    from training.config import RegionTrainConfig
    from training.region import bundle_locator

    shutil.copytree(full_bundle, folder, dirs_exist_ok=True)
    spec = RegionTrainConfig(enabled=True).spec(half_size_mm=REGION_HALF_SIZE_MM, shift_mm=REGION_SHIFT_MM)
    examples = np.random.default_rng(0).uniform(size=(2, 6, spec.input_size, spec.input_size)).astype(np.float32)
    bundle_locator(folder, _centre_locator(spec.input_size), spec, examples)


def _centre_locator(input_size: int) -> TinyLocator:
    """A locator that answers the middle of the field for every series.

    A random-weight locator would put the box anywhere, or outside the volume (the plausibility check then answers
    the whole volume), so the timing would not be the region's. A trained one finds the circle of Willis near the
    middle of a head CTA: a box of the measured size inside the series is what this benchmark needs. TinyLocator
    answers head(features) + 0.5 as fractions of the extent, so a last layer of zeros answers 0.5 on each axis.
    """
    import torch

    from training.region import TinyLocator

    net = TinyLocator(input_size).eval()
    last = net.head[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return net


def _region_predictor(bundle: Path, args: argparse.Namespace, pool: DecodePool) -> Predictor:
    """The region bundle's Predictor, its fold sessions and locator built and warmed up."""
    from inference.predict import Predictor

    predictor = Predictor(bundle, providers=["CPUExecutionProvider"], threads=args.threads, decode_pool=pool)
    if not predictor.load(warm_up=True):
        raise SystemExit(f"the region bundle {bundle} did not load (see the log)")
    return predictor


def _timed_predict(predictor: Predictor, series: Path) -> Timed:
    c, t = time.process_time(), time.perf_counter()
    probs, report = predictor.predict_series(str(series))
    timed = Timed(report, time.perf_counter() - t, time.process_time() - c)
    if not np.isfinite(probs).all():
        print("WARNING: non-finite output")
    return timed


def _region_fell_back(region: list[Timed]) -> str:
    """Why a region run was not answered on a box ("" when every run was)."""
    for run in region:
        if not run.report.region.startswith("region"):
            return f"the region run fell back to {run.report.region or 'the whole volume (no region note)'}"
    return ""


def _print_region_comparison(full: list[Timed], region: list[Timed]) -> None:
    """Full frame and region side by side per repeat, then the medians' ratios (full / region)."""
    print()
    print(f"region: box half-sizes {' x '.join(map(str, REGION_HALF_SIZE_MM))} mm, shift {REGION_SHIFT_MM} mm; "
          f"{region[0].report.region}")
    print(f"{'run':>12s} {'windows':>7s} {'slices':>6s} {'whole':>7s} {'cpu':>7s} {'load':>7s} {'prep':>7s} "
          f"{'infer':>7s} {'locate':>7s}  (seconds: wall, but cpu = this process's CPU over the whole call)")
    for pair in zip(full, region):
        for name, run in zip(("full frame", "region"), pair):
            r = run.report
            print(f"{name:>12s} {r.windows:7d} {r.slices:6d} {run.wall:7.3f} {run.cpu:7.3f} {r.load_s:7.3f} "
                  f"{r.preprocess_s:7.3f} {r.infer_s:7.3f} {r.locate_s:7.3f}")
    med = {name: {key: float(np.median([getattr(run, key) for run in runs])) for key in ("wall", "cpu")}
           for name, runs in (("full", full), ("region", region))}
    windows_full, windows_region = full[0].report.windows, region[0].report.windows
    locate = float(np.median([run.report.locate_s for run in region]))
    fewer = windows_full / windows_region
    share = region[0].report.slices / full[0].report.slices
    print(f"region vs full frame: windows {windows_full} -> {windows_region} ({fewer:.2f}x fewer; box holds "
          f"{share:.0%} of the slices), whole wall {med['full']['wall']:.2f} -> {med['region']['wall']:.2f} s "
          f"({med['full']['wall'] / med['region']['wall']:.2f}x), CPU {med['full']['cpu']:.2f} -> "
          f"{med['region']['cpu']:.2f} s ({med['full']['cpu'] / med['region']['cpu']:.2f}x) "
          f"(locator {locate:.3f} s; medians of {len(full)})")
    bound = med["full"]["wall"] / fewer + locate
    print(f"target: windows <= 1/3 of the full frame's: {'met' if fewer >= 3 else 'not met'}; region wall <= full "
          f"wall / {fewer:.2f} + locator = {bound:.2f} s: {'met' if med['region']['wall'] <= bound else 'not met'}")


def _report_region(full: list[Timed], region: list[Timed]) -> int:
    """Print the comparison; 1 (with why) when the region run fell back to the whole volume, else 0."""
    _print_region_comparison(full, region)
    problem = _region_fell_back(region)
    if problem:
        print(f"ERROR: {problem}: the region stage was not measured (the box must lie in the series: see --size, "
              "--slices)", file=sys.stderr)
        return 1
    return 0


def _bare_model(ensemble, windows: int, image_size: int, batch_size: int) -> float:
    """Seconds for the ensemble's sessions alone on `windows` windows from a ready-made array."""
    manifest = ensemble.manifest
    rng = np.random.default_rng(0)
    ready = rng.uniform(size=(windows, 5, image_size, image_size)).astype(ensemble.input_dtype)
    if manifest.aggregation.tta_flip:
        ready = np.concatenate([ready, np.ascontiguousarray(ready[..., ::-1])])
    start = time.perf_counter()
    for session in ensemble.sessions:
        for i in range(0, len(ready), batch_size * (2 if manifest.aggregation.tta_flip else 1)):
            session.run([manifest.output_name], {manifest.input_name: ready[i:i + batch_size]})
    return time.perf_counter() - start


def _torch_cuda(model, image_size: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("torch CUDA: no GPU here, skipped")
        return
    model = model.float().cuda().eval()
    for dtype in (torch.float32, torch.float16):
        m = model.to(dtype)
        for batch in (32, 128):
            x = torch.rand(batch, 5, image_size, image_size, device="cuda", dtype=dtype)
            with torch.no_grad():
                for _ in range(3):
                    m(x)
                torch.cuda.synchronize()
                start = time.perf_counter()
                reps = 10
                for _ in range(reps):
                    m(x)
                torch.cuda.synchronize()
            per_window = (time.perf_counter() - start) / (reps * batch)
            print(f"torch CUDA {str(dtype).split('.')[-1]:8s} batch {batch:4d}: {per_window * 1e3:.3f} ms/window "
                  f"({torch.cuda.get_device_name()})")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_loader import write_benchmark_series
    from inference.decode_pool import DecodeLimits, DecodePool
    from inference.load import load_series
    from inference.predict import Predictor
    from tests.onnx_models import head_like_stack, write_ct_series

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        bundle, series = work / "bundle", work / f"series_{args.syntax}" / "1.2.826.0.1.3680043.8.498.1"
        t = time.perf_counter()
        model = _export(args, bundle)
        if args.region:
            _export_region_bundle(bundle, work / "bundle_region")
        print(f"exported {args.backbone} dual-stream ONNX in {time.perf_counter() - t:.1f}s")
        if not series.is_dir() or len(list(series.glob("*.dcm"))) != args.slices:
            t = time.perf_counter()
            if args.syntax == "uncompressed":
                write_ct_series(series, head_like_stack(args.slices, args.size), spacing=(0.6, 0.45, 0.45))
            else:
                write_benchmark_series(series, args.syntax, size=args.size, slices=args.slices)
            print(f"wrote {args.slices} {args.syntax} slices of {args.size}x{args.size} in "
                  f"{time.perf_counter() - t:.1f}s")

        pool = DecodePool(DecodeLimits(workers=args.decode_workers)).start(wait_s=60)
        predictor = Predictor(bundle, providers=["CPUExecutionProvider"], threads=args.threads, decode_pool=pool)
        t = time.perf_counter()
        ensemble = predictor.ensemble
        print(f"sessions built in {time.perf_counter() - t:.2f}s on {ensemble.providers}, "
              f"{ensemble.sessions[0].get_session_options().intra_op_num_threads} intra-op threads")
        warm = np.zeros((2, 5, args.image_size, args.image_size), dtype=ensemble.input_dtype)
        ensemble.predict_windows(warm)
        if args.volume:
            member = predictor.members["volume32"].ensemble
            member.predict_windows(np.zeros((1, args.volume_depth, args.volume_size, args.volume_size),
                                            dtype=member.input_dtype))
        region_predictor = _region_predictor(work / "bundle_region", args, pool) if args.region else None

        load_series(series, pool=pool)  # page cache and decoding workers warm
        rows, full_runs, region_runs = [], [], []
        for _ in range(args.repeats):  # interleaved, so load from other jobs hits both sides alike
            t = time.perf_counter()
            load_series(series, pool=pool)
            decode = time.perf_counter() - t
            full_runs.append(_timed_predict(predictor, series))
            report, whole, whole_cpu = full_runs[-1].report, full_runs[-1].wall, full_runs[-1].cpu
            c = time.process_time()
            bare = _bare_model(ensemble, report.windows, args.image_size, args.batch_size)
            bare_cpu = time.process_time() - c
            rows.append((report, whole, bare, whole_cpu, bare_cpu, decode))
            if region_predictor is not None:
                region_runs.append(_timed_predict(region_predictor, series))
        pool.close()
        print()
        import os

        print(f"{os.cpu_count()} cores, {args.syntax} series of {args.slices} slices")
        print(f"{'load':>7s} {'prep':>7s} {'infer':>7s} {'aggr':>7s} {'whole':>7s} {'bare':>7s} {'decode':>7s} "
              f"{'w/bare':>7s} {'w/max':>6s} {'cpu ratio':>9s}  windows (wall seconds; load overlaps infer; "
              "decode = load_series alone; w/max = whole / max(decode, bare); cpu ratio = this process's CPU whole / "
              "bare)")
        for report, whole, bare, whole_cpu, bare_cpu, decode in rows:
            print(f"{report.load_s:7.3f} {report.preprocess_s:7.3f} {report.infer_s:7.3f} {report.aggregate_s:7.4f} "
                  f"{whole:7.3f} {bare:7.3f} {decode:7.3f} {whole / bare:7.3f} {whole / max(decode, bare):6.3f} "
                  f"{whole_cpu / bare_cpu:9.3f}  {report.windows} ({bare / report.windows * 1e3:.1f} ms/window bare)")
        if args.volume:
            for report, *_ in rows:
                print("members (wall seconds of the series, preparation included): " + ", ".join(
                    f"{name} {seconds:.3f}" for name, seconds in report.members_s.items()) + f"; loading "
                    f"{report.load_s:.3f} (a blend loads the series once, then runs each member)")
        ratios = [r[1] / r[2] for r in rows]
        overlap = [r[1] / max(r[5], r[2]) for r in rows]
        best = min(r[1] for r in rows) / min(r[2] for r in rows)
        print(f"whole/bare: best-of-{len(rows)} wall {best:.3f}, median wall {np.median(ratios):.3f}; "
              f"whole/max(decode, bare): median {np.median(overlap):.3f}, best {min(overlap):.3f} "
              "(target <= 1.15 where the cores allow overlap)")
        if args.torch_cuda:
            _torch_cuda(model, args.image_size)
    return _report_region(full_runs, region_runs) if region_runs else 0


if __name__ == "__main__":
    sys.exit(main())
