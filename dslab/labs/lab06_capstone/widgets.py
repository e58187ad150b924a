"""Lab 06's explorer: the shipped reference runs of the cpu preset (a healthy run and three typical failures) side by
side, one metric at a time, with your own run on top when you give it."""

from __future__ import annotations

from dslab import plots
from dslab.labs.lab06_capstone import experiments

METRICS = {"loss": "training loss (nats/char)", "val_loss": "validation loss (nats/char)",
           "max_vio": "MaxVio of the batch", "mtp_acceptance": "depth-1 acceptance (teacher-forced)",
           "grad_norm": "gradient norm (before clipping)", "lr": "learning rate"}
LABELS = {"healthy": "healthy (the cpu preset)", "lr_too_high": "lr too high (10x)",
          "no_balancing": "no balancing (γ = 0)", "mtp_off": "MTP off (D = 0)"}


def reference_explorer(metric: str = "loss", window: int = 20, runs: tuple[str, ...] = experiments.REFERENCE_NAMES,
                       history: list[dict] | None = None):
    """One metric of the chosen reference runs (and of ``history``, your run) against the step -> (numbers, figure).

    Numbers: each run's last smoothed value of the metric ("-" where the run does not log it: MTP off has no
    acceptance). ``window``: trailing mean over that many logged values (1: raw).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    refs = experiments.reference_runs(tuple(runs))
    if history is not None:
        refs = {**refs, "your run": history}
    fig, (ax,) = plots.figure(1, width=6.4, height=3.4)
    numbers = {}
    for name, rows in refs.items():
        steps, values = experiments.series(rows, metric)
        label = LABELS.get(name, name)
        if not values:
            numbers[label] = "-"
            continue
        smooth = plots.smooth(values, max(1, window))
        style = dict(color="k", ls="--", lw=1.8) if name == "your run" else dict(lw=1.2)
        ax.plot(steps, smooth, label=label, **style)
        numbers[label] = round(float(smooth[-1]), 4)
    ax.set(xlabel="training step", ylabel=METRICS[metric], title=f"{METRICS[metric]}, {window}-value mean")
    if metric in ("grad_norm",):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return numbers, fig


def reference_controls() -> dict:
    """The ipywidgets controls of ``reference_explorer``."""
    import ipywidgets as W

    return {
        "metric": W.Dropdown(options=[(v, k) for k, v in METRICS.items()], value="loss", description="metric"),
        "window": W.IntSlider(20, min=1, max=100, step=1, description="smoothing"),
        "runs": W.SelectMultiple(options=[(LABELS[n], n) for n in experiments.REFERENCE_NAMES],
                                 value=experiments.REFERENCE_NAMES, description="runs", rows=4),
    }


def reference_explorer_widget(history: list[dict] | None = None):
    """The explorer with controls (your run, when given, always on top); headless, the static default figure."""
    from functools import partial

    from dslab.widgets import explore

    return explore(partial(reference_explorer, history=history), reference_controls())
