"""The data audit (training.audit) against a phantom dataset whose storage, geometry and planted faults are known."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from inference.labels import PRESENT_INDEX
from inference.volume import canonical_transform
from phantom import PhantomConfig, draw_split, make_dataset
from training.audit import main, run_audit
from training.audit_series import _plane_and_flips, audit_series

# every variety at seed 10: the three codecs, coronal and sagittal, row and column flips, multi-frame files (one
# compressed, one stripped), non-square images, enough positive series; test_dataset_holds_every_variety
# guards the choice
OPTIONS = dict(slices=(8, 12), size=(32, 40), multiframe_fraction=0.3, compressed_fraction=0.45,
               stripped_fraction=0.3, non_axial_fraction=0.4, flip_fraction=0.3, non_square_fraction=0.4)
SEED, SERIES = 10, 12
SYNTAX = {None: ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless, "rle": RLELossless}
ROOT = Path(__file__).resolve().parents[1]


def _syntax_name(compression: str | None) -> str:
    return SYNTAX[compression].name.replace(" Image Compression", "")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A phantom dataset with broken files and bad localizer rows planted; what was planted, and the specs."""
    root = tmp_path_factory.mktemp("audit") / "data"
    make_dataset(root, series=SERIES, test_series=0, seed=SEED, **OPTIONS)
    specs = {s.series_uid: s for s in draw_split(SERIES, seed=SEED, split="train", config=PhantomConfig(**OPTIONS))}
    header, rows = _read_rows(root / "train_localizers.csv")
    referenced = {r[1] for r in rows}
    plain = [u for u, s in specs.items() if s.acquisition.compression is None and not s.acquisition.multiframe]
    # broken files: a truncated file no localizer points at, a zero-byte file, a text file named .dcm
    victim = next(p for p in sorted((root / "series" / plain[0]).glob("*.dcm")) if p.stem not in referenced)
    victim.write_bytes(victim.read_bytes()[:-100])  # inside the pixel data
    (root / "series" / plain[1] / "empty.dcm").write_bytes(b"")
    (root / "series" / plain[1] / "notes.dcm").write_text("not a DICOM file\n" * 40)
    # a scout: one more file, at right angles to the stack (the loader leaves its frame out)
    scout = pydicom.dcmread(next((root / "series" / plain[1]).glob("*.dcm")))
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.777"
    scout.ImageOrientationPatient = [0, 1, 0, 0, 0, -1] if scout.ImageOrientationPatient[5] == 0 else [1, 0, 0, 0, 1, 0]
    scout.save_as(root / "series" / plain[1] / "1.2.3.4.777.dcm")
    broken = {(plain[0], victim.name), (plain[1], "empty.dcm"), (plain[1], "notes.dcm"), (plain[1], "frames")}
    # bad localizer rows, appended; one positive series loses its rows
    positives = [u for u, s in specs.items() if s.labels[PRESENT_INDEX] and any(r[0] == u for r in rows)]
    emptied, target = positives[0], positives[1]
    kept = [r for r in rows if r[0] != emptied]
    # a valid point in the far corner of a non-square image (x is the column, y the row)
    wide = next(s for u, s in specs.items() if u != emptied and s.acquisition.rows != s.acquisition.cols
                and not s.acquisition.multiframe)
    corner = f"{{'x': {wide.acquisition.cols - 0.5}, 'y': {wide.acquisition.rows - 0.5}}}"
    kept.append([wide.series_uid, wide.sop_instance_uids()[-1], corner, "Basilar Tip"])
    sop = next(r[1] for r in kept if r[0] == target)
    acq = specs[target].acquisition
    multi = next(u for u, s in specs.items() if s.acquisition.multiframe)
    bad = {
        "unknown SOPInstanceUID": [target, "1.2.3.4.999", "{'x': 5.0, 'y': 5.0}", "Basilar Tip"],
        "coordinates outside the image": [target, sop, f"{{'x': {acq.cols + 3.5}, 'y': 4.0}}", "Basilar Tip"],
        "frame out of range": [multi, specs[multi].sop_instance_uids()[0],
                               f"{{'x': 5.0, 'y': 5.0, 'f': {specs[multi].acquisition.num_slices}}}", "Basilar Tip"],
        "unparsable coordinates": [target, sop, "{'x': 5.0}", "Basilar Tip"],
        "slice dropped by the loader": [plain[1], "1.2.3.4.777", "{'x': 5.0, 'y': 5.0}", "Basilar Tip"],
    }
    with open(root / "train_localizers.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *kept, *bad.values()])
    planted_rows = {problem: len(kept) + i for i, problem in enumerate(bad)}
    report = run_audit(root, config_path="configs/tiny.yaml", sample=3, workers=2, progress=False)
    return {"root": root, "specs": specs, "report": report, "broken": broken, "truncated": plain[0], "scout": plain[1],
            "emptied": emptied, "bad_rows": planted_rows, "kept": len(kept)}


def test_dataset_holds_every_variety(planted):
    acqs = [s.acquisition for s in planted["specs"].values()]
    assert {a.compression for a in acqs} == set(SYNTAX)
    assert {a.plane for a in acqs} == {"axial", "coronal", "sagittal"}
    assert any(a.flip_rows for a in acqs) and any(a.flip_cols for a in acqs)
    assert any(a.multiframe and a.compression for a in acqs) and any(a.multiframe and a.stripped for a in acqs)
    assert any(a.rows != a.cols and not a.multiframe for a in acqs)


def test_series_storage_and_geometry_match_the_phantom(planted):
    report = planted["report"]
    assert list(report.series) == list(planted["specs"])
    for uid, spec in planted["specs"].items():
        acq, audit = spec.acquisition, report.series[uid]
        lost = int(uid == planted["truncated"])
        readable_files = (1 if acq.multiframe else acq.num_slices) - lost + int(uid == planted["scout"])
        assert audit.error == ""
        assert audit.transfer_syntaxes == {_syntax_name(acq.compression): readable_files}, uid
        assert audit.multiframe == acq.multiframe
        assert audit.plane == acq.plane
        assert set(audit.flipped) == {n for n, f in (("rows", acq.flip_rows), ("cols", acq.flip_cols)) if f}
        truth = canonical_transform(acq.row_direction, acq.column_direction)
        assert audit.flips == truth.flips
        assert audit.slices == acq.num_slices - lost
        assert audit.axial_slices == (acq.num_slices - lost, acq.rows, acq.cols)[truth.axes[0]]
        assert audit.pixel_spacing == pytest.approx(acq.written_pixel_spacing)
        assert audit.slice_spacing == pytest.approx(acq.slice_spacing, abs=1e-3)


def test_summary_counts_per_modality(planted):
    report, specs = planted["report"], planted["specs"]
    total = report.modalities["all"]
    assert total["series"] == SERIES and total["unloadable"] == 0
    assert total["multiframe"] == sum(s.acquisition.multiframe for s in specs.values())
    assert total["planes"] == {p: sum(s.acquisition.plane == p for s in specs.values())
                               for p in ("axial", "coronal", "sagittal") if any(s.acquisition.plane == p
                                                                                for s in specs.values())}
    for modality in {s.modality for s in specs.values()}:
        group = [s for s in specs.values() if s.modality == modality]
        assert report.modalities[modality]["series"] == len(group)
        assert report.modalities[modality]["flipped"]["cols"] == sum(s.acquisition.flip_cols for s in group)


def test_exactly_the_planted_files_are_dropped(planted):
    dropped = {(uid, name) for uid, a in planted["report"].series.items() for name, _ in a.dropped}
    assert dropped == planted["broken"]
    reasons = {name: reason for a in planted["report"].series.values() for name, reason in a.dropped}
    assert "empty" in reasons["empty.dcm"] and reasons["notes.dcm"]
    assert "truncated" in next(r for n, r in reasons.items() if n not in ("empty.dcm", "notes.dcm", "frames"))
    assert "another orientation" in reasons["frames"]
    assert planted["report"].modalities["all"]["files_dropped"] == 3


def test_planted_localizer_rows_are_flagged_and_no_other(planted):
    loc = planted["report"].localizers
    flagged = {problem: [item["row"] for item in items] for problem, items in loc.problems.items()}
    assert flagged == {problem: [row] for problem, row in planted["bad_rows"].items()}
    assert loc.rows == planted["kept"] + len(planted["bad_rows"])
    assert loc.resolved == planted["kept"]
    assert loc.positive_without_point == [planted["emptied"]]
    assert loc.positive_without_usable_point == []


def test_projection_rests_on_real_cache_work(planted):
    projection = planted["report"].projection
    assert len(projection.sample) == 3 and not projection.failures
    assert len({m["modality"] for m in projection.sample.values()}) == 3  # spread over modalities
    slices = sum(a.axial_slices for a in planted["report"].series.values())
    assert projection.total_slices == slices
    assert projection.projected_bytes == slices * 64 * 64  # configs/tiny.yaml: image_size 64, no resampling
    for m in projection.sample.values():
        assert m["bytes"] == m["axial_slices"] * 64 * 64
    assert projection.projected_seconds > 0
    assert projection.projected_wall_seconds == pytest.approx(projection.projected_seconds / 2)  # cache.workers 2


def test_cli_as_a_module_writes_the_json(planted, tmp_path):
    out = tmp_path / "audit.json"
    run = subprocess.run([sys.executable, "-m", "training.audit", "--data-dir", str(planted["root"]), "--config",
                          "configs/tiny.yaml", "--sample", "1", "--quiet", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Localizers:" in run.stdout and "unknown SOPInstanceUID: 1" in run.stdout
    report = json.loads(out.read_text())
    assert len(report["series"]) == SERIES and "sops" not in report["series"][0]
    assert report["modalities"]["all"]["files_dropped"] == 3
    assert report["localizers"]["positive_without_point"] == [planted["emptied"]]


def test_cli_exit_status_on_unreadable_layouts(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "--json", str(tmp_path / "a.json"), "--quiet"]) == 2
    assert "train.csv" in capsys.readouterr().out
    (tmp_path / "train.csv").write_text("SeriesInstanceUID,Modality\n1.2.3,CTA\n")
    assert main(["--data-dir", str(tmp_path), "--json", str(tmp_path / "a.json"), "--quiet"]) == 2
    assert "lacks columns" in capsys.readouterr().out
    assert not (tmp_path / "a.json").exists()


def test_unreadable_series_is_an_error_not_an_exception(tmp_path):
    assert "does not exist" in audit_series(tmp_path / "missing").error
    (tmp_path / "empty").mkdir()
    assert "no *.dcm" in audit_series(tmp_path / "empty").error
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.dcm").write_bytes(b"")
    audit = audit_series(tmp_path / "bad")
    assert audit.error.startswith("no usable image") and audit.dropped == [("a.dcm", "empty file (0 bytes)")]


def test_plane_names_and_oblique_stacks():
    tilt = np.deg2rad(45)
    oblique = np.array([1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)])
    assert _plane_and_flips(oblique)[0] == "oblique"
    assert _plane_and_flips(np.array([0, 1, 0, 1, 0, 0]))[:2] == ("axial", ("transposed",))
    assert _plane_and_flips(np.array([-1, 0, 0, 0, 0, 1]))[:2] == ("coronal", ("rows", "cols"))
    assert _plane_and_flips(None)[0] == "unknown"
