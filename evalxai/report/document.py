"""Reports: one list of blocks rendered twice, as ``report.md`` (images linked) and ``report.html`` (images
embedded, so the file opens anywhere in a browser). Blocks: ("h1" | "h2" | "p" | "pre", text),
("table", DataFrame), ("img", path, caption)."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from evalxai.core.files import write_text

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4g}"
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out_dir: str | Path, title: str, blocks: list[tuple]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (atomically); image paths may be absolute."""
    out = Path(out_dir)
    md, body = [f"# {title}", ""], [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            md += [f"{'#' if kind == 'h1' else '##'} {block[1]}", ""]
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            md += [block[1], ""]
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "pre":
            md += ["```", block[1].rstrip(), "```", ""]
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            md += [markdown_table(block[1]), ""]
            body.append(html_table(block[1]))
        elif kind == "img":
            path, caption = Path(block[1]), block[2] if len(block) > 2 else ""
            if not path.exists():
                continue
            rel = os.path.relpath(path, out)
            md += [f"![{caption}]({rel})", ""]
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        else:
            raise ValueError(f"unknown report block '{kind}'")
    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, "\n".join(md) + "\n")
    write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                          f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path
