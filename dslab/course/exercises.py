"""Exercises: what a learner implements, how it is checked, and where each lab's exercises are registered.

Each lab has one module ``dslab/course/labs/labNN_<slug>.py`` defining ``NOTEBOOK`` (the notebook's stem) and
``EXERCISES`` (a list of ``Exercise``). An exercise names the function the learner writes (``target``), a reference
implementation from ``dslab``, public cases (shown by ``dslab.check``) and a generator of hidden cases that the grader
draws afresh at grading time.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    """One call ``target(*args)``; ``label`` names it in feedback (e.g. "DeepSeek-V3, BF16")."""

    args: tuple
    label: str


def compare_exact(expected: Any, got: Any) -> str | None:
    """None when equal, else a short description of the difference. Ints compare exactly, floats to 1e-9 rel."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return None if expected is got else f"expected {expected!r}, got {got!r}"
    if isinstance(expected, int) and isinstance(got, int):
        return None if expected == got else f"expected {expected:,}, got {got:,}"
    return compare_close(expected, got, rtol=1e-9, atol=0.0)


def compare_close(expected: Any, got: Any, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """Numbers or tensors (or tuples of them) equal within tolerance; None when they are."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        for i, (e, g) in enumerate(zip(expected, got)):
            if (msg := compare_close(e, g, rtol, atol)) is not None:
                return f"item {i}: {msg}"
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if not torch.allclose(got.to(expected.dtype), expected, rtol=rtol, atol=atol, equal_nan=False):
            err = (got.to(expected.dtype) - expected).abs().max().item()
            return f"values differ (max abs error {err:.3g})"
        return None
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {type(got).__name__}"
    if abs(got - expected) <= atol + rtol * abs(expected):
        return None
    return f"expected {expected:,.6g}, got {got:,.6g}"


@dataclass(frozen=True)
class Exercise:
    """A graded exercise. ``id`` is "<lab>.<name>" (e.g. "00.mla_params"); ``number`` is "N.M" as in the notebook."""

    id: str
    number: str
    target: str
    task: str
    reference: Callable[..., Any]
    public_cases: Callable[[], list[Case]]
    hidden_cases: Callable[[random.Random], list[Case]]
    points: int = 1
    hint: str = ""
    compare: Callable[[Any, Any], str | None] = field(default=compare_exact)

    @property
    def lab(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def stub_message(self) -> str:
        return f"Exercise {self.number}: {self.task}"


def lab_modules() -> dict[str, Any]:
    """Lab id ("00") -> its exercise module, for every module in ``dslab.course.labs``."""
    from dslab.course import labs

    found = {}
    for info in pkgutil.iter_modules(labs.__path__):
        if info.name.startswith("lab") and info.name[3:5].isdigit():
            found[info.name[3:5]] = importlib.import_module(f"dslab.course.labs.{info.name}")
    return found


def lab_for_notebook(stem: str) -> str | None:
    """The lab id whose NOTEBOOK is ``stem`` ("00_by_the_numbers" -> "00"), else None."""
    for lab, module in lab_modules().items():
        if module.NOTEBOOK == stem:
            return lab
    return None


def exercises(lab: str) -> list[Exercise]:
    modules = lab_modules()
    if lab not in modules:
        raise ValueError(f"unknown lab {lab!r}; labs with exercises: {', '.join(sorted(modules)) or 'none'}")
    return list(modules[lab].EXERCISES)


def find(exercise_id: str) -> Exercise:
    """Look an exercise up by id; ValueError listing the lab's exercises when it does not exist."""
    if not isinstance(exercise_id, str) or "." not in exercise_id:
        raise ValueError(f"an exercise id looks like '00.mla_params', got {exercise_id!r}")
    lab = exercise_id.split(".", 1)[0]
    known = exercises(lab)
    for ex in known:
        if ex.id == exercise_id:
            return ex
    raise ValueError(f"unknown exercise {exercise_id!r}; lab {lab} has: {', '.join(e.id for e in known)}")
