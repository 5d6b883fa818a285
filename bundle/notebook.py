"""The submission notebook and its .py twin, made from kernel_template.py (one cell per '# %%' block)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .options import BUNDLE_MARKER

__all__ = ["TEMPLATE", "kernel_cells", "notebook_json", "py_twin", "cells_from_py"]

TEMPLATE = Path(__file__).with_name("kernel_template.py")
_CELL_MARK = "# %%"
_SLUG_PLACEHOLDER = '"__DATASET_SLUG__"'
_MARKER_PLACEHOLDER = '"__BUNDLE_MARKER__"'


def kernel_cells(*, dataset_slug: str, template: Path = TEMPLATE) -> list[str]:
    """The notebook's code cells: the template's blocks with the bundle's names filled in."""
    text = template.read_text()
    for placeholder in (_SLUG_PLACEHOLDER, _MARKER_PLACEHOLDER):
        if text.count(placeholder) != 1:
            raise ValueError(f"{template} must name {placeholder} exactly once")
    text = text.replace(_SLUG_PLACEHOLDER, repr(dataset_slug)).replace(_MARKER_PLACEHOLDER, repr(BUNDLE_MARKER))
    return cells_from_py(text)


def notebook_json(cells: Sequence[str]) -> dict:
    """An nbformat 4 notebook with one code cell per source."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": "3.11"},
        },
        "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": source.splitlines(keepends=True)} for i, source in enumerate(cells)],
    }


def py_twin(cells: Sequence[str]) -> str:
    """The plain-script twin of the notebook: the same cells, separated by '# %%' markers."""
    return "\n\n".join(f"{_CELL_MARK}\n{source}" for source in cells) + "\n"


def cells_from_py(text: str) -> list[str]:
    """Inverse of `py_twin`."""
    chunks = text.rstrip("\n").split(f"\n\n{_CELL_MARK}\n")
    chunks[0] = chunks[0].removeprefix(f"{_CELL_MARK}\n")
    return chunks
