"""``python -m dslab grade SUBMISSION... --out DIR``: execute each submission in its own process and score it.

For each submission the grader draws hidden cases, runs the notebook with papermill (grader's SEED, FAST=True) plus a
last cell that calls the learner's functions on those cases and saves the answers, then compares the answers with
``dslab``'s reference *in this process*. Code in a submission can change what its own functions return, never the
verdict. Submissions are only ever read; every one of them gets ``DIR/<name>.json`` and a row in ``DIR/grades.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from dslab import __version__
from dslab.course import answers as A
from dslab.course.exercises import Exercise, exercises, lab_for_notebook, lab_modules

COLLECT_SOURCE = (
    "# dslab grading: answers the hidden cases; the verdict is computed outside this kernel\n"
    "import json as _j, os as _o\n"
    "from dslab.course.answers import answer_all as _dslab_answer_all\n"
    "with open(_o.environ['DSLAB_GRADE_INPUTS']) as _f:\n"
    "    _dslab_request = _j.load(_f)\n"
    "with open(_o.environ['DSLAB_GRADE_OUTPUTS'], 'w') as _f:\n"
    "    _j.dump(_dslab_answer_all(globals(), _dslab_request, 20.0), _f)"
)
_ASSIGN = {name: re.compile(rf"^{name}\s*(:[^=]*)?=", re.M) for name in ("SEED", "FAST")}


@dataclass(frozen=True)
class Limits:
    cell_seconds: int = 120
    total_seconds: int = 900
    retries: int = 2  # re-runs without a cell that killed or hung the kernel
    memory_mb: int = 4096  # data-segment cap of the kernel (0: none; a CUDA kernel may need it off)

    def __post_init__(self):
        for name in ("cell_seconds", "total_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.memory_mb < 0:
            raise ValueError(f"Limits.retries and Limits.memory_mb must be >= 0, got {self.retries}, {self.memory_mb}")


class Rejected(Exception):
    """A submission that cannot be executed at all; ``status`` says why."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def read_submission(path: Path, lab: str | None) -> tuple[nbformat.NotebookNode, str]:
    """Parse a submission (read-only) -> (notebook, lab id), or raise Rejected naming the problem."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise Rejected("unreadable", f"cannot read the file: {e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected("invalid-json", f"the file is not valid JSON ({e}); was it saved from Jupyter?") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise Rejected("not-a-notebook", "the file is JSON but not a Jupyter notebook (no 'cells' list)")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
        raise Rejected("not-a-notebook", f"the notebook cannot be read: {type(e).__name__}: {e}") from None
    stem = nb.metadata.get("dslab", {}).get("notebook", "")
    lab = lab or lab_for_notebook(stem) or _lab_from_filename(path.name)
    if lab is None:
        raise Rejected("unknown-lab", "cannot tell which lab this is (no dslab metadata, no NN_ file name); use --lab")
    return nb, lab


def _lab_from_filename(name: str) -> str | None:
    m = re.match(r"(\d\d)_", name)
    return m.group(1) if m and m.group(1) in lab_modules() else None


def prepare(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy with outputs cleared, the ``parameters`` tag restored if the learner dropped it, and the collect cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        cell.outputs, cell.execution_count = [], None
        cell.source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    if not any("parameters" in c.metadata.get("tags", []) for c in code):
        for cell in code:  # the cell that sets both SEED and FAST is the parameters cell
            if all(p.search(cell.source) for p in _ASSIGN.values()):
                cell.metadata.setdefault("tags", []).append("parameters")
                break
    nb.cells.append(nbformat.v4.new_code_cell(COLLECT_SOURCE, metadata={"tags": ["dslab-grading"]}))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def draw_cases(exs: list[Exercise], seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    return {ex.id: ex.hidden_cases(rng) for ex in exs}


def score(exs: list[Exercise], cases: dict, answers: dict, why_missing: str) -> list[dict]:
    """Compare the learner's answers with the reference, here in the grader's process."""
    rows = []
    for ex in exs:
        got, passed, message = answers.get(ex.id), 0, ""
        if got is None:
            message = why_missing
        elif "missing" in got:
            message = got["missing"]
        else:
            for case, res in zip(cases[ex.id], got.get("results", [])):
                if "error" in res:
                    err = "not implemented" if res["error"] == "NotImplementedError" else res["error"]
                    message = message or f"case '{case.label}': {err}: {res['message']}"
                    continue
                diff = A.judge(ex, case, res)
                if diff is None:
                    passed += 1
                else:
                    message = message or f"case '{case.label}': {diff}"
        n = len(cases[ex.id])
        if answers.get(ex.id) is not None and "missing" not in answers[ex.id] and passed == n:
            message = f"all {n} hidden cases passed"
        if message.startswith("case") and "not implemented" in message and passed == 0:
            message = "not implemented"
        points = round(ex.points * passed / n, 2) if n else 0.0
        rows.append({"id": ex.id, "number": ex.number, "points": points, "max_points": ex.points,
                     "cases_passed": passed, "cases": n, "message": message})
    return rows


def _kill(state_path: Path, proc: subprocess.Popen) -> None:
    pids = [proc.pid]
    try:
        pids.append(int(json.loads(state_path.read_text())["kernel_pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for pid in pids:
        for kill in (lambda p: os.killpg(os.getpgid(p), signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(pid)
            except (OSError, ProcessLookupError):
                pass


def run_once(nb: nbformat.NotebookNode, work: Path, executed: Path, seed: int, limits: Limits) -> dict:
    """Execute ``nb`` in a separate process within the time limits -> the outcome recorded by dslab.course.execute."""
    src, state = work / "prepared.ipynb", work / "state.json"
    nbformat.write(nb, src)
    state.unlink(missing_ok=True)
    env = dict(os.environ, DSLAB_HEADLESS="1", TQDM_DISABLE="1", MPLBACKEND="Agg",
               DSLAB_GRADE_INPUTS=str(work / "inputs.json"), DSLAB_GRADE_OUTPUTS=str(work / "answers.json"))
    cmd = [sys.executable, "-m", "dslab.course.execute", str(src), str(executed), "--state", str(state),
           "--params", json.dumps({"SEED": seed, "FAST": True}), "--cell-timeout", str(limits.cell_seconds),
           "--memory-mb", str(limits.memory_mb)]
    with open(work / "execute.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limits.total_seconds)
        except subprocess.TimeoutExpired:
            _kill(state, proc)
            proc.wait()
            outcome = json.loads(state.read_text()) if state.exists() else {}
            return {"status": "timeout", "cell": outcome.get("cell"),
                    "evalue": f"the notebook ran past the total limit of {limits.total_seconds} s"}
    if not state.exists():
        return {"status": "crashed", "evalue": f"the executor exited with code {proc.returncode}; see execute.log"}
    outcome = json.loads(state.read_text())
    return outcome if outcome.get("status") != "running" else {**outcome, "status": "crashed"}


def describe_errors(executed: Path, memory_mb: int = 0) -> list[str]:
    """One line per error output in the executed notebook, naming sys.exit(), interrupts and the memory cap plainly."""
    if not executed.exists():
        return []
    lines = []
    nb = nbformat.read(executed, as_version=4)
    for i, cell in enumerate(nb.cells):
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


def grade_notebook(nb: nbformat.NotebookNode, lab: str, work: Path, executed: Path, seed: int, grading_seed: int,
                   limits: Limits) -> dict:
    exs = exercises(lab)
    cases = draw_cases(exs, grading_seed)
    request = {"exercises": [{"id": ex.id, "target": ex.target, "cases": [A.to_json(c.args) for c in cases[ex.id]],
                              "forbidden": list(ex.forbidden)} for ex in exs]}
    (work / "inputs.json").write_text(json.dumps(request), encoding="utf-8")
    prepared, problems = prepare(nb), []
    for attempt in range(limits.retries + 1):
        (work / "answers.json").unlink(missing_ok=True)
        outcome = run_once(prepared, work, executed, seed, limits)
        status, cell = outcome["status"], outcome.get("cell")
        if status not in ("kernel-died", "timeout") or cell is None or attempt == limits.retries:
            break
        what = "ended the kernel" if status == "kernel-died" else "did not finish in time"
        problems.append(f"cell {cell} {what} ({outcome.get('evalue', '')[:120]}); re-ran the notebook without it")
        prepared.cells[cell] = nbformat.v4.new_code_cell(f"# removed by the grader: this cell {what}")
    answers_path = work / "answers.json"
    answers = json.loads(answers_path.read_text()) if answers_path.exists() else {}
    if status in ("kernel-died", "timeout", "crashed"):
        problems.append(f"{status}: {outcome.get('evalue', '')}".strip())
    problems += describe_errors(executed, limits.memory_mb)
    if outcome.get("flooded") is not None or _flooded(executed):
        problems.append("the notebook printed more output than the grader keeps; the rest was dropped")
    why_missing = "the grading cell did not run (see problems)" if not answers else "not answered"
    rows = score(exs, cases, answers, why_missing)
    final = "graded" if status in ("ok", "cell-errors") and answers else status if status != "ok" else "no-answers"
    return {"status": final, "problems": problems, "exercises": rows}


def _flooded(executed: Path) -> bool:
    return executed.exists() and "[dslab grader: further output" in executed.read_text(encoding="utf-8")


def grade_one(path: Path, name: str, out: Path, lab: str | None, seed: int, grading_seed: int,
              limits: Limits) -> dict:
    """Grade one submission and write ``out/<name>.json``; never raises for a bad submission."""
    t0 = time.perf_counter()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        digest = None
    executed = out / "executed" / f"{name}.ipynb"
    work = out / ".work" / name
    report = {"submission": str(path), "name": name, "sha256": digest, "grader_version": __version__,
              "seed": seed, "grading_seed": grading_seed, "executed_notebook": None}
    try:
        nb, lab_id = read_submission(path, lab)
        work.mkdir(parents=True, exist_ok=True)
        executed.parent.mkdir(parents=True, exist_ok=True)
        report["lab"] = lab_id
        report.update(grade_notebook(nb, lab_id, work, executed, seed, grading_seed, limits))
        report["executed_notebook"] = str(executed) if executed.exists() else None
    except Rejected as e:
        report.update(lab=lab, status=e.status, problems=[str(e)], exercises=[])
    except Exception as e:  # noqa: BLE001 - a grader bug must still leave a report for this submission
        report.update(status="grader-error", problems=[f"{type(e).__name__}: {e}"],
                      exercises=report.get("exercises", []))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = report.get("exercises", [])
    report["score"] = round(sum(r["points"] for r in rows), 2)
    report["max_score"] = sum(r["max_points"] for r in rows) or _max_for(report.get("lab"))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _max_for(lab: str | None) -> int:
    try:
        return sum(ex.points for ex in exercises(lab)) if lab else 0
    except ValueError:
        return 0


def expand(paths: list[Path]) -> list[Path]:
    """Files given directly, plus every visible file inside a given folder (a class's submissions folder)."""
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            files.append(p)
    return files


def unique_names(files: list[Path]) -> list[str]:
    names, seen = [], {}
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", f.stem) or "submission"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def write_csv(reports: list[dict], path: Path) -> None:
    ids = sorted({r["id"] for rep in reports for r in rep.get("exercises", [])})
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "lab", "status", "score", "max_score", "seconds", *ids, "submission"])
        for rep in reports:
            pts = {r["id"]: r["points"] for r in rep.get("exercises", [])}
            w.writerow([rep["name"], rep.get("lab") or "", rep["status"], rep["score"], rep["max_score"],
                        rep["seconds"], *[pts.get(i, "") for i in ids], rep["submission"]])


def print_table(reports: list[dict]) -> None:
    width = max([len(r["name"]) for r in reports] + [10])
    print(f"{'submission':<{width}}  lab  {'status':<14} {'score':>11}  seconds  first problem")
    for r in reports:
        first = (r.get("problems") or [""])[0][:70]
        print(f"{r['name']:<{width}}  {r.get('lab') or '--':<3}  {r['status']:<14} "
              f"{r['score']:>5g} / {r['max_score']:<3g}  {r['seconds']:>7.1f}  {first}")


def grade(paths: list[Path], out: Path, lab: str | None = None, seed: int = 0, grading_seed: int | None = None,
          jobs: int = 1, limits: Limits = Limits()) -> list[dict]:
    """Grade a batch; returns the reports (also written to ``out``)."""
    files = expand(paths)
    out.mkdir(parents=True, exist_ok=True)
    grading_seed = random.SystemRandom().randrange(2**31) if grading_seed is None else grading_seed
    names = unique_names(files)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        reports = list(pool.map(lambda fn: grade_one(fn[0], fn[1], out, lab, seed, grading_seed, limits),
                                zip(files, names)))
    write_csv(reports, out / "grades.csv")
    shutil.rmtree(out / ".work", ignore_errors=True)
    return reports
