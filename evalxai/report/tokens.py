"""Token heatmaps: relevance per token drawn as coloured text, as HTML (``token_html``) and PNG (``token_png``).

A token's background is red for positive and blue for negative relevance, its opacity |R_t| / max_t |R_t| over the
real tokens of that sequence and method (each row is scaled on its own, as LXT's and captum's text visualisations
do, so rows show where relevance sits, not how much there is). Padding is not drawn; tokens of the ground-truth
rationale are underlined.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evalxai.core.files import atomic_path


def shades(relevance: np.ndarray) -> np.ndarray:
    """Signed opacities in [-1, 1]: ``relevance / max |relevance|`` (0 where the row is all zero)."""
    r = np.asarray(relevance, dtype=np.float64)
    top = np.abs(r).max() if r.size else 0.0
    return r / top if top > 0 else np.zeros_like(r)


def _rgba(shade: float) -> tuple[float, float, float, float]:
    return (0.84, 0.15, 0.16, abs(shade)) if shade >= 0 else (0.12, 0.35, 0.75, abs(shade))


def token_html(tokens: Sequence[Sequence[str]], maps: Mapping[str, np.ndarray], path: str | Path,
               titles: Sequence[str] | None = None, rationale: np.ndarray | None = None,
               title: str = "Token relevance") -> Path:
    """An HTML page: for each sequence i (``tokens[i]``, its real tokens), one line per method of ``maps`` (name ->
    (N, T) relevance; positions past ``len(tokens[i])`` are padding and not drawn). ``titles[i]`` heads sequence i
    (e.g. label and prediction); ``rationale`` (N, T) bool underlines the ground-truth tokens."""
    out = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
           "td{padding:.2em .6em;vertical-align:top}td.m{font-family:monospace;color:#555;white-space:nowrap}"
           "span.t{padding:.05em .15em;margin:0 .05em;border-radius:.2em;line-height:1.9}"
           "span.g{text-decoration:underline;text-decoration-thickness:2px}</style>",
           f"<h1>{html.escape(title)}</h1><p>Red: positive relevance, blue: negative; opacity |R| / max |R| per row."
           + (" Underlined: ground-truth rationale." if rationale is not None else "") + "</p>"]
    for i, toks in enumerate(tokens):
        head = titles[i] if titles is not None else f"sequence {i}"
        out.append(f"<h3>{html.escape(str(head))}</h3><table>")
        for name, r in maps.items():
            s = shades(np.asarray(r[i])[:len(toks)])
            cells = []
            for t, (tok, sh) in enumerate(zip(toks, s)):
                red, green, blue, alpha = _rgba(float(sh))
                cls = "t g" if rationale is not None and bool(rationale[i][t]) else "t"
                cells.append(f"<span class='{cls}' title='{float(np.asarray(r[i])[t]):.4g}' style='background:rgba("
                             f"{int(red * 255)},{int(green * 255)},{int(blue * 255)},{alpha:.3f})'>"
                             f"{html.escape(tok)}</span>")
            out.append(f"<tr><td class='m'>{html.escape(name)}</td><td>{''.join(cells)}</td></tr>")
        out.append("</table>")
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(out), encoding="utf-8")
    return path


def token_png(tokens: Sequence[Sequence[str]], maps: Mapping[str, np.ndarray], path: str | Path,
              titles: Sequence[str] | None = None, rationale: np.ndarray | None = None,
              width: int = 110) -> Path:
    """The same picture as ``token_html`` as a PNG: monospaced tokens on coloured boxes, lines wrapped at ``width``
    characters, one block per sequence with one line (or more) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    label_w = max(len(n) for n in maps) + 2
    lines: list[tuple[str, list[tuple[int, str, float, bool]]] | str] = []  # per line: (label, [(col, tok, shade, gt)])
    for i, toks in enumerate(tokens):
        lines.append(str(titles[i]) if titles is not None else f"sequence {i}")
        for name, r in maps.items():
            s = shades(np.asarray(r[i])[:len(toks)])
            row, col, label = [], label_w, name
            for t, (tok, sh) in enumerate(zip(toks, s)):
                if col + len(tok) > width and row:
                    lines.append((label, row))
                    row, col, label = [], label_w, ""
                row.append((col, tok, float(sh), rationale is not None and bool(rationale[i][t])))
                col += len(tok) + 1
            lines.append((label, row))
    used = max([label_w + 12] + [row[-1][0] + len(row[-1][1]) for line in lines
                                 if not isinstance(line, str) and (row := line[1])])
    char_w, line_h = 0.092, 0.30  # inches per character and per line at fontsize 9
    fig = plt.figure(figsize=(used * char_w + 0.3, len(lines) * line_h + 0.3))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, used + 2)
    ax.set_ylim(len(lines) + 0.5, -0.5)
    ax.axis("off")
    for y, line in enumerate(lines):
        if isinstance(line, str):
            ax.text(0, y, line, fontsize=9, fontweight="bold", va="center", family="sans-serif")
            continue
        label, row = line
        ax.text(0, y, label, fontsize=8, va="center", family="monospace", color="#555555")
        for col, tok, sh, gt in row:
            ax.add_patch(Rectangle((col - 0.15, y - 0.4), len(tok) + 0.3, 0.8, color=_rgba(sh), lw=0))
            ax.text(col, y, tok, fontsize=9, va="center", family="monospace")
            if gt:
                ax.plot([col, col + len(tok)], [y + 0.38, y + 0.38], color="black", lw=1.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
