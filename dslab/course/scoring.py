"""Scoring, in the grader's own process: the hidden cases drawn for a batch, each learner's answers judged against the
reference (``answers.judge``), the kernel's report on itself turned into flags, and the errors of the executed
notebook in plain words.

Nothing here runs learner code: answers and the kernel's report arrive as data, so what a submission does in its
kernel can change what its functions returned, never the verdict. A flag (the static scan's or the kernel's) keeps the
score unless the instructor asks for ``strict`` grading, which scores every exercise a flag touches 0.
"""

from __future__ import annotations

import functools
import inspect
import random
import re
import secrets
import sys
from pathlib import Path

import nbformat

import dslab
from dslab.course import answers as A
from dslab.course import manifest
from dslab.course.execute import code_hash
from dslab.course.exercises import Exercise
from dslab.course.scan import Flag

MAX_FLAGS = 20  # per submission: enough to see what it does, not a report the size of the notebook
MISSING = "kernel report missing: the grading cell's report on the kernel never came back (was it suppressed?)"


def draw_cases(exs: list[Exercise], seed: int) -> dict[str, list]:
    """Exercise id -> its hidden cases, drawn from ``seed`` (one grading seed gives a whole batch the same cases)."""
    rng = random.Random(seed)
    return {ex.id: ex.hidden_cases(rng) for ex in exs}


def score(exs: list[Exercise], cases: dict, answers: dict, why_missing: str, delegated: dict[str, list[str]],
          allow_delegation: bool = False, flags: dict[str, list[str]] | None = None, strict: bool = False
          ) -> list[dict]:
    """Compare the learner's answers with the reference, here in the grader's process.

    flags: exercise id -> the flags that touch it (``exercise_flags``); with ``strict`` such an exercise scores 0.
    A copy of a reference that ran during a call is flagged on its exercise, and counts as delegation when the copy
    is of a callable the exercise may not use.
    """
    if not isinstance(answers, dict):
        raise TypeError(f"answers must be a dict, got {type(answers).__name__}")
    rows = []
    for ex in exs:
        got, passed, message = answers.get(ex.id), 0, ""
        results = got.get("results", []) if isinstance(got, dict) else []
        called = sorted({name for r in results if isinstance(r, dict) for name in r.get("called", [])})
        copied = sorted({str(n)[:120] for r in results if isinstance(r, dict) for n in r.get("copied", [])})
        uses = sorted(set(delegated.get(ex.id, [])) | set(called) | (set(copied) & set(ex.forbidden)))
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
        mine = [f"cloned reference: {ex.id} ran a copy of {name}" for name in copied] + (flags or {}).get(ex.id, [])
        if uses and not allow_delegation:
            points, message = 0.0, f"uses {', '.join(uses)}, which this exercise may not call (delegation)"
        elif mine and strict and points:
            points, message = 0.0, f"flagged ({mine[0]}); strict grading scores it 0"
        rows.append({"id": ex.id, "number": ex.number, "points": points, "max_points": ex.points,
                     "cases_passed": passed, "cases": n, "message": message, "delegated": uses, "flags": mine})
    return rows


# ------------------------------------------------------------------------------ integrity: scan and kernel report
@functools.lru_cache(maxsize=1)
def answering_code() -> dict[str, str]:
    """{qualified name: code_hash} of the functions that answer the hidden cases in the kernel (``answers`` and the
    atomic write it saves with), computed here from the installed package: the kernel's report must match it."""
    found = {f"{A.__name__}.{name}": fn for name, fn in vars(A).items()
             if inspect.isfunction(fn) and fn.__module__ == A.__name__}
    found[f"{manifest.__name__}.write_atomic"] = manifest.write_atomic
    return {name: code_hash(inspect.unwrap(fn).__code__) for name, fn in sorted(found.items())}


def references(ex: Exercise) -> list[str]:
    """The exercise's reference by qualified name (none for a lambda): a copy of it that runs is flagged."""
    if not isinstance(ex, Exercise):
        raise TypeError(f"ex must be an Exercise, got {type(ex).__name__}")
    name = f"{ex.reference.__module__}.{getattr(ex.reference, '__qualname__', '')}"
    return [] if "<" in name or name.endswith(".") else [name]


def kernel_request() -> dict:
    """What the grading cell reports on (``execute.kernel_report``): a fresh nonce, so that no earlier cell can have
    written the report, the answering functions to hash, and the folders installed code lives in."""
    roots = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(str(Path(dslab.__file__).resolve().parent))
    return {"nonce": secrets.token_hex(8), "functions": sorted(answering_code()), "roots": sorted(roots)}


def kernel_flags(report: dict, nonce: str, answered: bool, cells: dict[int, int]) -> list[str]:
    """The flags the kernel's report on itself calls for (``report`` is whatever the kernel wrote: untrusted data).

    answered: whether the grading cell answered; then a report that is missing or not of this run is itself a flag.
    cells: execution count -> cell index, to name the cell a hook was defined in.
    """
    if not isinstance(report, dict) or not isinstance(nonce, str):
        raise TypeError("report must be a dict and nonce a str")
    if report.get("nonce") != nonce or not isinstance(report.get("before"), dict):
        return [MISSING] if answered else []
    flags = []
    for stage in ("before", "after"):
        found = report.get(stage) if isinstance(report.get(stage), dict) else {}
        code = found.get("code") if isinstance(found.get("code"), dict) else {}
        if found and answered:  # a kernel that could not import the answering code did not answer either
            flags += [f"patched grader code: at grading time {name} was not the package's own"
                      for name, expected in answering_code().items() if code.get(name) != expected]
        for key, rule in (("hooks", "kernel hook"), ("threads", "background thread"), ("trace", "kernel hook")):
            items = found.get(key) if isinstance(found.get(key), list) else []
            flags += [f"{rule}: at grading time, {_in_cell(str(item)[:200], cells)}" for item in items]
    return list(dict.fromkeys(flags))


def _in_cell(text: str, cells: dict[int, int]) -> str:
    return re.sub(r"In\[(\d+)\]", lambda m: f"cell {cells[int(m[1])]}" if int(m[1]) in cells else m[0], text)


def cell_numbers(nb: nbformat.NotebookNode | None) -> dict[int, int]:
    """Execution count -> index of the cell in the prepared notebook (its id, ``dslab-<index>``), for an executed
    notebook."""
    if nb is not None and not hasattr(nb, "cells"):
        raise TypeError(f"nb must be a notebook or None, got {type(nb).__name__}")
    numbers = {}
    for cell in nb.cells if nb is not None else []:
        m = re.fullmatch(r"dslab-(\d+)", str(cell.get("id", "")))
        if m and isinstance(cell.get("execution_count"), int):
            numbers[cell["execution_count"]] = int(m[1])
    return numbers


def exercise_flags(exs: list[Exercise], static: list[Flag], kernel: list[str]) -> dict[str, list[str]]:
    """Exercise id -> the flags that touch it: a static flag inside an exercise's function touches that exercise;
    any other (module-level code, a helper, the kernel's report) can reach every answer, so it touches all."""
    if not all(isinstance(f, Flag) for f in static) or not all(isinstance(f, str) for f in kernel):
        raise TypeError("static must be a list of scan.Flag and kernel a list of str")
    targets = {ex.target: ex.id for ex in exs}
    touched: dict[str, list[str]] = {ex.id: [] for ex in exs}
    for flag in static:
        for ex_id in [targets[flag.function]] if flag.function in targets else touched:
            touched[ex_id].append(str(flag))
    for flag in kernel:
        for ex_id in touched:
            touched[ex_id].append(flag)
    return {ex_id: found[:MAX_FLAGS] for ex_id, found in touched.items()}


def capped(flags: list[str]) -> list[str]:
    """At most MAX_FLAGS flags, the last saying how many more there were."""
    if not isinstance(flags, list):
        raise TypeError(f"flags must be a list, got {type(flags).__name__}")
    flags = list(dict.fromkeys(flags))
    return flags if len(flags) <= MAX_FLAGS else flags[:MAX_FLAGS - 1] + [f"... and {len(flags) - MAX_FLAGS + 1} "
                                                                          f"more flags"]


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
