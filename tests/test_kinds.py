"""The model kinds have one owner: inference.kinds names them, everything else asks it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from inference.errors import ConfigError
from inference.kinds import KIND_NAMES, KINDS, model_kind
from inference.runners import Runner

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown model kind 'transformer3d'.*window25d, volume32"):
        model_kind("transformer3d")


def test_every_kind_has_a_runner_and_a_trainer():
    from training.kinds import TRAINING_KINDS, training_kind

    for name, kind in KINDS.items():
        runner = kind.runner_class()
        assert isinstance(runner, type) and issubclass(runner, Runner), name
        if kind.takes_region:  # its runner behind a region locator (issue 21)
            region_runner = kind.runner_class(region=True)
            assert isinstance(region_runner, type) and issubclass(region_runner, runner), name
        assert training_kind(name).spec is kind
    assert set(TRAINING_KINDS) == set(KIND_NAMES)


def test_every_runner_is_bundled_into_the_kernel():
    """A kind's runner is imported by name (inference.kinds), which the build's import walk cannot follow: it must
    also be reachable by plain imports from the kernel entry."""
    from bundle.modules import runtime_modules

    bundled = {f"inference.{name}" for name in runtime_modules()}
    assert {kind.runner.partition(":")[0] for kind in KINDS.values()} <= bundled
    assert {kind.region_runner.partition(":")[0] for kind in KINDS.values() if kind.takes_region} <= bundled


def test_kind_names_are_compared_in_one_module():
    """No module of the kit but inference/kinds.py holds a kind's name as a string of its own (a comparison, a
    default, a dict key): the literals would be a second owner."""
    offenders = []
    for package in ("inference", "training", "bundle", "evaluation", "scripts"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "inference" / "kinds.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in KIND_NAMES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def _import_graph() -> dict[str, set[str]]:
    """module -> the kit's modules it imports (at the top or lazily inside a function)."""
    packages = ("inference", "training", "bundle", "evaluation", "phantom")
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for pkg in packages
               for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.rsplit(".", 1)[0] if not path.name == "__init__.py" else name.removesuffix(".__init__")
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def test_the_kit_has_no_import_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
