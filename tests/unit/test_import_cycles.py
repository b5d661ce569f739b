"""The package's import graph has no cycles: a module's imports at import time (its
top-level `import` and `from ... import`, not those under `if TYPE_CHECKING:` nor inside
functions) never lead back to it. A cycle makes the order of imports matter and hides
which part is built on which; the call engine's modules (call_core → call_media →
call_fork → call, executor → media_tasks → routing_wait → engine) are layered so that
each imports only those below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "calltrackd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported (try/if blocks included, except
    `if TYPE_CHECKING:`; functions and classes left out)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _top_level(node.body)
            found += _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                found += _top_level(block)
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports at import time."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _top_level(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = (f"{base}.{node.module}" if node.module else base) if node.level \
            else node.module or ""
        for alias in node.names:  # `from pkg import module` imports the module
            if f"{target}.{alias.name}" in modules:
                out.add(f"{target}.{alias.name}")
            elif target in modules:
                out.add(target)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_the_engines_layers() -> None:
    edges = graph()
    assert "calltrackd.b2bua.call_core" in edges["calltrackd.b2bua.call_media"]
    assert "calltrackd.b2bua.executor" in edges["calltrackd.b2bua.media_tasks"]
    assert "calltrackd.b2bua.routing_wait" in edges["calltrackd.b2bua.engine"]
    # imports only for the type checker are not edges
    assert "calltrackd.transport.stack" not in edges["calltrackd.b2bua.engine"]


def test_a_made_up_cycle_is_found() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_the_package_imports_without_cycles() -> None:
    assert cycles(graph()) == []


# the call engine's sans-I/O modules (compiled by mypyc): no event loop, no sockets, no
# clock, no logger; the time comes with every event, what they do goes out as commands
_IO = ("asyncio", "socket", "selectors", "threading", "time", "structlog", "aiohttp",
       "calltrackd.transport", "calltrackd.store", "calltrackd.http", "calltrackd.app")


def test_the_call_engines_compiled_modules_do_no_io() -> None:
    from calltrackd import b2bua

    assert {"call", "call_core", "call_media", "call_fork"} <= set(b2bua.COMPILED)
    bad = []
    for name in b2bua.COMPILED:
        path = PACKAGE / "b2bua" / f"{name}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # anywhere, also inside functions
            if isinstance(node, ast.Import):
                used = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                used = [node.module or ""]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                used = [f"calltrackd.b2bua.{node.module or ''}"]
            elif isinstance(node, ast.ImportFrom):
                used = [f"calltrackd.{node.module or ''}"]
            else:
                continue
            bad += [f"{name}.py: {u}" for u in used
                    if any(u == io or u.startswith(io + ".") for io in _IO)]
    assert bad == []
