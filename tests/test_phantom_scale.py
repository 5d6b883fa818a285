"""The competition-scale phantom: per-modality proportions of the real data, downscaling, neck and skull base."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference.errors import ConfigError
from inference.load import load_series
from phantom import PhantomConfig, draw_split, make_dataset, random_anatomy, write_series
from phantom.__main__ import main as phantom_main
from phantom.scale import COMPETITION_GRIDS, willis_band, willis_share

N_SPECS = 240  # drawn, never rendered: the proportions come from the specs alone


@pytest.fixture(scope="module")
def specs():
    return draw_split(N_SPECS, seed=5, split="train", config=PhantomConfig.competition())


def _by_modality(specs, modality):
    return [s for s in specs if s.modality == modality]


def _slab(acq):
    return acq.slice_spacing * (acq.num_slices - 1)


def test_slices_per_modality_match_the_competition(specs):
    expected = {"CTA": (330, 470, 400), "MRA": (140, 210, 175), "MRI T2": (120, 180, 150), "MRI T1post": (28, 42, 35)}
    for modality, (low, high, typical) in expected.items():
        counts = np.array([s.acquisition.num_slices for s in _by_modality(specs, modality)])
        assert counts.size >= 10, modality
        assert counts.min() >= low and counts.max() <= high, (modality, counts.min(), counts.max())
        assert abs(np.median(counts) - typical) <= 0.12 * typical, (modality, np.median(counts))


def test_pixels_are_512_at_035_to_055_mm(specs):
    for s in specs:
        acq = s.acquisition
        assert (acq.rows, acq.cols) == (512, 512)
        assert 0.35 <= acq.pixel_spacing[0] <= 0.55 and acq.pixel_spacing[0] == acq.pixel_spacing[1]


def test_slabs_cta_neck_to_vertex_mra_around_the_circle_of_willis(specs):
    for s in specs:
        acq, anatomy = s.acquisition, s.anatomy
        low, high = anatomy.extent()
        if acq.plane == "axial":  # every site and blob lies inside the slab
            z = acq.positions()[:, 2]
            assert z.min() <= low[2] and z.max() >= high[2], s.series_uid
        top_of_head = anatomy.head_centre[2] + anatomy.head_semi_axes[2]
        if s.modality == "CTA":
            assert 180.0 <= _slab(acq) <= 275.0
            assert top_of_head <= acq.positions()[:, 2].max() <= top_of_head + 11.0  # up to the vertex
            assert acq.positions()[:, 2].min() <= top_of_head - 165.0  # down into the neck
        elif s.modality == "MRA":
            assert 60.0 <= _slab(acq) <= 125.0
            band_low, band_high = willis_band(anatomy)
            assert acq.positions()[:, 2].min() <= band_low + 10 and acq.positions()[:, 2].max() >= band_high - 10
        elif s.modality == "MRI T1post":
            assert acq.slice_spacing >= 3.0  # thick slices
    cta = [willis_share(s.anatomy, s.acquisition) for s in _by_modality(specs, "CTA")]
    mra = [willis_share(s.anatomy, s.acquisition) for s in _by_modality(specs, "MRA")]
    # the circle of Willis (about 40 mm) is a small part of a CTA and most of a time-of-flight slab
    assert np.mean(cta) < 0.25 and max(cta) < 0.3, np.mean(cta)
    assert np.mean(mra) > 0.4, np.mean(mra)


def test_aneurysms_2_to_10_mm_most_under_7(specs):
    diameters = np.array([2 * a.radius for s in specs for a in s.anatomy.aneurysms])
    assert diameters.size >= 60
    assert diameters.min() >= 2.0 and diameters.max() <= 10.0
    assert np.mean(diameters < 7.0) >= 0.8
    assert 3.5 <= np.median(diameters) <= 5.5


def test_downscale_keeps_millimetres_and_slices():
    full = draw_split(12, seed=2, split="train", config=PhantomConfig.competition())
    small = draw_split(12, seed=2, split="train", config=PhantomConfig.competition(downscale=4))
    for a, b in zip(full, small):
        fa, fb = a.acquisition, b.acquisition
        assert (fb.rows, fb.cols) == (128, 128) and fb.num_slices == fa.num_slices
        assert fb.slice_spacing == fa.slice_spacing and fb.centre == fa.centre
        assert fb.pixel_spacing[0] * fb.rows == pytest.approx(fa.pixel_spacing[0] * fa.rows, abs=0.1)  # same field
        assert a.anatomy == b.anatomy
    assert [g.size for g in PhantomConfig.competition(downscale=2).grids] == [256] * len(COMPETITION_GRIDS)
    with pytest.raises(ConfigError):
        PhantomConfig.competition(downscale=0)


def test_the_neck_is_drawn_after_the_head():
    """The neck's random draws come last: the same seed gives the same head, vessels and aneurysms."""
    head = random_anatomy(np.random.default_rng(3), blob_size_law="competition", blob_radius=(1.0, 5.0))
    with_neck = random_anatomy(np.random.default_rng(3), blob_size_law="competition", blob_radius=(1.0, 5.0),
                               neck=True)
    assert head.neck is None and with_neck.neck is not None
    assert with_neck.aneurysms == head.aneurysms and with_neck.sites == head.sites
    assert with_neck.vessels[:len(head.vessels)] == head.vessels
    assert len(with_neck.vessels) == len(head.vessels) + 4  # carotids and vertebrals down the neck
    assert PhantomConfig().neck is False and PhantomConfig().grids is None  # the default phantom has no neck


def test_a_downscaled_cta_holds_neck_vessels_and_bone_beside_the_carotid(tmp_path):
    config = PhantomConfig.competition(downscale=8, modality_weights=(("CTA", 1.0),))
    spec = draw_split(1, seed=4, split="train", config=config)[0]
    spec = spec.with_acquisition(noise=0.0, compression=None, multiframe=False, flip_rows=False,
                                 flip_cols=False, reverse_slices=False)
    write_series(spec, tmp_path / spec.series_uid)
    volume = load_series(tmp_path / spec.series_uid, in_process=True)
    acq = spec.acquisition
    assert volume.pixels.shape == (acq.num_slices, 64, 64)
    assert 330 <= acq.num_slices <= 470
    hu = volume.pixels  # canonical: slices inferior -> superior, rows anterior -> posterior, columns right -> left

    def value_at(point):
        loc = acq.locate(point)
        return hu[loc.index, int(round(loc.row)), int(round(loc.col))]

    # the carotids and vertebrals reach the slab's bottom slice: contrast-bright there
    bottom = acq.positions()[:, 2].min()
    for vessel in spec.anatomy.vessels:
        if "neck" in vessel.name:
            (x0, y0, z0), (x1, y1, z1) = vessel.points[0], vessel.points[1]
            t = (bottom + 1.0 - z0) / (z1 - z0)
            assert value_at((x0 + t * (x1 - x0), y0 + t * (y1 - y0), bottom + 1.0)) > 150.0, vessel.name
    # bone (the skull base) within 12 mm of both infraclinoid carotid sites, and the carotid itself bright
    for side in ("Left", "Right"):
        site = np.asarray(spec.anatomy.site(f"{side} Infraclinoid Internal Carotid Artery"))
        assert value_at(site) > 150.0
        loc = acq.locate(site)
        reach = int(np.ceil(12.0 / acq.pixel_spacing[0]))
        r, c = int(round(loc.row)), int(round(loc.col))
        patch = hu[loc.index, max(r - reach, 0):r + reach + 1, max(c - reach, 0):c + reach + 1]
        assert patch.max() > 700.0, side
    # the cervical spine: bone on the midline behind the carotids at the slab's bottom
    vertebra = next(c for c, s in spec.anatomy.neck.bones if c[2] < bottom + 20 and abs(s[1] - s[0]) < 3)
    assert value_at((vertebra[0], vertebra[1], vertebra[2])) > 700.0


def test_cli_competition_scale_writes_masks(tmp_path):
    out = tmp_path / "data"
    assert phantom_main(["--out", str(out), "--scale", "competition", "--downscale", "16", "--series", "3",
                         "--test-series", "0", "--seed", "1", "--mask-fraction", "0.34", "--quiet",
                         "--modalities", "MRI T1post"]) == 0
    masks = sorted((out / "segmentations").glob("*/*_cowseg.nii"))
    assert len(masks) == 1 and (masks[0].parent / f"{masks[0].parent.name}.nii").is_file()
    assert (out / "series" / masks[0].parent.name).is_dir()
    with pytest.raises(SystemExit):
        phantom_main(["--out", str(tmp_path / "x"), "--downscale", "2"])  # needs --scale competition
    with pytest.raises(SystemExit):
        phantom_main(["--out", str(tmp_path / "x"), "--scale", "competition", "--size", "64", "64"])


def test_default_config_makes_no_masks(tmp_path):
    summary = make_dataset(tmp_path / "d", series=3, test_series=0, seed=0,
                           config=replace(PhantomConfig(), slices=(4, 6), size=(24, 24)))
    assert summary.masks == 0 and not (tmp_path / "d" / "segmentations").exists()
