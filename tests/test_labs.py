"""What every lab's exercises must hold, checked once for all labs (each lab's own test file keeps what is particular
to it): the registry in the notebook's order, each reference passing its own public and hidden cases, each known
mistake failing with its own hint, hard-coded public answers failing the hidden cases, forbidden references caught
when called, a stub counted as not attempted, and a solution that builds into a lab with one stub per exercise (a
find-the-bug exercise showing its buggy code)."""

from __future__ import annotations

import inspect
import random
import re
from pathlib import Path

import nbformat
import pytest
from lab_helpers import hidden_verdict

from dslab.course import answers
from dslab.course.build import BUGGY, build_lab
from dslab.course.check import run_cases
from dslab.course.exercises import exercises, lab_modules, notebook_of

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted(lab_modules())
ALL = [ex for lab in LABS for ex in exercises(lab)]
MISTAKES = [(ex, m) for ex in ALL for m in ex.mistakes]


def _solution(lab: str):
    return nbformat.read(ROOT / "solutions" / f"{notebook_of(lab)}.ipynb", as_version=4)


@pytest.mark.parametrize("lab", LABS)
def test_exercises_follow_the_notebook_and_are_checked_in_its_order(lab):
    exs, nb = exercises(lab), _solution(lab)
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    headings = re.findall(r"#+ Exercise (\d+\.\d+)", md)
    checks = [m for c in nb.cells if c.cell_type == "code" for m in re.findall(r'dslab\.check\("([\w.]+)"', c.source)]
    assert headings == [e.number for e in exs], headings
    assert checks == [e.id for e in exs], checks


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.id)
def test_the_reference_passes_its_public_and_hidden_cases(ex):
    assert run_cases(ex, ex.reference, ex.public_cases())[0] == "passed"
    for seed in range(3):
        assert hidden_verdict(ex, ex.reference, seed) == [None] * len(ex.hidden_cases(random.Random(seed)))


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.id)
def test_every_exercise_names_its_mistakes_and_what_it_may_not_delegate_to(ex):
    assert ex.mistakes, f"{ex.id}: register the wrong answers learners are likely to give"
    assert len({m.hint for m in ex.mistakes}) == len(ex.mistakes), "each mistake needs a hint of its own"
    assert ex.forbidden and all(answers.resolve(q) is not None for q in ex.forbidden), ex.forbidden
    watch = {answers.resolve(q): q for q in ex.forbidden}
    case = ex.public_cases()[0]
    delegating = lambda *args: ex.reference(*args)  # noqa: E731
    assert set(answers.call(delegating, case.args, 10.0, watch).get("called", [])) & set(ex.forbidden), \
        f"{ex.id}: calling the reference must be seen as delegation"


@pytest.mark.parametrize("ex, mistake", MISTAKES, ids=[f"{e.id}:{m.name}" for e, m in MISTAKES])
def test_each_known_mistake_fails_and_is_told_its_own_hint(ex, mistake):
    """It fails the public cases (dslab.check says so) and the hidden ones, and on some case it is told its own hint
    (where two mistakes give the same wrong answer, the case cannot tell them apart)."""
    assert run_cases(ex, mistake.fn, ex.public_cases())[0] == "failed"
    assert any(msg is not None for seed in range(3) for msg in hidden_verdict(ex, _tolerant(mistake.fn), seed))
    cases = ex.public_cases() + [c for seed in range(3) for c in ex.hidden_cases(random.Random(seed))]
    told = []
    for case in cases:
        got = _tolerant(mistake.fn)(*case.args)
        if got is not None and ex.compare(ex.reference(*case.args), got) is not None:
            told.append(ex.hint_for(case, answers.to_json(got)))
    assert mistake.hint in told, f"{mistake.name}: never told its own hint"


def _tolerant(fn):
    def call(*args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - a mistake that cannot run a case has failed it
            return None
    return call


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.id)
def test_hard_coded_public_answers_fail_the_hidden_cases(ex):
    table = [(answers.to_json(c.args), ex.reference(*c.args)) for c in ex.public_cases()]
    memorized = lambda *args: next((v for k, v in table if k == answers.to_json(args)), None)  # noqa: E731
    assert run_cases(ex, memorized, ex.public_cases())[0] == "passed"
    assert run_cases(ex, memorized, ex.hidden_cases(random.Random(5)))[0] == "failed"


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.id)
def test_a_stub_is_not_attempted(ex):
    def stub(*args):
        raise NotImplementedError(ex.stub_message)

    assert run_cases(ex, stub, ex.public_cases())[0] == "not-attempted"


@pytest.mark.parametrize("lab", LABS)
def test_the_solution_builds_into_a_lab_with_one_stub_per_exercise(lab):
    built = build_lab(_solution(lab), notebook_of(lab))
    sources = "\n".join(c.source for c in built.cells if c.cell_type == "code")
    for ex in exercises(lab):
        assert sources.count(f'NotImplementedError("Exercise {ex.number}:') == 1, ex.id
    assert "### BEGIN SOLUTION" not in sources and BUGGY not in sources
    assert not any(c.get("outputs") for c in built.cells if c.cell_type == "code")
    committed = (ROOT / "labs" / f"{notebook_of(lab)}.ipynb").read_text(encoding="utf-8")
    assert committed.count("NotImplementedError(") >= len(exercises(lab))


@pytest.mark.parametrize("lab", LABS)
def test_the_set_up_cell_can_install_the_kit_where_it_is_missing(lab):
    """On Colab (or any kernel without dslab) the first code cell installs the kit from INSTALL_FROM, and says how
    when that is not set; with the kit installed it only checks the version."""
    first = next(c.source for c in _solution(lab).cells if c.cell_type == "code")
    assert "INSTALL_FROM = None" in first and "except ModuleNotFoundError" in first, first[:300]
    assert '"-e", INSTALL_FROM' in first and 'dslab.require("0.1.0")' in first


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def _statement(built: nbformat.NotebookNode, ex) -> str:
    """What a learner sees of exercise ``ex`` before solving it: the generated stub cell (signature, docstring, stub
    message) and every markdown cell since the previous exercise's stub."""
    marker = f'NotImplementedError("Exercise {ex.number}:'
    stub = next(i for i, c in enumerate(built.cells) if c.cell_type == "code" and marker in c.source)
    start = max((i for i, c in enumerate(built.cells[:stub])
                 if c.cell_type == "code" and 'NotImplementedError("Exercise ' in c.source), default=-1)
    return "\n".join(c.source for c in built.cells[start + 1:stub + 1]
                     if c.cell_type == "markdown" or c is built.cells[stub])


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.id)
def test_no_exercise_states_its_own_answer(ex):
    """Each exercise lists the expressions that would give its answer away; at least one of them is in the answer
    itself (the solution's hidden region or the reference), so the list names the answer, and none is in what the
    learner reads before solving (the generated lab's stub, docstring and markdown since the previous exercise)."""
    assert ex.giveaways, f"{ex.id}: list the expressions that would give the answer away (Exercise.giveaways)"
    solution = _solution(ex.lab)
    hidden = "\n".join(m for c in solution.cells if c.cell_type == "code"
                       for m in re.findall(r"### BEGIN SOLUTION(.*?)### END SOLUTION", c.source, re.S))
    answer = _squash(hidden + inspect.getsource(ex.reference))
    assert any(_squash(g) in answer for g in ex.giveaways), f"{ex.id}: no giveaway is in the answer itself"
    shown = _squash(_statement(build_lab(solution, notebook_of(ex.lab)), ex))
    leaked = [g for g in ex.giveaways if _squash(g) in shown]
    assert not leaked, f"{ex.id}: the lab states {leaked} before the exercise"
