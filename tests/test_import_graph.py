"""The package's modules import one another without cycles (read from the source, lazy
function-level imports included), so each module can be read after the ones it uses."""

import ast
import graphlib
import sys
from pathlib import Path

import reopold_agent

PACKAGE = Path(reopold_agent.__file__).parent

# Groups of modules still importing one another, each to be untangled; any other cycle fails.
KNOWN_CYCLES: tuple[set[str], ...] = ()


def _module_name(path: Path) -> tuple[str, bool]:
    parts = ["reopold_agent", *path.relative_to(PACKAGE).with_suffix("").parts]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _imports(path: Path, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = {name for name, _ in paths}
    return {name: _imports(path, name, is_package, modules) for (name, is_package), path in paths.items()}


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "reopold_agent.objectives.reopold" in graph["reopold_agent.objectives.registry"]
    assert "reopold_agent.replay.loading" in graph["reopold_agent.replay.token_view"]


def test_no_import_cycles():
    graph = import_graph()
    assert all(group <= graph.keys() for group in KNOWN_CYCLES)
    pruned = {name: {d for d in deps if not any(name in group and d in group for group in KNOWN_CYCLES)}
              for name, deps in graph.items()}
    try:
        graphlib.TopologicalSorter(pruned).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_errors_module_imports_the_standard_library_only():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative and imported <= set(sys.stdlib_module_names) | {"__future__"}
