"""The grader's handling of what reaches it before any notebook runs: the command line and its exit codes, the limits,
file names, old and oversized notebooks, and a grader whose own package changes mid-batch. Split from test_grade.py
(whose module-scoped batch holds one test worker for minutes) so that the other worker runs these."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslab.course import grade as G
from dslab.course.grade import Limits, grade
from dslab.course.manifest import read_json
from dslab.course.sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_by_the_numbers.ipynb"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no sandbox: {bwrap_problem()}")]


def test_the_command_line_offers_strict_grading(monkeypatch, tmp_path):
    import dslab.__main__ as cli
    import dslab.course.grade as G

    seen = {}
    monkeypatch.setattr(G, "grade", lambda *a, **kw: seen.update(kw) or [])
    (tmp_path / "s.ipynb").write_text("{}")
    assert cli.main(["grade", str(tmp_path / "s.ipynb"), "--out", str(tmp_path / "o"), "--strict"]) == 0
    assert seen["strict"] is True


def test_the_grader_stops_when_its_own_package_changes(tmp_path, monkeypatch):
    subs = tmp_path / "class"
    subs.mkdir()
    for i in range(3):
        (subs / f"s{i}.ipynb").write_text("not json")
    digests = iter(["a", "a", "a", "b", "b", "b", "b"])
    monkeypatch.setattr(G, "package_digest", lambda: next(digests))
    with pytest.raises(G.GraderChanged):
        grade([subs], tmp_path / "out", jobs=1, sandbox="bwrap")
    assert (tmp_path / "out" / "s0.json").exists()  # what was finished before the change is kept


def test_report_names_are_unique_whatever_the_paths():
    names = G.unique_names([Path("c2/sol.ipynb"), Path("c3/sol.ipynb"), Path("c3/sol-2.ipynb"), Path("x/sol.ipynb")])
    assert len(set(names)) == 4 and "sol-2" in names


def test_lab_is_taken_from_the_file_name_and_a_mismatch_is_flagged():
    data = SOLUTION.read_bytes()
    nb, lab, flags = G.read_submission(data, "03_mla.ipynb", None)
    assert lab == "03" and any("lab mismatch" in f and "lab 00" in f for f in flags)
    assert G.read_submission(data, "anything.ipynb", None)[1] == "00"
    assert G.read_submission(data, "anything.ipynb", "01")[1] == "01"


def test_nbformat_3_notebooks_are_converted():
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": ""}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "x = 1", "language": "python", "outputs": [], "metadata": {}}],
        "metadata": {}}]}
    nb, lab, flags = G.read_submission(json.dumps(v3).encode(), "00_mine.ipynb", None)
    assert nb.nbformat == 4 and nb.cells[0].source == "x = 1" and "converted from nbformat 3" in flags


def test_oversized_files_are_refused_before_parsing():
    with pytest.raises(G.Rejected, match="MiB"):
        G.read_submission(b" " * (2 * 2**20), "00_big.ipynb", None, Limits(max_notebook_mb=1))
    assert read_json(Path(os.devnull), 10) == {}


def test_limits_are_validated():
    from dslab.course.execute import limit_memory

    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError, match="cell_seconds"):
        Limits(cell_seconds=0)
    with pytest.raises(ValueError, match="call_seconds"):
        Limits(call_seconds=0)
    with pytest.raises(ValueError, match="memory limit"):
        limit_memory(-5)
    assert limit_memory(0) is False


def test_cli_exit_codes(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "dslab", "grade", *args], capture_output=True, text=True)
    bad = tmp_path / "class" / "bad.ipynb"
    bad.parent.mkdir()
    bad.write_text("nope")
    ok = run(str(bad), "--out", str(tmp_path / "out"))
    assert ok.returncode == 0 and "invalid-json" in ok.stdout
    assert run(str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "out")).returncode == 2
    negative = run(str(bad), "--out", str(tmp_path / "out"), "--memory-mb", "-1")
    assert negative.returncode == 2 and "memory_mb" in negative.stderr
