"""Lab 01's balancing explorer: bias update speed γ and aux-loss weight α -> MaxVio and the preference each token
keeps, for a router simulated alone (``experiments.simulate_router``: a fraction of a second per slider move, where
training a language model would take minutes)."""

from __future__ import annotations

from dslab import plots
from dslab.labs.lab01_moe.experiments import simulate_router

LABELS = {"none": "no balancing", "aux": "aux loss (α)", "aux_free": "aux-loss-free bias (γ)"}
STYLES = {"none": dict(color="0.55", ls="--", lw=1.6, zorder=1), "aux": dict(color="C1", lw=1.6, zorder=2),
          "aux_free": dict(color="C0", lw=1.6, zorder=3)}


def balance_explorer(gamma: float = 0.01, alpha: float = 1.0, steps: int = 60, seed: int = 0):
    """Simulate a skewed sigmoid router for ``steps`` batches balanced three ways -> (numbers, figure).

    Numbers (averaged over the last quarter of the steps): MaxVio per method, the share of its preferred affinity each
    token keeps, and how far the aux loss moved the affinities themselves. Figure: batch MaxVio and preference kept
    against the step, one line per method.
    """
    sim = simulate_router(gamma=gamma, alpha=alpha, steps=steps, seed=seed)
    numbers = {f"MaxVio, {LABELS[m]}": round(sim.settled("vio", m), 3) for m in LABELS}
    numbers.update({f"preference kept, {LABELS[m]}": round(sim.settled("kept", m), 3) for m in ("aux", "aux_free")})
    numbers["affinity drift, aux loss"] = round(sim.settled("drift", "aux"), 4)
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=3.4)
    for method, label in LABELS.items():
        ax1.plot(sim.vio[method].numpy(), label=label, **STYLES[method])
        ax2.plot(sim.kept[method].numpy(), label=label, **STYLES[method])
    ax1.set(xlabel="step", ylabel="MaxVio of the batch", ylim=(0, None))
    ax1.set_title(f"load imbalance, α = {alpha:.3g}, γ = {gamma:.3g}", fontsize=10)
    ax2.set(xlabel="step", ylabel="preferred affinity kept (1 = top-k of s0)")
    ax2.set_title("cost: tokens sent away from their favourite experts", fontsize=10)
    ax1.legend(fontsize=8)
    return numbers, fig


def balance_controls() -> dict:
    """The ipywidgets controls of ``balance_explorer`` (log sliders for γ and α)."""
    import ipywidgets as W

    return {
        "gamma": W.FloatLogSlider(0.01, base=10, min=-4, max=-0.5, step=0.25, description="γ (bias speed)"),
        "alpha": W.FloatLogSlider(1.0, base=10, min=-2, max=2.5, step=0.25, description="α (aux loss)"),
        "steps": W.IntSlider(60, min=10, max=200, step=10, description="steps"),
    }


def balance_explorer_widget():
    """Sliders for balance_explorer; headless, the static default figure."""
    from dslab.widgets import explore

    return explore(balance_explorer, balance_controls())
