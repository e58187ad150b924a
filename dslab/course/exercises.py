"""Exercises: what a learner implements, how an answer is compared, and where each lab's exercises are registered.

Each lab's package ``dslab/labs/labNN_<slug>/`` names its notebook (``NOTEBOOK`` in ``__init__.py``) and lists its
exercises in ``exercises.py`` (``EXERCISES``, in the notebook's order). An exercise names the function the learner
writes (``target``), a reference implementation, public cases (``dslab.check``) and a generator of hidden cases the
grader draws afresh at grading time, plus the known wrong answers (``Mistake``) whose hints feedback shows, and the
reference callables a submission may not delegate to (``forbidden``, dotted names the grader watches for).
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dslab import labs
from dslab.course.answers import from_json


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
    """Numbers or tensors (or tuples of them) equal within tolerance; None when they are.

    A tensor that differs is described by where: the index of the worst element, what it should be, what it is.
    """
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        for i, (e, g) in enumerate(zip(expected, got)):
            if (msg := compare_close(e, g, rtol, atol)) is not None:
                return f"item {i}: {msg}"
        return None
    if isinstance(expected, torch.Tensor):
        return _compare_tensors(expected, got, rtol, atol)
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not isinstance(expected, bool):
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {type(got).__name__}"
    if abs(got - expected) <= atol + rtol * abs(expected):
        return None
    return f"expected {expected:,.6g}, got {got:,.6g}"


def _compare_tensors(expected: torch.Tensor, got: Any, rtol: float, atol: float) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.is_complex() != expected.is_complex():
        return f"expected a {expected.dtype} tensor, got {got.dtype}"
    g = got.to(expected.dtype) if expected.is_floating_point() else got
    if expected.is_floating_point() and torch.allclose(g, expected, rtol=rtol, atol=atol):
        return None
    if not expected.is_floating_point() and torch.equal(g.to(expected.dtype), expected):
        return None
    excess = ((g.double() - expected.double()).abs() - rtol * expected.double().abs()).nan_to_num(float("inf"))
    where = tuple(int(i) for i in torch.unravel_index(excess.flatten().argmax(), expected.shape))
    index = ", ".join(map(str, where))
    return f"at [{index}] expected {expected[where].item():.6g}, got {got[where].item():.6g}"


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: ``fn`` computes what the mistake returns; feedback shows ``hint`` when an answer matches
    it. Each mistake gets its own test (the model: tests/test_lab03.py)."""

    name: str
    fn: Callable[..., Any]
    hint: str


@dataclass(frozen=True)
class Exercise:
    """A graded exercise. ``id`` is "<lab>.<name>" (e.g. "00.mla_params"); ``number`` is "N.M" as in the notebook.

    kind: "implement" (from the paper's equation), "predict" (compute a number before the notebook measures it) or
    "debug" (repair a plausible wrong version). forbidden: dotted names of callables an answer may not call (the
    reference and the components it wraps); other package helpers stay allowed. giveaways: the expressions that
    would hand the answer over (e.g. the sign rule of a bias update); none may appear in the generated lab's stub,
    its docstring, or the markdown since the previous exercise (compared without white space or case).
    """

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
    kind: str = "implement"
    mistakes: tuple[Mistake, ...] = ()
    forbidden: tuple[str, ...] = ()
    giveaways: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("implement", "predict", "debug"):
            raise ValueError(f"Exercise.kind must be implement, predict or debug, got {self.kind!r}")

    @property
    def lab(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def stub_message(self) -> str:
        return f"Exercise {self.number}: {self.task}"

    def hint_for(self, case: Case, answer_json: str | None) -> str:
        """The hint of the known mistake this (encoded) answer matches on ``case``, else the general hint."""
        try:
            got = from_json(answer_json)
        except Exception:  # noqa: BLE001 - a hint is a courtesy; an odd answer just gets the general one
            return self.hint
        for m in self.mistakes:
            try:
                if self.compare(m.fn(*case.args), got) is None:
                    return m.hint
            except Exception:  # noqa: BLE001 - a mistake that cannot handle this case simply does not match
                continue
        return self.hint


def lab_packages() -> dict[str, Any]:
    """Lab id ("00") -> its package ``dslab.labs.labNN_<slug>``, for every lab package."""
    return {info.name[3:5]: importlib.import_module(f"dslab.labs.{info.name}")
            for info in pkgutil.iter_modules(labs.__path__)
            if info.ispkg and info.name.startswith("lab") and info.name[3:5].isdigit()}


def lab_submodules(name: str) -> dict[str, Any]:
    """Lab id -> its module ``dslab.labs.labNN_<slug>.<name>``, for every lab that has one (an import error inside
    such a module is raised, not taken for a missing module)."""
    found = {}
    for lab, package in lab_packages().items():
        try:
            found[lab] = importlib.import_module(f"{package.__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package.__name__}.{name}":
                raise
    return found


def lab_modules() -> dict[str, Any]:
    """Lab id -> its exercise module (``dslab.labs.labNN_<slug>.exercises``) for every lab that has one."""
    return lab_submodules("exercises")


def notebook_of(lab: str) -> str:
    """The notebook stem of lab ``lab`` ("01" -> "01_moe")."""
    packages = lab_packages()
    if lab not in packages:
        raise ValueError(f"unknown lab {lab!r}; labs: {', '.join(sorted(packages)) or 'none'}")
    return packages[lab].NOTEBOOK


def lab_for_notebook(stem: str) -> str | None:
    """The lab id whose NOTEBOOK is ``stem`` ("00_by_the_numbers" -> "00"), else None."""
    return next((lab for lab, p in lab_packages().items() if p.NOTEBOOK == stem), None)


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
