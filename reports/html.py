"""One self-contained HTML page: plotly.js inlined once, figures, and sortable tables."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Formats a cell's number for reading (the raw value stays in data-v for sorting).
Format = Callable[[float], str]


def percent(v: float) -> str:
    """A fraction as a percentage: 0.138 -> ``13.8 %`` (1.4e-14 -> ``0.0 %``)."""
    return f"{100 * v:.1f} %"


def ms(seconds: float) -> str:
    """Seconds as milliseconds: 0.0171 -> ``17.1 ms``."""
    return f"{seconds * 1e3:.1f} ms"


def fixed(digits: int, unit: str = "") -> Format:
    """A format with ``digits`` decimals and an optional unit: ``fixed(3, " s")``."""
    return lambda v: f"{v:.{digits}f}{unit}"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; }
p.note { color: #555; font-size: 13px; }
table.sortable { border-collapse: collapse; font-size: 13px; }
table.sortable th, table.sortable td { border: 1px solid #ccc; padding: 3px 8px; }
table.sortable th { background: #f0f0f0; cursor: pointer; user-select: none; }
table.sortable td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.oom td { color: #a00; }
div.answer { background: #f4f8fc; border: 1px solid #c9d9ea; padding: 8px 16px; }
div.answer ul { margin: 4px 0; } details summary { cursor: pointer; font-size: 17px; }
"""

# Click a header to sort by it (numbers numerically), click again to reverse.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v || a.cells[col].textContent;
        var y = b.cells[col].dataset.v || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def table_html(columns: list[str], rows: list[list[Any]], row_classes: list[str] | None = None,
               formats: dict[int, Format] | None = None) -> str:
    """A sortable HTML table; numbers are right-aligned and sort numerically. ``formats``
    maps a column index to how its numbers read (``percent``, ``ms``, ``fixed``); other
    floats show four significant digits, a NaN shows ``-``."""
    formats = formats or {}
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(c)}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>")
        for col, v in enumerate(row):
            if isinstance(v, float):
                text = "-" if math.isnan(v) else formats.get(col, lambda x: f"{x:.4g}")(v)
                out.append(f'<td class="num" data-v="{v!r}">{html.escape(text)}</td>')
            elif isinstance(v, int) and not isinstance(v, bool):
                out.append(f'<td class="num" data-v="{v}">{v}</td>')
            else:
                out.append(f"<td>{html.escape(str(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def write_page(path: str | Path, title: str, sections: list[tuple[str, Any]],
               intro: str = "") -> None:
    """Write ``sections`` (heading, plotly Figure or HTML string) as one offline HTML file."""
    from plotly.offline import get_plotlyjs

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p class='note'>{html.escape(intro)}</p>")
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if hasattr(content, "to_html"):
            parts.append(content.to_html(full_html=False, include_plotlyjs=False,
                                         config={"displaylogo": False, "responsive": True}))
        else:
            parts.append(str(content))
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    Path(path).write_text("".join(parts), encoding="utf-8")
