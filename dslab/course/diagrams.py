"""Drawn diagrams, embedded in the notebooks' markdown as cell attachments: ``python -m dslab diagrams``.

A lab that has pictures defines ``DIAGRAMS = {"name.png": draw}`` in ``dslab/labs/labNN_<slug>/diagrams.py``;
``draw()`` returns a matplotlib figure. A markdown cell of the lab's solution notebook shows it with
``![alt](attachment:name.png)``.
Attachments travel inside the notebook, so the picture survives the build into labs/ (which strips code outputs) and
renders in JupyterLab, on GitHub and in Colab when one notebook is opened alone, with no image files and no hosting.
The PNG is rendered deterministically (fixed dpi, no timestamp), so re-running changes nothing unless a drawing did.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat

from dslab.course.build import normalize, notebook_text
from dslab.course.exercises import lab_packages, lab_submodules

DPI = 110
_REF = re.compile(r"\(attachment:([\w.-]+)\)")


def render(fig) -> bytes:
    """A figure as PNG bytes, the same bytes on every run of the same code and library versions."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def lab_diagrams() -> dict[str, dict]:
    """Notebook stem -> {attachment name: draw function}, for every lab package with a ``diagrams`` module."""
    packages = lab_packages()
    return {packages[lab].NOTEBOOK: dict(module.DIAGRAMS) for lab, module in lab_submodules("diagrams").items()}


def references(nb: nbformat.NotebookNode) -> dict[str, int]:
    """Attachment name -> index of the markdown cell that shows it."""
    return {name: i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for name in _REF.findall(cell.source)}


def embed(nb: nbformat.NotebookNode, drawings: dict[str, bytes]) -> list[str]:
    """Put each PNG into the markdown cell that references it; returns the names that changed.

    ValueError when a drawing is referenced by no cell (a typo would otherwise silently drop a picture).
    """
    where, changed = references(nb), []
    missing = sorted(set(drawings) - set(where))
    if missing:
        raise ValueError(f"no markdown cell shows {missing}; add ![...](attachment:NAME) where each belongs")
    for name, png in drawings.items():
        cell = nb.cells[where[name]]
        data = base64.b64encode(png).decode()
        attachments = cell.setdefault("attachments", {})
        if attachments.get(name, {}).get("image/png") != data:
            attachments[name] = {"image/png": data}
            changed.append(name)
    return changed


def missing_attachments(nb: nbformat.NotebookNode) -> list[str]:
    """Names a markdown cell references but does not carry (a picture a reader would see as broken)."""
    return sorted(name for name, i in references(nb).items() if name not in nb.cells[i].get("attachments", {}))


def update(solutions: Path) -> list[str]:
    """Re-render every lab's diagrams into its solution notebook; returns "stem: name" for each one that changed."""
    changed = []
    for stem, diagrams in sorted(lab_diagrams().items()):
        path = solutions / f"{stem}.ipynb"
        if not path.exists():  # a lab still being written: nothing to embed into yet
            continue
        nb = nbformat.read(path, as_version=4)
        names = embed(nb, {name: render(draw()) for name, draw in diagrams.items()})
        if names:
            path.write_text(notebook_text(normalize(nb, "solution", stem)), encoding="utf-8")
            changed += [f"{stem}: {n}" for n in names]
    return changed
