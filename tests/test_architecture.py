"""The layering ARCHITECTURE.md states, held to the code: no import cycles between modules (imports inside functions
and under TYPE_CHECKING count), nothing in data/ importing from above it, no source file over 500 lines."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SOURCE / "ptuning"
MAX_LINES = 500
# the modules data/ may import besides its own: the layers below it
BELOW_DATA = {"ptuning.errors", "ptuning.vocabulary", "ptuning.settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SOURCE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """The ptuning modules a file imports anywhere in it (a name imported from a package that is a module of its own
    counts as that module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ptuning")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("ptuning"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return {module for module in found if module != name}


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_itself_through_others():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, route = stack.pop()
            for imported in GRAPH.get(module, ()):
                if imported == start:
                    return [*route, start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*route, imported]))
        return None

    cycles = [cycle for module in GRAPH if (cycle := cycle_from(module)) is not None]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_data_imports_nothing_above_it():
    upward = {
        module: sorted(imported for imported in imports if not imported.startswith("ptuning.data"))
        for module, imports in GRAPH.items()
        if module.startswith("ptuning.data")
    }
    offending = {module: [i for i in imports if i not in BELOW_DATA] for module, imports in upward.items()}
    assert not {module: imports for module, imports in offending.items() if imports}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_source_file_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
