"""The package's layers: imports point down the layer order, and no modules import each other in a circle.

Library: core (``atomgen/*.py``) < ``atomgen.pipelines`` < ``atomgen.eval``; application:
``atomgen.train`` < ``atomgen.sampling`` and ``atomgen.benchmark`` (one tier: they may import each other)
< ``atomgen.demo`` < ``atomgen.cli`` (with ``atomgen.__main__``). A layer may import its own layer and
the layers below it; the library imports nothing of the application. ``atomgen.configs`` holds data only
(the application reads it), so it imports nothing of atomgen and only the application may import it.

Every ``import`` statement counts, absolute or relative, at module level, inside a function, or under
``if TYPE_CHECKING:``. A type-checking import is a dependency used at run time all the same: the module
calls the methods of the objects it names the type of, so a circle through one is a circle (Python
resolves it only because ``TYPE_CHECKING`` is false), and a library type hint naming an application
class makes the library depend on the application.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

ORDER = ("core", "pipelines", "eval", "train", "sampling", "benchmark", "demo", "cli")
LIBRARY = {"core", "pipelines", "eval"}
APPLICATION = {"train", "sampling", "benchmark", "demo", "cli"}
# What each layer may import (its own layer included).
ALLOWED = {
    "core": {"core"},
    "pipelines": {"core", "pipelines"},
    "eval": {"core", "pipelines", "eval"},
    "train": {*LIBRARY, "train", "configs"},
    "sampling": {*LIBRARY, "train", "sampling", "benchmark", "configs"},
    "benchmark": {*LIBRARY, "train", "sampling", "benchmark", "configs"},
    "demo": {*LIBRARY, "train", "sampling", "benchmark", "demo", "configs"},
    "cli": {*ORDER, "configs"},
    "configs": {"configs"},
}
# Longest prefix first; every other atomgen.<name> is core.
PREFIXES = (
    ("atomgen.pipelines", "pipelines"),
    ("atomgen.eval", "eval"),
    ("atomgen.train", "train"),
    ("atomgen.sampling", "sampling"),
    ("atomgen.benchmark", "benchmark"),
    ("atomgen.demo", "demo"),
    ("atomgen.configs", "configs"),
    ("atomgen.cli", "cli"),
    ("atomgen.__main__", "cli"),
)
ORDER_TEXT = "core < pipelines < eval < train < sampling, benchmark < demo < cli"
MODULE_LEVEL, IN_FUNCTION, TYPE_CHECKING_ONLY = (
    "at module level",
    "inside a function",
    "under if TYPE_CHECKING",
)


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the repository root
    importer: str  # its module name
    imported: str  # the atomgen module the statement loads
    line: int
    where: str  # MODULE_LEVEL, IN_FUNCTION or TYPE_CHECKING_ONLY


def layer_of(module: str) -> str:
    for prefix, layer in PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]``: package name → folder."""
    with pyproject.open("rb") as file:
        return dict(tomllib.load(file)["tool"]["setuptools"]["package-dir"])


def module_name(path: str, dirs: Mapping[str, str]) -> str | None:
    """``eval/run.py`` → ``atomgen.eval.run`` under the package-dir mapping (the most specific folder)."""
    parts = Path(path).with_suffix("").parts
    best = None
    for package, folder in dirs.items():
        prefix = Path(folder).parts
        if parts[: len(prefix)] == prefix and (best is None or len(prefix) > len(best[1])):
            best = (package, prefix)
    if best is None:
        return None
    package, prefix = best
    rest = [p for p in parts[len(prefix) :] if p != "__init__"]
    return ".".join([package, *rest])


def read_sources(root: Path = ROOT) -> tuple[dict[str, str], dict[str, str]]:
    """Every ``.py`` file under the mapped folders: path → source, and the mapping itself."""
    dirs = package_dirs(root / "pyproject.toml")
    sources = {}
    for folder in set(dirs.values()):
        for file in sorted((root / folder).rglob("*.py")):
            if "__pycache__" not in file.parts:
                sources[file.relative_to(root).as_posix()] = file.read_text(encoding="utf-8")
    return sources, dirs


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(
    tree: ast.AST, where: str = MODULE_LEVEL
) -> Iterable[tuple[ast.Import | ast.ImportFrom, str]]:
    """Import statements with where they sit: at module level, inside a function, or (also inside a
    function) in the body of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, where
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), TYPE_CHECKING_ONLY)
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), where)
        else:
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _statements(node, IN_FUNCTION if function and where == MODULE_LEVEL else where)


def collect_imports(sources: Mapping[str, str], dirs: Mapping[str, str]) -> list[Import]:
    """Every import of an atomgen module in ``sources`` (path → text)."""
    names = {path: module_name(path, dirs) for path in sources}
    modules = {name for name in names.values() if name}
    found = []
    for path, text in sorted(sources.items()):
        importer = names[path]
        if importer is None:
            continue
        is_package = Path(path).name == "__init__.py"
        for node, where in _statements(ast.parse(text, filename=path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = importer.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:  # `from pkg import submodule` loads the submodule
                    candidate = f"{source}.{alias.name}"
                    targets.append(candidate if candidate in modules else source)
            for target in dict.fromkeys(targets):
                if target == "atomgen" or target.startswith("atomgen."):
                    found.append(Import(path, importer, target, node.lineno, where))
    return found


def layer_violations(imports: Iterable[Import]) -> list[str]:
    messages = []
    for imp in imports:
        source, target = layer_of(imp.importer), layer_of(imp.imported)
        if target not in ALLOWED[source]:
            allowed = ", ".join(layer for layer in (*ORDER, "configs") if layer in ALLOWED[source])
            messages.append(
                f"{imp.path}:{imp.line} ({source}) imports {imp.imported} ({target}) {imp.where}: "
                f"{source} may import only {allowed} (layer order {ORDER_TEXT})"
            )
    return messages


def import_cycles(imports: Iterable[Import]) -> list[str]:
    """Strongly connected components (Tarjan) of the module graph with more than one module, or a self-import."""
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], Import] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.imported)
        graph.setdefault(imp.imported, set())
        where.setdefault((imp.importer, imp.imported), imp)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)

    messages = []
    for component in components:
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        members = set(component)
        edges = [
            f"{imp.path}:{imp.line} imports {imp.imported}"
            + ("" if imp.where == MODULE_LEVEL else f" ({imp.where})")
            for (a, b), imp in sorted(where.items())
            if a in members and b in members
        ]
        messages.append(
            f"import cycle between {', '.join(component)} (no two modules may import each other in a "
            f"circle, imports inside functions and under if TYPE_CHECKING included): " + "; ".join(edges)
        )
    return messages


def check(sources: Mapping[str, str], dirs: Mapping[str, str]) -> list[str]:
    imports = collect_imports(sources, dirs)
    return layer_violations(imports) + import_cycles(imports)


def test_the_package_keeps_its_layers():
    sources, dirs = read_sources()
    imports = collect_imports(sources, dirs)
    assert len(sources) > 40 and len(imports) > 50  # the walk found the package
    importers = {imp.importer for imp in imports}
    assert {"atomgen.pipelines", "atomgen.eval.run", "atomgen.train.loop", "atomgen.demo.run"} <= importers
    problems = layer_violations(imports) + import_cycles(imports)
    assert not problems, "\n".join(problems)


DIRS = {"atomgen": "atomgen", "atomgen.pipelines": "pipelines", "atomgen.eval": "eval"}


def test_module_names_follow_the_package_dir_mapping():
    assert module_name("eval/run.py", DIRS) == "atomgen.eval.run"
    assert module_name("pipelines/__init__.py", DIRS) == "atomgen.pipelines"
    assert module_name("atomgen/train/loop.py", DIRS) == "atomgen.train.loop"
    assert module_name("bench/sweep.py", DIRS) is None


def test_the_checker_reports_upward_imports_and_circles():
    sources = {
        "atomgen/__init__.py": "from .separation import AtomSeparation\n",
        # core → train, inside a function: upward, and a circle with train/loop.py
        "atomgen/separation.py": "class AtomSeparation:\n    def f(self):\n        from .train import loop\n",
        "atomgen/train/__init__.py": "",
        "atomgen/train/loop.py": "from ..separation import AtomSeparation\n",
        # two pipelines modules in a circle (allowed directions, but a circle)
        "pipelines/__init__.py": "",
        "pipelines/a.py": "from . import b\n",
        "pipelines/b.py": "def g():\n    import atomgen.pipelines.a\n",
        # eval → demo for the type checker: upward all the same; eval → pipelines: allowed
        "eval/__init__.py": "",
        "eval/x.py": (
            "from typing import TYPE_CHECKING\nfrom atomgen.pipelines import a\n"
            "if TYPE_CHECKING:\n    from atomgen.demo import run\nelse:\n    import atomgen.train\n"
        ),
        # a circle closed by a type-checking import: run imports the section inside a function, the
        # section names run's config class for the type checker (and calls its methods at run time)
        "atomgen/demo/__init__.py": "",
        "atomgen/demo/run.py": "class DemoConfig:\n    pass\ndef run_demo():\n    from . import section\n",
        "atomgen/demo/section.py": (
            "from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .run import DemoConfig\ndef run(config: DemoConfig):\n"
            "    return config.experiment()\n"
        ),
        # sampling and benchmark may import each other, not demo
        "atomgen/sampling/__init__.py": "from ..benchmark import stats\n",
        "atomgen/benchmark/__init__.py": "",
        "atomgen/benchmark/stats.py": "import atomgen.eval\nfrom atomgen.demo import run\n",
    }
    imports = collect_imports(sources, DIRS)
    assert {(imp.importer, imp.imported, imp.where) for imp in imports} == {
        ("atomgen", "atomgen.separation", MODULE_LEVEL),
        ("atomgen.separation", "atomgen.train.loop", IN_FUNCTION),
        ("atomgen.train.loop", "atomgen.separation", MODULE_LEVEL),
        ("atomgen.pipelines.a", "atomgen.pipelines.b", MODULE_LEVEL),
        ("atomgen.pipelines.b", "atomgen.pipelines.a", IN_FUNCTION),
        ("atomgen.eval.x", "atomgen.pipelines.a", MODULE_LEVEL),
        ("atomgen.eval.x", "atomgen.demo.run", TYPE_CHECKING_ONLY),
        ("atomgen.eval.x", "atomgen.train", MODULE_LEVEL),
        ("atomgen.demo.run", "atomgen.demo.section", IN_FUNCTION),
        ("atomgen.demo.section", "atomgen.demo.run", TYPE_CHECKING_ONLY),
        ("atomgen.sampling", "atomgen.benchmark.stats", MODULE_LEVEL),
        ("atomgen.benchmark.stats", "atomgen.eval", MODULE_LEVEL),
        ("atomgen.benchmark.stats", "atomgen.demo.run", MODULE_LEVEL),
    }
    violations = layer_violations(imports)
    assert len(violations) == 4, violations
    upward = next(v for v in violations if v.startswith("atomgen/separation.py"))
    assert "atomgen/separation.py:3 (core) imports atomgen.train.loop (train) inside a function" in upward
    assert "core may import only core" in upward
    assert any(v.startswith("eval/x.py:6 (eval) imports atomgen.train (train)") for v in violations)
    assert any(
        v.startswith("eval/x.py:4 (eval) imports atomgen.demo.run (demo) under if TYPE_CHECKING")
        for v in violations
    )
    assert any(
        v.startswith("atomgen/benchmark/stats.py:2 (benchmark) imports atomgen.demo.run") for v in violations
    )

    cycles = import_cycles(imports)
    assert len(cycles) == 3, cycles
    assert any(
        "atomgen.separation, atomgen.train.loop" in c and "atomgen/train/loop.py:1" in c for c in cycles
    )
    assert any("atomgen.pipelines.a, atomgen.pipelines.b" in c and "pipelines/b.py:2" in c for c in cycles)
    assert any(
        "atomgen.demo.run, atomgen.demo.section" in c
        and "atomgen/demo/section.py:4 imports atomgen.demo.run (under if TYPE_CHECKING)" in c
        for c in cycles
    )

    clean = {path: text for path, text in sources.items() if path != "atomgen/separation.py"}
    clean["pipelines/b.py"] = "import atomgen.separation\n"
    clean["eval/x.py"] = "from ..pipelines import a\n"
    clean["atomgen/separation.py"] = "class AtomSeparation:\n    pass\n"
    # the config class in a module of its own, below both: no circle
    clean["atomgen/demo/config.py"] = "class DemoConfig:\n    pass\n"
    clean["atomgen/demo/section.py"] = clean["atomgen/demo/section.py"].replace(
        ".run import", ".config import"
    )
    clean["atomgen/benchmark/stats.py"] = "import atomgen.eval\n"
    assert check(clean, DIRS) == []


def test_the_demo_sections_import_no_circle():
    """The demo's modules import each other in one direction only: the config and the sections below the
    run, the report writer below the run; the run is imported by none of them."""
    sources, dirs = read_sources()
    demo = {p: t for p, t in sources.items() if p.startswith("atomgen/demo/")}
    imports = collect_imports(demo, dirs)
    assert import_cycles(imports) == []
    into_run = [
        imp for imp in imports if imp.imported == "atomgen.demo.run" and imp.importer != "atomgen.demo"
    ]
    assert into_run == [], into_run
