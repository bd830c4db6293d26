"""The package's shape (issue 12): no import cycle among its modules, no module past ~500 lines, and the folders
keep their promises (``import ptt_nb`` loads no IPython, torch or transformers; the notebook adapters live in
``ptt_nb/notebook``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ptt_nb"
MAX_LINES = 500


def module_names() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """Every ptt_nb module ``path`` imports, at top level or inside a function (a lazy import still makes a
    cycle a reader must untangle); imports under ``if TYPE_CHECKING:`` are annotations only and are skipped."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    graph = {}
    for name, path in known.items():
        # importing a package's own parent package is how Python loads any submodule: not an edge of its own
        graph[name] = {t for t in imported_modules(path, known) if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_the_package_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(module_names()))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(module_names()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it along its jobs"


def test_only_the_notebook_folder_imports_ipython() -> None:
    offenders = []
    for name, path in module_names().items():
        if name.startswith("ptt_nb.notebook"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] in ("IPython", "ipywidgets", "anywidget", "ipykernel", "comm") for m in mods):
                offenders.append(name)
    assert not offenders, offenders


def test_import_ptt_nb_loads_no_heavy_or_notebook_library() -> None:
    code = ("import sys, ptt_nb; ptt_nb.load_run; ptt_nb.Monitor\n"
            "heavy = [m for m in ('IPython', 'torch', 'transformers', 'ipywidgets', 'anywidget') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", out


def test_public_names_resolve_from_the_top_package() -> None:
    import ptt_nb

    for name in ("rule", "Rule", "Finding", "backtest", "load_run", "read_events", "watch", "show",
                 "DiagnosticsCallback", "Monitor", "read_postmortem", "SCHEMA_VERSION", "summarize"):
        assert getattr(ptt_nb, name) is not None, name
    from importlib.metadata import version

    assert ptt_nb.__version__ == version("ptt-nb")
