"""The package layout: imports flow one way (api -> engine -> sampling -> text -> core), with no cycle,
and only ``core/`` touches the C++ module."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "python" / "nlm_native"
# a module may import from its own layer and the layers below it
LAYERS = {"core": 0, "text": 1, "sampling": 2, "storage": 3, "kvcache": 4, "engine": 5, "api": 6, "llm": 7,
          "server": 8, "cli": 9, "__main__": 10, "__init__": 11}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """nlm_native modules ``path`` imports (anywhere in the file, TYPE_CHECKING blocks included)."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("nlm_native"):
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            for n in names:  # "from . import fetch" names a module
                if (PKG.joinpath(*target, n).with_suffix(".py").exists() or PKG.joinpath(*target, n).is_dir()):
                    out.add(".".join([*target, n]))
                    break
            else:
                out.add(".".join(target))
        elif isinstance(node, ast.Import):
            out.update(a.name[len("nlm_native."):] for a in node.names if a.name.startswith("nlm_native."))
    return {m for m in out if m}


def layer(mod: str) -> int:
    return LAYERS[mod.split(".")[0]]


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        g[module_name(p) or "__init__"] = imports(p)
    return g


def test_imports_flow_down_the_layers() -> None:
    bad = []
    for mod, deps in graph().items():
        for d in deps:
            if d == "_core":
                if mod.split(".")[0] != "core":
                    bad.append(f"{mod} imports _core (only core/ may)")
                continue
            if layer(d) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {d} (layer {layer(d)})")
    assert not bad, "\n".join(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (a package's ``__init__`` counts as a module)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_there_is_no_import_cycle() -> None:
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} -> {d}" for m, deps in g.items() for d in deps if d != "_core" and layer(d) > layer(m)]


def test_the_checks_can_fail() -> None:
    """An upward import and a cycle, planted in a copy of the graph, are both reported."""
    g = graph()
    assert not upward(g)
    g["text.stops"] = g["text.stops"] | {"engine"}
    assert upward(g) == ["text.stops -> engine"]
    g2 = graph()
    g2["core.batch"] = g2["core.batch"] | {"core.model"}  # core.model imports core.batch
    assert cycles(g2)
    probe = PKG / "text" / "_layout_probe.py"
    try:
        probe.write_text("from ..engine import Engine\n")
        assert imports(probe) == {"engine"}
    finally:
        probe.unlink()
