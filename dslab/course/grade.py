"""``python -m dslab grade SUBMISSION... --out DIR``: execute each submission in its own sandbox and score it.

For each submission the grader draws hidden cases, runs a private copy of the notebook with papermill inside a
bubblewrap sandbox (grader's SEED, FAST=True; see ``sandbox``), and hands the hidden cases to the kernel only in the
last cell, which calls the learner's functions and saves what they return. The grader compares those answers with
the reference *in its own process*: code in a submission can change what its own functions return, never the
verdict, another submission's grade, or the grader. Submissions are only ever read; every one of them gets
``DIR/<name>.json`` and a row in ``DIR/grades.csv``, written by the grader from its own memory after every process
the submission started is gone; ``DIR/summary.png`` and ``DIR/report.html`` sum the class up. ``DIR/manifest.json``
lists each finished report with its hash, so a batch that stopped can be resumed (``--resume``).

Before a notebook runs, ``scan`` reads its code for what an honest answer never needs (reaching into the grader, kernel
hooks, code objects, writes to dslab's modules, dynamic code); at grading time the grading cell reports on its kernel
(the answering code's hashes, hooks, user threads, trace functions). Both become flags in the report, which keep the
score unless the batch is graded ``strict``.

This module runs the batch; its parts live beside it: ``sandbox`` (where a submission runs), ``execute`` (the executor
inside the sandbox, and the grading cell's report on its kernel), ``scan`` (the static scan), ``scoring`` (cases,
verdicts and flags), ``manifest`` (what is written and trusted again) and ``report`` (grades.csv and the class
report).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from dslab import __version__
from dslab.course import answers as A
from dslab.course import report as class_report
from dslab.course.delegation import definitions_only, static_delegation
from dslab.course.execute import ANSWERS, DROPPED, GRADING_TAG, KERNEL_REPORT, PLACEHOLDER, grading_budget
from dslab.course.exercises import exercises, lab_for_notebook, lab_modules, notebook_of
from dslab.course.manifest import (
    GraderChanged,
    Manifest,
    load_manifest,
    package_digest,
    read_json,
    write_atomic,
)
from dslab.course.report import csv_text, print_table
from dslab.course.sandbox import (
    become_subreaper,
    bwrap_command,
    kill_descendants,
    kill_tree,
    resolve,
    sandbox_env,
    unmaskable,
)
from dslab.course.scan import scan
from dslab.course.scoring import (
    capped,
    cell_numbers,
    describe_errors,
    draw_cases,
    exercise_flags,
    kernel_flags,
    kernel_request,
    references,
    score,
)

_ASSIGN = {name: re.compile(rf"^{name}\s*(:[^=]*)?=", re.M) for name in ("SEED", "FAST")}
MAX_STATE_BYTES = 1_000_000
MAX_EXECUTED_BYTES = 40_000_000


@dataclass(frozen=True)
class Limits:
    cell_seconds: int = 120  # per cell of the learner's notebook
    total_seconds: int = 900  # per submission, before the grading cell (whose budget grows with its calls)
    call_seconds: float = 20.0  # per call of a learner's function on one hidden case
    retries: int = 2  # re-runs after a cell killed or hung the kernel
    memory_mb: int = 4096  # data-segment cap of the kernel (0: none; a CUDA kernel may need it off)
    max_notebook_mb: float = 20.0  # a bigger submission is refused before it is parsed

    def __post_init__(self):
        for name in ("cell_seconds", "total_seconds", "call_seconds", "max_notebook_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")
        if self.retries < 0 or self.memory_mb < 0:
            raise ValueError(f"Limits.retries and Limits.memory_mb must be >= 0, got {self.retries}, {self.memory_mb}")


class Rejected(Exception):
    """A submission that cannot be executed at all; ``status`` says why."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------ reading input
def read_submission(data: bytes, filename: str, lab: str | None,
                    limits: Limits = Limits()) -> tuple[nbformat.NotebookNode, str, list[str]]:
    """Parse a submission's bytes -> (notebook v4, lab to grade it as, flags), or raise Rejected naming the problem.

    The lab is ``lab`` (``--lab``) if given, else the number its file name starts with, else its own metadata. When the
    notebook's own lab differs from the one it is graded as, it is graded as the expected one and flagged.
    """
    if len(data) > limits.max_notebook_mb * 2**20:
        raise Rejected("too-large", f"the file is {len(data) / 2**20:.1f} MiB; the grader reads notebooks up to "
                                    f"{limits.max_notebook_mb:g} MiB")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected("invalid-json", f"the file is not valid JSON ({e}); was it saved from Jupyter?") from None
    if not isinstance(parsed, dict) or not (isinstance(parsed.get("cells"), list)
                                            or isinstance(parsed.get("worksheets"), list)):
        raise Rejected("not-a-notebook", "the file is JSON but not a Jupyter notebook (no cells)")
    try:
        nb = nbformat.reads(json.dumps(parsed), as_version=4)  # converts nbformat 3 notebooks
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds
        raise Rejected("not-a-notebook", f"the notebook cannot be read: {type(e).__name__}: {e}") from None
    flags = ["converted from nbformat 3"] if parsed.get("nbformat") == 3 else []
    own = lab_for_notebook(str(nb.metadata.get("dslab", {}).get("notebook", "")))
    expected = lab or _lab_from_filename(filename)
    if expected is None and own is None:
        raise Rejected("unknown-lab", "cannot tell which lab this is (no dslab metadata, no NN_ file name); use --lab")
    if expected is not None and expected not in lab_modules():
        raise Rejected("unknown-lab", f"lab {expected} has no exercises; labs: {', '.join(sorted(lab_modules()))}")
    if expected and own and own != expected:
        flags.append(f"lab mismatch: the notebook is lab {own} ({notebook_of(own)}), graded as lab {expected}")
    return nb, expected or own, flags


def _lab_from_filename(name: str) -> str | None:
    m = re.match(r"(\d\d)_", name)
    return m.group(1) if m and m.group(1) in lab_modules() else None


def prepare(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy with outputs cleared, the ``parameters`` tag restored if the learner dropped it, and the grading cell
    (a placeholder: the executor fills it in when it runs)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells = [c for c in nb.cells if GRADING_TAG not in c.metadata.get("tags", [])]
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        cell.outputs, cell.execution_count = [], None
        cell.source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    if not any("parameters" in c.metadata.get("tags", []) for c in code):
        for cell in code:  # the cell that sets both SEED and FAST is the parameters cell
            if all(p.search(cell.source) for p in _ASSIGN.values()):
                cell.metadata.setdefault("tags", []).append("parameters")
                break
    nb.cells.append(nbformat.v4.new_code_cell(PLACEHOLDER, metadata={"tags": [GRADING_TAG]}))
    for i, cell in enumerate(nb.cells):  # ids the executor reports back, whatever cells papermill inserts
        cell["id"] = f"dslab-{i}"
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


# ------------------------------------------------------------------------------------------------ one execution
def run_once(nb: nbformat.NotebookNode, work: Path, request: dict, seed: int, limits: Limits, sandbox: str,
             masks: list[Path]) -> tuple[dict, nbformat.NotebookNode | None, dict]:
    """Execute ``nb`` once in ``work`` (inside the sandbox) -> (outcome, executed notebook, answers)."""
    for leftover in ("executed.ipynb", "state.json", ANSWERS, KERNEL_REPORT, "submission.ipynb"):
        (work / leftover).unlink(missing_ok=True)
    nbformat.write(nb, work / "submission.ipynb")
    cmd = [sys.executable, "-m", "dslab.course.execute", "submission.ipynb", "executed.ipynb", "--state", "state.json",
           "--params", json.dumps({"SEED": seed, "FAST": True}), "--cell-timeout", str(limits.cell_seconds),
           "--call-seconds", str(limits.call_seconds), "--memory-mb", str(limits.memory_mb)]
    env = sandbox_env(work)
    if sandbox == "bwrap":
        cmd = bwrap_command(cmd, work, masks, env)
    deadline = limits.total_seconds + grading_budget(request, limits.call_seconds)
    with open(work / "execute.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=deadline)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_tree(proc)
        proc.wait()
    state = read_json(work / "state.json", MAX_STATE_BYTES)
    executed = None
    if (work / "executed.ipynb").is_file() and (work / "executed.ipynb").stat().st_size <= MAX_EXECUTED_BYTES:
        try:
            executed = nbformat.read(work / "executed.ipynb", as_version=4)
        except Exception:  # noqa: BLE001 - a mangled executed notebook is the submission's problem
            executed = None
    if timed_out:
        outcome = {"status": "timeout", "cell": state.get("cell"),
                   "evalue": f"the notebook ran past the total limit of {deadline} s"}
    elif not state:
        outcome = {"status": "crashed", "evalue": f"the executor exited with code {proc.returncode}; see execute.log"}
    else:
        outcome = state if state.get("status") != "running" else {**state, "status": "crashed"}
    outcome["kernel_report"] = read_json(work / KERNEL_REPORT, MAX_STATE_BYTES)
    return outcome, executed, read_json(work / ANSWERS, 4 * A.MAX_BYTES)


def execute_with_recovery(nb: nbformat.NotebookNode, work: Path, request: dict, seed: int, limits: Limits,
                          sandbox: str, masks: list[Path]) -> tuple[dict, nbformat.NotebookNode | None, dict, list]:
    """Run, and when a cell kills or hangs the kernel, run again keeping only that cell's definitions (then without
    the cell at all), so an error costs only the exercises it breaks."""
    prepared, problems, trimmed = prepare(nb), [], set()
    for attempt in range(limits.retries + 1):
        outcome, executed, answers = run_once(prepared, work, request, seed, limits, sandbox, masks)
        status = outcome.get("status")
        cell = next((i for i, c in enumerate(prepared.cells) if c.get("id") == outcome.get("cell_id")), None)
        if status not in ("kernel-died", "timeout") or cell is None or attempt == limits.retries:
            break
        if GRADING_TAG in prepared.cells[cell].metadata.get("tags", []):
            break  # the grading cell itself: each call has its own limit, nothing to trim
        what = "ended the kernel" if status == "kernel-died" else "did not finish in time"
        kept = None if cell in trimmed else definitions_only(prepared.cells[cell].source)
        if kept and kept != prepared.cells[cell].source:
            problems.append(f"cell {cell} {what} ({str(outcome.get('evalue', ''))[:120]}); re-ran the notebook "
                            f"keeping only that cell's imports and definitions")
            prepared.cells[cell].source = f"# trimmed by the grader: this cell {what}\n{kept}"
            trimmed.add(cell)
        else:
            problems.append(f"cell {cell} {what} ({str(outcome.get('evalue', ''))[:120]}); re-ran the notebook "
                            f"without it")
            prepared.cells[cell].source = f"# removed by the grader: this cell {what}"
    return outcome, executed, answers, problems


def grade_notebook(nb: nbformat.NotebookNode, lab: str, work: Path, seed: int, grading_seed: int, limits: Limits,
                   sandbox: str, masks: list[Path], allow_delegation: bool = False, strict: bool = False
                   ) -> tuple[dict, nbformat.NotebookNode | None]:
    """Scan, execute and score one notebook -> (result, executed notebook); result["flags"] lists what the static
    scan and the kernel's report found (they keep the score unless ``strict``)."""
    exs = exercises(lab)
    cases = draw_cases(exs, grading_seed)
    kernel = kernel_request()
    request = {"exercises": [{"id": ex.id, "target": ex.target, "cases": [A.to_json(c.args) for c in cases[ex.id]],
                              "forbidden": list(ex.forbidden), "references": references(ex)} for ex in exs],
               "kernel": kernel}
    code = [(i, c.source) for i, c in enumerate(prepare(nb).cells[:-1]) if c.cell_type == "code"]
    delegated = {ex.id: static_delegation([src for _, src in code], ex.target, ex.forbidden) for ex in exs}
    static = scan(code)  # before execution, outside the kernel: nothing the notebook does can change it
    outcome, executed, answers, problems = execute_with_recovery(nb, work, request, seed, limits, sandbox, masks)
    status = outcome.get("status")
    if status in ("kernel-died", "timeout", "crashed"):
        problems.append(f"{status}: {outcome.get('evalue', '')}".strip())
    problems += describe_errors(executed, limits.memory_mb)
    if executed is not None and any(DROPPED in str(o.get("text", ""))
                                    for c in executed.cells for o in c.get("outputs", [])):
        problems.append("the notebook printed more output than the grader keeps; the rest was dropped")
    why_missing = "the grading cell did not run (see problems)" if not answers else "not answered"
    in_kernel = kernel_flags(outcome.get("kernel_report", {}), kernel["nonce"], bool(answers), cell_numbers(executed))
    rows = score(exs, cases, answers, why_missing, delegated, allow_delegation,
                 exercise_flags(exs, static, in_kernel), strict)
    flags = capped([str(f) for f in static] + in_kernel + [f for r in rows for f in r["flags"]
                                                          if f.startswith("cloned reference")])
    final = "graded" if status in ("ok", "cell-errors") and answers else status if status != "ok" else "no-answers"
    return {"status": final, "problems": problems, "exercises": rows, "flags": flags}, executed


# ---------------------------------------------------------------------------------------------- the whole batch
@dataclass
class Submission:
    path: Path
    name: str
    data: bytes | None  # the private copy, read once
    sha256: str | None


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
    """A report name per file, unique whatever the input paths: the file's stem, qualified by its folder when another
    file has the same stem, and numbered when a name still collides (e.g. with another file's stem)."""
    clean = lambda s: re.sub(r"[^A-Za-z0-9_.-]", "_", s) or "submission"  # noqa: E731
    stems = [clean(f.stem) for f in files]
    wanted = [stem if stems.count(stem) == 1 else f"{clean(f.resolve().parent.name)}__{stem}"
              for f, stem in zip(files, stems)]
    used, final = set(), []
    for name in wanted:
        candidate, k = name, 2
        while candidate in used:
            candidate, k = f"{name}-{k}", k + 1
        used.add(candidate)
        final.append(candidate)
    return final


def grade_one(sub: Submission, out: Path, lab: str | None, seed: int, grading_seed: int, limits: Limits,
              sandbox: str, masks: list[Path], warning: str | None, allow_delegation: bool = False,
              strict: bool = False) -> dict:
    """Grade one submission -> its report (not yet written); never raises for a bad submission."""
    t0 = time.perf_counter()
    report = {"submission": str(sub.path), "name": sub.name, "sha256": sub.sha256, "grader_version": __version__,
              "seed": seed, "grading_seed": grading_seed, "executed_notebook": None, "lab": lab, "flags": [],
              "sandbox": sandbox}
    work = Path(tempfile.mkdtemp(prefix=f"dslab-grade-{sub.name}-"))
    try:
        if sub.data is None:
            raise Rejected("unreadable", "cannot read the file")
        nb, lab_id, flags = read_submission(sub.data, sub.path.name, lab, limits)
        report.update(lab=lab_id, flags=flags)
        result, executed = grade_notebook(nb, lab_id, work, seed, grading_seed, limits, sandbox, masks,
                                          allow_delegation, strict)
        flags += result.pop("flags")
        report.update(result)
        if executed is not None:
            path = out / "executed" / f"{sub.name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, nbformat.writes(executed))
            report["executed_notebook"] = str(path)
    except Rejected as e:
        report.update(status=e.status, problems=[str(e)], exercises=[])
    except Exception as e:  # noqa: BLE001 - a grader bug must still leave a report for this submission
        report.update(status="grader-error", problems=[f"{type(e).__name__}: {e}"],
                      exercises=report.get("exercises", []))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = report.get("exercises", [])
    report["flags"] += [f"delegation: {r['id']} uses {', '.join(r['delegated'])}" for r in rows if r.get("delegated")]
    if warning:
        report["flags"].append(warning)
    report["score"] = round(sum(r["points"] for r in rows), 2)
    report["max_score"] = sum(r["max_points"] for r in rows) or _max_for(report.get("lab"))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def _max_for(lab: str | None) -> int:
    try:
        return sum(ex.points for ex in exercises(lab)) if lab else 0
    except ValueError:
        return 0


@dataclass(frozen=True)
class Batch:
    """What every submission of one batch is graded with (``sandbox``: the mode in effect, "bwrap" or "none")."""

    out: Path
    lab: str | None
    seed: int
    grading_seed: int
    limits: Limits
    sandbox: str
    masks: list[Path]
    warning: str | None
    allow_delegation: bool
    jobs: int
    strict: bool  # flagged exercises score 0
    digest: str  # package_digest() when the batch started


def grade(paths: list[Path], out: Path, lab: str | None = None, seed: int = 0, grading_seed: int | None = None,
          jobs: int = 1, limits: Limits = Limits(), sandbox: str = "auto", resume: bool = False,
          allow_delegation: bool = False, gradescope: bool = False, strict: bool = False) -> list[dict]:
    """Grade a batch; returns the reports (also written to ``out``). Raises GraderChanged (after saving what was
    finished) when the grader's own code changes during the batch.

    A submission the static scan or its kernel's report flags keeps its score (the flags say where to look) unless
    ``strict``, which scores every exercise a flag touches 0."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    mode, warning = resolve(sandbox)
    _warn(warning)
    files = expand(paths)
    out.mkdir(parents=True, exist_ok=True)
    done, grading_seed = _resumed(out, grading_seed) if resume else ({}, grading_seed)
    grading_seed = random.SystemRandom().randrange(2**31) if grading_seed is None else grading_seed
    subs = load_submissions(files)
    masks, mask_warning = _masks(out, files, mode)
    if mode == "none":
        become_subreaper()
    digest = package_digest()
    batch = Batch(out, lab, seed, grading_seed, limits, mode, masks, mask_warning or warning, allow_delegation, jobs,
                  strict, digest)
    manifest = Manifest(out, grading_seed, digest, done)
    ordered = _grade_all(subs, batch, manifest)
    manifest.rewrite(ordered)
    write_atomic(out / "grades.csv", csv_text(ordered))
    manifest.save()
    class_report.write(ordered, out)
    if gradescope:
        class_report.write_gradescope(ordered, out)
    return ordered


def _warn(warning: str | None) -> None:
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)


def _resumed(out: Path, grading_seed: int | None) -> tuple[dict, int | None]:
    """(finished reports listed in ``out``'s manifest, the grading seed to continue with) for ``--resume``."""
    manifest = load_manifest(out)
    if not manifest:
        return {}, grading_seed
    if grading_seed is not None and grading_seed != manifest.get("grading_seed"):
        raise ValueError(f"--resume continues the batch graded with --grading-seed {manifest['grading_seed']}; "
                         f"got {grading_seed}")
    return manifest.get("reports", {}), manifest["grading_seed"]


def load_submissions(files: list[Path]) -> list[Submission]:
    """Each file read once into memory (None when unreadable), named uniquely, with its sha256."""
    subs = []
    for path, name in zip(files, unique_names(files)):
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        subs.append(Submission(path, name, data, hashlib.sha256(data).hexdigest() if data is not None else None))
    return subs


def _masks(out: Path, files: list[Path], mode: str) -> tuple[list[Path], str | None]:
    """Folders hidden from kernels (the output folder, every folder holding submissions), and a warning naming
    those that cannot be hidden because the kernel needs them."""
    masks = [out.resolve(), *{p.resolve().parent for p in files}]
    hidden_masks, warning = unmaskable(masks), None
    if mode == "bwrap" and hidden_masks:
        warning = (f"cannot hide {', '.join(map(str, hidden_masks))} from kernels (it holds the Python environment or "
                   f"the dslab package): keep submissions and --out in folders of their own")
        _warn(warning)
    return [m for m in masks if m not in hidden_masks], warning


def _grade_all(subs: list[Submission], batch: Batch, manifest: Manifest) -> list[dict]:
    """Every submission's report, in ``subs``' order, graded ``batch.jobs`` at a time."""
    reports: dict[str, dict] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, batch.jobs)) as pool:
            for future in [pool.submit(_grade_submission, s, batch, manifest, reports) for s in subs]:
                future.result()
    finally:
        if batch.sandbox == "none":
            kill_descendants()
    return [reports[s.name] for s in subs]


def _grade_submission(sub: Submission, batch: Batch, manifest: Manifest, reports: dict[str, dict]) -> None:
    """Grade one submission into ``reports`` and the manifest, or reuse its report from an earlier run when neither
    changed; GraderChanged when the grader's package changed before or while it was graded."""
    saved = manifest.saved_report(sub.name, sub.sha256)
    if saved is not None:
        reports[sub.name] = saved
        return
    if package_digest() != batch.digest:
        raise GraderChanged("the dslab package (the grader's code or exercise registry) changed during the batch")
    report = grade_one(sub, batch.out, batch.lab, batch.seed, batch.grading_seed, batch.limits, batch.sandbox,
                       batch.masks, batch.warning, batch.allow_delegation, batch.strict)
    if batch.sandbox == "none" and batch.jobs == 1:
        kill_descendants()  # anything the submission left running outside a sandbox
    if package_digest() != batch.digest:
        raise GraderChanged(f"the dslab package changed while {sub.name} was graded; its report is not trusted")
    reports[report["name"]] = report
    manifest.record(report)


# the grader's names, including those it takes from its parts (``python -m dslab grade`` and the tests import them here)
__all__ = ["Batch", "GraderChanged", "Limits", "Rejected", "Submission", "definitions_only", "describe_errors",
           "draw_cases", "execute_with_recovery", "expand", "grade", "grade_notebook", "grade_one", "load_submissions",
           "package_digest", "prepare", "print_table", "read_submission", "run_once", "score", "unique_names"]
