"""What a notebook calls besides ``dslab.check``: ``require`` (set-up cell), ``yours`` (later cells use the learner's
function, or the package's while the exercise is not done), ``record`` (its key numbers), and ``read_records``,
which ``make run`` uses to collect those numbers from an executed notebook."""

from __future__ import annotations

import functools

import dslab

try:  # every kernel has IPython; plain Python without it (a script) prints instead of displaying
    from IPython import get_ipython
    from IPython.display import display
except ImportError:
    get_ipython = display = None

MIME = "application/vnd.dslab.result+json"


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("+")[0].split(".")[:3])
    except ValueError:
        raise ValueError(f"a version looks like '0.1.0', got {text!r}") from None


def require(version: str) -> None:
    """Raise RuntimeError, with the command that fixes it, when the installed dslab is older than ``version``."""
    if _version(dslab.__version__) < _version(version):
        raise RuntimeError(f"this notebook needs dslab >= {version}, but {dslab.__version__} is installed; "
                           "update it with `make setup` (or `pip install -e .` in the course folder)")


def yours(fn, fallback):
    """``fn`` (the learner's function) wrapped so that, while it still raises NotImplementedError, calls go to
    ``fallback`` — the package's function, or an exercise id such as "01.route" whose registered reference to use —
    with a one-line note the first time; any other error is the learner's to see."""
    if isinstance(fallback, str):
        # imported here: the registry loads torch and every lab; ``require`` (a notebook's first line) needs neither
        from dslab.course.exercises import find

        fallback = find(fallback).reference
    if not callable(fn) or not callable(fallback):
        raise TypeError("yours(fn, fallback) takes the learner's function and a function or an exercise id")
    noted = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            if not noted:
                noted.append(True)
                name = getattr(fn, "__name__", "your function")
                where = f"{fallback.__module__}.{getattr(fallback, '__qualname__', fallback.__name__)}"
                print(f"(your {name} is not written yet: this cell uses {where} instead)")
            return fallback(*args, **kwargs)

    return call


def fmt(value) -> str:
    """A recorded value as one line shows it (here and in ``make run``): floats to 4 significant digits, ints with
    thousands separators, anything else (a bool, a string) as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"


def record(**numbers) -> None:
    """Display ``numbers`` as one line (text/plain) plus a machine-readable bundle that ``make run`` collects."""
    for key, value in numbers.items():
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"record() takes numbers or strings; {key} is a {type(value).__name__}")
    show("key numbers: " + ", ".join(f"{k}={fmt(v)}" for k, v in numbers.items()), {MIME: numbers})


def show(line: str, bundle: dict) -> None:
    """``line`` printed, or in IPython displayed as text/plain with ``bundle``'s other MIME types beside it (what a
    front end renders, what ``make run`` and the tests read back)."""
    if get_ipython is None or get_ipython() is None:
        print(line)
    else:
        display({"text/plain": line, **bundle}, raw=True)


def read_records(nb) -> dict:
    """All numbers recorded in an executed notebook (later records win)."""
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            found.update(out.get("data", {}).get(MIME, {}))
    return found
