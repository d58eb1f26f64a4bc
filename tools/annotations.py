"""Share of public-function arguments (and returns) that carry a type annotation.

Run: python tools/annotations.py [package_dir] [--files]

Counts every function or method whose name has no leading underscore (``__init__`` and other dunders
are skipped too) and that is not nested inside a private function; arguments are positional,
keyword-only, *args and **kwargs, excluding ``self`` and ``cls``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def _functions(tree: ast.AST):
    """Yield the public functions of a module, descending into classes but not into function bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_"):
                    yield child
            elif isinstance(child, ast.ClassDef):
                if not child.name.startswith("_"):
                    stack.append(child)
            elif not isinstance(child, ast.Lambda):
                stack.append(child)


def count(path: Path) -> tuple[int, int, int, int]:
    """(annotated arguments, arguments, annotated returns, functions) in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    done = total = ret = funcs = 0
    for fn in _functions(tree):
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
        params += [p for p in (a.vararg, a.kwarg) if p is not None]
        params = [p for p in params if p.arg not in ("self", "cls")]
        total += len(params)
        done += sum(p.annotation is not None for p in params)
        funcs += 1
        ret += fn.returns is not None
    return done, total, ret, funcs


def main(argv: list[str]) -> None:
    root = Path(next((x for x in argv if not x.startswith("--")), Path(__file__).parents[1] / "evalxai"))
    rows = []
    for path in sorted(root.rglob("*.py")):
        rows.append((path.relative_to(root.parent), *count(path)))
    done, total, ret, funcs = (sum(r[i] for r in rows) for i in range(1, 5))
    if "--files" in argv:
        for name, d, t, r, f in rows:
            if t or f:
                print(f"{str(name):60s} args {d:4d}/{t:<4d} returns {r:4d}/{f}")
    print(f"arguments annotated: {done}/{total} = {100 * done / max(total, 1):.1f} %")
    print(f"returns annotated:   {ret}/{funcs} = {100 * ret / max(funcs, 1):.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
