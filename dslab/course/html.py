"""``python -m dslab html`` (``make html``): the solved labs as static HTML with an index page, so a workshop can
share them without a running kernel. Outputs, figures and the diagrams (markdown attachments) are embedded in each
page; nothing is fetched when a page is opened.
"""

from __future__ import annotations

import html
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from dslab.course.exercises import lab_packages


def export(solutions: Path, out: Path) -> Path:
    """Write ``out/<notebook>.html`` for every solution and ``out/index.html`` linking them; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    packages = {p.NOTEBOOK: p for p in lab_packages().values()}
    rows = []
    for path in sorted(solutions.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
        title = next((c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown"), path.stem)
        teaches = getattr(packages.get(path.stem), "TEACHES", "")
        rows.append(f'<li><a href="{path.stem}.html">{html.escape(title)}</a><br><small>{html.escape(teaches)}'
                    f"</small></li>")
    index = out / "index.html"
    index.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dslab: the solved labs</title>
<style>body{{font-family:sans-serif;max-width:760px;margin:2em auto;line-height:1.5}}li{{margin:.6em 0}}</style>
</head><body><h1>dslab: build DeepSeek-V3 and R1, one notebook at a time</h1>
<p>The solved labs, as executed by the course's own run. To run them yourself: <code>make lab</code>.</p>
<ol>{''.join(rows)}</ol></body></html>
""", encoding="utf-8")
    return index
