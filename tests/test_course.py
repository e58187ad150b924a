"""Course tooling: exercise registry, instant feedback, the JSON codec, building labs from solutions."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from dslab import accounting
from dslab.configs import load
from dslab.course import answers
from dslab.course.build import BuildError, build_all, build_lab, normalize, strip_solutions
from dslab.course.check import evaluate
from dslab.course.exercises import Case, compare_close, compare_exact, exercises, find, lab_modules, notebook_of

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ registry
def test_every_lab_package_names_a_solution_notebook_and_valid_exercises():
    for lab, module in lab_modules().items():
        assert (ROOT / "solutions" / f"{notebook_of(lab)}.ipynb").exists()
        ids = [ex.id for ex in module.EXERCISES]
        assert len(ids) == len(set(ids)) >= 3 and all(i.startswith(f"{lab}.") for i in ids)


@pytest.mark.parametrize("exercise", [ex for lab in lab_modules() for ex in exercises(lab)], ids=lambda e: e.id)
def test_reference_passes_public_cases_and_hidden_cases_are_plain_varied_data(exercise):
    assert evaluate(exercise.id, exercise.reference)[0] == "passed"
    a, b = exercise.hidden_cases(random.Random(1)), exercise.hidden_cases(random.Random(2))
    assert len(a) >= 3 and len({c.label for c in a}) == len(a) and [c.label for c in a] == [c.label for c in b]
    for case in a:  # what crosses to the learner's kernel, and back, must survive the grader's codec
        expected = exercise.reference(*case.args)
        assert exercise.compare(expected, exercise.reference(*answers.from_json(answers.to_json(case.args)))) is None
        assert exercise.compare(expected, answers.from_json(answers.to_json(expected))) is None
    assert answers.to_json([c.args for c in a]) != answers.to_json([c.args for c in b])
    again = exercise.hidden_cases(random.Random(1))
    assert answers.to_json([c.args for c in a]) == answers.to_json([c.args for c in again])


def test_find_names_the_lab_exercises_when_unknown():
    with pytest.raises(ValueError, match="00.mla_params"):
        find("00.nope")
    with pytest.raises(ValueError, match="looks like"):
        find("nodot")


# ------------------------------------------------------------------------------------------------------- check
def _raise_not_implemented(*args):
    raise NotImplementedError("Exercise 0.1: do it")


@pytest.mark.parametrize("answer, status, fragment", [
    (accounting.mla_params, "passed", "public checks passed"),
    (None, "not-attempted", "pass your function"),
    (_raise_not_implemented, "not-attempted", "Exercise 0.1: do it"),
    (lambda args: 1, "failed", "expected 187,107,328, got 1. Hint:"),
    (lambda args: 1 / 0, "failed", "ZeroDivisionError"),
    (lambda args: sys.exit(1), "failed", "SystemExit"),
    (42, "failed", "expected a function"),
])
def test_check_statuses(answer, status, fragment):
    got_status, message = evaluate("00.mla_params", answer)
    assert got_status == status and fragment in message and "\n" not in message


def test_check_never_raises_and_prints_one_line(capsys):
    import dslab

    assert dslab.check("no such thing", None) is None
    dslab.check("00.kv_bytes", accounting.kv_bytes_per_token)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("⚠️") and lines[1].startswith("✅ 00.kv_bytes")


def test_check_stops_a_runaway_answer():
    import dslab.course.check as C

    old, C.CALL_SECONDS = C.CALL_SECONDS, 0.2
    try:
        status, message = evaluate("00.mla_params", lambda args: [0 for _ in iter(int, 1)])
    finally:
        C.CALL_SECONDS = old
    assert status == "failed" and "longer than" in message


# ------------------------------------------------------------------------------------------------------- codec
@pytest.mark.parametrize("value", [3, 2.5, float("nan"), float("-inf"), "s", None, True, [1, (2, 3)],
                                   {"a": torch.arange(6).view(2, 3)}, torch.randn(2, 2, dtype=torch.float64),
                                   load("tiny-mla")])
def test_codec_round_trip(value):
    back = answers.from_json(answers.to_json(value))
    if isinstance(value, float) and value != value:
        assert back != back
    elif isinstance(value, dict):
        assert torch.equal(back["a"], value["a"])
    elif isinstance(value, torch.Tensor):
        assert torch.equal(back, value) and back.dtype == value.dtype
    else:
        assert back == value and type(back) is type(value)


def test_codec_refuses_objects():
    with pytest.raises(TypeError):
        answers.to_json(object())
    with pytest.raises(TypeError):
        answers.from_json('{"__pickle__": "x"}')


def test_compare_helpers():
    assert compare_exact(3, 3) is None and "expected 3, got 4" in compare_exact(3, 4)
    assert compare_close(torch.ones(2), torch.ones(2) + 1e-9) is None
    assert "shape" in compare_close(torch.ones(2), torch.ones(3))
    assert "tensor" in compare_close(torch.ones(2), 1.0)
    assert compare_close((1.0, torch.zeros(1)), [1.0, torch.zeros(1)]) is None


# ------------------------------------------------------------------------------------------------------- build
EX = {ex.target: ex for ex in exercises("00")}


def test_strip_keeps_signature_docstring_and_indentation():
    src = 'def mla_params(args):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\nx = 1'
    out, ids = strip_solutions(src, EX, "t")
    assert ids == ["00.mla_params"] and "return 42" not in out and '"""Doc."""' in out and out.endswith("x = 1")
    assert '    raise NotImplementedError("Exercise 0.1: ' in out


@pytest.mark.parametrize("src, match", [
    ("def mla_params(a):\n    ### BEGIN SOLUTION\n    return 1\n", "without a matching"),
    ("def mla_params(a):\n    return 1\n    ### END SOLUTION\n", "without"),
    ("def other(a):\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "not a registered"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "no function"),
])
def test_strip_rejects_malformed_regions(src, match):
    with pytest.raises(BuildError, match=match):
        strip_solutions(src, EX, "t")


def test_built_lab_has_no_answers_outputs_or_run_metadata():
    sol = nbformat.read(ROOT / "solutions" / "00_by_the_numbers.ipynb", as_version=4)
    lab = build_lab(sol, "00_by_the_numbers")
    text = nbformat.writes(lab)
    sources = "\n".join(c.source for c in lab.cells)
    assert "### BEGIN SOLUTION" not in text and 'NotImplementedError("Exercise 0.2:' in sources
    assert all(c.outputs == [] and c.execution_count is None for c in lab.cells if c.cell_type == "code")
    assert lab.metadata.dslab == {"notebook": "00_by_the_numbers", "role": "lab"}
    assert any("parameters" in c.metadata.get("tags", []) for c in lab.cells)


def test_build_reports_missing_and_duplicate_regions():
    sol = nbformat.read(ROOT / "solutions" / "00_by_the_numbers.ipynb", as_version=4)
    cell = next(c for c in sol.cells if "def kv_bytes_per_token" in c.source)
    sol.cells.append(nbformat.from_dict(dict(cell)))
    with pytest.raises(BuildError, match="00.kv_bytes"):
        build_lab(sol, "00_by_the_numbers")
    sol.cells = [c for c in sol.cells if "def kv_bytes_per_token" not in c.source]
    with pytest.raises(BuildError, match="without a region: \\['00.kv_bytes'\\]"):
        build_lab(sol, "00_by_the_numbers")


def test_normalize_drops_run_metadata_and_injected_cells():
    nb = nbformat.v4.new_notebook()
    nb.metadata.update(papermill={"duration": 1}, widgets={"state": {}}, kernelspec={"name": "course-env"})
    inj = nbformat.v4.new_code_cell("FAST = True", metadata={"tags": ["injected-parameters"]})
    keep = nbformat.v4.new_code_cell("x = 1", metadata={"papermill": {"status": "completed"}, "tags": ["t"]})
    keep.execution_count, keep.outputs = 3, [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells = [inj, keep]
    out = normalize(nb, "solution", "stem")
    assert [c.source for c in out.cells] == ["x = 1"] and out.cells[0].metadata == {"tags": ["t"]}
    assert out.cells[0].outputs and out.metadata.kernelspec["name"] == "python3" and "papermill" not in out.metadata


def test_labs_are_in_sync_with_solutions():
    assert build_all(ROOT / "solutions", ROOT / "labs", check=True) == []


def test_build_check_cli_fails_on_a_stale_lab(tmp_path):
    labs, sols = tmp_path / "labs", tmp_path / "solutions"
    sols.mkdir()
    (sols / "00_by_the_numbers.ipynb").write_bytes((ROOT / "solutions" / "00_by_the_numbers.ipynb").read_bytes())
    cli = [sys.executable, "-m", "dslab", "build", "--solutions", str(sols), "--labs", str(labs)]
    assert subprocess.run(cli + ["--check"], capture_output=True).returncode == 1
    assert subprocess.run(cli, capture_output=True).returncode == 0
    assert subprocess.run(cli + ["--check"], capture_output=True).returncode == 0
    (labs / "00_by_the_numbers.ipynb").write_text("{}")
    assert subprocess.run(cli + ["--check"], capture_output=True).returncode == 1


def test_case_is_frozen():
    case = Case((1,), "one")
    with pytest.raises(AttributeError):
        case.label = "two"
