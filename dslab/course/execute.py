"""Execute one notebook with papermill for the grader, in its own process:
``python -m dslab.course.execute IN OUT --params JSON --cell-timeout S --memory-mb M --state STATE.json``.

Every cell runs even after errors; a cell past its time limit is interrupted; output beyond a byte budget is dropped
(a flood of prints cannot fill the disk or the grader's memory). With ``--memory-mb`` the executor caps its own data
segment (RLIMIT_DATA, POSIX only) before it starts the kernel, which inherits the cap: a submission that allocates
too much gets a MemoryError in its cell instead of pushing the grading machine into swap or the OOM killer.
STATE.json records the cell being run and the kernel's pid as execution goes, then the outcome, so the grader can
tell a dead kernel or a hang from ordinary errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import nbformat
import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.utils import merge_kwargs, remove_args

MAX_OUTPUT_BYTES = 2_000_000
NOTE = "[dslab grader: further output of this notebook was dropped: more than {:,} bytes]\n"


def _write_state(path: str, **state) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


class CappedClient(PapermillNotebookClient):
    """Papermill's client, with a budget on the bytes of output it keeps and progress written to a state file."""

    state_path: str = ""

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
        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        _write_state(self.state_path, status="running", cell=cell_index, kernel_pid=pid)


class CappedEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        state_path = kwargs.pop("state_path")
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                             kernel_name=kernel_name, log=papermill.engines.logger, log_output=log_output,
                             stdout_file=stdout_file, stderr_file=stderr_file)
        client = CappedClient(nb_man, **final)
        client.state_path = state_path
        client.on_cell_start = client.on_start
        return client.execute()


papermill_engines.register("dslab-capped", CappedEngine)


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


def execute(src: str, dst: str, params: dict, cell_timeout: int, state: str) -> dict:
    """Run ``src`` into ``dst``; returns the outcome also written to ``state``."""
    outcome: dict = {"status": "ok"}
    try:
        papermill.execute_notebook(src, dst, parameters=params, engine_name="dslab-capped", kernel_name="python3",
                                   progress_bar=False, execution_timeout=cell_timeout, allow_errors=True,
                                   interrupt_on_timeout=True, state_path=state)
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
    _write_state(state, **outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.course.execute")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--params", default="{}")
    p.add_argument("--cell-timeout", type=int, default=120)
    p.add_argument("--memory-mb", type=int, default=0, help="cap on the kernel's data segment in MiB (0: none)")
    p.add_argument("--state", required=True)
    a = p.parse_args(argv)
    limit_memory(a.memory_mb)
    execute(a.src, a.dst, json.loads(a.params), a.cell_timeout, a.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
