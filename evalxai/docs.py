"""The generated parts of the documentation, rendered from the registries and a committed run so they cannot drift.

Three blocks, each between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in a markdown file of the
checkout:

- ``methods`` in ``docs/methods.md``: the method list of ``evalxai.methods.METHODS`` (name, family, parameters
  with their registered defaults, the docstring's first sentence);
- ``metrics`` in ``docs/metrics.md``: the metric catalogue of ``evalxai.metrics.METRICS`` (name, family, inputs
  (float, token ids), what it needs besides x, parameters with defaults, its measures with their directions, the
  docstring's first sentence: all as the metric's registration declares them);
- ``results`` in ``README.md``: the front page's results table, read from the committed run
  ``docs/runs/mnist_lrp/{summary.csv,run.json}``.

``python -m evalxai.docs`` rewrites the blocks (``--check``: exit 1 and name the stale ones instead);
tests/test_docs.py checks that the committed blocks equal what this module renders now. Everything outside the
markers is hand-written and left alone.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from evalxai.methods import METHODS
from evalxai.metrics import METRICS
from evalxai.metrics.registry import FAMILIES as METRIC_FAMILIES

ROOT = Path(__file__).resolve().parent.parent  # the checkout: README.md and docs/ are not package data
RUN = Path("docs/runs/mnist_lrp")  # the committed run behind the front page's numbers

METHOD_FAMILIES = ("lrp", "gradient", "attention", "control")  # table order; other families follow
PIPELINE_KEYS = ("method", "method_params", "batch_size")  # metric parameters shown in the "needs" column or noted

# The front page's columns: (metric, measure, header). Arrows come from the run's `direction` column.
RESULT_COLUMNS = (
    ("pixel_flipping", "aopc_morf", "AOPC MoRF"),
    ("pixel_flipping", "abpc", "ABPC"),
    ("selectivity", "auc", "selectivity AUC"),
    ("continuity", "continuity_ref", "continuity"),
    ("randomization", "spearman_abs_full", "randomized abs ρ"),
    ("conservation", "abs_relative_residual", "abs rel. residual"),
)
ARROWS = {"higher": "↑", "lower": "↓"}


def _value(v) -> str:
    """A default as it is written in a config or on the command line (YAML: null, true, [a, b])."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def _cell(text: str) -> str:
    """Markdown table cell: RST ``literals`` become `code`, pipes are escaped, whitespace is one space."""
    text = " ".join(text.split()).replace("``", "`")
    return text.replace("|", "\\|")


def summary(fn: Callable, name: str) -> str:
    """The docstring's first sentence (sentences are added until it says something: 'LRP composite.' alone does
    not). A first *line* is often cut mid-sentence by the line length, so the first paragraph is read."""
    doc = inspect.getdoc(fn) or name
    para = " ".join(doc.split("\n\n")[0].split())
    out = ""
    for sentence in re.split(r"(?<=[^A-Z]\.)(?<!\bal\.)(?<!e\.g\.)(?<!i\.e\.)\s+(?=\S)", para):
        out = f"{out} {sentence}".strip()
        if len(out) >= 60:
            break
    return out


def _params(defaults: dict, skip=()) -> str:
    items = [f"`{k}={_value(v)}`" for k, v in defaults.items() if k not in skip]
    return ", ".join(items) if items else "–"


def _family_order(family: str, order: tuple[str, ...]) -> int:
    return order.index(family) if family in order else len(order)


def render_methods() -> str:
    specs = sorted(METHODS.values(), key=lambda s: _family_order(s.family, METHOD_FAMILIES))  # stable: registry order
    lines = [
        f"{len(specs)} methods, from `evalxai.methods.METHODS` (the name is the config name `conf/method/<name>.yaml` "
        "and the `method=` of `evalxai.explain`; the parameters are the registered defaults, which the YAML files "
        "hold too).",
        "",
        "| method | family | parameters (defaults) | what it computes |",
        "|---|---|---|---|",
    ]
    for s in specs:
        lines.append(f"| `{s.name}` | {s.family} | {_params(s.defaults)} | {_cell(summary(s.fn, s.name))} |")
    return "\n".join(lines)


def _needs(spec) -> str:
    return ", ".join(f"`{k}`" for k in spec.needs) if spec.needs else "–"


def _directions(spec) -> str:
    """The measures a metric declares: ``name`` with an arrow for higher / lower is better, plain for none."""
    return ", ".join(f"`{m}` {ARROWS[d]}" if d in ARROWS else f"`{m}`" for m, d in spec.directions.items())


def render_metrics() -> str:
    specs = sorted(METRICS.values(), key=lambda s: (_family_order(s.family, METRIC_FAMILIES), s.family, s.name))
    families = sorted({s.family for s in specs}, key=lambda f: (_family_order(f, METRIC_FAMILIES), f))
    lines = [
        f"{len(specs)} metrics in {len(families)} families ({', '.join(families)}), from "
        "`evalxai.metrics.METRICS`. The name is the config name `conf/metric/<name>.yaml` and the `metric=` of "
        "`evalxai.score`; family, needs and measures are what the metric's `@register_metric` declares, the "
        "parameters its function's defaults.",
        "",
        "- **inputs**: `float`: images (N, C, H, W) or vectors (N, D); `tokens`: token ids (N, T) of a text "
        "classifier with maps (N, T) and an `attention_mask` ([text](#text)); other metrics refuse token ids "
        "with the reason.",
        "- **needs**: `method`: the pipeline passes the method being scored (to re-explain, or for `conservation` "
        "to choose the reference), with `method_params`; `masks`: ground-truth masks; `pool`: training images.",
        "- **null** means the metric chooses (see its section) or the pipeline fills it in (`low`, `high`, `mean`: "
        "the dataset's). Not shown: `batch_size`, a cap on a chunk, which most metrics take.",
        "- **measures**: the `measure` of its rows, with the `direction` they carry: ↑ higher is better, ↓ lower is "
        "better, unmarked none (curves, diagnostics); `*` stands for a part named at run time (an order, a layer).",
        "",
        "| metric | family | inputs | needs | parameters (defaults) | measures | what it computes |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in specs:
        lines.append(f"| `{s.name}` | {s.family} | {', '.join(s.inputs)} | {_needs(s)} | "
                     f"{_params(s.defaults, PIPELINE_KEYS)} | "
                     f"{_directions(s)} | {_cell(summary(s.fn, s.name))} |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x == x else "NaN"


def render_results(run: Path) -> str:
    """The front page's table from a committed run: one row per method, sorted by the first column's direction."""
    with open(run / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((run / "run.json").read_text())
    cells, directions = {}, {}
    for r in rows:
        cells[r["method"], r["metric"], r["measure"]] = (float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
        directions[r["metric"], r["measure"]] = r["direction"]
    methods = list(dict.fromkeys(meta["config"]["methods"]))
    first = RESULT_COLUMNS[0][:2]
    sign = -1 if directions.get(first) == "higher" else 1
    methods.sort(key=lambda m: sign * cells.get((m, *first), (float("nan"),))[0])
    header = [f"{h} {ARROWS.get(directions.get((m, s), ''), '')}".strip() for m, s, h in RESULT_COLUMNS]
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for m in methods:
        vals = []
        for metric, measure, _ in RESULT_COLUMNS:
            c = cells.get((m, metric, measure))
            vals.append(f"{_fmt(c[0])} [{_fmt(c[1])}, {_fmt(c[2])}]" if c else "–")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    cfg = meta["config"]
    settings = "; ".join(
        f"`{name}`: " + ", ".join(f"{k}={_value(v)}" for k, v in cfg["metrics"][name].items() if k != "batch_size")
        for name in dict.fromkeys(m for m, _, _ in RESULT_COLUMNS) if cfg["metrics"].get(name))
    model = meta["model"]
    lines += [
        "",
        f"Mean [95 % bootstrap interval] over {meta['n_samples']} test images of `{cfg['dataset']['name']}` "
        f"(`sample_seed={cfg['sample_seed']}`), {model['label']} test accuracy {100 * model['test_accuracy']:.1f} %, "
        f"run `{meta['run_id']}` (evalxai {meta['versions']['evalxai']}, torch {meta['versions']['torch']}). "
        f"Settings: {settings}.",
    ]
    return "\n".join(lines)


def blocks(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """(file relative to the checkout, block name) -> the block's text as rendered now."""
    return {
        ("docs/methods.md", "methods"): render_methods(),
        ("docs/metrics.md", "metrics"): render_metrics(),
        ("README.md", "results"): render_results(root / RUN),
    }


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)


def read_block(text: str, name: str) -> str:
    """The committed text between a block's markers (without the note line that opens it)."""
    m = _pattern(name).search(text)
    if not m:
        raise ValueError(f"no <!-- generated:{name} --> ... <!-- /generated:{name} --> block")
    body = m.group(2)
    if body.startswith("<!--"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    return body.strip("\n")


def replace_block(text: str, name: str, body: str) -> str:
    if not _pattern(name).search(text):
        raise ValueError(f"no <!-- generated:{name} --> ... <!-- /generated:{name} --> block")
    note = f"<!-- written by python -m evalxai.docs ({name}); edit the source, not this block -->\n"
    # blank lines around the body: markdown then never reads a marker as part of a table or paragraph
    return _pattern(name).sub(lambda m: m.group(1) + note + "\n" + body + "\n\n" + m.group(3), text, count=1)


def stale(root: Path = ROOT) -> list[str]:
    """The blocks whose committed text differs from what is rendered now, as ``file:name``."""
    out = []
    for (rel, name), body in blocks(root).items():
        if read_block((root / rel).read_text(encoding="utf-8"), name) != body:
            out.append(f"{rel}:{name}")
    return out


def write(root: Path = ROOT) -> list[str]:
    """Rewrite every block; return the ``file:name`` of those that changed."""
    changed = []
    for (rel, name), body in blocks(root).items():
        path = root / rel
        text = path.read_text(encoding="utf-8")
        new = replace_block(text, name, body)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(f"{rel}:{name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalxai.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout holding README.md and docs/")
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        out = stale(args.root)
        for s in out:
            print(f"stale: {s} (run python -m evalxai.docs)")
        return 1 if out else 0
    for s in write(args.root):
        print("wrote", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
