"""The house of evalxai as a graph: which module imports which, read from the source with ``ast``.

    python tools/import_graph.py            # modules, import circles, largest files, names hiding a submodule
    python tools/import_graph.py --edges    # also every import edge (module -> module)
    python tools/import_graph.py --root DIR # another checkout (git archive COMMIT | tar -x -C DIR)

Every ``import`` statement counts, at module level and inside functions alike (a function-level import closes a
circle as surely as a module-level one, it only does so later); imports under ``if TYPE_CHECKING:`` do not run and
do not count. ``from P import N`` is an edge to the module ``P.N`` where that is a module, else to ``P``.
``importlib.import_module("evalxai.x")`` is an edge to ``evalxai.x``; a package that imports its own submodules by
name (``import_module(f"{__name__}.{name}")``, the registration loop of ``evalxai.metrics``) imports every public
submodule but those it names in a ``not in (...)`` test. Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and
``a.b``; like grimp / import-linter, the graph leaves those implicit parent edges out (they would make every package
a circle with its own submodules).

``FLOORS`` orders the packages the way data flows (config -> data, model -> methods -> metrics -> tables -> reports
-> runs); an import may go to the same floor or one below, never up (``upward_imports``).

``tests/test_house.py`` asserts on the same graph: no circles, no upward import, no module over ``MAX_LINES`` lines,
no public name of a package ``__init__`` that hides a submodule of the same name.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "evalxai"
MAX_LINES = 700
# Bottom to top. A module belongs to the floor of its longest listed prefix.
FLOORS = (
    ("foundations", ("evalxai._version", "evalxai._paths", "evalxai.core")),
    ("data and models", ("evalxai.data", "evalxai.models", "evalxai.generators")),
    ("methods", ("evalxai.methods", "evalxai.binding")),
    ("metrics and the verbs", ("evalxai.metrics", "evalxai.api")),
    ("tables and reports", ("evalxai.report",)),
    ("runs", ("evalxai", "evalxai.runs", "evalxai.meta", "evalxai.maximization", "evalxai.bench", "evalxai.docs")),
)


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every importable module of the package: dotted name -> file (a package is its ``__init__.py``). Folders
    without ``__init__.py`` (paper scripts under experiments/) are not part of the import graph."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if any(not (root.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the bodies of ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for child in node.body:
                    lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _is_import_module(node: ast.AST) -> bool:
    """``importlib.import_module(...)`` (or ``import_module(...)``) with a first argument."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (isinstance(f, ast.Name)
                                                                             and f.id == "import_module")


def _starts_with_own_name(arg: ast.AST) -> bool:
    """An f-string that starts with ``{__name__}.``: a package importing its own submodules by name."""
    return (isinstance(arg, ast.JoinedStr) and len(arg.values) >= 2 and isinstance(arg.values[0], ast.FormattedValue)
            and isinstance(arg.values[0].value, ast.Name) and arg.values[0].value.id == "__name__")


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, list[tuple[int, bool]]]:
    """Modules of the package that ``name`` imports: target -> [(line, at module level?), ...]."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.Try, ast.If))
                                        for n in ast.walk(s)}
    is_package = path.name == "__init__.py"
    out: dict[str, list[tuple[int, bool]]] = {}

    def add(target: str, node: ast.AST):
        if target != name and node.lineno not in skip:  # a target that is no module of ours: ``missing``
            out.setdefault(target, []).append((node.lineno, id(node) in top))

    excluded = {e.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(op, ast.NotIn) for op in node.ops)
                for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                for e in c.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    for node in ast.walk(tree):
        if _is_import_module(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node)
            elif is_package and _starts_with_own_name(arg):  # f"{__name__}.{sub}": the registration loop
                for sub in sorted(known):
                    leaf = sub.rpartition(".")[2]
                    if sub.rpartition(".")[0] == name and not leaf.startswith("_") and leaf not in excluded:
                        add(sub, node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in known else mod, node)
    return out


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, dict[str, list[tuple[int, bool]]]]]:
    """(module -> imported modules, module -> target -> [(line, module level?)]). Imports of package modules that
    do not exist are left out of both (``missing`` lists them)."""
    known = modules(root)
    detail = {m: {t: hits for t, hits in imports(m, p, known).items() if t in known} for m, p in known.items()}
    return {m: set(d) for m, d in detail.items()}, detail


def missing(root: Path = ROOT) -> list[str]:
    """``module -> target`` for every import of a package module that has no file (it would fail at run time)."""
    known = modules(root)
    return [f"{m} -> {t} (line {hits[0][0]})" for m, p in known.items()
            for t, hits in sorted(imports(m, p, known).items()) if t not in known]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan), each sorted, the list
    sorted by its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    counter = [0]

    def visit(v: str):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def shortest_cycle(edges: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside ``within`` (breadth first), as a list of modules."""
    prev: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        v = queue.popleft()
        for w in sorted(edges.get(v, ())):
            if w not in within:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return []


def describe_cycles(edges: dict[str, set[str]], detail=None) -> list[str]:
    """One line per circle: its modules, and its shortest loops (one per module, duplicates dropped, the first four
    shown), each arrow marked with the line of the import (``~`` for one inside a function)."""
    lines = []
    for comp in cycles(edges):
        loops = []
        for m in comp:
            loop = shortest_cycle(edges, m, set(comp))
            i = loop.index(min(loop[:-1]))
            canon = loop[i:-1] + loop[:i] + [loop[i]]
            if canon not in loops:
                loops.append(canon)
        text = []
        more = len(loops) - 4
        for loop in loops[:4]:
            hops = []
            for a, b in zip(loop, loop[1:]):
                where = ""
                if detail is not None:
                    where = ",".join(f"{'' if top else '~'}{ln}" for ln, top in detail[a][b][:2])
                hops.append(f"{a} -({where})-> " if where else f"{a} -> ")
            text.append("".join(hops) + loop[-1])
        lines.append(f"{len(comp)} modules {{{', '.join(comp)}}}: " + " | ".join(text)
                     + (f" | (+{more} more loops)" if more > 0 else ""))
    return lines


def line_counts(root: Path = ROOT) -> dict[str, int]:
    return {m: len(p.read_text().splitlines()) for m, p in modules(root).items()}


def hidden_submodules(root: Path = ROOT) -> list[str]:
    """Public names bound in a package ``__init__`` (by def, class, assignment or import) that are also the name of
    one of its submodules or subpackages: ``pkg.name`` then means the object, not the module. A name bound to the
    submodule itself (``from pkg import sub``, ``from . import sub``) is the module and hides nothing."""
    known = modules(root)
    out = []
    for pkg, path in known.items():
        if path.name != "__init__.py":
            continue
        subs = {m.rpartition(".")[2] for m in known if m.rpartition(".")[0] == pkg}
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            bound: list[tuple[str, bool]] = []  # (name, is it the submodule itself?)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.append((node.name, False))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bound += [(t.id, False) for t in targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    mod = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    as_name = alias.asname or alias.name
                    bound.append((as_name, mod == pkg and alias.name == as_name))
            for n, is_module in bound:
                if n in subs and not n.startswith("_") and not is_module:
                    out.append(f"{pkg}.{n} (line {node.lineno}) hides the submodule {pkg}.{n}")
    return out


def floor_of(module: str) -> int:
    """Index in ``FLOORS`` of the floor ``module`` lives on (its longest listed prefix)."""
    best, level = -1, None
    for i, (_, prefixes) in enumerate(FLOORS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, level = len(pre), i
    if level is None:
        raise ValueError(f"{module} is on no floor: add its package to FLOORS in tools/import_graph.py")
    return level


def upward_imports(edges: dict[str, set[str]], detail=None) -> list[str]:
    """Every import from a floor to a higher one, as ``a (floor) -> b (floor), line``."""
    out = []
    for a in sorted(edges):
        for b in sorted(edges[a]):
            fa, fb = floor_of(a), floor_of(b)
            if fb > fa:
                lines = ",".join(str(ln) for ln, _ in (detail or {}).get(a, {}).get(b, []))
                out.append(f"{a} ({FLOORS[fa][0]}) -> {b} ({FLOORS[fb][0]}) line {lines}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", action="store_true", help="also print every edge")
    p.add_argument("--largest", type=int, default=15, help="how many of the largest modules to list")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout to read (default: this one)")
    args = p.parse_args(argv)
    edges, detail = graph(args.root)
    counts = line_counts(args.root)
    n_edges = sum(len(v) for v in edges.values())
    inner = sum(1 for d in detail.values() for hits in d.values() if not any(top for _, top in hits))
    print(f"{len(edges)} modules, {n_edges} import edges ({inner} only inside functions), "
          f"{sum(counts.values())} lines")
    found = describe_cycles(edges, detail)
    print(f"\nimport circles: {len(found)}  (arrow labels: line of the import; ~ = inside a function)")
    for line in found:
        print("  " + line)
    print("\nfloors, bottom to top (imports go down or stay on their floor):")
    for i, (name, prefixes) in enumerate(FLOORS):
        print(f"  {i}  {name:22} {', '.join(prefixes)}")
    up = upward_imports(edges, detail)
    print(f"\nupward imports: {len(up)}")
    for line in up:
        print("  " + line)
    print(f"\nlargest modules (limit {MAX_LINES} lines):")
    for m, n in sorted(counts.items(), key=lambda kv: -kv[1])[:args.largest]:
        print(f"  {n:5d}  {m}{'   <-- over the limit' if n > MAX_LINES else ''}")
    hidden = hidden_submodules(args.root)
    print(f"\nnames hiding a submodule: {len(hidden)}")
    for h in hidden:
        print("  " + h)
    absent = missing(args.root)
    if absent:
        print(f"\nimports of modules that do not exist: {len(absent)}")
        for line in absent:
            print("  " + line)
    if args.edges:
        print("\nedges:")
        for m in sorted(detail):
            for t in sorted(detail[m]):
                print(f"  {m} -> {t}  " + ",".join(f"{'' if top else '~'}{ln}" for ln, top in detail[m][t]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
