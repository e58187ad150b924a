"""Lab 01's balancing explorer: bias update speed γ and aux-loss weight α -> expert-load heatmap and MaxVio curves.

Only a router is simulated (``dslab.balancing.simulate_router``): training a language model per slider move would
take minutes, while the router alone answers in a fraction of a second.
"""

from __future__ import annotations

from dslab import plots
from dslab.labs.lab01_moe.experiments import simulate_router

LABELS = {"none": "no balancing", "aux": "aux loss (α)", "aux_free": "aux-loss-free (γ)"}


def balance_explorer(gamma: float = 0.01, alpha: float = 1.0, steps: int = 60, seed: int = 0):
    """Simulate a skewed sigmoid router for ``steps`` batches balanced three ways -> (numbers, figure).

    Numbers: MaxVio of each method averaged over the last quarter of the steps, and how far the aux loss moved the
    router weights (relative norm), the price the bias avoids paying. Figure: tokens per expert per step under
    aux-loss-free balancing, and the three MaxVio curves.
    """
    sim = simulate_router(gamma=gamma, alpha=alpha, steps=steps, seed=seed)
    tail = max(1, steps // 4)
    numbers = {f"MaxVio, {LABELS[k]}": round(float(v[-tail:].mean()), 3) for k, v in sim.vio.items()}
    numbers["router weight change from aux loss"] = round(sim.drift, 4)
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=3.4)
    im = ax1.imshow(sim.loads["aux_free"].T.float().numpy(), aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax1, label="tokens")
    ax1.set_xlabel("step")
    ax1.set_ylabel("expert")
    ax1.set_title(f"load per expert, aux-loss-free, γ = {gamma:.3g}", fontsize=10)
    for key, vio in sim.vio.items():
        ax2.plot(vio.numpy(), label=LABELS[key])
    ax2.set_xlabel("step")
    ax2.set_ylabel("MaxVio (batch)")
    ax2.set_ylim(bottom=0)
    ax2.set_title(f"MaxVio, α = {alpha:.3g}, γ = {gamma:.3g}", fontsize=10)
    ax2.legend(fontsize=8)
    return numbers, fig


def balance_controls() -> dict:
    """The ipywidgets controls of ``balance_explorer`` (log sliders for γ and α)."""
    import ipywidgets as W

    return {
        "gamma": W.FloatLogSlider(0.01, base=10, min=-4, max=-0.5, step=0.25, description="γ (bias speed)"),
        "alpha": W.FloatLogSlider(1.0, base=10, min=-3, max=1.5, step=0.25, description="α (aux loss)"),
        "steps": W.IntSlider(60, min=10, max=200, step=10, description="steps"),
    }


def balance_explorer_widget():
    """Sliders for balance_explorer; headless, the static default figure."""
    from dslab.widgets import explore

    return explore(balance_explorer, balance_controls())
