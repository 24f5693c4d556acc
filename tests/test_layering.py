"""The code's layers (SPEC §2): imports go one way only, no cycles, and a node loads no launcher or CLI.

errors/store/resources ← hsm ← auth_node ← targets ← local ← cli ← api, read from the source with `ast`
(every import, also those inside functions or under TYPE_CHECKING).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"auth_node": "authsim.auth_node", "cluster": "authsim.cluster", "hsm": "authsim.hsm"}
GENERATED = "authsim.auth_node.pb"

# Each layer may import its own and lower layers only. The longest matching prefix decides.
LAYERS: dict[str, int] = {
    "authsim.cluster": 0,  # the package docstring only
    "authsim.cluster.errors": 0,
    GENERATED: 0,
    "authsim.cluster.rpc_errors": 1,
    "authsim.cluster.layout": 1,
    "authsim.cluster.secret_files": 1,
    "authsim.cluster.store": 2,
    "authsim.cluster.resources": 2,
    "authsim.cluster.mtls": 2,
    "authsim.hsm": 3,
    "authsim.auth_node": 4,
    "authsim.cluster.targets": 5,
    "authsim.cluster.local": 6,
    "authsim.cluster.cli": 7,
    "authsim.cluster.api": 8,
}
NOT_IN_A_NODE = (
    "authsim.cluster.targets",
    "authsim.cluster.local",
    "authsim.cluster.cli",
    "authsim.cluster.api",
)


def module_files() -> dict[str, Path]:
    """Import name → file of every hand-written module."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *parts])
            name = name.removesuffix(".__init__")
            if not name.startswith(GENERATED):
                found[name] = path
    return found


MODULES = module_files()


def imports_of(name: str, path: Path) -> Iterator[str]:
    """The authsim modules that `name` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *filter(None, [base])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t.startswith("authsim."))


GRAPH = {name: sorted(set(imports_of(name, path))) for name, path in MODULES.items()}


def layer(module: str) -> tuple[str, int]:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return prefix, LAYERS[prefix]


def test_every_module_is_in_a_layer() -> None:
    assert all(layer(m) for m in MODULES)  # raises ValueError naming nothing if a module has no layer
    assert len(MODULES) > 60


def test_no_module_imports_a_higher_layer() -> None:
    upward = upward_imports(GRAPH)
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_an_upward_import_is_named() -> None:
    graph = {"authsim.hsm.keystore": ["authsim.cluster.errors", "authsim.cluster.local.launcher"]}
    assert upward_imports(graph) == [
        "authsim.hsm.keystore (authsim.hsm) imports authsim.cluster.local.launcher (authsim.cluster.local)"
    ]


def test_no_import_cycles_between_modules() -> None:
    cycle = find_cycle({m: [t for t in ts if t in GRAPH and t != m] for m, ts in GRAPH.items()})
    assert cycle is None, "module import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycles_between_layer_packages() -> None:
    edges: dict[str, set[str]] = {p: set() for p in LAYERS}
    for source, targets in GRAPH.items():
        for target in targets:
            if layer(source)[0] != layer(target)[0]:
                edges[layer(source)[0]].add(layer(target)[0])
    cycle = find_cycle({p: sorted(ts) for p, ts in edges.items()})
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


def test_a_node_process_imports_no_launcher_cli_or_target_server_code() -> None:
    """Statically (every import reachable from the node's entry point) and in a real interpreter."""
    reachable = closure("authsim.auth_node.__main__")
    assert not [m for m in reachable if m.startswith(NOT_IN_A_NODE)]
    script = (
        "import sys, authsim.auth_node.__main__; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('authsim.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert "authsim.auth_node.server" in loaded
    assert not [m for m in loaded if m.startswith(NOT_IN_A_NODE)]


def test_pyproject_names_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {n for n, p in MODULES.items() if p.name == "__init__.py"} | {GENERATED}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    assert all((ROOT / folder / "py.typed").exists() for folder in FOLDERS)


def upward_imports(graph: dict[str, list[str]]) -> list[str]:
    return [
        f"{source} ({layer(source)[0]}) imports {target} ({layer(target)[0]})"
        for source, targets in graph.items()
        for target in targets
        if layer(target)[1] > layer(source)[1]
    ]


def closure(start: str) -> set[str]:
    """Every module loaded by importing `start`: its imports and their parent packages, transitively."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in GRAPH:
            continue
        seen.add(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count("."))]
        todo.extend([*GRAPH[module], *parents])
    return seen


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None
