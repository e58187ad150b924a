"""Lab 07's schedule explorer: stages, micro-batches and the F/B/W/F&B durations -> the three schedules' Gantt charts
and bubbles side by side, simulated (``dslab.systems.simulate``) next to V3 Table 2's closed forms."""

from __future__ import annotations

import ipywidgets as W
from matplotlib.figure import Figure

from dslab import systems
from dslab.widgets import explore


def schedule_explorer(pp: int = 4, microbatches: int = 8, F: float = 1.0, B: float = 2.0,  # noqa: N803
                      W: float = 1.0, overlap: float = 0.0, comm: float = 0.0):
    """Simulate 1F1B, ZB1P and DualPipe -> (numbers, figure).

    F, B, W: forward, full backward and weight-gradient durations; overlap in [0, 1]: how much of the shorter of F
    and B an F&B chunk hides (F&B = F + B − overlap · min(F, B)); comm: one hop between stages. A schedule these
    settings do not allow (odd PP or too few micro-batches for DualPipe, W >= B) shows why instead of a chart.
    Numbers per schedule: simulated bubble (largest per device), Table 2's value (and whether it applies here), the
    bubble's share of the step, peak activations per device.
    """
    fig = Figure(figsize=(10, 1.6 + 3 * (0.32 * pp + 0.9)), layout="constrained")
    axes = fig.subplots(3, 1)
    numbers: dict = {}
    try:
        d = systems.Durations(F=F, B=B, W=W, FB=F + B - overlap * min(F, B), comm=comm)
    except ValueError as e:
        for ax in axes:
            ax.axis("off")
        axes[0].text(0.5, 0.5, f"invalid durations: {e}", ha="center", va="center", wrap=True)
        return {"error": str(e)}, fig
    for ax, s in zip(axes, systems.SCHEDULES):
        name = systems.LABELS[s]
        try:
            tl = systems.simulate(s, pp, microbatches, d)
        except ValueError as e:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{name}: {e}", ha="center", va="center", fontsize=9, wrap=True)
            numbers[f"{name} bubble"] = "n/a"
            continue
        formula = systems.closed_form_bubble(s, pp, d)
        holds = systems.closed_form_holds(s, pp, microbatches, d)
        numbers[f"{name} bubble"] = round(tl.max_bubble, 3)
        numbers[f"{name} Table 2"] = f"{formula:.3g}" + ("" if holds else " (does not apply here)")
        numbers[f"{name} bubble share"] = f"{tl.bubble_fraction:.1%}"
        numbers[f"{name} peak activations"] = max(tl.peak_activations)
        systems.gantt(tl, ax=ax, label_microbatches=pp * microbatches <= 400)
    return numbers, fig


def schedule_controls() -> dict:
    """The ipywidgets controls of ``schedule_explorer``."""
    return {
        "pp": W.IntSlider(4, min=1, max=16, description="stages PP"),
        "microbatches": W.IntSlider(8, min=1, max=48, description="micro-batches"),
        "F": W.FloatSlider(1.0, min=0.25, max=4.0, step=0.25, description="F (forward)"),
        "B": W.FloatSlider(2.0, min=0.5, max=6.0, step=0.25, description="B (backward)"),
        "W": W.FloatSlider(1.0, min=0.25, max=3.0, step=0.25, description="W (weights)"),
        "overlap": W.FloatSlider(0.0, min=0.0, max=1.0, step=0.1, description="F&B overlap"),
        "comm": W.FloatSlider(0.0, min=0.0, max=1.0, step=0.05, description="comm per hop"),
    }


def schedule_explorer_widget():
    """Sliders for schedule_explorer; headless, the static default figure."""
    return explore(schedule_explorer, schedule_controls())
