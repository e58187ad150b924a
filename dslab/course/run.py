"""``python -m dslab run``: execute solution notebooks headless with papermill, one summary line per lab.

``--update-solutions`` writes the executed notebooks back into solutions/ in normalized form (``make solutions``).
``--record`` keeps each lab's time and key numbers in solutions/runs.json (``make run``): the course map in README
and the time in each notebook's header are written from there (``python -m dslab coursemap``), never typed.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import nbformat
import papermill
import torch

from dslab.course.build import normalize, notebook_text
from dslab.course.coursemap import RUNS_FILE, load_runs
from dslab.course.notebook import fmt, read_records


def run_notebook(path: Path, dst: Path, params: dict, cell_timeout: int = 1800) -> tuple[str, float, dict]:
    """Run one notebook -> (status, seconds, recorded numbers)."""
    os.environ.update(DSLAB_HEADLESS="1", TQDM_DISABLE="1")
    t0, status = time.perf_counter(), "ok"
    try:
        papermill.execute_notebook(str(path), str(dst), parameters=params, kernel_name="python3", progress_bar=False,
                                   execution_timeout=cell_timeout, cwd=str(path.parent))
    except Exception as e:  # noqa: BLE001 - report and go on to the next lab
        status = f"FAILED ({type(e).__name__}: {str(e).strip().splitlines()[-1][:120] if str(e).strip() else ''})"
    seconds = time.perf_counter() - t0
    numbers = read_records(nbformat.read(dst, as_version=4)) if dst.exists() else {}
    return status, seconds, numbers


def machine() -> str:
    """This machine in a few words: CPU model, cores, torch build (what a recorded time was measured on)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU cores ({model}){gpu}, torch {torch.__version__}"


def record_run(solutions: Path, stem: str, mode: str, seconds: float, numbers: dict) -> None:
    """Keep one lab's measured time and key numbers under ``mode`` ("defaults" or "fast") in solutions/runs.json."""
    runs = load_runs(solutions)
    runs.setdefault(stem, {})[mode] = {"seconds": round(seconds, 1), "machine": machine(), "numbers": numbers}
    text = json.dumps(runs, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (solutions / RUNS_FILE).write_text(text, encoding="utf-8")


def run(solutions: Path, out: Path, names: list[str], fast: bool | None, update: bool, record: bool = False) -> int:
    paths = sorted(p for p in solutions.glob("*.ipynb") if not names or any(p.stem.startswith(n) for n in names))
    if not paths:
        print(f"no notebooks in {solutions}/ match {names}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    params = {} if fast is None else {"FAST": fast}
    failures = 0
    for path in paths:
        dst = out / path.name
        status, seconds, numbers = run_notebook(path, dst, params)
        failures += status != "ok"
        summary = ", ".join(f"{k}={fmt(v)}" for k, v in numbers.items())
        print(f"{path.stem:<24} {status:<6} {seconds:6.1f}s  {summary}", flush=True)
        if record and status == "ok":
            record_run(solutions, path.stem, "fast" if fast else "defaults", seconds, numbers)
        if update and status == "ok":
            nb = normalize(nbformat.read(dst, as_version=4), "solution", path.stem)
            path.write_text(notebook_text(nb), encoding="utf-8")
    return 1 if failures else 0
