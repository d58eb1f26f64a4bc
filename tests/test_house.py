"""The house (issue 28): no import circles, no upward import between floors, no module over 700 lines, no public name
of a package ``__init__`` that hides a submodule. The graph is read from the sources with ``ast`` (module- and
function-level imports alike) by ``tools/import_graph.py``; ``python tools/import_graph.py`` prints it for a person."""
import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"
_spec = importlib.util.spec_from_file_location("import_graph", TOOL)
house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(house)


@pytest.fixture(scope="module")
def graph():
    return house.graph()


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Module-level, function-level, relative and ``import_module`` imports are edges; TYPE_CHECKING ones are not;
    ``from pkg import sub`` is an edge to the submodule; a circle closed inside a function is a circle."""
    pkg = tmp_path / house.PACKAGE
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from evalxai.a import f\n",
        "a.py": "import importlib\n\ndef f():\n    from evalxai.b import g\n    importlib.import_module('evalxai.c')\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from evalxai import a\nfrom . import c\n",
        "c.py": "def h():\n    from evalxai.sub import d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import b\n",
        "sub/e.py": "from evalxai import sub\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    edges, detail = house.graph(tmp_path)
    assert edges["evalxai"] == {"evalxai.a"}
    assert edges["evalxai.a"] == {"evalxai.b", "evalxai.c"} and detail["evalxai.a"]["evalxai.b"] == [(4, False)]
    assert edges["evalxai.b"] == {"evalxai.c"}  # the TYPE_CHECKING import does not run
    assert edges["evalxai.sub.d"] == {"evalxai.b"} and edges["evalxai.sub.e"] == {"evalxai.sub"}
    assert house.cycles(edges) == [["evalxai.b", "evalxai.c", "evalxai.sub.d"]]
    assert house.hidden_submodules(tmp_path) == []
    (pkg / "sub" / "__init__.py").write_text("from evalxai.sub.d import b as e\n")  # the name e hides sub/e.py
    assert house.hidden_submodules(tmp_path) == ["evalxai.sub.e (line 1) hides the submodule evalxai.sub.e"]


def test_no_import_circles(graph):
    """No circle anywhere in evalxai, module- and function-level imports alike."""
    edges, detail = graph
    found = house.describe_cycles(edges, detail)
    assert not found, "import circles:\n" + "\n".join(found)


def test_imports_go_down_the_floors(graph):
    """Every module is on a floor of ``FLOORS`` and imports only from its floor or those below it."""
    edges, detail = graph
    up = house.upward_imports(edges, detail)
    assert not up, "upward imports:\n" + "\n".join(up)


def test_an_upward_import_is_found():
    edges = {"evalxai.core.memory": {"evalxai.metrics.common"}, "evalxai.metrics.common": {"evalxai.core.memory"}}
    assert house.upward_imports(edges) == [
        "evalxai.core.memory (foundations) -> evalxai.metrics.common (metrics and the verbs) line "]
    with pytest.raises(ValueError, match="evalxai_x is on no floor"):
        house.floor_of("evalxai_x")


def test_no_module_over_the_limit():
    over = {m: n for m, n in house.line_counts().items() if n > house.MAX_LINES}
    assert not over, f"modules over {house.MAX_LINES} lines: {over}"


def test_no_public_name_hides_a_submodule():
    assert house.hidden_submodules() == []
