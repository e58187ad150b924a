"""``python -m dslab doctor``: one [OK]/[FAIL] line per requirement; exit 1 when anything fails."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable

MIN_FREE_GB = 2.0


def _python() -> tuple[bool, str]:
    v = sys.version_info
    return v >= (3, 10), f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable}); the course targets 3.11"


def _torch() -> tuple[bool, str]:
    import torch  # in the probe: a missing or broken torch is what doctor reports

    from dslab.runtime import pick_device

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return True, f"torch {torch.__version__} ({build}); notebooks will use device '{pick_device()}'"


def _module(name: str, why: str) -> Callable[[], tuple[bool, str]]:
    def probe() -> tuple[bool, str]:
        module = importlib.import_module(name)
        return True, f"{name} {getattr(module, '__version__', '?')} ({why})"

    return probe


def _disk() -> tuple[bool, str]:
    free = shutil.disk_usage(".").free / 2**30
    return free >= MIN_FREE_GB, f"{free:.1f} GiB free here (need {MIN_FREE_GB:g} GiB for checkpoints and runs)"


CHECKS: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
    ("python", _python),
    ("dslab", _module("dslab", "this course's package")),
    ("torch", _torch),
    ("jupyterlab", _module("jupyterlab", "`make lab`")),
    ("ipywidgets", _module("ipywidgets", "interactive figures")),
    ("matplotlib", _module("matplotlib", "figures")),
    ("papermill", _module("papermill", "headless runs and grading")),
    ("nbval", _module("nbval", "notebook tests")),
    ("disk", _disk),
]


def doctor() -> int:
    failed = 0
    for name, probe in CHECKS:
        try:
            ok, detail = probe()
        except Exception as e:  # noqa: BLE001 - a missing package is exactly what we report
            ok, detail = False, f"{type(e).__name__}: {e} (fix: `make setup`)"
        failed += not ok
        print(f"[{'OK' if ok else 'FAIL'}] {name}: {detail}")
    print("all good" if not failed else f"{failed} problem(s); `make setup` installs everything the course needs")
    return 1 if failed else 0
