"""The grader's executor, run inside the submission's sandbox:
``python -m dslab.course.execute IN OUT --state STATE.json --params JSON --cell-timeout S --call-seconds C
--memory-mb M``, with the grading request (the hidden cases) on standard input.

It makes itself undumpable (the kernel, a child running as the same user, cannot read its memory, environment or
open files), reads the request into memory, caps its data segment (inherited by the kernel) and executes the
notebook with papermill: every cell runs even after errors, a cell past its time limit is interrupted, output beyond
a byte budget is dropped. The hidden cases reach the kernel only in the last cell, the grading cell, whose source is
filled in at the moment it runs and blanked again before the notebook is saved; its time budget grows with the
number of calls (each call has its own limit, enforced in the kernel). Kernel-side, ``answers.grade_cell`` writes the
answers to answers.json as it goes. STATE.json records the cell being run and the outcome, so the grader can tell a
dead kernel or a hang from ordinary errors. Before it exits the executor kills every process the kernel left behind.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import zlib
from pathlib import Path

import nbformat
import papermill
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.utils import merge_kwargs, remove_args

from dslab.course.manifest import write_atomic
from dslab.course.sandbox import become_subreaper, kill_descendants, make_undumpable

MAX_OUTPUT_BYTES = 2_000_000
MAX_REQUEST_BYTES = 64_000_000
DROPPED = "[dslab grader: further output"  # how the grader finds the note below in an executed notebook
NOTE = DROPPED + " of this notebook was dropped: more than {:,} bytes]\n"
GRADING_TAG = "dslab-grading"
PLACEHOLDER = "# dslab grading: the hidden cases are answered here; the verdict is computed outside this kernel"
ANSWERS = "answers.json"


def grading_source(request: dict, call_seconds: float) -> str:
    """The grading cell as the kernel runs it: the request travels compressed inside the source, nowhere else."""
    payload = base64.b64encode(zlib.compress(json.dumps(request).encode(), 6)).decode()
    return (f"{PLACEHOLDER}\nfrom dslab.course.answers import grade_cell as _dslab_grade_cell\n"
            f"_dslab_grade_cell(globals(), {payload!r}, {call_seconds!r}, {ANSWERS!r})")


def grading_budget(request: dict, call_seconds: float) -> int:
    """Seconds the grading cell may take: every call at its limit, plus start-up slack."""
    calls = sum(len(ex["cases"]) for ex in request.get("exercises", []))
    return int(calls * call_seconds + 60)


def _write_state(path: str, **state) -> None:
    write_atomic(Path(path), json.dumps(state))


class GradingClient(PapermillNotebookClient):
    """Papermill's client with an output budget, progress in a state file, and the grading cell filled in late."""

    state_path: str = ""
    grading: str = ""
    grading_timeout: int = 600
    cell_timeout: int = 120

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {}), default=str))
        self.used = getattr(self, "used", 0) + size
        if self.used > MAX_OUTPUT_BYTES:
            if not getattr(self, "flooded", None):
                self.flooded = cell_index
                outs.append(nbformat.v4.new_output("stream", name="stderr", text=NOTE.format(MAX_OUTPUT_BYTES)))
            return None
        return super().output(outs, msg, display_id, cell_index)

    def on_start(self, cell, cell_index):
        # the id, not the index: papermill inserts a cell (the injected parameters), which shifts the indices
        _write_state(self.state_path, status="running", cell=cell_index, cell_id=cell.get("id"))

    def timeout_of(self, cell) -> int:
        return self.grading_timeout if GRADING_TAG in cell.metadata.get("tags", []) else self.cell_timeout

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if GRADING_TAG not in cell.metadata.get("tags", []):
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        cell.source = self.grading
        try:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            cell.source = PLACEHOLDER  # the saved notebook never holds the hidden cases

    execute_cell = run_sync(async_execute_cell)  # the base class binds its own coroutine; bind ours


class GradingEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        state_path, grading, grading_timeout = kwargs.pop("state_path"), kwargs.pop("grading"), kwargs.pop(
            "grading_timeout")
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                             kernel_name=kernel_name, log=papermill.engines.logger, log_output=log_output,
                             stdout_file=stdout_file, stderr_file=stderr_file)
        client = GradingClient(nb_man, **final)
        client.state_path, client.grading, client.grading_timeout = state_path, grading, grading_timeout
        client.cell_timeout = execution_timeout
        client.timeout_func = client.timeout_of
        client.on_cell_start = client.on_start
        return client.execute()


papermill_engines.register("dslab-grading", GradingEngine)


def limit_memory(megabytes: int) -> bool:
    """Cap this process's data segment (heap and private mappings) and its future children's; 0 means no cap.

    Returns whether a cap was set (False where ``resource`` or RLIMIT_DATA does not exist, e.g. on Windows)."""
    if megabytes < 0:
        raise ValueError(f"memory limit must be >= 0 MiB (0: none), got {megabytes}")
    try:
        import resource
    except ImportError:
        return False
    if megabytes == 0 or not hasattr(resource, "RLIMIT_DATA"):
        return False
    cap = megabytes * 2**20
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return True


def execute(src: str, dst: str, params: dict, cell_timeout: int, state: str, request: dict,
            call_seconds: float) -> dict:
    """Run ``src`` into ``dst`` with the grading cell answering ``request``; returns the outcome also in ``state``."""
    outcome: dict = {"status": "ok"}
    try:
        papermill.execute_notebook(src, dst, parameters=params, engine_name="dslab-grading", kernel_name="python3",
                                   progress_bar=False, execution_timeout=cell_timeout, allow_errors=True,
                                   interrupt_on_timeout=True, state_path=state,
                                   grading=grading_source(request, call_seconds),
                                   grading_timeout=grading_budget(request, call_seconds))
    except papermill.PapermillExecutionError as e:
        outcome = {"status": "cell-errors", "cell": e.cell_index, "ename": e.ename, "evalue": str(e.evalue)[:300]}
    except CellTimeoutError as e:
        outcome = {"status": "timeout", "evalue": str(e)[:300]}
    except DeadKernelError as e:
        outcome = {"status": "kernel-died", "evalue": str(e)[:300]}
    running = {}
    if os.path.exists(state):
        with open(state, encoding="utf-8") as f:
            running = json.load(f)
    outcome.setdefault("cell", running.get("cell"))
    outcome.setdefault("cell_id", running.get("cell_id"))
    _write_state(state, **outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.course.execute")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--params", default="{}")
    p.add_argument("--cell-timeout", type=int, default=120)
    p.add_argument("--call-seconds", type=float, default=20.0)
    p.add_argument("--memory-mb", type=int, default=0, help="cap on the kernel's data segment in MiB (0: none)")
    p.add_argument("--state", required=True)
    a = p.parse_args(argv)
    make_undumpable()  # before the request is read: the kernel must never see it in this process
    become_subreaper()
    request = json.loads(sys.stdin.read(MAX_REQUEST_BYTES) or '{"exercises": []}')
    sys.stdin.close()
    limit_memory(a.memory_mb)
    try:
        execute(a.src, a.dst, json.loads(a.params), a.cell_timeout, a.state, request, a.call_seconds)
    finally:
        kill_descendants()  # whatever the kernel started (daemons included) ends with the executor
    return 0


if __name__ == "__main__":
    sys.exit(main())
