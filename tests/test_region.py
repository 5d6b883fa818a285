"""The region stage (issue 21): one crop for trainer and kernel, the box's size rule, the locator's fallback,
and a region bundle served without torch."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inference.config import PreprocessConfig, to_dict
from inference.errors import ConfigError, KitError
from inference.kinds import VOLUME_32, WINDOW_25D
from inference.labels import LABELS, LOCATION_LABELS
from inference.load import load_series
from inference.manifest import Manifest, sha256_file
from inference.normalize import plan_slices
from inference.predict import Predictor
from inference.prepare import PreparedSlices
from inference.region import Box, Locator, RegionSpec, crop_volume, locator_input, prepare_region
from inference.runners import RegionRunner, build_runner
from inference.volume import Volume
from phantom import series_spec
from tests.conftest import small_acquisition
from tests.onnx_models import PlantedModel, export_onnx, write_bundle, write_ct_series
from training.cache import _cache_one
from training.config import RegionTrainConfig
from training.localizers import LocalizerRow
from training.region import (
    LocatorSample,
    TinyLocator,
    box_for,
    bundle_locator,
    fit_locator,
    read_boxes,
    view,
    write_boxes,
)

ROOT = Path(__file__).resolve().parents[1]
PRE = PreprocessConfig(image_size=32, ct_window=(0.0, 255.0))


def _volume(shape=(20, 30, 40), spacing=(2.0, 1.0, 0.5), seed=0) -> Volume:
    pixels = np.random.default_rng(seed).uniform(0, 400, size=shape).astype(np.float32)
    return Volume(pixels=pixels, spacing=spacing, modality="CT", series_uid="s")


def test_crop_keeps_the_voxels_whose_centres_lie_in_the_box_and_maps_points():
    volume = _volume()
    box = Box((6.0, 5.5, 4.0), (20.0, 20.0, 10.25))  # mm: slices 3..10, rows 6..20, cols 8..20
    region = crop_volume(volume, box)
    assert region.origin == (3, 6, 8)
    np.testing.assert_array_equal(region.volume.pixels, volume.pixels[3:11, 6:21, 8:21])
    assert region.slice_share == pytest.approx(8 / 20) and region.area_share == pytest.approx(15 * 13 / (30 * 40))
    assert region.to_region(5, 10, 12) == (2, 4, 4)
    assert region.holds(3, 6, 8) and region.holds(10, 20, 20)
    assert not region.holds(2, 10, 10) and not region.holds(5, 21, 10)
    # a box larger than the volume is clipped to it; one beside it is refused
    assert crop_volume(volume, Box((-50, -50, -50), (500, 500, 500))).volume.pixels.shape == volume.pixels.shape
    with pytest.raises(Exception, match="misses the volume"):
        crop_volume(volume, Box((100.0, 0, 0), (120.0, 10, 10)))


def test_the_trainer_caches_the_crop_the_kernel_scores(write_phantom_series, tmp_path):
    spec = series_spec(3, modality="CTA", positive_locations=("Left Middle Cerebral Artery", "Basilar Tip"),
                       acquisition=small_acquisition(num_slices=30))
    folder = write_phantom_series(spec)
    volume = load_series(folder, in_process=True)
    rows = []
    for aneurysm in spec.anatomy.aneurysms:
        sop, frame, loc = spec.locate(aneurysm.centre)
        rows.append(LocalizerRow(series_uid=spec.series_uid, sop_uid=sop, x=loc.col, y=loc.row, frame=frame or 0,
                                 location=aneurysm.location))
    canon = [volume.to_canonical(r.sop_uid, r.frame, r.x, r.y) for r in rows]
    first = np.asarray(canon[0]) * np.asarray(volume.spacing)
    box = Box.around(tuple(first), (12.0, 15.0, 15.0))  # holds the first point, not necessarily the other
    meta = _cache_one(str(folder), spec.series_uid, rows, to_dict(PRE), str(tmp_path), in_process=True,
                      box=box.to_dict())
    cached = np.load(tmp_path / f"{spec.series_uid}.npy")

    # the kernel: crop_volume, then the runner's own slice preparation (inference.prepare) over the crop
    region = crop_volume(volume, box)
    stream = PreparedSlices(region.volume.pixels, plan_slices(region.volume, PRE))
    stream.wait(region.volume.num_slices)
    stream.close()
    np.testing.assert_array_equal(cached, stream.stack)
    np.testing.assert_array_equal(cached, prepare_region(volume, box, PRE)[1].pixels)
    assert cached.shape[0] < volume.num_slices

    # localizer points land in the crop's prepared stack; a point outside the box is dropped with a note
    _, prepared = prepare_region(volume, box, PRE)
    inside = [c for c in canon if region.holds(*c)]
    assert len(meta["points"]) == len(inside) >= 1
    z, r, c = prepared.canonical_to_prepared(*region.to_region(*inside[0]))
    assert (meta["points"][0]["z"], meta["points"][0]["row"], meta["points"][0]["col"]) == pytest.approx((z, r, c))
    if len(inside) < len(canon):
        assert any("outside the region box" in n for n in meta["notes"])


# three sites around the reference (coarse voxels): left and right partners and a midline one below
_SITES = {0: (2.0, 0.0, 5.0), 1: (2.0, 0.0, -5.0), 11: (-4.0, 3.0, 0.0)}


def _samples(count: int, seed: int = 0) -> dict[str, LocatorSample]:
    """Coarse copies with a bright cube at the reference; each point sits at its location's site around it (the
    locator can learn both)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        shape = (24, 32, 32)
        centre = rng.uniform([8, 8, 10], [16, 24, 22])
        coarse = np.zeros(shape, np.uint8)
        lo, hi = np.floor(centre - 3).astype(int), np.ceil(centre + 3).astype(int)
        coarse[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 200
        spacing = (4.0, 3.0, 3.0)
        locations = rng.choice(sorted(_SITES), size=int(rng.integers(1, 3)), replace=False)
        sites = np.array([_SITES[int(k)] for k in locations])
        points = (centre[None] + sites + rng.normal(0, 0.3, size=sites.shape)) * np.asarray(spacing)
        out[f"s{i}"] = LocatorSample(uid=f"s{i}", coarse=coarse, coarse_spacing=spacing, shape=shape,
                                     spacing=spacing, points_mm=points, locations=locations)
    return out


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only spin-wait on a shared machine
    yield
    torch.set_num_threads(before)


def test_the_box_holds_the_out_of_fold_points_it_was_sized_on(one_thread):
    samples = _samples(18)
    cfg = RegionTrainConfig(enabled=True, input_size=16, steps=40, augment_copies=2, recall=0.995, margin_mm=0.0,
                            min_half_mm=1.0)
    fit = fit_locator(samples, cfg, num_folds=3, seed=0, progress=False)
    spec = cfg.spec(half_size_mm=fit.half_size_mm, shift_mm=fit.shift_mm)
    held = [(s, box_for(s, fit.oof[s.uid], spec)[0]) for s in samples.values()]
    inside = [box.contains(tuple(p)) for s, box in held for p in s.points_mm]
    assert np.mean(inside) >= cfg.recall and fit.stats["oof_recall"] == pytest.approx(np.mean(inside), abs=1e-4)
    # a smaller box misses some of them: the half-size is what holds them, not a box as large as the volume
    small = cfg.spec(half_size_mm=tuple(h * 0.5 for h in fit.half_size_mm), shift_mm=fit.shift_mm)
    assert not all(box_for(s, fit.oof[s.uid], small)[0].contains(tuple(p)) for s in samples.values()
                   for p in s.points_mm)


@pytest.fixture(scope="module")
def region_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("region_bundle")
    export_onnx(PlantedModel(5), folder / "fold0.onnx", channels=5, size=32)
    write_bundle(folder, [folder / "fold0.onnx"], preprocess=PRE)
    spec = RegionSpec(input_size=16, max_slices=8, half_size_mm=(6.0, 8.0, 8.0), min_slices=8, min_extent_mm=5.0)
    examples = np.random.default_rng(0).uniform(0, 1, size=(2, 6, 16, 16)).astype(np.float32)
    bundle_locator(folder, TinyLocator(16).eval(), spec, examples)
    Manifest.read(folder, verify=True)  # the locator's hash is checked with the folds
    return folder


def test_a_region_bundle_scores_the_box_and_falls_back_to_the_whole_volume(region_bundle, tmp_path):
    series = tmp_path / "many"
    write_ct_series(series, np.random.default_rng(1).uniform(0, 400, size=(20, 40, 40)), spacing=(1.0, 0.5, 0.5))
    predictor = Predictor(region_bundle, providers=["CPUExecutionProvider"])
    values, report = predictor.predict_series(series)
    assert report.answer == "model" and report.region.startswith("region"), report.line()
    assert report.slices < 20 and np.all(np.isfinite(values))

    one = tmp_path / "one"  # a one-slice series: the locator cannot read it, the whole volume answers
    write_ct_series(one, np.random.default_rng(2).uniform(0, 400, size=(1, 40, 40)))
    values, report = predictor.predict_series(one)
    assert report.answer == "model" and report.region.startswith("whole volume"), report.line()
    assert values.shape == (len(LABELS),) and np.all((values >= 0) & (values <= 1))


def test_the_region_stage_is_the_kinds_region_runner(region_bundle, tmp_path):
    """One place: the registry names the runner of a region bundle (RegionRunner, whose windows, what the out-of-fold
    pass reads, are the box's); a kind that takes no region is refused by the manifest and by the registry."""
    runner = build_runner(region_bundle, providers=["CPUExecutionProvider"])
    assert isinstance(runner, RegionRunner) and runner.locator is not None
    series = tmp_path / "many"
    write_ct_series(series, np.random.default_rng(1).uniform(0, 400, size=(20, 40, 40)), spacing=(1.0, 0.5, 0.5))
    window_probs, answer = Predictor(region_bundle, providers=["CPUExecutionProvider"]).window_answer(series)
    assert answer.region.startswith("region") and answer.slices < 20 and answer.locate_s > 0
    assert window_probs.shape == (answer.windows, len(LABELS)) and answer.windows == answer.windows_total

    manifest = Manifest.read(region_bundle, verify=False)
    assert not any("region" in p for p in manifest.problems())
    volume_kind = dataclasses.replace(manifest, kind=VOLUME_32.name)
    assert f"a region locator needs kind {WINDOW_25D.name}, not {VOLUME_32.name}" in volume_kind.problems()
    with pytest.raises(ConfigError, match="a region locator needs kind"):
        VOLUME_32.runner_class(region=True)
    assert WINDOW_25D.runner_class(region=True) is RegionRunner


def test_a_broken_locator_costs_the_region_not_the_series(region_bundle, tmp_path):
    broken = Path(shutil.copytree(region_bundle, tmp_path / "broken"))
    (broken / "locator.onnx").write_bytes(b"not an onnx file")  # hashed into the manifest: only running it fails
    manifest = Manifest.read(broken, verify=False)
    region = {**manifest.region, "sha256": sha256_file(broken / "locator.onnx")}
    dataclasses.replace(manifest, region=region).write(broken)
    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(3).uniform(0, 400, size=(12, 40, 40)), spacing=(1.0, 0.5, 0.5))
    values, report = Predictor(broken, providers=["CPUExecutionProvider"]).predict_series(series)
    assert report.answer == "model" and report.region.startswith("whole volume: locator failed"), report.line()
    assert report.slices == 12 and np.all(np.isfinite(values))
    # the locator's own checks: an implausible centre gives no region
    spec = RegionSpec(input_size=16, min_slices=8, min_extent_mm=5.0)
    locator = Locator(region_bundle, spec)
    locator.fraction = lambda volume: (np.array([3.0, 0.5, 0.5]), (12, 40, 40), (1.0, 0.5, 0.5))
    answer = locator.locate(load_series(series, in_process=True))
    assert answer.region is None and "outside the volume" in answer.note


def test_locator_input_is_six_projections_in_unit_range():
    coarse = np.zeros((10, 20, 30), np.uint8)
    coarse[2, 5, 7] = 255
    x = locator_input(coarse, RegionSpec(input_size=16))
    assert x.shape == (6, 16, 16) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert x[0].max() > 0 and x[1].max() > 0 and x[2].max() > 0


def test_a_region_bundle_runs_without_torch(region_bundle, tmp_path):
    series = tmp_path / "s"
    write_ct_series(series, np.random.default_rng(4).uniform(0, 400, size=(16, 40, 40)), spacing=(1.0, 0.5, 0.5))
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        from inference.predict import Predictor
        import inference.kernel, inference.gateway
        values, report = Predictor({str(region_bundle)!r}, providers=["CPUExecutionProvider"]).predict_series(
            {str(series)!r})
        print(json.dumps({{"region": report.region, "answer": report.answer, "row": [float(v) for v in values]}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["answer"] == "model" and report["region"].startswith("region"), report


def test_the_region_preset_is_the_tiny_preset_plus_the_region_stage():
    from training.config import load_config

    tiny, region = load_config(ROOT / "configs" / "tiny.yaml"), load_config(ROOT / "configs" / "tiny_region.yaml")
    assert region.region.enabled and not tiny.region.enabled
    assert dataclasses.replace(region, region=tiny.region) == tiny  # rows compare at the same training budget
    baseline = load_config(ROOT / "configs" / "competition_phantom.yaml")
    competition = load_config(ROOT / "configs" / "competition_region.yaml")
    assert competition.region.enabled and competition.model.heatmap_weight > 0  # the baseline has neither
    assert dataclasses.replace(competition, region=baseline.region,
                               model=dataclasses.replace(competition.model, heatmap_weight=0.0)) == baseline


def test_the_build_checks_bundles_and_declares_the_locator(region_bundle, tmp_path):
    from bundle.build import build
    from bundle.options import BUNDLE_MARKER, BuildError, BuildOptions

    result = build(BuildOptions(weights=region_bundle, out=tmp_path / "dist"))
    weights = result.dataset_dir / "weights"
    bundled = Manifest.read(weights, verify=True)  # the locator travelled with its hash
    assert bundled.region is not None and (weights / bundled.region["file"]).is_file()
    assert "locator.onnx" in result.opsets and "region" in result.modules
    assert json.loads((result.dataset_dir / BUNDLE_MARKER).read_text())["region"] == {"model": True}
    broken = Path(shutil.copytree(region_bundle, tmp_path / "broken"))
    (broken / "locator.onnx").write_bytes(b"not an onnx file")
    manifest = Manifest.read(broken, verify=False)
    dataclasses.replace(manifest, region={**manifest.region, "sha256": sha256_file(broken / "locator.onnx")}).write(
        broken)
    with pytest.raises(BuildError, match="region locator"):
        build(BuildOptions(weights=broken, out=tmp_path / "dist2"))


def test_a_mirrored_view_keeps_each_point_on_its_voxel_and_swaps_left_and_right():
    coarse = np.zeros((10, 12, 14), np.uint8)
    spacing = (3.0, 2.0, 2.0)
    voxels = np.array([[4, 5, 3], [6, 7, 11]])  # a left and a midline point
    coarse[tuple(voxels.T)] = 255
    sample = LocatorSample(uid="s", coarse=coarse, coarse_spacing=spacing, shape=(20, 24, 28), spacing=(1.5, 1, 1),
                           points_mm=voxels * np.asarray(spacing), locations=[LOCATION_LABELS.index(
                               "Left Middle Cerebral Artery"), LOCATION_LABELS.index("Basilar Tip")])
    lo, hi = np.array([1, 2, 2]), np.array([9, 11, 13])
    for mirror in (False, True):
        crop, points, locations, extent = view(sample, lo, hi, mirror)
        assert extent.tolist() == [(8 - 1) * 3.0, (9 - 1) * 2.0, (11 - 1) * 2.0]
        index = np.round(points / np.asarray(spacing)).astype(int)
        assert all(crop[tuple(i)] == 255 for i in index)  # each point still on its bright voxel
        names = [LOCATION_LABELS[k] for k in locations]
        side = "Right" if mirror else "Left"
        assert names == [f"{side} Middle Cerebral Artery", "Basilar Tip"]


def test_the_site_offsets_learn_the_layout_so_the_reference_is_tighter_than_the_points(one_thread):
    """Points at different sites pin down one reference: out of fold, a point lies closer to its own predicted
    site than the sites lie to each other (what regressing the mean of the points could not give)."""
    samples = _samples(24, seed=3)
    cfg = RegionTrainConfig(enabled=True, input_size=16, steps=150, augment_copies=2, recall=0.995, margin_mm=0.0,
                            min_half_mm=1.0)
    fit = fit_locator(samples, cfg, num_folds=3, seed=0, progress=False)
    sites = np.array([fit.stats["sites_mm"][LOCATION_LABELS[k]] for k in (0, 1, 11)])
    truth = np.array([_SITES[k] for k in (0, 1, 11)]) * np.array([4.0, 3.0, 3.0])
    learned, expected = sites - sites.mean(axis=0), truth - truth.mean(axis=0)
    assert np.abs(learned - expected).max() < 6.0, (learned, expected)  # sites 15-30 mm apart
    spread = np.linalg.norm(expected, axis=1).mean()
    assert fit.stats["oof_site_error_mm"]["median"] < spread / 2, (fit.stats, spread)


def test_warm_up_builds_the_locator_and_a_broken_locator_costs_only_the_box(region_bundle, tmp_path):
    predictor = Predictor(region_bundle, providers=["CPUExecutionProvider"])
    assert predictor.load(warm_up=True)
    assert isinstance(predictor.runner, RegionRunner) and predictor.runner.locator._session is not None

    broken = tmp_path / "broken"
    shutil.copytree(region_bundle, broken)
    manifest = Manifest.read(broken)
    spec = RegionSpec.from_dict(manifest.region)
    (broken / spec.file).write_bytes(b"not an onnx file")
    locator = Locator(broken, spec)
    assert locator.warm_up()  # the reason it cannot run, not a raise
    answer = locator.locate(_volume(shape=(20, 30, 40)))
    assert answer.region is None and answer.note.startswith("whole volume: locator failed")


def test_a_compressed_series_decodes_only_the_box_and_answers_as_if_read_whole(region_bundle, write_phantom_series,
                                                                                caplog):
    """Streamed, the locator reads the coarse copy's slices and only the box's files are decoded after them; the
    answer is the one of the whole series read first (the crop holds the same voxels)."""
    from phantom import Acquisition

    folder = write_phantom_series(seed=3, modality="CTA", compression="rle", acquisition=Acquisition(
        rows=40, cols=40, num_slices=30, pixel_spacing=(0.6, 0.6), slice_spacing=1.0, centre=(0.0, 0.0, -15.0)))
    whole = Predictor(region_bundle, providers=["CPUExecutionProvider"],
                      loader=lambda path: load_series(path, in_process=True))
    expected, expected_report = whole.predict_series(folder)
    with caplog.at_level(logging.INFO, logger="inference.load"):
        values, report = Predictor(region_bundle, providers=["CPUExecutionProvider"]).predict_series(folder)
    assert report.region.startswith("region") and report.region == expected_report.region, report.line()
    np.testing.assert_array_equal(values, expected)
    decoded = [r.getMessage() for r in caplog.records if "the rest lie outside the region" in r.getMessage()]
    assert decoded and "of 30 slices" in decoded[0] and report.slices < 30, decoded


def test_the_boxes_file_gives_the_other_ranks_each_series_box_as_the_cache_keyed_it(tmp_path):
    boxes = {"a": Box((1.0, -2.5, 3.25), (40.123456, 50.0, 60.0)), "b": None}
    write_boxes(tmp_path / "region", boxes)
    read = read_boxes(tmp_path / "region")
    assert read["b"] is None and read.keys() == boxes.keys()
    assert read["a"].to_dict() == boxes["a"].to_dict()  # the cache's validity key is built from to_dict()
    with pytest.raises(KitError, match="boxes"):
        read_boxes(tmp_path / "elsewhere")
