"""Widgets wrap pure functions; their callbacks are tested by setting ``.value`` as a learner's slider would."""

from __future__ import annotations

import pytest

from dslab.labs.lab00_by_the_numbers.widgets import config_explorer, config_explorer_widget
from dslab.widgets import explore


def test_config_explorer_defaults_are_deepseek_v3():
    numbers, fig = config_explorer()
    assert numbers["total params (B)"] == 671.03 and numbers["activated params (B)"] == 37.55
    assert numbers["MLA KV bytes/token (16-bit)"] == 70_272 and len(fig.axes) == 2


def test_config_explorer_callback_updates_numbers(monkeypatch):
    monkeypatch.delenv("DSLAB_HEADLESS", raising=False)
    w = config_explorer_widget()
    w.controls["n_routed_experts"].value = 64
    assert w.numbers["total params (B)"] < 200 and w.numbers["activated params (B)"] == 37.47
    w.controls["kv_bits"].value = 8
    assert w.numbers["MLA KV bytes/token (8-bit)"] == 35_136
    assert "35,136" in w.summary.value


def test_headless_explore_draws_the_static_default(monkeypatch):
    monkeypatch.setenv("DSLAB_HEADLESS", "1")
    assert config_explorer_widget() is None


def test_explore_rejects_nothing_silently(monkeypatch):
    monkeypatch.delenv("DSLAB_HEADLESS", raising=False)
    import ipywidgets as W

    with pytest.raises(TypeError):
        explore(config_explorer, {"no_such_parameter": W.IntSlider(1)})
