"""K folds of series, stratified on Aneurysm Present x Modality."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from inference.errors import ConfigError

__all__ = ["make_folds"]


def make_folds(present: Sequence[int], modality: Sequence[str], *, num_folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0..num_folds-1) of each series, stratified on the (Aneurysm Present, Modality) pair.

    Strata too small to be split num_folds ways are merged into their Present class, so every fold keeps the
    positive rate even where one modality is rare.

    Raises:
        ConfigError: fewer series than folds, or mismatched lengths.
    """
    present = np.asarray(present).astype(int)
    modality = np.asarray(modality).astype(str)
    if present.shape != modality.shape:
        raise ConfigError(f"present ({present.size}) and modality ({modality.size}) lengths differ")
    if present.size < num_folds:
        raise ConfigError(f"{present.size} series cannot make {num_folds} folds")
    strata = np.array([f"{p}|{m}" for p, m in zip(present, modality)])
    values, counts = np.unique(strata, return_counts=True)
    rare = set(values[counts < num_folds])
    strata = np.array([f"{p}|*" if s in rare else s for s, p in zip(strata, present)])
    values, counts = np.unique(strata, return_counts=True)
    if (counts < num_folds).any():
        strata = present.astype(str)  # still too few: stratify on Present only
        if np.unique(strata, return_counts=True)[1].min() < num_folds:
            strata = np.zeros(present.size, dtype=str)
    folds = np.zeros(present.size, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(present.size), strata)):
        folds[held_out] = fold
    return folds
