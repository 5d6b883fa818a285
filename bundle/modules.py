"""Which `inference` modules the kernel needs (an import walk from its entry), and vendored pure-Python libraries."""
from __future__ import annotations

import ast
import importlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from .options import REPO, BuildError

__all__ = ["PACKAGE", "ENTRY_MODULE", "FORBIDDEN_IMPORTS", "VENDORED_PACKAGES", "runtime_modules",
           "vendor_packages"]

PACKAGE = "inference"
ENTRY_MODULE = "kernel"
FORBIDDEN_IMPORTS = ("torch", "timm", "torchvision", "training", "phantom", "tests", "evaluation", "bundle")
# Pure-Python libraries the runtime imports that Kaggle's image may lack: copied from this environment into the
# bundle's vendor/ folder (no wheel, no pip, no network needed on Kaggle).
VENDORED_PACKAGES = ("pebble", "loky", "cloudpickle")

def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules of the package, top-level external modules) imported anywhere in `path`, lazily too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    siblings: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    if len(parts) > 1:
                        siblings.add(parts[1])
                else:
                    external.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != PACKAGE:
                    external.add(parts[0])
                    continue
                rest = parts[1:]
            elif node.level == 1:
                rest = (node.module or "").split(".") if node.module else []
            else:
                raise BuildError(f"{path}: imports from outside the {PACKAGE} package (level {node.level})")
            if rest:
                siblings.add(rest[0])
            else:  # from . import x: x is a module only when its file exists
                siblings.update(a.name for a in node.names if (path.parent / f"{a.name}.py").is_file())
    return siblings, external


def runtime_modules(package_dir: Path = REPO / PACKAGE, *, entry: str = ENTRY_MODULE) -> list[str]:
    """The package's modules reachable by imports from `entry` (plus `__init__`), sorted.

    Raises:
        BuildError: a reachable module is missing or imports torch, timm, the trainer, the phantom or the tests.
    """
    todo, seen = [entry, "__init__"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = package_dir / f"{name}.py"
        if not path.is_file():
            raise BuildError(f"the kernel needs {PACKAGE}.{name}, but {path} does not exist")
        seen.add(name)
        siblings, external = _imports(path)
        bad = sorted(external & set(FORBIDDEN_IMPORTS))
        if bad:
            raise BuildError(f"{path} imports {bad}: the kernel runtime must not import {list(FORBIDDEN_IMPORTS)}")
        todo.extend(siblings - seen)
    return sorted(seen)


def vendor_packages(target: Path, names: Sequence[str] = VENDORED_PACKAGES) -> None:
    """Copy the installed pure-Python packages `names` (source only) into `target`.

    Raises:
        BuildError: a package is not installed here.
    """
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise BuildError(f"the kernel needs {name} ({exc}): pip install -r requirements-kernel.txt") from exc
        if module.__file__ is None:
            raise BuildError(f"the kernel needs {name}, but it is a namespace package without files")
        source = Path(module.__file__).parent
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
