"""Canonical orientation: the permutation and flips that bring any acquisition to inferior->superior, A->P, R->L."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from inference.volume import CanonicalTransform, SliceSource, Volume, canonical_transform


def test_standard_axial_is_identity():
    t = canonical_transform([1, 0, 0], [0, 1, 0])
    assert t.axes == (0, 1, 2) and t.flips == (False, False, False)


def test_coronal_stack_maps_rows_to_superior_inferior_flipped():
    # rows run head -> feet (-z), columns run right -> left (+x); the normal row x col is +y
    t = canonical_transform([1, 0, 0], [0, 0, -1])
    assert t.axes == (1, 0, 2)
    assert t.flips == (True, False, False)


def test_sagittal_stack():
    # columns run anterior -> posterior (+y), rows head -> feet (-z); normal = y x -z = -x
    t = canonical_transform([0, 1, 0], [0, 0, -1])
    assert t.axes == (1, 2, 0)
    assert t.flips == (True, False, True)


def test_flipped_axial_columns_and_rows():
    t = canonical_transform([-1, 0, 0], [0, -1, 0])  # normal stays +z
    assert t.axes == (0, 1, 2) and t.flips == (False, True, True)


def test_slightly_oblique_stack_snaps_to_nearest_axis():
    angle = np.deg2rad(10)
    t = canonical_transform([np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0])
    assert t.axes == (0, 1, 2) and t.flips == (False, False, False)


@pytest.mark.parametrize("axes", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True), (False, True, False)])
def test_point_mapping_agrees_with_array_transform(axes, flips):
    rng = np.random.default_rng(0)
    stack = rng.random((4, 5, 6))
    t = CanonicalTransform(axes=axes, flips=flips)
    canonical = t.apply(stack)
    for k, i, j in [(0, 0, 0), (3, 4, 5), (1, 2, 3), (2, 0, 5)]:
        z, y, x = t.point((k, i, j), stack.shape)
        assert canonical[int(z), int(y), int(x)] == stack[k, i, j]
    assert t.spacing((1.0, 2.0, 3.0)) == tuple(float(v) for v in np.array([1.0, 2.0, 3.0])[list(axes)])


def test_volume_to_canonical_uses_sources():
    stack = np.zeros((3, 4, 5), dtype=np.float32)
    t = canonical_transform([1, 0, 0], [0, 0, -1])
    vol = Volume(
        pixels=t.apply(stack),
        spacing=t.spacing((1.0, 1.0, 1.0)),
        modality="MR",
        sources=[SliceSource("a", 0), SliceSource("b", 0), SliceSource("b", 1)],
        transform=t,
        stack_shape=stack.shape,
    )
    assert vol.to_canonical("b", 1, x=2.0, y=1.0) == t.point((2, 1.0, 2.0), stack.shape)
    with pytest.raises(KeyError, match="frame 5"):
        vol.to_canonical("b", 5, 0, 0)
