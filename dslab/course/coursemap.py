"""``python -m dslab coursemap``: the course map in README and the time line of each notebook's header, written from
the exercise registry and the times ``make run`` recorded (solutions/runs.json) — never typed by hand.

README holds the table between ``<!-- dslab:course-map -->`` and ``<!-- /dslab:course-map -->``; a notebook's first
markdown cell holds its time between ``<!-- dslab:time -->`` and ``<!-- /dslab:time -->``. Authors rerun ``make run``
(and ``make run FAST=1``) when a lab changes, then this; ``--check`` (a test) fails when either is stale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from dslab.course.build import normalize, notebook_text
from dslab.course.exercises import lab_modules, lab_packages

MAP = re.compile(r"(<!-- dslab:course-map -->).*?(<!-- /dslab:course-map -->)", re.S)
WORKSHOP = re.compile(r"(<!-- dslab:workshop -->).*?(<!-- /dslab:workshop -->)", re.S)
TIME = re.compile(r"(<!-- dslab:time -->).*?(<!-- /dslab:time -->)", re.S)
RUNS_FILE = "runs.json"  # in solutions/, written by ``python -m dslab run --record``


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def load_runs(solutions: Path) -> dict:
    """solutions/runs.json: notebook stem -> {"defaults" | "fast" | "gpu": {seconds, machine, numbers}}; {} before
    the first ``--record``."""
    path = solutions / RUNS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def rows(solutions: Path) -> list[dict]:
    """One row per lab that has a solution notebook: what it teaches, what it reproduces, exercises, times."""
    runs, modules, found = load_runs(solutions), lab_modules(), []
    for lab, package in sorted(lab_packages().items()):
        if not (solutions / f"{package.NOTEBOOK}.ipynb").exists():
            continue
        exs = list(modules[lab].EXERCISES) if lab in modules else []
        measured = runs.get(package.NOTEBOOK, {})
        found.append({
            "lab": lab, "notebook": package.NOTEBOOK, "teaches": getattr(package, "TEACHES", ""),
            "reproduces": getattr(package, "REPRODUCES", ""), "exercises": len(exs),
            "points": sum(e.points for e in exs),
            "defaults": measured.get("defaults", {}).get("seconds"), "fast": measured.get("fast", {}).get("seconds"),
            "gpu": measured.get("gpu", {}).get("seconds"), "machine": measured.get("defaults", {}).get("machine"),
        })
    return found


def table(found: list[dict]) -> str:
    """The course map as a markdown table, plus the machine the times were measured on."""
    lines = ["| # | notebook | you build | reproduces | graded exercises | CPU, defaults | CPU, FAST | GPU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in found:
        lines.append(f"| {r['lab']} | `{r['notebook']}` | {r['teaches']} | {r['reproduces']} | "
                     f"{r['exercises']} ({r['points']} points) | {_duration(r['defaults'])} | {_duration(r['fast'])} | "
                     f"{_duration(r['gpu'])} |")
    machines = sorted({r["machine"] for r in found if r["machine"]})
    where = f"measured on {'; '.join(machines)}" if machines else "not measured yet"
    return "\n".join(lines) + f"\n\nTimes: wall clock of `make run` (defaults) and `make run FAST=1`, {where}."


def workshop_table(found: list[dict]) -> str:
    """INSTRUCTORS.md's planning table: exercises and measured compute per lab."""
    lines = ["| lab | notebook | graded exercises | compute, defaults | compute, FAST |", "|---|---|---|---|---|"]
    lines += [f"| {r['lab']} | `{r['notebook']}` | {r['exercises']} | {_duration(r['defaults'])} | "
              f"{_duration(r['fast'])} |" for r in found]
    machines = sorted({r["machine"] for r in found if r["machine"]})
    return "\n".join(lines) + ("\n\nMeasured on " + "; ".join(machines) + "." if machines else "")


def _fill(path: Path, pattern: re.Pattern, text: str, check: bool, stale: list[str]) -> None:
    """Put ``text`` between the markers ``pattern`` finds in ``path`` (or note that it is stale)."""
    old = path.read_text(encoding="utf-8")
    if not pattern.search(old):
        stale.append(f"{path}: no {pattern.pattern.split(')')[0][1:]} markers")
        return
    new = pattern.sub(lambda m: m.group(1) + "\n" + text + "\n" + m.group(2), old)
    if new != old:
        stale.append(f"{path}: generated table")
        if not check:
            path.write_text(new, encoding="utf-8")


def header_time(r: dict) -> str:
    """The text of a notebook's time line."""
    if r["defaults"] is None and r["fast"] is None:
        return "not measured yet"
    text = f"about {_duration(r['defaults'])} of compute at the defaults" if r["defaults"] is not None else ""
    if r["fast"] is not None:
        text += (" and " if text else "") + f"{_duration(r['fast'])} with `FAST=True`"
    where = f" on {r['machine'].split(', torch')[0]}" if r["machine"] else ""
    return text + f" (measured by `make run`{where})"


def _retime(path: Path, text: str) -> str | None:
    """The notebook's normalized text with its time line set to ``text`` (None when the notebook has no marker)."""
    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if cell is None or not TIME.search(cell.source):
        return None
    cell.source = TIME.sub(lambda m: m.group(1) + text + m.group(2), cell.source)
    return notebook_text(normalize(nb, "solution", path.stem))


def update(solutions: Path, readme: Path, check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) README's course map, INSTRUCTORS.md's planning table (beside README) and
    every notebook header's time; returns what is (or was) stale."""
    found, stale = rows(solutions), []
    _fill(readme, MAP, table(found), check, stale)
    instructors = readme.with_name("INSTRUCTORS.md")
    if instructors.exists():
        _fill(instructors, WORKSHOP, workshop_table(found), check, stale)
    for r in found:
        path = solutions / f"{r['notebook']}.ipynb"
        new = _retime(path, header_time(r))
        if new is None:
            stale.append(f"{path}: no <!-- dslab:time --> marker in its first markdown cell")
        elif new != path.read_text(encoding="utf-8"):
            stale.append(f"{path}: header time")
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale
