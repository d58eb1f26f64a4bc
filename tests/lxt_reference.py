"""LXT 2.1 for the reference tests: its patch functions, loaded without ``lxt.efficient/__init__``, and a patcher
that the test's ``monkeypatch`` undoes completely.

LXT's ``__init__`` imports its model files, and its BERT file imports ``find_pruneable_heads_and_indices``, which
transformers 5 removed: the tests apply LXT's patch functions the way its model files map them.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest


def lxt_patches(monkeypatch):
    """``lxt.efficient.patches`` (and ``rules``), imported under a stand-in ``lxt.efficient`` package."""
    lxt = pytest.importorskip("lxt")
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
    monkeypatch.setitem(sys.modules, "lxt.efficient", package)
    for name in ("lxt.efficient.rules", "lxt.efficient.patches"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("lxt.efficient.patches")


def patch_class(monkeypatch, patches, cls, fn, keep_original: bool = False) -> None:
    """LXT's ``patch_method(fn, cls, keep_original=...)`` with ``forward`` and ``original_forward`` restored (or
    removed) after the test."""
    monkeypatch.setattr(cls, "forward", cls.forward)
    monkeypatch.setattr(cls, "original_forward", getattr(cls, "original_forward", None), raising=False)
    assert patches.patch_method(fn, cls, keep_original=keep_original), cls
