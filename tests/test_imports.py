"""The package has no import circle: every module imports first in a clean slate, and the graph
of module-level imports (those made only for type checking included) has no cycle."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import tunnelkeeper

PACKAGE = Path(tunnelkeeper.__file__).parent


def _modules() -> list[str]:
    found = ["tunnelkeeper"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="tunnelkeeper."):
        if not info.name.endswith(".__main__"):  # it runs the CLI when imported
            found.append(info.name)
    return sorted(found)


def _file(module: str) -> Path:
    parts = module.split(".")[1:]
    folder = PACKAGE.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads, plus those under `if TYPE_CHECKING:` (a circle
    there is still a circle in the design); imports inside functions are left out."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try):
            todo += node.body + node.orelse
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return found


def _edges(module: str, known: set[str]) -> set[str]:
    path = _file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = package.rsplit(".", node.level - 1)[0] if node.level else ""
        source = ".".join(p for p in (base, node.module or "") if p)
        targets.add(source)
        targets |= {f"{source}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in known and t != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the modules on it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    known = set(modules)
    # A package's own __init__ importing its submodules is how a package exposes them, not a
    # circle: a submodule's import of the package reaches only what is already loaded.
    graph = {m: {t for t in _edges(m, known) if not m.startswith(f"{t}.")} for m in modules}
    assert len(modules) > 80
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_every_module_imports_first() -> None:
    """In one fresh interpreter, each module is imported with no tunnelkeeper module loaded
    before it: an import that works only in some order fails here."""
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {_modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'tunnelkeeper']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_config_leans_on_nothing_but_errors_and_filetrust() -> None:
    """The configuration is data: loading it must not pull in the rooms that use it."""
    modules = _modules()
    known = set(modules)
    outside = {
        (m, t)
        for m in modules
        if m.startswith("tunnelkeeper.config")
        for t in _edges(m, known)
        if not t.startswith("tunnelkeeper.config")
    }
    assert {t for _, t in outside} <= {
        "tunnelkeeper",
        "tunnelkeeper.errors",
        "tunnelkeeper.filetrust",
    }, outside
