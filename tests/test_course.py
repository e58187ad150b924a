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
from dslab.course.check import verdict
from dslab.course.exercises import Case, compare_close, compare_exact, exercises, find, lab_modules, notebook_of

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ registry
def test_every_lab_package_names_a_solution_notebook_and_valid_exercises():
    for lab, module in lab_modules().items():
        assert (ROOT / "solutions" / f"{notebook_of(lab)}.ipynb").exists()
        exs = module.EXERCISES
        ids = [ex.id for ex in exs]
        assert len(ids) == len(set(ids)) >= 5 and all(i.startswith(f"{lab}.") for i in ids), ids
        assert [ex.number for ex in exs] == [f"{int(lab)}.{k}" for k in range(1, len(exs) + 1)]  # in order
        assert len({ex.kind for ex in exs}) >= 2, f"lab {lab}: mix the kinds of exercise"


@pytest.mark.parametrize("exercise", [ex for lab in lab_modules() for ex in exercises(lab)], ids=lambda e: e.id)
def test_reference_passes_public_cases_and_hidden_cases_are_plain_varied_data(exercise):
    assert verdict(exercise.id, exercise.reference)[0] == "passed"
    for mistake in exercise.mistakes:  # a registered mistake that passes the public cases would be a dead hint
        assert verdict(exercise.id, mistake.fn)[0] == "failed", mistake.name
    a, b = exercise.hidden_cases(random.Random(1)), exercise.hidden_cases(random.Random(2))
    public = {answers.to_json(c.args) for c in exercise.public_cases()}
    assert not public & {answers.to_json(c.args) for c in a}, "hidden cases must not repeat the public ones"
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
    got_status, message = verdict("00.mla_params", answer)
    assert got_status == status and fragment in message and "\n" not in message


def test_check_never_raises_and_prints_one_line(capsys):
    import dslab

    assert dslab.check("no such thing", None) is None
    dslab.check("00.mla_params", accounting.mla_params)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("⚠️") and lines[1].startswith("✅ 00.mla_params")


def test_check_stops_a_runaway_answer():
    import dslab.course.check as C

    old, C.CALL_SECONDS = C.CALL_SECONDS, 0.2
    try:
        status, message = verdict("00.mla_params", lambda args: [0 for _ in iter(int, 1)])
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
    cell = next(c for c in sol.cells if "def mla_params" in c.source)
    sol.cells.append(nbformat.from_dict(dict(cell)))
    with pytest.raises(BuildError, match="00.mla_params"):
        build_lab(sol, "00_by_the_numbers")
    sol.cells = [c for c in sol.cells if "def mla_params" not in c.source]
    with pytest.raises(BuildError, match="without a region: \\['00.mla_params'\\]"):
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


@pytest.mark.slow
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


def test_a_registry_entry_that_breaks_is_an_error_not_a_verdict(monkeypatch):
    """A bug in an exercise's own cases must not show the learner "failed" (their code is not at fault)."""
    from dslab.course import check as C

    broken = Case((1,), "one")
    ex = find("00.mla_params")
    monkeypatch.setattr(C, "find", lambda _: type(ex)(**{**ex.__dict__, "public_cases": lambda: 1 / 0}))
    status, message = verdict("00.mla_params", accounting.mla_params)
    assert status == "error" and "ZeroDivisionError" in message
    with pytest.raises(ValueError, match="kind"):
        type(ex)(**{**ex.__dict__, "kind": "essay"})
    assert broken.args == (1,)


# ----------------------------------------------------------------------------------------------------- diagrams
def test_every_picture_a_notebook_shows_travels_inside_it():
    """A markdown cell that shows attachment:NAME must carry NAME, in solutions/ and in the generated labs/."""
    from dslab.course.diagrams import lab_diagrams, missing_attachments, references

    for folder in ("solutions", "labs"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            assert missing_attachments(nbformat.read(path, as_version=4)) == [], path
    for stem, diagrams in lab_diagrams().items():
        shown = references(nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4))
        assert set(diagrams) <= set(shown), f"{stem}: diagrams drawn but never shown: {set(diagrams) - set(shown)}"


def test_diagrams_embed_into_the_cell_that_references_them():
    from dslab.course.diagrams import embed, missing_attachments

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("see ![flow](attachment:flow.png)")])
    assert missing_attachments(nb) == ["flow.png"]
    assert embed(nb, {"flow.png": b"\x89PNG"}) == ["flow.png"] and missing_attachments(nb) == []
    assert embed(nb, {"flow.png": b"\x89PNG"}) == []  # unchanged bytes: nothing rewritten
    with pytest.raises(ValueError, match="no markdown cell shows"):
        embed(nb, {"other.png": b"x"})


# ---------------------------------------------------------------------------------------------------- course map
def test_course_map_in_readme_and_notebook_headers_are_generated_and_current():
    """README lists every lab in solutions/ with its current exercise count, and each header's time comes from
    solutions/runs.json: `python -m dslab coursemap` must have nothing to change."""
    from dslab.course.coursemap import rows, update

    assert update(ROOT / "solutions", ROOT / "README.md", check=True) == []
    listed = {r["notebook"]: r["exercises"] for r in rows(ROOT / "solutions")}
    assert set(listed) == {p.stem for p in (ROOT / "solutions").glob("*.ipynb")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for stem, count in listed.items():
        assert f"| `{stem}` |" in readme and f"| {count} (" in readme


def test_course_map_table_and_header_from_records(tmp_path):
    from dslab.course.coursemap import header_time, table

    row = {"lab": "07", "notebook": "07_x", "teaches": "t", "reproduces": "r", "exercises": 5, "points": 9,
           "defaults": 150.0, "fast": 20.4, "gpu": None, "machine": "2 CPU cores (X), torch 2"}
    text = table([row])
    assert "| 07 | `07_x` | t | r | 5 (9 points) | 2.5 min | 20 s | not measured |" in text
    assert header_time(row) == "about 2.5 min of compute at the defaults and 20 s with `FAST=True` (measured by " \
                               "`make run` on 2 CPU cores (X))"
    assert header_time({**row, "defaults": None, "fast": None}) == "not measured yet"


# ---------------------------------------------------------------------------------- one verdict, check and grader
def test_check_and_grader_judge_numpy_answers_alike():
    import numpy as np

    from dslab import moe
    from dslab.course.answers import call, judge
    from dslab.course.exercises import find

    ex = find("01.max_vio")
    for answer in (lambda load: np.float64(moe.max_vio(load)), lambda load: np.array(moe.max_vio(load)),
                   lambda load: torch.tensor(moe.max_vio(load))):
        for case in ex.public_cases():
            assert judge(ex, case, call(answer, case.args, 5.0)) is None  # what the grader decides
        assert verdict("01.max_vio", answer)[0] == "passed"  # what dslab.check shows


def test_answers_refuse_oversized_or_forged_payloads():
    from dslab.course.answers import MAX_BYTES, from_json

    with pytest.raises(ValueError, match="too large"):
        from_json(" " * (MAX_BYTES + 1))
    forged = '{"__tensor__": "float32", "shape": [1000], "b64": "AAAA"}'
    with pytest.raises(ValueError, match="does not fit"):
        from_json(forged)
    with pytest.raises(TypeError):
        from_json('{"__tensor__": "object", "shape": [1], "b64": ""}')


def test_runtime_watch_sees_a_delegated_call():
    from dslab import moe
    from dslab.course.answers import call, resolve

    watch = {resolve("dslab.moe.route"): "dslab.moe.route"}
    result = call(lambda s: moe.route(s, None, 1), (torch.randn(2, 4),), 5.0, watch)
    assert result["called"] == ["dslab.moe.route"]
    assert "called" not in call(lambda s: moe.affinities(s, "sigmoid"), (torch.randn(2, 4),), 5.0, watch)


@pytest.mark.parametrize("cells, expected", [
    (["import dslab.moe\nroute = dslab.moe.route"], ["dslab.moe.route"]),
    (["from dslab.moe import route"], ["dslab.moe.route"]),
    (["from dslab import moe as M\ndef route(*a):\n    return M.route(*a)"], ["dslab.moe.route"]),
    (["import dslab\ndef route(a):\n    return dslab.moe.Gate(a)(a)"], ["dslab.moe.Gate.forward"]),
    (["from dslab import moe\ndef route(x):\n    return moe.affinities(x, 'sigmoid')"], []),
    (["from dslab.moe import route", "def route(x):\n    return x"], []),  # the last binding is the learner's
    (["%timeit 1\nimport dslab.moe as m\nr = m.route\ndef route(*a):\n    return r(*a)"], ["dslab.moe.route"]),
])
def test_static_delegation(cells, expected):
    from dslab.course.delegation import static_delegation

    assert static_delegation(cells, "route", ("dslab.moe.route", "dslab.moe.Gate.forward")) == expected


def test_debug_exercises_ship_their_buggy_version():
    from dslab.course.exercises import find

    ex = find("01.bias_update")
    src = ("def bias_update(bias, load, gamma=0.001):\n    ### BEGIN SOLUTION\n    return right\n"
           "    ### BUGGY VERSION\n    # return wrong  # the bug\n    ### END SOLUTION")
    out, found = strip_solutions(src, {"bias_update": ex}, "t")
    assert found == ["01.bias_update"] and "return wrong  # the bug" in out and "right" not in out
    assert out.index("raise NotImplementedError") < out.index("return wrong")
    with pytest.raises(BuildError, match="debug"):
        strip_solutions(src.replace("    ### BUGGY VERSION\n    # return wrong  # the bug\n", ""),
                        {"bias_update": ex}, "t")


# ------------------------------------------------------------------------------------------------- environments
def test_conda_environment_keeps_the_same_pins_as_the_venv():
    """The conda path cannot be exercised here (no conda channel is reachable), so at least its pins must match."""
    import re

    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    conda = dict(re.findall(r"^\s+- ([\w-]+)=([\d.]+)\s*$", (ROOT / "environment.yml").read_text(), re.M))
    conda["matplotlib"] = conda.pop("matplotlib-base")  # conda-forge's name for matplotlib without a GUI backend
    torch = re.search(r"^TORCH_VERSION \?= ([\d.]+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert conda.pop("pytorch") == ".".join(torch.split(".")[:2]) and conda.pop("python") == "3.11"
    assert conda == pins
