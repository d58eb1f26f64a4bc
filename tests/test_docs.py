"""The documentation: a front page of at most 300 lines that reaches every page of docs/, links that resolve, and
generated blocks (method list, metric catalogue, front-page results) equal to what ``python -m evalxai.docs``
renders now from the registries and the committed run (issue 25)."""
import json
import re
from pathlib import Path

import pytest

from evalxai import docs
from evalxai.metrics import METRICS
from evalxai.metrics.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a `# comment` in a bash block is no heading, a `[x](y)` there no link)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(line)
    return "\n".join(out)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, out = {}, set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # relative links only (no http:, mailto:)


def test_front_page_is_at_most_300_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 300, f"README.md has {n} lines; move reference material to docs/"


def test_every_docs_page_is_linked_from_the_front_page_and_exists():
    files = {t.split("#")[0] for t in _links(README)}
    linked = {(README.parent / f).resolve() for f in files if f.startswith("docs/")}
    assert PAGES and {p.resolve() for p in PAGES} <= linked, sorted(p.name for p in PAGES if p.resolve() not in linked)
    md = sorted(str(p.relative_to(ROOT)) for p in linked if p.suffix == ".md" and not p.is_file())
    assert not md, f"README links to missing pages: {md}"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_its_anchor(path):
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{path.name}: {broken}"


def test_generated_blocks_equal_what_the_registries_and_the_committed_run_render():
    stale = docs.stale(ROOT)
    assert not stale, f"stale generated blocks {stale}: run python -m evalxai.docs"


def test_generated_tables_cover_every_registered_method_and_metric():
    from evalxai.methods import METHODS
    from evalxai.metrics import METRICS

    methods = docs.read_block((ROOT / "docs/methods.md").read_text(encoding="utf-8"), "methods")
    metrics = docs.read_block((ROOT / "docs/metrics.md").read_text(encoding="utf-8"), "metrics")
    assert all(f"| `{name}` |" in methods for name in METHODS)
    assert all(f"| `{name}` |" in metrics for name in METRICS)
    # counts written in prose agree with the registry ("41 metrics in six families")
    for path in (README, *PAGES):
        for n in re.findall(r"\b(\d+) metrics in\b", path.read_text(encoding="utf-8")):
            assert int(n) == len(METRICS), f"{path.name} says {n} metrics, the registry holds {len(METRICS)}"


def test_front_page_results_come_from_the_committed_run():
    run = ROOT / docs.RUN
    assert (run / "summary.csv").is_file() and (run / "run.json").is_file()
    block = docs.read_block(README.read_text(encoding="utf-8"), "results")
    assert f"run `{json.loads((run / 'run.json').read_text())['run_id']}`" in block


def test_a_block_is_replaced_between_its_markers_and_nothing_else_changes():
    text = "before\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nafter\n"
    new = docs.replace_block(text, "x", "new | table")
    assert new.startswith("before\n<!-- generated:x -->\n") and new.endswith("<!-- /generated:x -->\nafter\n")
    assert docs.read_block(new, "x") == "new | table"
    assert docs.replace_block(new, "x", "new | table") == new
    with pytest.raises(ValueError, match="generated:y"):
        docs.replace_block(text, "y", "z")


def test_the_prose_counts_the_registered_metrics_and_families():
    """README and docs/metrics.md say how many metrics there are, in which families: the registry's numbers (the
    catalogue itself is generated; this sentence is the one hand-written copy)."""
    words = {5: "five", 6: "six", 7: "seven", 8: "eight"}
    said = f"{len(METRICS)} metrics in {words.get(len(FAMILIES), len(FAMILIES))} families"
    front = " ".join(README.read_text(encoding="utf-8").split())
    assert said in front and said in (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    sentence = front[front.index(said):].split(";")[0]
    assert all(f in sentence for f in FAMILIES), f"README's list of families: {sentence}"
