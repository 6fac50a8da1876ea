"""The public API: what `inertia` exports exists, and tests and benchmarks use only public names
(no `_private` module or name of the package), with benchmarks importing nothing from tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import inertia
import inertia.demo
import inertia.monitor

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from module import name` and ("", module) of `import module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [("", alias.name) for alias in node.names]
    return found


def private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


@pytest.mark.parametrize("module", [inertia, inertia.monitor, inertia.demo])
def test_every_exported_name_exists(module):
    for name in module.__all__:
        assert hasattr(module, name), f"{module.__name__}.{name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tests_and_benchmarks_use_only_public_names(path):
    for module, name in imports(path):
        dotted = f"{module}.{name}" if module else name
        if dotted.startswith("inertia"):
            assert not private(dotted), f"{path.name} imports {dotted}"
        if path.parent.name == "benchmarks":
            top = (module or name).split(".")[0]
            assert not top.startswith("test") and top != "conftest", f"{path.name}: {dotted}"


def test_the_checker_sees_a_private_import(tmp_path):
    """The scan above is not vacuous: a private import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("from inertia.monitor.core import _Group\nimport inertia._checks\n")
    assert [private(f"{m}.{n}" if m else n) for m, n in imports(sample)] == [True, True]


def test_the_package_ships_its_type_information():
    assert (Path(inertia.__file__).parent / "py.typed").is_file()


def test_modules_stay_small():
    """docs/architecture.md: no module of the package over 400 lines, monitor/core.py under 350
    (the hooks, observe and the assembly of a row; each other job in its own module)."""
    package = ROOT / "src" / "inertia"
    sizes = {
        p.relative_to(package).as_posix(): len(p.read_text().splitlines())
        for p in package.rglob("*.py")
    }
    over = {name: n for name, n in sizes.items() if n > (350 if name == "monitor/core.py" else 400)}
    assert not over, over
