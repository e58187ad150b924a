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
import functools
import inspect
import json
import os
import sys
import textwrap
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
KERNEL_REPORT = "kernel.json"


def grading_source(request: dict, call_seconds: float) -> str:
    """The grading cell as the kernel runs it: the request travels compressed inside the source, nowhere else.

    With ``request["kernel"]`` (what the kernel is to report on itself: a nonce, the answering functions to hash, the
    folders of installed code), the cell reports on the kernel before and after it answers (``kernel_report``)."""
    payload = base64.b64encode(zlib.compress(json.dumps(request).encode(), 6)).decode()
    spec = request.get("kernel")
    report = (lambda stage: [_report_call(spec, stage)]) if spec else (lambda stage: [])
    return "\n".join([PLACEHOLDER, *([inlined_report()] if spec else []), *report("before"),
                      "from dslab.course.answers import grade_cell as _dslab_grade_cell",
                      f"_dslab_grade_cell(globals(), {payload!r}, {call_seconds!r}, {ANSWERS!r})", *report("after")])


def _report_call(spec: dict, stage: str) -> str:
    """The grading cell's call of ``kernel_report``: one that fails leaves the report missing, which the grader flags,
    and never costs the answers."""
    return (f"try:\n    _dslab_kernel_report({spec!r}, {KERNEL_REPORT!r}, {stage!r})\n"
            f"except Exception as _dslab_error:\n"
            f"    print('dslab grader: the kernel report failed:', repr(_dslab_error)[:200])")


def grading_budget(request: dict, call_seconds: float) -> int:
    """Seconds the grading cell may take: every call at its limit, plus start-up slack."""
    calls = sum(len(ex["cases"]) for ex in request.get("exercises", []))
    return int(calls * call_seconds + 60)


# ---------------------------------------------------------------------------- the kernel's report on itself
# These functions run in the kernel at grading time but are never imported there: ``inlined_report`` copies their
# source into the grading cell, nested in one function, so an earlier cell cannot have replaced them. They use only
# builtins and the standard library, and annotations that a bare cell can evaluate.
def code_hash(code: object) -> str:
    """A fingerprint of a code object that two processes compiling the same source agree on (its file and line
    numbers aside): what the kernel reports for the answering code, and what the grader expects."""
    import hashlib

    if not hasattr(code, "co_code"):
        raise TypeError(f"code must be a code object, got {type(code).__name__}")
    h, todo = hashlib.sha256(), [code]
    while todo:
        c = todo.pop()
        h.update(repr((c.co_name, c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount, c.co_flags, c.co_names,
                       c.co_varnames, c.co_freevars, c.co_cellvars)).encode())
        h.update(c.co_code)
        for k in c.co_consts:
            if hasattr(k, "co_code"):
                todo.append(k)
            else:  # a frozenset's order changes with the hash seed; its sorted members do not
                h.update(repr(sorted(map(repr, k)) if isinstance(k, frozenset) else k).encode())
    return h.hexdigest()


def _untrusted(code: object, roots: list) -> bool:
    """Whether ``code`` comes from anywhere but installed code (the Python installation, its packages, dslab): a
    cell, text given to exec, a file the submission wrote."""
    import os

    name = code.co_filename
    if name.startswith("<frozen "):
        return False
    if name.startswith("<"):
        return True
    real = os.path.realpath(name)
    return not any(real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _code_of(obj: object) -> object:
    """The Python code that calling ``obj`` runs, through bound methods, partials, ``__call__`` and, for an object
    that is not callable, its class's first method (None when all of it is C code)."""
    for _ in range(8):
        if hasattr(obj, "__code__"):
            return obj.__code__
        found = getattr(obj, "__func__", None) or getattr(obj, "func", None)
        if found is None:
            methods = [v for k in type(obj).__mro__[:-1] for v in vars(k).values() if hasattr(v, "__code__")]
            calls = [v for k in type(obj).__mro__[:-1] for n, v in vars(k).items() if n == "__call__"]
            found = (calls or methods or [None])[0]
        if found is None:
            return None
        obj = found
    return None


def _where(code: object, ip: object) -> str:
    """"name (In[7])" for code from a cell (the grader turns In[7] into the cell's index), else "name (file)"."""
    cells = getattr(getattr(ip, "compile", None), "_filename_map", None) or {}
    number = cells.get(code.co_filename)
    return f"{code.co_name} ({f'In[{number}]' if number is not None else code.co_filename.rsplit('/', 1)[-1]})"


def _shell_hooks(ip: object, roots: list) -> list:
    """IPython event callbacks and input/AST transformers, and shell, kernel or builtin functions, whose code is not
    installed code."""
    import builtins

    found = []

    def check(obj: object, what: str, strict: bool) -> None:
        code = _code_of(obj)
        if code is None and strict or code is not None and _untrusted(code, roots):
            found.append(f"{what}: {_where(code, ip) if code is not None else repr(obj)[:60]}")

    for event, callbacks in (getattr(getattr(ip, "events", None), "callbacks", None) or {}).items():
        for callback in callbacks:
            check(callback, f"IPython {event} callback", True)
    for name in ("input_transformers_cleanup", "input_transformers_post", "ast_transformers"):
        for transformer in getattr(ip, name, None) or []:
            check(transformer, f"IPython {name} entry", True)
    for owner in [o for o in (ip, getattr(ip, "kernel", None)) if o is not None] + [builtins]:
        label = "builtins" if owner is builtins else type(owner).__name__
        spaces = [vars(owner)] + ([] if owner is builtins else [vars(k) for k in type(owner).__mro__])
        for space in spaces:
            for name, value in list(space.items()):
                if hasattr(value, "__code__") or hasattr(value, "__func__"):
                    check(value, f"{label}.{name} replaced", False)
    return found


def _user_threads(ip: object, roots: list) -> list:
    """Threads other than this one that are alive and run code that is not installed code (or were started on it)."""
    import sys
    import threading

    frames, found = sys._current_frames(), []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        codes, frame = [], frames.get(thread.ident)
        while frame is not None:
            codes.append(frame.f_code)
            frame = frame.f_back
        for start in (getattr(thread, "_target", None), getattr(thread, "function", None), type(thread).run):
            codes += [c for c in [_code_of(start)] if c is not None] if start is not None else []
        mine = [c for c in codes if _untrusted(c, roots)]
        if mine:
            found.append(f"thread {thread.name!r} running {_where(mine[0], ip)}")
    return found


def _tracing(ip: object) -> list:
    """Trace and profile functions in effect (none in an honest kernel between two calls of the grader's)."""
    import sys
    import threading

    hooks = {"sys.settrace": sys.gettrace(), "sys.setprofile": sys.getprofile(),
             "threading.settrace": getattr(threading, "gettrace", lambda: None)(),
             "threading.setprofile": getattr(threading, "getprofile", lambda: None)()}
    return [f"{name} is set: {_where(_code_of(fn), ip) if _code_of(fn) else repr(fn)[:60]}"
            for name, fn in hooks.items() if fn is not None]


def _answering_code(names: list) -> dict:
    """{qualified name: code_hash} of the functions that answer the hidden cases, as they are in this kernel now."""
    import importlib
    import sys

    hashes = {}
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            obj = getattr(sys.modules.get(module) or importlib.import_module(module), attr)
            while hasattr(obj, "__wrapped__"):
                obj = obj.__wrapped__
            hashes[name] = code_hash(obj.__code__)
        except Exception:  # noqa: BLE001 - whatever stands there instead is not the package's code
            hashes[name] = None
    return hashes


def kernel_report(spec: dict, path: str, stage: str) -> None:
    """Write to ``path`` what this kernel finds about itself at ``stage`` ("before" or "after" answering): hashes of
    the answering code, hooks, user threads still alive, trace functions; the grader turns them into flags.

    spec: {"nonce": the batch's secret for this run, "functions": names to hash, "roots": folders of installed code}.
    """
    import json
    import os

    if not isinstance(spec, dict) or not {"nonce", "functions", "roots"} <= spec.keys():
        raise ValueError("spec must be a dict with nonce, functions and roots")
    if stage not in ("before", "after"):
        raise ValueError(f"stage must be 'before' or 'after', got {stage!r}")
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, got {type(path).__name__}")
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        ip = None
    found = {"code": _answering_code(spec["functions"]), "hooks": _shell_hooks(ip, spec["roots"]) if ip else [],
             "threads": _user_threads(ip, spec["roots"]), "trace": _tracing(ip)}
    report = {}
    if stage == "after" and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            report = {}
    report = report if isinstance(report, dict) and report.get("nonce") == spec["nonce"] else {}
    report.update({"nonce": spec["nonce"], stage: found})
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(path + ".tmp", path)


@functools.lru_cache(maxsize=1)
def inlined_report() -> str:
    """``kernel_report`` and its helpers as one function, ``_dslab_kernel_report``, for the grading cell's source."""
    parts = [code_hash, _untrusted, _code_of, _where, _shell_hooks, _user_threads, _tracing, _answering_code,
             kernel_report]
    body = "\n".join(textwrap.indent(inspect.getsource(fn), "    ") for fn in parts)
    return f"def _dslab_kernel_report(spec, path, stage):\n{body}\n    return kernel_report(spec, path, stage)\n"


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
