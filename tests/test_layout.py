"""The layout as the README's map promises it: every module of `daemon/` is on the map and
every name on the map exists, and no module imports another that (directly or through
others) imports it back. Imports inside functions and under TYPE_CHECKING count too: a
cycle hidden in a function is still two rooms that cannot be understood apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / "daemon"


def modules() -> dict[str, Path]:
    found = {}
    for path in DAEMON.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the daemon modules it imports anywhere in its text."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom) and node.module in mods:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names
                               if f"{node.module}.{a.name}" in mods)
        targets.discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(imports(modules())) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def readme_map() -> set[str]:
    """Paths under daemon/ named in the README's layout section: a directory line
    (`events/listen/`) followed by the file names it holds."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    named: set[str] = set()
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        head = line.split()[0]
        if not line.startswith(" ") and head.endswith("/"):
            folder = head
            continue
        for word in re.findall(r"[\w]+\.py", line):
            named.add(folder + word)
    return named


def test_the_readme_map_matches_the_tree() -> None:
    actual = {str(p.relative_to(ROOT)) for p in DAEMON.rglob("*.py")
              if p.name != "__init__.py" or p.parent == DAEMON}
    named = readme_map()
    assert sorted(actual - named) == [], "modules missing from README's Layout"
    assert sorted(named - actual) == [], "README's Layout names modules that do not exist"
