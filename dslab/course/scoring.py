"""Scoring, in the grader's own process: the hidden cases drawn for a batch, each learner's answers judged against the
reference (``answers.judge``), and the errors of the executed notebook in plain words.

Nothing here runs learner code: answers arrive as data (``answers`` decodes them), so what a submission does in its
kernel can change what its functions returned, never the verdict.
"""

from __future__ import annotations

import random

import nbformat

from dslab.course import answers as A
from dslab.course.exercises import Exercise


def draw_cases(exs: list[Exercise], seed: int) -> dict[str, list]:
    """Exercise id -> its hidden cases, drawn from ``seed`` (one grading seed gives a whole batch the same cases)."""
    rng = random.Random(seed)
    return {ex.id: ex.hidden_cases(rng) for ex in exs}


def score(exs: list[Exercise], cases: dict, answers: dict, why_missing: str, delegated: dict[str, list[str]],
          allow_delegation: bool = False) -> list[dict]:
    """Compare the learner's answers with the reference, here in the grader's process."""
    rows = []
    for ex in exs:
        got, passed, message = answers.get(ex.id), 0, ""
        results = got.get("results", []) if isinstance(got, dict) else []
        called = sorted({name for r in results if isinstance(r, dict) for name in r.get("called", [])})
        uses = sorted(set(delegated.get(ex.id, [])) | set(called))
        if got is None:
            message = why_missing
        elif not isinstance(got, dict) or "missing" in got:
            message = str(got.get("missing")) if isinstance(got, dict) else "unreadable answers"
        else:
            for case, res in zip(cases[ex.id], results):
                diff = A.judge(ex, case, res) if isinstance(res, dict) else "unreadable answer"
                if diff is None:
                    passed += 1
                elif not message:
                    message = f"case '{case.label}': {'not implemented' if diff.startswith('NotImpl') else diff}"
        n = len(cases[ex.id])
        if isinstance(got, dict) and "missing" not in got and passed == n:
            message = f"all {n} hidden cases passed"
        if message.startswith("case") and "not implemented" in message and passed == 0:
            message = "not implemented"
        points = round(ex.points * passed / n, 2) if n else 0.0
        if uses and not allow_delegation:
            points, message = 0.0, f"uses {', '.join(uses)}, which this exercise may not call (delegation)"
        rows.append({"id": ex.id, "number": ex.number, "points": points, "max_points": ex.points,
                     "cases_passed": passed, "cases": n, "message": message, "delegated": uses})
    return rows


def describe_errors(nb: nbformat.NotebookNode | None, memory_mb: int = 0) -> list[str]:
    """One line per error output in the executed notebook, naming sys.exit(), interrupts and the memory cap plainly."""
    lines = []
    for i, cell in enumerate(nb.cells if nb is not None else []):
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            name, value = out.get("ename", ""), str(out.get("evalue", ""))[:200]
            if name == "SystemExit":
                lines.append(f"cell {i} called sys.exit(); the grader kept going")
            elif name == "KeyboardInterrupt":
                lines.append(f"cell {i} was interrupted after the per-cell time limit")
            elif memory_mb and (name == "MemoryError" or "can't allocate memory" in value):
                lines.append(f"cell {i} ran out of memory (the grader allows {memory_mb} MiB): {name}: {value[:120]}")
            elif name != "NotImplementedError":
                lines.append(f"cell {i} raised {name}: {value}")
    return lines
