"""Lab 05's explorers: G, β, ε -> the advantage distribution and the clipped objective; a viewer over logged curves."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dslab import grpo, plots

SCALES = ("group", "batch", "none")


def grpo_explorer(G: int = 16, success: float = 0.3, beta: float = 0.04, epsilon: float = 0.2,
                  scale_rewards: str = "group", groups: int = 2000, seed: int = 0):
    """Groups of G completions, each right with probability ``success`` (reward 1, else 0) -> (numbers, figure).

    Left: the distribution of the advantages ``dslab.grpo.group_advantages`` gives them. Right: the per-token
    objective min(ρA, clip(ρ, 1 − ε, 1 + ε)A) against the ratio ρ for A = ±1 (shaded: the clip is active, the token
    gets no gradient), and the same minus β·k3 when the reference is the old policy (KL = 1/ρ + log ρ − 1).
    """
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(groups, G, generator=g) < success).double().flatten()
    adv = grpo.group_advantages(rewards, G, scale_rewards) if G > 1 else torch.zeros_like(rewards)
    zero_var = float(grpo.zero_variance_groups(rewards, G).double().mean())
    lone = torch.zeros(G, dtype=torch.float64)
    lone[0] = 1.0
    numbers = {
        "zero-variance groups (simulated)": round(zero_var, 4),
        "zero-variance groups, p^G + (1 − p)^G": round(success**G + (1 - success) ** G, 4),
        "advantage of a lone success": round(float(grpo.group_advantages(lone, G, scale_rewards)[0]), 3) if G > 1
        else 0.0,
        "largest |A|": round(float(adv.abs().max()), 3),
        "tokens with A > 0 get gradient while ρ <": round(1 + epsilon, 3),
        "tokens with A < 0 get gradient while ρ >": round(max(0.0, 1 - epsilon), 3),
    }
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=3.4)
    nonzero = adv[adv != 0]
    ax1.hist(nonzero.numpy(), bins=40, color="#4c72b0")
    ax1.set_xlabel("advantage Â (groups with any variance)")
    ax1.set_ylabel("completions")
    ax1.set_title(f"G = {G}, p(success) = {success:.2f}: {zero_var:.0%} of groups give Â = 0", fontsize=9)
    rho = torch.linspace(0.01, 2.5, 400, dtype=torch.float64)
    kl = 1 / rho + torch.log(rho) - 1  # k3 with π_ref = π_old: exp(−log ρ) + log ρ − 1
    for a, color in ((1.0, "#2a9d8f"), (-1.0, "#e76f51")):
        obj = torch.minimum(rho * a, rho.clamp(1 - epsilon, 1 + epsilon) * a)
        ax2.plot(rho.numpy(), obj.numpy(), color=color, label=f"A = {a:+.0f}")
        if beta > 0:
            ax2.plot(rho.numpy(), (obj - beta * kl).numpy(), color=color, ls="--", lw=1,
                     label=f"A = {a:+.0f}, − β·KL")
    ax2.axvspan(1 + epsilon, 2.5, color="#2a9d8f", alpha=0.08)
    ax2.axvspan(0.0, max(0.0, 1 - epsilon), color="#e76f51", alpha=0.08)
    ax2.axvline(1.0, color="k", lw=0.6, ls=":")
    ax2.set_xlim(0, 2.5)
    ax2.set_ylim(-2.6, 2.0)
    ax2.set_xlabel("ratio ρ = π_θ / π_old")
    ax2.set_ylabel("per-token objective")
    ax2.set_title(f"clip ε = {epsilon:g}, β = {beta:g} (shaded: clipped, zero gradient)", fontsize=9)
    ax2.legend(fontsize=7, loc="lower right")
    return numbers, fig


def grpo_controls() -> dict:
    """The ipywidgets controls of ``grpo_explorer``."""
    import ipywidgets as W

    return {
        "G": W.IntSlider(16, min=1, max=64, description="G (group size)"),
        "success": W.FloatSlider(0.3, min=0.0, max=1.0, step=0.05, description="p(success)"),
        "beta": W.FloatSlider(0.04, min=0.0, max=1.0, step=0.01, description="β (KL)"),
        "epsilon": W.FloatSlider(0.2, min=0.0, max=1.0, step=0.05, description="ε (clip)"),
        "scale_rewards": W.Dropdown(options=list(SCALES), value="group", description="scale_rewards"),
    }


def grpo_explorer_widget():
    """Sliders for grpo_explorer; headless, the static default figure."""
    from dslab.widgets import explore

    return explore(grpo_explorer, grpo_controls())


# ----------------------------------------------------------------------------------------------- curve viewer
METRICS = ("val_accuracy", "reward", "accuracy", "format", "consistency", "working", "mixed", "completion_length",
           "zero_variance", "kl", "clip_fraction", "loss", "grad_norm")


def plot_curves(runs: dict[str, list[dict]], metric: str, x: str = "step", window: int = 1, ax=None, title=None):
    """One line per run of ``metric`` against ``x`` ("step" or "cpu_minutes") from metrics rows; rows that lack the
    metric are skipped (e.g. held-out accuracy, logged every few steps). Returns the figure."""
    fig = None
    if ax is None:
        fig, (ax,) = plots.figure(1, width=6.0, height=3.4)
    for name, rows in runs.items():
        pts = [(r["cpu_seconds"] / 60 if x == "cpu_minutes" else r["step"], r[metric]) for r in rows
               if metric in r and math.isfinite(r[metric])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, plots.smooth(list(ys), window), label=name, lw=1.3)
    ax.set_xlabel("CPU minutes" if x == "cpu_minutes" else "GRPO step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or metric.replace("_", " "), fontsize=10)
    ax.legend(fontsize=7)
    return fig if fig is not None else ax.figure


def curve_viewer(runs: dict[str, list[dict]]) -> Callable:
    """A pure ``fn(metric, x, window, show) -> (numbers, figure)`` over the logged ``runs`` (name -> rows)."""

    def view(metric: str = "val_accuracy", x: str = "step", window: int = 1, show: tuple = tuple(runs)):
        chosen = {k: runs[k] for k in show if k in runs}
        fig = plot_curves(chosen, metric, x, window)
        numbers = {}
        for name, rows in chosen.items():
            vals = [r[metric] for r in rows if metric in r]
            if vals:
                numbers[f"{name}: last {metric}"] = round(vals[-1], 4)
        return numbers, fig

    return view


def curve_controls(runs: dict[str, list[dict]]) -> dict:
    """The controls of ``curve_viewer``: metric, x axis, smoothing window and the runs to show."""
    import ipywidgets as W

    metrics = [m for m in METRICS if any(m in r for rows in runs.values() for r in rows)]
    return {
        "metric": W.Dropdown(options=metrics, value=metrics[0], description="metric"),
        "x": W.Dropdown(options=["step", "cpu_minutes"], value="step", description="x axis"),
        "window": W.IntSlider(1, min=1, max=20, description="smoothing"),
        "show": W.SelectMultiple(options=list(runs), value=tuple(runs), rows=min(8, len(runs)), description="runs"),
    }


def curve_viewer_widget(runs: dict[str, list[dict]]):
    """The curve viewer with its controls; headless, the static default figure."""
    from dslab.widgets import explore

    return explore(curve_viewer(runs), curve_controls(runs))
