"""Widgets that wrap pure functions ``fn(**values) -> (numbers: dict, figure)``.

A notebook first calls the pure function once with its defaults in a deterministic cell (what nbval checks), then
shows the widget in a cell tagged ``nbval-ignore-output``. Headless (papermill, nbval, the grader: $DSLAB_HEADLESS=1),
``explore`` draws the static default instead of building live controls.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from dslab.runtime import is_headless


def _fmt(value) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def numbers_table(numbers: dict) -> str:
    """An HTML table of name -> value, the summary shown above a widget's figure."""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><b>{html.escape(_fmt(v))}</b></td></tr>"
                   for k, v in numbers.items())
    return f"<table>{rows}</table>"


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class Explorer:
    """Controls -> ``fn(**values)`` -> a table of numbers and a figure, redrawn whenever a control changes.

    ``controls`` maps each keyword of ``fn`` to an ipywidgets control. After any change, ``numbers`` holds what ``fn``
    returned, so tests can set ``controls[name].value`` and read ``explorer.numbers``.
    """

    def __init__(self, fn: Callable, controls: dict):
        import ipywidgets as W

        self.fn, self.controls = fn, controls
        self.summary, self.out = W.HTML(), W.Output()
        self.numbers: dict = {}
        # One description width and one total width for every control, so labels such as "kv_lora_rank" show in
        # full and the slider tracks and dropdowns line up.
        label_width = f"{max((len(getattr(c, 'description', '')) for c in controls.values()), default=0) + 2}ch"
        for control in controls.values():
            control.observe(self._update, names="value")
            style = getattr(control, "style", None)
            if hasattr(style, "description_width") and not style.description_width:
                style.description_width = label_width
            if not control.layout.width:
                control.layout.width = "30em"
        self._update()
        self.ui = W.VBox([W.VBox(list(controls.values())), self.summary, self.out])

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _update(self, change=None) -> None:
        from IPython.display import display

        self.numbers, fig = self.fn(**self.values())
        self.summary.value = numbers_table(self.numbers)
        if _in_kernel():  # outside a kernel (pytest) there is nothing to draw into
            self.out.clear_output(wait=True)
            with self.out:
                display(fig)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)


def explore(fn: Callable, controls: dict) -> Explorer | None:
    """The live Explorer in JupyterLab; headless, the static figure for the controls' current values."""
    if is_headless():
        from IPython.display import display

        numbers, fig = fn(**{name: c.value for name, c in controls.items()})
        display(fig)
        return None
    return Explorer(fn, controls)
