"""Competition label order, left/right pairs and the typed configs."""
from __future__ import annotations

import pytest

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig, config_hash, from_dict, to_dict
from inference.errors import ConfigError
from inference.labels import LABELS, LEFT_RIGHT_PAIRS, LR_SWAP_INDEX, PRESENT_INDEX


def test_labels_are_the_competitions_in_order():
    assert len(LABELS) == 14
    assert LABELS[0] == "Left Infraclinoid Internal Carotid Artery"
    assert LABELS[6] == "Anterior Communicating Artery"
    assert LABELS[11:] == ("Basilar Tip", "Other Posterior Circulation", "Aneurysm Present")
    assert PRESENT_INDEX == 13


def test_left_right_swap_is_an_involution_that_pairs_sides():
    assert len(LEFT_RIGHT_PAIRS) == 5
    for left, right in LEFT_RIGHT_PAIRS:
        assert LABELS[left].replace("Left ", "") == LABELS[right].replace("Right ", "")
        assert LR_SWAP_INDEX[left] == right and LR_SWAP_INDEX[right] == left
    assert [LR_SWAP_INDEX[i] for i in LR_SWAP_INDEX] == list(range(14))
    assert LR_SWAP_INDEX[6] == 6 and LR_SWAP_INDEX[PRESENT_INDEX] == PRESENT_INDEX


@pytest.mark.parametrize("cls", [PreprocessConfig, WindowConfig, AggregationConfig])
def test_config_round_trips_through_json_dict(cls):
    cfg = cls()
    assert from_dict(cls, to_dict(cfg)) == cfg
    assert config_hash(cfg) == config_hash(from_dict(cls, to_dict(cfg)))


def test_config_hash_changes_with_values():
    assert config_hash(PreprocessConfig()) != config_hash(PreprocessConfig(image_size=128))


@pytest.mark.parametrize(
    "build",
    [
        lambda: PreprocessConfig(image_size=2),
        lambda: PreprocessConfig(ct_window=(500, 0)),
        lambda: PreprocessConfig(mr_percentiles=(99, 1)),
        lambda: WindowConfig(offsets=(-1, 1)),
        lambda: WindowConfig(stride=0),
        lambda: AggregationConfig(method="mean"),
        lambda: AggregationConfig(fold_average="median"),
    ],
)
def test_bad_config_values_raise_config_error(build):
    with pytest.raises(ConfigError):
        build()


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(WindowConfig, {"offsets": [0], "strid": 2})
