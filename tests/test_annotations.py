"""The typed public API (issue 28): the verbs, registries and binding layer stay fully annotated, and each verb's
docstring names its parameters and shows an example. ``python tools/annotations.py`` measures the whole package."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import evalxai

ROOT = Path(evalxai.__file__).parent
TYPED = ["api.py", "binding.py", "core/memory.py", "runs/allocator.py", "maximization/prototypes.py",
         "methods/registry.py", "metrics/registry.py", "data/registry.py", "models/zoo.py", "models/cache.py",
         "core/baselines.py", "core/validate.py", "core/scoring.py", "core/seeding.py"]


def _unannotated(path: Path) -> list[str]:
    """Public functions and methods (module and class level, as ``tools/annotations.py`` counts them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bodies = [tree.body] + [c.body for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_")]
    missing = []
    for fn in (n for body in bodies for n in body):
        if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
            continue
        a = fn.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
        missing += [f"{fn.name}({p.arg})" for p in params if p.annotation is None and p.arg not in ("self", "cls")]
        if fn.returns is None:
            missing.append(f"{fn.name} -> ?")
    return missing


@pytest.mark.parametrize("module", TYPED)
def test_public_functions_annotated(module):
    assert _unannotated(ROOT / module) == []


def test_metric_and_method_functions_annotated():
    from evalxai.methods import METHODS
    from evalxai.metrics import METRICS

    missing = [f"{name}.{p}" for name, spec in {**METHODS, **METRICS}.items()
               for p, par in inspect.signature(spec.fn).parameters.items() if par.annotation is par.empty]
    assert missing == []


@pytest.mark.parametrize("verb", ["explain", "score", "maximize", "memory_budget", "tune_allocator"])
def test_verb_docstrings(verb):
    fn = getattr(evalxai, verb)
    doc = inspect.getdoc(fn)
    assert "Example:" in doc and ">>> " in doc
    described = set()  # "name: ..." or "a, b, c: ..." at the start of a line
    for line in doc.splitlines():
        head, sep, _ = line.partition(":")
        if sep and re.fullmatch(r"[a-z_]+(, [a-z_]+)*", head):
            described.update(head.split(", "))
    assert [p for p in inspect.signature(fn).parameters if p not in described] == []
