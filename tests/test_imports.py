"""The import graph of atlasreg/: no cycle, no upward import (issue 20).

Every ``import`` counts, also those inside functions: a lazy import still makes a dependency."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "atlasreg"

#: the lower floors, in order: each may import only itself and floors before it
FLOORS = [
    {"_version", "errors", "logs"},
    {"volume", "itk_space"},
    {"io", "spatial", "transform", "flow"},
    {"engine"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports_of(path: Path) -> set[str]:
    """atlasreg modules ``path`` imports (dotted, relative to the package; '__init__' = the front)."""
    here = module_name(path).split(".") if path.name != "__init__.py" else module_name(path).split(".") + ["x"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "atlasreg":
                target = node.module.partition(".")[2]
            else:
                continue
            names = [target + "." + a.name if target else a.name for a in node.names]
            found.update(name if (PACKAGE / (name.replace(".", "/") + ".py")).exists() or (PACKAGE / name.replace(".", "/")).is_dir()
                         else target for name in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "atlasreg")
    return {name or "__init__" for name in found}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path) - {name} for name, path in modules.items()}


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def floor(name: str) -> int | None:
    top = name.split(".")[0]
    return next((i for i, members in enumerate(FLOORS) if top in members), None)


def test_no_upward_import():
    """The lower floors import nothing above them; nothing imports the package front or the CLI."""
    for name, targets in graph().items():
        for target in targets:
            assert target not in ("__init__", "cli") or name == "__main__", f"{name} imports atlasreg.{target}"
            if floor(name) is not None:
                assert floor(target) is not None and floor(target) <= floor(name), f"{name} (a lower floor) imports {target}"
