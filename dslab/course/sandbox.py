"""Where a submission runs: inside bubblewrap (``bwrap``) when it works, otherwise unisolated with a loud warning.

The sandbox (one per submission) gives the executor and the kernel it starts:

- their own PID namespace: the grader, its command line, its other submissions and their kernels are invisible, and
  every process the submission starts (a daemon that called ``setsid`` included) dies with the sandbox;
- no network; a read-only view of the whole file system (the system, the venv, the package and its exercise
  registry); a fresh ``/tmp``; and one writable directory, the submission's private working copy;
- the grader's output folder and every folder holding submissions masked by empty tmpfs mounts, so a kernel sees
  neither other students' files nor their reports, even when those folders sit inside the course checkout.

Without the sandbox the same command runs as a child process of the grader: a submission could then read and write
whatever the grader's user can. The grader still kills every process it can find (``kill_descendants``) before
writing a report, and says in every report that the run was not isolated.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dslab

MODES = ("auto", "bwrap", "none")
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
NOBODY = 65534


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when ``bwrap`` can start a sandbox here, else why not (in a few words)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start: {e}"
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here ({probe.stderr.strip()[:160] or probe.returncode})"
    return None


def resolve(mode: str) -> tuple[str, str | None]:
    """("bwrap" | "none", warning or None) for the asked ``mode``; ValueError when "bwrap" is asked but unusable."""
    if mode not in MODES:
        raise ValueError(f"sandbox must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return "none", "grading without a sandbox (--sandbox none): submissions can see and change each other"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap", None
    if mode == "bwrap":
        raise ValueError(f"--sandbox bwrap was asked for, but {problem}")
    return "none", f"NOT ISOLATED: {problem}; submissions can read each other and tamper with the grader"


def bwrap_command(cmd: list[str], work: Path, masks: list[Path], env: dict[str, str]) -> list[str]:
    """``cmd`` wrapped in a bubblewrap sandbox whose only writable place is ``work`` (also its HOME and cwd).

    masks: folders hidden behind empty tmpfs mounts (the grader's output, the submission folders).
    """
    # Inside, the kernel runs as "nobody" in its own user namespace, mapped to the grader's user for file access; the
    # read-only mounts and the masks, not file permissions, are what keep it away from everything but ``work``.
    argv = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--new-session", "--die-with-parent",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for folder in _needed_under_tmp():  # a checkout or venv under /tmp must stay visible above the fresh /tmp
        argv += ["--ro-bind", str(folder), str(folder)]
    for folder in sorted({m.resolve() for m in masks if m.exists()}, key=lambda p: len(p.parts)):
        argv += ["--tmpfs", str(folder), "--remount-ro", str(folder)]  # empty, and nothing to write into
    argv += ["--bind", str(work), str(work), "--chdir", str(work), "--clearenv"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return argv + ["--"] + cmd


def _needed_under_tmp() -> list[Path]:
    """What the kernel needs to run (the Python environment, its base interpreter, the course checkout holding the
    dslab package) that lies under /tmp, outermost first."""
    tmp = Path("/tmp")
    needed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(dslab.__file__).resolve().parents[1]}
    inside = [p for p in needed if tmp in p.parents]
    return sorted((p for p in inside if not any(q in p.parents for q in inside)), key=lambda p: len(p.parts))


def sandbox_env(work: Path) -> dict[str, str]:
    """The environment a submission sees: nothing of the grader's but what Python, the kernel and matplotlib need."""
    names = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TZ")
    keep = {k: os.environ[k] for k in names if k in os.environ}
    return {**keep, "HOME": str(work), "MPLCONFIGDIR": str(work / ".mpl"), "IPYTHONDIR": str(work / ".ipython"),
            "JUPYTER_RUNTIME_DIR": str(work / ".jupyter"), "XDG_CACHE_HOME": str(work / ".cache"),
            "DSLAB_HEADLESS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def unmaskable(masks: list[Path]) -> list[Path]:
    """Masks that would also hide what the kernel needs to run (the Python environment or the dslab package)."""
    needed = [Path(sys.prefix).resolve(), Path(dslab.__file__).resolve().parent]
    return [m for m in masks if any(m.resolve() == n or m.resolve() in n.parents for n in needed)]


def _libc():
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def make_undumpable() -> bool:
    """Forbid same-user processes (the kernel) to read this process's memory, environment or open files via /proc
    or ptrace (Linux). Returns whether it took effect."""
    libc = _libc()
    return bool(libc) and libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Make orphaned descendants (daemons a kernel detached) re-parent to this process instead of init (Linux), so
    ``kill_descendants`` can still find them."""
    libc = _libc()
    return bool(libc) and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from /proc; empty where /proc does not exist."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def kill_descendants(pid: int | None = None, rounds: int = 5) -> int:
    """SIGKILL every descendant of ``pid`` (default: this process) until none is left; returns how many were killed.

    Repeated because a dying process's children re-parent to the nearest subreaper, which is this one."""
    pid = os.getpid() if pid is None else pid
    killed = 0
    for _ in range(rounds):
        victims = descendants(pid)
        if not victims:
            break
        killed += _sigkill(victims)
        for p in victims:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
    return killed


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and everything below it (its process group and every descendant found in /proc)."""
    victims = descendants(proc.pid)  # listed first: once ``proc`` is dead its children no longer show below it
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except OSError:
            pass
    _sigkill(victims)


def _sigkill(pids: list[int]) -> int:
    """SIGKILL each of ``pids``; returns how many signals were delivered (a process already gone is skipped)."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed
