"""The grader: full marks for solutions, zero for fresh labs, and a report for every way a submission can go wrong.

All submissions are graded in one batch (two at a time), as an instructor would, to keep the suite fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dslab.course.grade import Limits, grade

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_by_the_numbers.ipynb"
LAB = ROOT / "labs" / "00_by_the_numbers.ipynb"
pytestmark = pytest.mark.slow


def _variant(tmp: Path, name: str, edit) -> Path:
    nb = nbformat.read(SOLUTION, as_version=4)
    edit(nb)
    path = tmp / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _cell(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def _insert_after_setup(source: str):
    def edit(nb):
        idx = nb.cells.index(_cell(nb, "dslab.require"))
        nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(source))
    return edit


def _wrong_mla(nb):
    cell = _cell(nb, "def mla_params")
    cell.source = cell.source.split("### BEGIN SOLUTION")[0].rstrip(" ") + "    return 1\n"


def _hardcoded_mla(nb):  # passes the public check on V3 only if it were the only case; hidden cases catch it
    cell = _cell(nb, "def mla_params")
    cell.source = cell.source.split("### BEGIN SOLUTION")[0].rstrip(" ") + (
        "    return {7168: 187_107_328, 2048: 13_763_072, 128: 67_648}.get(args.dim, 0)\n")


def _cheat(nb):  # wrong answer plus attempts to tamper with the grading machinery inside the kernel
    _wrong_mla(nb)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import dslab, dslab.course.exercises as E, dslab.course.grade as G\n"
        "dslab.check = lambda *a, **k: print('all passed!')\n"
        "E.compare_exact = lambda expected, got: None\n"
        "G.score = lambda *a, **k: []\n"))


def _drop_parameters_tag(nb):
    cell = _cell(nb, "FAST: bool")
    cell.metadata["tags"] = []
    cell.source += "\nassert SEED == 0 and FAST is False"  # still runs: the grader's values come right after
    nb.cells.insert(nb.cells.index(cell) + 1, nbformat.v4.new_code_cell("assert FAST is True, 'FAST not injected'"))
    del nb.cells[nb.cells.index(cell) + 1]  # keep the notebook as the student left it, minus the tag
    nb.cells.append(nbformat.v4.new_code_cell("if FAST is not True:\n    raise RuntimeError('FAST was not injected')"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submissions")
    subs = {
        "solution": tmp / "solution.ipynb",
        "lab": tmp / "lab.ipynb",
        "wrong": _variant(tmp, "wrong", _wrong_mla),
        "hardcoded": _variant(tmp, "hardcoded", _hardcoded_mla),
        "cheat": _variant(tmp, "cheat", _cheat),
        "sysexit": _variant(tmp, "sysexit", _insert_after_setup("import sys\nsys.exit(3)")),
        "osexit": _variant(tmp, "osexit", _insert_after_setup("import os\nos._exit(1)")),
        "loop": _variant(tmp, "loop", _insert_after_setup("while True:\n    pass")),
        "flood": _variant(tmp, "flood", _insert_after_setup("for _ in range(4):\n    print('x' * 1_000_000)")),
        "notag": _variant(tmp, "notag", _drop_parameters_tag),
        "hog": _variant(tmp, "hog", _insert_after_setup("import numpy as np\nhog = np.ones(3 * 2**30 // 8)")),
    }
    shutil.copy(SOLUTION, subs["solution"])
    shutil.copy(LAB, subs["lab"])
    (tmp / "garbage.ipynb").write_text("{ this is not json", encoding="utf-8")
    (tmp / "notes.json").write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    (tmp / "essay.txt").write_text("my answers are in my head\n", encoding="utf-8")
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp.iterdir()}
    out = tmp_path_factory.mktemp("grades")
    limits = Limits(cell_seconds=20, total_seconds=240, memory_mb=2048)
    reports = grade([tmp], out, grading_seed=7, jobs=2, limits=limits)
    return {Path(r["submission"]).stem: r for r in reports}, digests, out


def _points(report):
    return {e["id"]: e["points"] for e in report["exercises"]}


def test_solution_scores_full_marks(batch):
    r = batch[0]["solution"]
    assert r["status"] == "graded" and r["score"] == r["max_score"] == 6
    assert all(e["message"].startswith("all") for e in r["exercises"])


def test_fresh_lab_scores_zero_with_not_implemented(batch):
    r = batch[0]["lab"]
    assert r["status"] == "graded" and r["score"] == 0
    assert [e["message"] for e in r["exercises"]] == ["not implemented"] * 3


def test_one_wrong_exercise_loses_only_its_points(batch):
    r = batch[0]["wrong"]
    assert _points(r) == {"00.mla_params": 0.0, "00.kv_bytes": 2.0, "00.moe_activated": 2.0}
    assert "expected" in r["exercises"][0]["message"]


def test_hidden_cases_catch_hard_coded_answers(batch):
    assert _points(batch[0]["hardcoded"])["00.mla_params"] == 0.0


def test_tampering_inside_the_kernel_gains_nothing(batch):
    r = batch[0]["cheat"]
    assert _points(r)["00.mla_params"] == 0.0 and r["score"] == 4


def test_sys_exit_is_reported_and_the_rest_is_graded(batch):
    r = batch[0]["sysexit"]
    assert r["score"] == 6 and any("sys.exit()" in p for p in r["problems"])


def test_dead_kernel_is_reported_and_the_rest_is_graded(batch):
    r = batch[0]["osexit"]
    assert r["score"] == 6 and any("ended the kernel" in p for p in r["problems"])


def test_endless_loop_is_interrupted_and_the_rest_is_graded(batch):
    r = batch[0]["loop"]
    assert r["score"] == 6 and any("interrupted" in p or "did not finish" in p for p in r["problems"])


def test_output_flood_is_cut(batch):
    r = batch[0]["flood"]
    assert r["score"] == 6 and any("more output" in p for p in r["problems"])
    assert Path(r["executed_notebook"]).stat().st_size < 4_000_000


def test_memory_hog_hits_the_cap_and_the_rest_is_graded(batch):
    r = batch[0]["hog"]
    assert r["score"] == 6 and any("ran out of memory" in p and "2048 MiB" in p for p in r["problems"]), r["problems"]


def test_limits_are_validated():
    from dslab.course.execute import limit_memory

    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError, match="cell_seconds"):
        Limits(cell_seconds=0)
    with pytest.raises(ValueError, match="memory limit"):
        limit_memory(-5)
    assert limit_memory(0) is False  # no cap asked: nothing set


def test_missing_parameters_tag_is_restored_so_fast_is_injected(batch):
    r = batch[0]["notag"]
    assert r["score"] == 6 and not any("not injected" in p for p in r["problems"]), r["problems"]


@pytest.mark.parametrize("name, status", [("garbage", "invalid-json"), ("notes", "not-a-notebook"),
                                          ("essay", "invalid-json")])
def test_broken_files_get_a_report_naming_the_problem(batch, name, status):
    r = batch[0][name]
    assert r["status"] == status and r["score"] == 0 and r["max_score"] == 0 and r["problems"]


def test_submissions_are_never_modified_and_every_one_has_a_report(batch):
    reports, digests, out = batch
    for path, digest in digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert len(reports) == len(digests)
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == len(digests) + 1 and rows[0].startswith("name,lab,status,score,max_score")
    for r in reports.values():
        saved = json.loads((out / f"{r['name']}.json").read_text())
        assert saved["score"] == r["score"] and "seconds" in saved


def test_cli_exit_codes(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "dslab", "grade", *args], capture_output=True, text=True)
    bad = tmp_path / "bad.ipynb"
    bad.write_text("nope")
    ok = run(str(bad), "--out", str(tmp_path / "out"))
    assert ok.returncode == 0 and "invalid-json" in ok.stdout
    assert run(str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "out")).returncode == 2
    negative = run(str(bad), "--out", str(tmp_path / "out"), "--memory-mb", "-1")
    assert negative.returncode == 2 and "memory_mb" in negative.stderr
