"""``python -m dslab run``: execute solution notebooks headless with papermill, one summary line per lab.

``--update-solutions`` writes the executed notebooks back into solutions/ in normalized form (``make solutions``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat

from dslab.course.build import normalize, notebook_text
from dslab.course.notebook import read_records


def run_notebook(path: Path, dst: Path, params: dict, cell_timeout: int = 1800) -> tuple[str, float, dict]:
    """Run one notebook -> (status, seconds, recorded numbers)."""
    import papermill

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


def run(solutions: Path, out: Path, names: list[str], fast: bool | None, update: bool) -> int:
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
        summary = ", ".join(f"{k}={v:,.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
        print(f"{path.stem:<24} {status:<6} {seconds:6.1f}s  {summary}", flush=True)
        if update and status == "ok":
            nb = normalize(nbformat.read(dst, as_version=4), "solution", path.stem)
            path.write_text(notebook_text(nb), encoding="utf-8")
    return 1 if failures else 0
