"""solutions/ -> labs/: the solution notebooks are the single source; student labs are generated from them.

In a solution's code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the answer. In the
generated lab they become ``raise NotImplementedError("Exercise N.M: <task>")`` at the same indentation; the
signature and docstring around them stay. Every region must sit inside the ``def`` of an exercise registered for
that lab, and every registered exercise must have exactly one region, so notebook and grader cannot drift apart.

A find-the-bug exercise (``kind="debug"``) adds a ``### BUGGY VERSION`` line inside its region, followed by the
plausible wrong code, commented out. The lab shows that code, uncommented, after the raise: the learner reads it,
repairs it and deletes the raise, so a fresh lab still scores "not implemented".
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import nbformat

from dslab.course.exercises import Exercise, exercises, lab_for_notebook

BEGIN, END, BUGGY = "### BEGIN SOLUTION", "### END SOLUTION", "### BUGGY VERSION"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
VOLATILE_CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
DROP_TAGS = ("injected-parameters", "papermill-error-cell-tag", "dslab-grading")
_DEF = re.compile(r"^(\s*)def\s+(\w+)\s*\(")


class BuildError(ValueError):
    """A solution notebook that cannot be turned into a lab (unknown exercise, unbalanced markers, ...)."""


def _enclosing_def(lines: list[str], at: int, indent: int) -> str | None:
    for line in reversed(lines[:at]):
        m = _DEF.match(line)
        if m and len(m.group(1)) < indent:
            return m.group(2)
    return None


def strip_solutions(source: str, by_target: dict[str, Exercise], where: str) -> tuple[str, list[str]]:
    """Replace each solution region in ``source`` with its stub -> (new source, exercise ids found)."""
    lines, out, found, i = source.split("\n"), [], [], 0
    while i < len(lines):
        if lines[i].strip() != BEGIN:
            if lines[i].strip() == END:
                raise BuildError(f"{where}: '{END}' without '{BEGIN}'")
            out.append(lines[i])
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() in (BEGIN, END)), None)
        if end is None or lines[end].strip() != END:
            raise BuildError(f"{where}: '{BEGIN}' without a matching '{END}'")
        name = _enclosing_def(lines, i, indent)
        if name not in by_target:
            raise BuildError(f"{where}: solution region inside {name or 'no function'}(), which is not a registered "
                             f"exercise target ({', '.join(sorted(by_target)) or 'none'})")
        ex = by_target[name]
        out += _stub(ex, lines[i + 1:end], indent, where)
        found.append(ex.id)
        i = end + 1
    return "\n".join(out), found


def _stub(ex: Exercise, region: list[str], indent: int, where: str) -> list[str]:
    """The lab's lines for one solution region: a raise, and for a debug exercise the buggy code after it."""
    pad = " " * indent
    raise_line = pad + f"raise NotImplementedError({json.dumps(ex.stub_message, ensure_ascii=False)})"
    marks = [k for k, line in enumerate(region) if line.strip() == BUGGY]
    if (ex.kind == "debug") != bool(marks) or len(marks) > 1:
        raise BuildError(f"{where}: exercise {ex.id} is kind={ex.kind!r}; a debug exercise needs exactly one "
                         f"'{BUGGY}' line in its region and other kinds none")
    if not marks:
        return [pad + "# YOUR CODE HERE", raise_line]
    buggy = []
    for line in region[marks[0] + 1:]:
        body = line[indent:] if line.startswith(pad) else line.lstrip()
        if body and not body.startswith("#"):
            raise BuildError(f"{where}: the buggy version of {ex.id} must be commented out in the solution")
        buggy.append(pad + body[2:] if body.startswith("# ") else pad + body[1:] if body else "")
    return [pad + "# This version has a bug (or two). Find it, fix it, then delete the raise.", raise_line, *buggy]


def normalize(nb: nbformat.NotebookNode, role: str, stem: str) -> nbformat.NotebookNode:
    """Stable metadata for a committed notebook (``role`` is "solution" or "lab"); labs also lose outputs.

    ``metadata.dslab.notebook`` records the stem so the grader recognises a submission whatever its file name.
    """
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & set(DROP_TAGS)]
    for cell in nb.cells:
        for key in VOLATILE_CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code" and role == "lab":
            cell.outputs, cell.execution_count = [], None
    dslab_meta = {"notebook": stem, "role": role}
    nb.metadata = nbformat.NotebookNode(kernelspec=KERNELSPEC, language_info={"name": "python"}, dslab=dslab_meta)
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def build_lab(solution: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """The student notebook generated from a solution notebook named ``stem``."""
    lab = lab_for_notebook(stem)
    registered = exercises(lab) if lab else []
    by_target = {ex.target: ex for ex in registered}
    nb, found = normalize(solution, "lab", stem), []
    for idx, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and BEGIN in cell.source:
            cell.source, ids = strip_solutions(cell.source, by_target, f"{stem} cell {idx}")
            found += ids
    dupes = sorted({i for i in found if found.count(i) > 1})
    missing = sorted({ex.id for ex in registered} - set(found))
    if dupes or missing:
        raise BuildError(f"{stem}: exercises with more than one solution region: {dupes or 'none'}; "
                         f"registered exercises without a region: {missing or 'none'}")
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """A notebook as committed: nbformat's JSON plus a final newline."""
    return nbformat.writes(nb) + "\n"


def build_all(solutions: Path, labs: Path, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) every lab; returns the problems found (empty when all is in sync)."""
    problems = []
    sources = sorted(solutions.glob("*.ipynb"))
    for path in sources:
        sol = nbformat.read(path, as_version=4)
        if notebook_text(normalize(sol, "solution", path.stem)) != path.read_text(encoding="utf-8"):
            problems.append(f"{path}: not normalized (run `make solutions` or `python -m dslab build --normalize`)")
        text = notebook_text(build_lab(sol, path.stem))
        target = labs / path.name
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                problems.append(f"{target}: stale or missing (run `make labs`)")
        else:
            labs.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    expected = {p.name for p in sources}
    problems += [f"{p}: has no source in {solutions}/" for p in sorted(labs.glob("*.ipynb")) if p.name not in expected]
    return problems


def normalize_all(solutions: Path) -> list[Path]:
    """Rewrite solution notebooks in normalized form; returns those that changed."""
    changed = []
    for path in sorted(solutions.glob("*.ipynb")):
        text = notebook_text(normalize(nbformat.read(path, as_version=4), "solution", path.stem))
        if text != path.read_text(encoding="utf-8"):
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed
