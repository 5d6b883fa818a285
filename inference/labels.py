"""The competition's 14 output labels, their order, and the left/right pairs."""
from __future__ import annotations

__all__ = [
    "ID_COLUMN",
    "LABELS",
    "LOCATION_LABELS",
    "PRESENT_LABEL",
    "PRESENT_INDEX",
    "LOCATION_INDICES",
    "LEFT_RIGHT_PAIRS",
    "LR_SWAP_INDEX",
    "COMPETITION_SLUG",
]

COMPETITION_SLUG = "rsna-intracranial-aneurysm-detection"
ID_COLUMN = "SeriesInstanceUID"

# Order matters: the evaluation API and the metric read columns in exactly this order.
LOCATION_LABELS: tuple[str, ...] = (
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
)
PRESENT_LABEL = "Aneurysm Present"
LABELS: tuple[str, ...] = LOCATION_LABELS + (PRESENT_LABEL,)
PRESENT_INDEX = LABELS.index(PRESENT_LABEL)
LOCATION_INDICES: tuple[int, ...] = tuple(i for i in range(len(LABELS)) if i != PRESENT_INDEX)


def _left_right_pairs() -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, name in enumerate(LABELS):
        if name.startswith("Left "):
            pairs.append((i, LABELS.index("Right " + name[len("Left "):])))
    return tuple(pairs)


# (left index, right index) for every lateralised location.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = _left_right_pairs()


def _swap_index() -> tuple[int, ...]:
    index = list(range(len(LABELS)))
    for left, right in LEFT_RIGHT_PAIRS:
        index[left], index[right] = right, left
    return tuple(index)


# probs[..., LR_SWAP_INDEX] is the label vector of the left-right mirrored image.
LR_SWAP_INDEX: tuple[int, ...] = _swap_index()
