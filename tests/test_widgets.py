"""``dslab.widgets``: the generic explorer around a pure ``fn(**values) -> (numbers, figure)``. Callbacks are tested by
setting ``.value`` as a learner's slider would; each lab's own widgets are tested in its tests/test_labNN.py."""

from __future__ import annotations

import pytest

from dslab import plots
from dslab.widgets import Explorer, explore, numbers_table


def line(slope: float = 1.0, label: str = "a"):
    """A pure function of two controls: a figure whose title and data say which values drew it."""
    fig, (ax,) = plots.figure(1)
    ax.plot([0, 1], [0, slope])
    ax.set_title(f"{label}: slope {slope}")
    return {"slope": slope, "label": label, "end": 10 * slope}, fig


def controls(slope: float = 1.0):
    import ipywidgets as W

    return {"slope": W.FloatSlider(value=slope, min=0, max=5), "label": W.Dropdown(options=["a", "b"], value="a")}


def test_headless_explore_draws_the_static_figure_for_the_current_values(monkeypatch):
    monkeypatch.setenv("DSLAB_HEADLESS", "1")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    assert explore(line, controls(slope=2.5)) is None
    assert len(shown) == 1
    (ax,) = shown[0].axes
    assert ax.get_title() == "a: slope 2.5" and list(ax.lines[0].get_ydata()) == [0, 2.5]


def test_explorer_redraws_and_reports_on_every_change(monkeypatch):
    monkeypatch.delenv("DSLAB_HEADLESS", raising=False)
    explorer = explore(line, controls())
    assert isinstance(explorer, Explorer) and explorer.numbers == {"slope": 1.0, "label": "a", "end": 10.0}
    explorer.controls["slope"].value = 3.0
    explorer.controls["label"].value = "b"
    assert explorer.numbers == {"slope": 3.0, "label": "b", "end": 30.0}
    assert "<td><b>30</b></td>" in explorer.summary.value and explorer.values() == {"slope": 3.0, "label": "b"}


def test_numbers_table_formats_what_a_reader_compares():
    table = numbers_table({"big": 70272.0, "share": 0.05599, "name": "x<y", "count": 1234567})
    assert "70,272" in table and "0.05599" in table and "x&lt;y" in table and "1,234,567" in table


def test_explore_rejects_nothing_silently(monkeypatch):
    monkeypatch.delenv("DSLAB_HEADLESS", raising=False)
    import ipywidgets as W

    with pytest.raises(TypeError):
        explore(line, {"no_such_parameter": W.IntSlider(1)})
