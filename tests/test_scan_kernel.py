"""The kernel's report on itself at grading time (dslab.course.execute.kernel_report, run here in-process from the very
source the grading cell inlines) and how the grader turns it into flags and, when strict, into points
(dslab.course.scoring). Each in-kernel check has a hostile and an honest case; the full path through real kernels is in
test_grade.py."""

from __future__ import annotations

import json
import sys
import threading
import types

import pytest

import dslab.course.answers as A
from dslab.course import scoring
from dslab.course.execute import _shell_hooks, code_hash, grading_source, inlined_report, kernel_report
from dslab.course.exercises import exercises
from dslab.course.scan import Flag


@pytest.fixture()
def report(tmp_path):
    """Run the inlined report (as the grading cell does) at one stage -> what it wrote. ``run.baseline``: the flags
    this test process raises before the test does anything (a thread another test left, a coverage tracer)."""
    spec = scoring.kernel_request()
    namespace: dict = {}
    exec(inlined_report(), namespace)  # the grading cell's copy, not the module's functions

    def run(stage: str = "before") -> dict:
        namespace["_dslab_kernel_report"](spec, str(tmp_path / "kernel.json"), stage)
        written = json.loads((tmp_path / "kernel.json").read_text())
        assert written["nonce"] == spec["nonce"]
        return written

    run.spec = spec
    run.baseline = set(scoring.kernel_flags(run(), spec["nonce"], True, {}))
    return run


def _flags(written: dict, run, answered: bool = True) -> list[str]:
    """The flags of ``written`` that the test itself caused."""
    return [f for f in scoring.kernel_flags(written, run.spec["nonce"], answered, {}) if f not in run.baseline]


def test_an_honest_kernel_reports_nothing_to_flag(report):
    written = report()
    assert written["before"]["code"] == scoring.answering_code()
    assert _flags(written, report) == [] and not any("dslab" in f for f in report.baseline)


def test_patched_answering_code_is_flagged_by_name(report, monkeypatch):
    monkeypatch.setattr(A, "answer_all", lambda *a, **k: {})
    flags = _flags(report(), report)
    assert flags == ["patched grader code: at grading time dslab.course.answers.answer_all was not the package's own"]


def test_a_thread_still_running_learner_code_is_flagged_and_a_joined_one_is_not(report):
    done = threading.Event()

    def _progress():
        done.wait(5)

    honest = threading.Thread(target=_progress, daemon=True)
    honest.start()
    done.set()
    honest.join()
    assert _flags(report(), report) == []
    stop = threading.Event()
    spy = threading.Thread(target=lambda: stop.wait(5), name="spy", daemon=True)
    spy.start()
    try:
        flags = _flags(report(), report)
    finally:
        stop.set()
        spy.join()
    assert len(flags) == 1 and flags[0].startswith("background thread: at grading time, thread 'spy' running <lambda>")


def test_a_trace_function_is_flagged(report):
    sys.setprofile(lambda *a: None)
    try:
        written = report()
    finally:
        sys.setprofile(None)
    assert [f.split(":")[0] for f in _flags(written, report)] == ["kernel hook"]
    assert "sys.setprofile is set: <lambda>" in _flags(written, report)[0]


def test_ipython_callbacks_and_transformers_from_learner_code_are_flagged():
    roots = scoring.kernel_request()["roots"]

    def _before(info):
        return info

    installed = threading.Thread.run  # installed code stands in for IPython's own callbacks
    shell = types.SimpleNamespace(events=types.SimpleNamespace(callbacks={"pre_run_cell": [installed]}),
                                  input_transformers_cleanup=[installed], ast_transformers=[])
    assert _shell_hooks(shell, roots) == []
    shell.events.callbacks["pre_run_cell"].append(_before)
    shell.input_transformers_cleanup.append(print)  # C code: nothing to trust it by
    found = _shell_hooks(shell, roots)
    assert found[0].startswith("IPython pre_run_cell callback: _before (") and "input_transformers_cleanup" in found[1]
    assert len(found) == 2


def test_a_missing_or_stale_report_is_a_flag_only_when_the_cell_answered(report):
    written = report()
    assert _flags({}, report) == [scoring.MISSING]
    assert _flags({**written, "nonce": "an earlier cell's"}, report) == [scoring.MISSING]
    assert _flags({}, report, answered=False) == []


def test_cell_numbers_in_the_report_become_the_notebooks_cells():
    written = {"nonce": "n", "before": {"code": {}, "hooks": ["IPython pre_run_cell callback: _before (In[7])"]}}
    flags = scoring.kernel_flags(written, "n", False, {7: 12})
    assert flags == ["kernel hook: at grading time, IPython pre_run_cell callback: _before (cell 12)"]


def test_the_grading_cell_carries_the_report_and_still_answers_when_it_fails():
    spec = {"nonce": "n", "functions": [], "roots": []}
    source = grading_source({"exercises": [], "kernel": spec}, 2.0)
    compile(source, "grading cell", "exec")
    assert source.count("_dslab_kernel_report(") == 3 and "except Exception" in source  # defined, before, after
    assert "_dslab_kernel_report" not in grading_source({"exercises": []}, 2.0)


def test_code_hash_ignores_the_file_but_not_the_code():
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert code_hash(f.__code__) == code_hash(f.__code__.replace(co_filename="elsewhere.py", co_firstlineno=99))
    assert code_hash(f.__code__) != code_hash(g.__code__.replace(co_name="f"))
    with pytest.raises(TypeError, match="code"):
        code_hash(f)
    with pytest.raises(ValueError, match="stage"):
        kernel_report({"nonce": "n", "functions": [], "roots": []}, "k.json", "during")


# ------------------------------------------------------------------------------------------- policy: strict
def test_strict_scores_flagged_exercises_zero_and_only_those():
    exs = exercises("00")
    inside = Flag("dynamic code", 9, 2, "eval(text)", exs[0].target)
    flags = scoring.exercise_flags(exs, [inside], [])
    assert flags[exs[0].id] == [str(inside)] and all(flags[ex.id] == [] for ex in exs[1:])
    everywhere = scoring.exercise_flags(exs, [Flag("kernel hook", 2, 1, "sys.settrace", None)], ["kernel hook: x"])
    assert all(len(v) == 2 for v in everywhere.values())
    cases = {ex.id: ex.public_cases() for ex in exs}
    answers = {ex.id: {"results": [A.call(ex.reference, c.args, 5.0) for c in cases[ex.id]]} for ex in exs}
    lenient = scoring.score(exs, cases, answers, "", {}, flags=flags)
    strict = scoring.score(exs, cases, answers, "", {}, flags=flags, strict=True)
    assert [r["points"] for r in lenient] == [ex.points for ex in exs] and lenient[0]["flags"] == [str(inside)]
    assert [r["points"] for r in strict] == [0.0] + [ex.points for ex in exs[1:]]
    assert "strict grading" in strict[0]["message"]


def test_a_copy_of_a_reference_is_named_and_one_of_a_forbidden_callable_is_delegation():
    ex = exercises("00")[0]
    ref = ex.reference
    copy = types.FunctionType(ref.__code__.replace(co_name="mine"), ref.__globals__, "mine")
    case = ex.public_cases()[0]
    result = A.call(copy, case.args, 5.0, {}, A.places(list(ex.forbidden)))
    assert result["copied"] == [f"{ref.__module__}.{ref.__name__}"] and "called" not in result
    [row] = scoring.score([ex], {ex.id: [case]}, {ex.id: {"results": [result]}}, "", {})
    assert row["points"] == 0 and row["flags"] == [f"cloned reference: {ex.id} ran a copy of {result['copied'][0]}"]
    honest = A.call(lambda args: ref(args), case.args, 5.0, {}, A.places(list(ex.forbidden)))
    assert "copied" not in honest
