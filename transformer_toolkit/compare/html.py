"""``report.html``: the report as one self-contained page (inline CSS, plots as base64 PNG data
URIs), so it can be mailed or attached and still shows everything."""

from __future__ import annotations

import base64
from html import escape

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.35em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.failed td { color: #a00; }
img { max-width: 100%; display: block; margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def _table(header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in cells:
        cls = ' class="failed"' if ": failed: " in row[0] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def page(report: dict, images: dict[str, bytes], tables: dict) -> str:
    """The whole HTML document."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Architecture comparison: {escape(report['name'])}</title>", f"<style>{STYLE}</style></head><body>",
           f"<h1>Architecture comparison: {escape(report['name'])}</h1>", f"<p>{escape(report['summary'])}</p>",
           _table(*tables["main"]), f'<p class="note">{escape(report["notes"])}</p>',
           "<h2>Which differences exceed the seed-to-seed spread</h2>", f"<p>{escape(report['rule'])}</p>"]
    for key, label in (("val_loss", "Final validation loss"), ("bits_per_byte", "Bits per byte")):
        out.append(f"<p>{label}:</p><ul>" + "".join(f"<li>{escape(s)}</li>" for s in report["spread"][key]) + "</ul>")
    out.append("<h2>Validation loss</h2>")
    for name, alt in (("loss_vs_tokens.png", "against tokens"), ("loss_vs_flops.png", "against FLOPs"),
                      ("loss_vs_time.png", "against wall time")):
        if name in images:
            out.append(_img(images[name], f"validation loss {alt}"))
    if report["scaling"]:
        out += ["<h2>Scaling</h2>", _table(*tables["scaling"])]
        if "scaling.png" in images:
            out.append(_img(images["scaling.png"], "loss against compute"))
    out += ["<h2>Runs</h2>", '<p class="note">Each is an ordinary run folder: <code>ttk generate --run FOLDER</code>, '
            "<code>ttk eval --run FOLDER</code> and <code>ttk export --run FOLDER</code> work on it.</p>",
            _table(*tables["runs"]), "</body></html>", ""]
    return "\n".join(out)
