"""Key numbers a notebook reports: shown to the learner and read back by ``make run``."""

from __future__ import annotations

MIME = "application/vnd.dslab.result+json"


def _fmt(value) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def record(**numbers) -> None:
    """Display ``numbers`` as one line (text/plain) plus a machine-readable bundle that ``make run`` collects."""
    for key, value in numbers.items():
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"record() takes numbers or strings; {key} is a {type(value).__name__}")
    line = "key numbers: " + ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(line)
    else:
        display({"text/plain": line, MIME: numbers}, raw=True)


def collect(nb) -> dict:
    """All numbers recorded in an executed notebook (later records win)."""
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            found.update(out.get("data", {}).get(MIME, {}))
    return found
