"""The grader: full marks for solutions, zero for fresh labs, a report for every way one submission can go wrong, and
a batch that holds against a class of determined students (each threat its own small hostile notebook), including
those who hook their own kernel to answer the hidden cases (flagged by name, issue 24).

All submissions are graded in one batch (three at a time, so that the ones that sleep or hang do not idle a core),
as an instructor would, to keep the suite fast. The batch runs in the bubblewrap sandbox; without bwrap the isolation
tests are skipped with the reason. What the grader does before any notebook runs is in test_grade_inputs.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from dslab.course import grade as G
from dslab.course.exercises import exercises
from dslab.course.grade import Limits, grade
from dslab.course.sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_by_the_numbers.ipynb"
LAB = ROOT / "labs" / "00_by_the_numbers.ipynb"
IDS = [ex.id for ex in exercises("00")]
TARGETS = {ex.id: ex.target for ex in exercises("00")}
FULL = sum(ex.points for ex in exercises("00"))
POINTS = {ex.id: ex.points for ex in exercises("00")}
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no sandbox: {bwrap_problem()}")]
DAEMON_MARK = "dslab-test-daemon-7f3a"
LIMITS = Limits(cell_seconds=25, total_seconds=300, memory_mb=2048, call_seconds=4.0)  # the batch's, and its reruns'


def _nb(path: Path = SOLUTION):
    return nbformat.read(path, as_version=4)


def _write(tmp: Path, name: str, nb) -> Path:
    path = tmp / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _cell(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def _after_setup(nb, source: str):
    nb.cells.insert(nb.cells.index(_cell(nb, "dslab.require")) + 1, nbformat.v4.new_code_cell(source))
    return nb


def _at_end(nb, source: str):
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return nb


def _replace_body(nb, target: str, body: str):
    cell = _cell(nb, f"def {target}(")
    cell.source = cell.source.split("### BEGIN SOLUTION")[0].rstrip(" ") + body
    return nb


# ------------------------------------------------------------------------------------- issue 24: hooked kernels
# Each defines every exercise of lab 00 as a copy of its reference (the same code under the exercise's name), at a
# moment the grader does not see coming: from a patched answer_all, an IPython hook, a thread.
CLONE = """
import types
from dslab.course.exercises import exercises as _exs
def _clone(ex):
    ref = ex.reference
    return types.FunctionType(ref.__code__.replace(co_name=ex.target), ref.__globals__, ex.target, ref.__defaults__,
                              ref.__closure__)
"""
PATCH = """
import dslab.course.answers as A
_real = A.answer_all
def _answer_all(namespace, request, seconds, on_progress=None):
    for ex in _exs('00'):
        namespace[ex.target] = _clone(ex)
    for ex in request['exercises']:
        ex['forbidden'], ex['references'] = [], []
    return _real(namespace, request, seconds, on_progress)
A.answer_all = _answer_all
"""
HOOK = """
def _before(info):
    if '_dslab_grade_cell' in (info.raw_cell or ''):
        for ex in _exs('00'):
            globals()[ex.target] = _clone(ex)
get_ipython().events.register('pre_run_cell', _before)
"""
THREAD = """
import threading, time
def _watch():
    while '_dslab_grade_cell' not in globals():
        time.sleep(0.005)
    for ex in _exs('00'):
        globals()[ex.target] = _clone(ex)
threading.Thread(target=_watch, daemon=True).start()
"""
SUPPRESS = """
def _strip(lines):
    if '_dslab_kernel_report' in ''.join(lines):
        return [line for line in lines if line.startswith(('from dslab.course.answers', '_dslab_grade_cell('))]
    return lines
get_ipython().input_transformers_cleanup.append(_strip)
"""
HONEST = """
import threading, time
import numpy as np
import torch
import matplotlib.pyplot as plt
from tqdm.auto import tqdm
done = threading.Event()
def _progress():
    while not done.wait(0.05):
        print('.', end='', flush=True)
spinner = threading.Thread(target=_progress, daemon=True)
spinner.start()
for step in tqdm(range(3)):
    x = torch.randn(4, 4) @ torch.from_numpy(np.eye(4, dtype=np.float32))
    time.sleep(0.05)
done.set()
spinner.join()
fig, ax = plt.subplots()
ax.plot(np.arange(3))
plt.show()
def _double(n):
    return 2 * n
"""


# ----------------------------------------------------------------------------------------------- the submissions
def _submissions(tmp: Path, out: Path) -> dict[str, Path]:
    subs = tmp / "class"
    first = IDS[0]
    s = {}
    s["solution"] = _write(subs, "solution", _nb())
    s["lab"] = _write(subs, "lab", _nb(LAB))
    s["wrong"] = _write(subs, "wrong", _replace_body(_nb(), TARGETS[first], "    return 1\n"))
    s["cheat"] = _write(subs, "cheat", _at_end(_replace_body(_nb(), TARGETS[first], "    return 1\n"),
        "import dslab, dslab.course.exercises as E, dslab.course.grade as G\n"
        "dslab.check = lambda *a, **k: print('all passed!')\nE.compare_exact = lambda expected, got: None\n"
        "G.score = lambda *a, **k: []\n"))
    s["sysexit"] = _write(subs, "sysexit", _after_setup(_nb(), "import sys\nsys.exit(3)"))
    # a cell that never ends; it sleeps rather than spins so that its 25 s do not take a core from the batch
    s["loop"] = _write(subs, "loop", _after_setup(_nb(), "import time\nwhile True:\n    time.sleep(0.01)"))
    s["flood"] = _write(subs, "flood", _after_setup(_nb(), "for _ in range(4):\n    print('x' * 1_000_000)"))
    s["hog"] = _write(subs, "hog", _after_setup(_nb(), "import numpy as np\nhog = np.ones(3 * 2**30 // 8)"))
    notag = _nb()
    params = _cell(notag, "FAST: bool")
    params.metadata["tags"] = []
    s["notag"] = _write(subs, "notag", _at_end(notag, "if FAST is not True:\n    raise RuntimeError('FAST was not "
                                                       "injected')"))
    # -- a class of determined students
    peer_file, peer_report = s["solution"], out / "solution.json"
    s["copy_peer"] = _write(subs, "copy_peer", _after_setup(_nb(LAB), f"""
import glob, json, os
found = []
for pid in os.listdir('/proc'):
    try:
        found += [a for a in open(f'/proc/{{pid}}/cmdline').read().split('\\0') if a.endswith('.ipynb')]
    except Exception:
        pass
found = [os.path.abspath(p) for p in found if os.path.dirname(os.path.abspath(p)) != os.getcwd()]  # not its own
found += glob.glob({str(subs)!r} + '/*.ipynb') + glob.glob({str(out)!r} + '/executed/*.ipynb')
for path in found:
    try:
        for cell in json.load(open(path))['cells']:
            src = ''.join(cell['source'])
            if cell['cell_type'] == 'code' and src.lstrip().startswith('def '):
                exec(src, globals())
    except Exception:
        pass
print('peers found:', len(found))
"""))
    s["tamper"] = _write(subs, "tamper", _at_end(_nb(LAB), f"""
import json, shutil
for target, text in (({str(peer_report)!r}, json.dumps({{'score': 0, 'status': 'tampered'}})),
                     ({str(peer_file)!r}, open({str(LAB)!r}).read())):
    try:
        open(target, 'w').write(text)
        print('wrote', target)
    except Exception as e:
        print('could not write', target, type(e).__name__)
"""))
    s["daemon"] = _write(subs, "daemon", _at_end(_nb(LAB), f"""
import subprocess, sys
code = '''
import json, os, time
os.setsid()
for _ in range(600):
    try:
        json.dump({{"score": 99, "status": "graded"}}, open({str(out / "daemon.json")!r}, "w"))
        open({str(out / "grades.csv")!r}, "a").write("daemon,00,graded,99\\\\n")
    except Exception:
        pass
    time.sleep(0.1)
'''
subprocess.Popen([sys.executable, '-c', code, '{DAEMON_MARK}'], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""))
    s["peek"] = _write(subs, "peek", _after_setup(_nb(LAB), """
import os
seen = [k for k in os.environ if 'GRADE' in k or 'INPUT' in k]
places = [p for p in os.listdir('.') if os.path.isfile(p)]
places += [f'/proc/{os.getppid()}/{name}' for name in ('environ', 'fd/0', 'cmdline')]
for path in places:
    try:
        if b'"forbidden"' in open(path, 'rb').read(1 << 24):
            seen.append(path)
    except Exception:
        pass
print('hidden inputs seen:', seen or 'NOTHING')
"""))
    import dslab.accounting as _acc  # noqa: F401 - the names the delegation lines use
    s["delegate"] = _write(subs, "delegate", _at_end(_nb(LAB), "import dslab.accounting\n" + "\n".join(
        f"{ex.target} = {ex.reference.__module__}.{ex.reference.__name__}" for ex in exercises("00")
        if ex.forbidden and ex.reference.__module__ == "dslab.accounting")))
    # hangs on some hidden cases, and only in the grading cell (where the grader's import defines _dslab_grade_cell):
    # the per-call limit is under test here, not the per-cell one (that is "loop"), which would cost 25 s a cell
    s["hang"] = _write(subs, "hang", _replace_body(_nb(), TARGETS[first], (
        "    import time\n    if args.n_layers % 2 and '_dslab_grade_cell' in globals():\n        while True:\n"
        "            time.sleep(0.1)\n    return _mla_params_ok(args)\n")))
    hang = _nb(s["hang"])
    ok_cell = _cell(_nb(), f"def {TARGETS[first]}(").source.replace(f"def {TARGETS[first]}(", "def _mla_params_ok(")
    hang.cells.insert(hang.cells.index(_cell(hang, f"def {TARGETS[first]}(")), nbformat.v4.new_code_cell(ok_cell))
    nbformat.write(hang, s["hang"])
    killer = _nb()
    cell = _cell(killer, f"def {TARGETS[IDS[1]]}(")
    cell.source += "\n\nimport os\nos._exit(1)\n"  # defines the exercise, then kills the kernel
    s["killer"] = _write(subs, "killer", killer)
    s["kill_grader"] = _write(subs, "kill_grader", _after_setup(_nb(), "import os, signal\ntry:\n    os.kill(-1, "
                                                                       "signal.SIGKILL)\nexcept Exception:\n    pass"))
    import dslab.labs.lab00_by_the_numbers.exercises as reg
    s["poison"] = _write(subs, "poison", _at_end(_nb(LAB), f"""
try:
    open({reg.__file__!r}, 'a').write('\\nEXERCISES = []\\n')
    print('poisoned')
except Exception as e:
    print('registry is read-only:', type(e).__name__)
"""))
    slow = _after_setup(_nb(), HONEST)  # honest code that looks like the tricks below: it must not be flagged
    body = _cell(slow, f"def {TARGETS[first]}(")
    body.source = body.source.replace("### BEGIN SOLUTION", "### BEGIN SOLUTION\n    import time\n    time.sleep(1.2)")
    s["slow"] = _write(subs, "slow", slow)
    # -- issue 24: a lab never attempted, answered by hooking the kernel (each trick its own notebook)
    s["patched"] = _write(subs, "patched", _after_setup(_nb(LAB), CLONE + PATCH))
    s["hook"] = _write(subs, "hook", _after_setup(_nb(LAB), CLONE + HOOK))
    s["thread"] = _write(subs, "thread", _after_setup(_nb(LAB), CLONE + THREAD))
    copies = CLONE + "for _ex in _exs('00'):\n    globals()[_ex.target] = _clone(_ex)\n"
    s["cloned"] = _write(subs, "cloned", _at_end(_nb(LAB), copies))
    s["suppressed"] = _write(subs, "suppressed", _after_setup(_nb(), SUPPRESS))
    (subs / "garbage.ipynb").write_text("{ this is not json", encoding="utf-8")
    (subs / "notes.json").write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    s["garbage"], s["notes"] = subs / "garbage.ipynb", subs / "notes.json"
    return s


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    out = tmp / "out"
    subs = _submissions(tmp, out)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp / "class").iterdir()}
    reports = grade([tmp / "class"], out, grading_seed=7, jobs=3, limits=LIMITS, sandbox="bwrap")
    return {Path(r["submission"]).stem: r for r in reports}, digests, out, subs


def _points(report):
    return {e["id"]: e["points"] for e in report["exercises"]}


def _output_of(report, needle: str) -> str:
    nb = nbformat.read(report["executed_notebook"], as_version=4)
    cell = _cell(nb, needle)
    return "".join(o.get("text", "") for o in cell.outputs)


# --------------------------------------------------------------------------------------------------- the basics
def test_solution_scores_full_marks(batch):
    r = batch[0]["solution"]
    assert r["status"] == "graded" and r["score"] == r["max_score"] == FULL and r["sandbox"] == "bwrap"
    assert all(e["message"].startswith("all") for e in r["exercises"]) and not r["flags"]


def test_fresh_lab_scores_zero_with_not_implemented(batch):
    r = batch[0]["lab"]
    assert r["status"] == "graded" and r["score"] == 0
    assert [e["message"] for e in r["exercises"]] == ["not implemented"] * len(IDS)


def test_one_wrong_exercise_loses_only_its_points(batch):
    r = batch[0]["wrong"]
    assert _points(r) == {**POINTS, IDS[0]: 0.0} and "expected" in r["exercises"][0]["message"]


def test_tampering_inside_the_kernel_gains_nothing(batch):
    assert _points(batch[0]["cheat"])[IDS[0]] == 0.0


@pytest.mark.parametrize("name, problem", [("sysexit", "sys.exit()"), ("loop", "interrupted"),
                                           ("flood", "more output"), ("hog", "ran out of memory")])
def test_a_broken_cell_is_reported_and_the_rest_is_graded(batch, name, problem):
    r = batch[0][name]
    assert r["score"] == FULL and any(problem in p for p in r["problems"]), r["problems"]


def test_missing_parameters_tag_is_restored_so_fast_is_injected(batch):
    r = batch[0]["notag"]
    assert r["score"] == FULL and not any("not injected" in p for p in r["problems"]), r["problems"]


@pytest.mark.parametrize("name, status", [("garbage", "invalid-json"), ("notes", "not-a-notebook")])
def test_broken_files_get_a_report_naming_the_problem(batch, name, status):
    r = batch[0][name]
    assert r["status"] == status and r["score"] == 0 and r["max_score"] == 0 and r["problems"]


# ------------------------------------------------------------------------------------------ a determined class
def test_a_kernel_cannot_find_or_copy_a_peer(batch):
    r = batch[0]["copy_peer"]
    assert r["score"] == 0 and "peers found: 0" in _output_of(r, "peers found")


def test_a_kernel_cannot_touch_a_peers_report_or_file(batch):
    reports, digests, out, subs = batch
    assert reports["solution"]["score"] == FULL
    assert hashlib.sha256(subs["solution"].read_bytes()).hexdigest() == digests[subs["solution"]]
    assert json.loads((out / "solution.json").read_text())["score"] == FULL
    assert "could not write" in _output_of(reports["tamper"], "could not write")


def test_nothing_a_submission_started_outlives_it(batch):
    """The daemon rewrites its own report and appends to grades.csv every 0.1 s for a minute, if it survives."""
    reports, _, out, _ = batch
    time.sleep(1.0)
    assert [p for p in Path("/proc").glob("[0-9]*") if DAEMON_MARK in _cmdline(p)] == []
    assert json.loads((out / "daemon.json").read_text())["score"] == reports["daemon"]["score"] == 0
    rows = [line.split(",") for line in (out / "grades.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows].count("daemon") == 1 and all(r[3] != "99" for r in rows)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_hidden_inputs_are_invisible_before_the_grading_cell(batch):
    r = batch[0]["peek"]
    assert r["score"] == 0 and "hidden inputs seen: NOTHING" in _output_of(r, "hidden inputs seen")
    executed = Path(r["executed_notebook"]).read_text()
    assert "_dslab_grade_cell" not in executed  # the grading cell's payload is never saved


def test_delegating_to_the_reference_scores_zero_and_is_flagged(batch):
    r = batch[0]["delegate"]
    delegated = [e for e in r["exercises"] if e["delegated"]]
    assert delegated and all(e["points"] == 0 and "delegation" in e["message"] for e in delegated)
    assert any(f.startswith("delegation:") for f in r["flags"])


def test_a_call_that_hangs_costs_only_its_cases(batch):
    r = batch[0]["hang"]
    rows = {e["id"]: e for e in r["exercises"]}
    assert 0 < rows[IDS[0]]["cases_passed"] < rows[IDS[0]]["cases"], rows[IDS[0]]
    assert "Timeout" in rows[IDS[0]]["message"]
    assert all(rows[i]["points"] == POINTS[i] for i in IDS[1:])


def test_a_cell_that_kills_the_kernel_keeps_the_exercise_it_defined(batch):
    r = batch[0]["killer"]
    assert r["score"] == FULL, r
    assert any("keeping only that cell's imports and definitions" in p for p in r["problems"])


def test_a_kernel_that_kills_everything_it_sees_hurts_only_itself(batch):
    reports = batch[0]
    assert reports["kill_grader"]["status"] in ("graded", "crashed", "kernel-died")
    assert len(reports) == len(batch[1])  # every submission still has a report


def test_the_package_is_read_only_to_kernels(batch):
    r = batch[0]["poison"]
    assert "registry is read-only" in _output_of(r, "registry is read-only")
    import dslab.labs.lab00_by_the_numbers.exercises as reg

    assert "EXERCISES = []" not in Path(reg.__file__).read_text()


def test_honest_slow_code_gets_its_points(batch):
    """Slow, and beside it what honest learners write: helpers, numpy/torch, tqdm, a progress thread, matplotlib."""
    r = batch[0]["slow"]
    assert r["score"] == FULL and r["flags"] == [], (r["exercises"], r["flags"])


# ------------------------------------------------------------------------------- issue 24: hooking the kernel
@pytest.mark.parametrize("name, static, in_kernel", [
    ("patched", ["grader code: cell 2 line 9: import dslab.course.answers as A", "module write: cell 2 line 17",
                 "code object: cell 2 line 6"],
     ["patched grader code: at grading time dslab.course.answers.answer_all was not the package's own"]),
    ("hook", ["kernel hook: cell 2 line 13: get_ipython().events.register"],
     ["kernel hook: at grading time, IPython pre_run_cell callback: _before (cell 2)"]),
    ("thread", ["code object: cell 2 line 6"], ["background thread: at grading time, thread 'Thread-"]),
    ("cloned", ["code object: cell 53 line 6: types.FunctionType"], ["cloned reference: 00.forward_flops ran a copy"]),
    ("suppressed", ["kernel hook: cell 2 line 6: get_ipython().input_transformers_cleanup"],
     ["kernel report missing"]),
])
def test_a_kernel_hooked_to_answer_is_flagged_by_name(batch, name, static, in_kernel):
    """Each trick is flagged by the static scan (cell, line, construct) and by the kernel's own report."""
    flags = batch[0][name]["flags"]
    for expected in static + in_kernel:
        assert any(f.startswith(expected) for f in flags), (expected, flags)


def test_flags_keep_the_score_unless_strict(batch, tmp_path):
    reports, _, out, subs = batch
    assert reports["patched"]["score"] == FULL  # patched answer_all emptied the forbidden lists: flagged, not zeroed
    assert reports["cloned"]["score"] == 0  # copies of forbidden references are delegation
    assert all(e["flags"] for e in reports["patched"]["exercises"])
    assert "patched grader code" in (out / "grades.csv").read_text() and "patched grader code" in (
        out / "report.html").read_text()
    [strict] = grade([subs["patched"]], tmp_path / "out", grading_seed=7, limits=LIMITS, sandbox="bwrap", strict=True)
    assert strict["score"] == 0 and all("strict grading" in e["message"] for e in strict["exercises"])


def test_submissions_are_never_modified_and_every_one_has_a_report(batch):
    reports, digests, out, _ = batch
    for path, digest in digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert len(reports) == len(digests)
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == len(digests) + 1 and rows[0].startswith("name,lab,status,score,max_score")
    manifest = json.loads((out / "manifest.json").read_text())
    for r in reports.values():
        text = (out / f"{r['name']}.json").read_text()
        assert json.loads(text)["score"] == r["score"]
        assert manifest["reports"][r["name"]]["report_sha256"] == hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- resume, identity, CLI
def test_resume_regrades_only_what_the_manifest_lacks(batch, tmp_path, monkeypatch):
    reports, _, out, _ = batch
    copy = tmp_path / "out"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["reports"]["wrong"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    graded = []
    real = G.grade_one
    monkeypatch.setattr(G, "grade_one", lambda sub, *a, **k: graded.append(sub.name) or real(sub, *a, **k))
    class_dir = Path(reports["solution"]["submission"]).parent
    again = grade([class_dir], copy, jobs=2, limits=LIMITS, sandbox="bwrap", resume=True)
    assert graded == ["wrong"]
    assert {r["name"]: r["score"] for r in again} == {r["name"]: r["score"] for r in reports.values()}


def test_reports_do_not_depend_on_how_many_jobs_ran(batch, tmp_path):
    """Three of the batch's submissions (graded three at a time, beside the hostile ones), graded again one at a time
    with the same grading seed -> identical reports (wall clock aside)."""
    reports, _, _, subs = batch
    names = ["solution", "lab", "wrong"]
    again = grade([subs[n] for n in names], tmp_path / "out", grading_seed=7, jobs=1, limits=LIMITS, sandbox="bwrap")
    same = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "executed_notebook")}
    assert [same(r) for r in again] == [same(reports[n]) for n in names]
