"""Lab 04's speculation explorer: λ, D and the sampling temperature -> acceptance, tokens per main-model forward and
the tokens/s speedup that the measured forward costs predict, read from the sweep the notebook ran over its trained
models (training a model per slider move would take minutes)."""

from __future__ import annotations

import functools
import math

from dslab import plots


def predicted_speedup(tokens_per_forward: float, depth: int, costs: dict) -> float:
    """Tokens/s speedup of drafting ``depth`` tokens per step: measured tokens per forward over the cost of one step,
    an (depth + 1)-token main forward plus ``depth`` MTP steps (costs in 1-token forwards: main_2, main_3, mtp)."""
    verify = costs[f"main_{depth + 1}"]
    return tokens_per_forward / (verify + depth * costs["mtp"])


def speculation(table: dict, costs: dict, losses: dict, lam: float = 0.3, depth: int = 1, temperature: float = 0.0):
    """One trained model's speculative decoding at one temperature -> (numbers, figure).

    table: {(λ, D, T): ``experiments.decode`` summary}; costs: forward costs relative to a 1-token main forward
    (main_2, main_3, mtp); losses: {(λ, D): main-model validation loss}, with (0.0, 0) the model trained without MTP.
    """
    row = table[(lam, depth, temperature)]["all"]
    tokens = row["tokens_per_forward"]
    numbers = {"2nd-token acceptance": round(row["acceptance"], 3)}
    if depth > 1:
        numbers["3rd-token acceptance (after an accepted 2nd)"] = round(row["by_depth"][1], 3)
    speedup = round(predicted_speedup(tokens, depth, costs), 2)  # the loop's own overhead is not in these costs
    numbers.update({
        "tokens per main-model forward": round(tokens, 2),
        "predicted tokens/s speedup (isolated costs, no loop overhead)": speedup,
        "acceptance on words / digits": f"{table[(lam, depth, temperature)]['words']['acceptance']:.2f} / "
                                        f"{table[(lam, depth, temperature)]['digits']['acceptance']:.2f}",
        "main validation loss (no MTP)": f"{losses[(lam, depth)]:.3f} ({losses[(0.0, 0)]:.3f})",
    })
    models = sorted({(lam_, d) for lam_, d, _ in table})
    temps = sorted({t for _, _, t in table})
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=3.4)
    for i, (lam_, d) in enumerate(models):
        chosen = (lam_, d) == (lam, depth)
        style = dict(color=f"C{i}", lw=2.4 if chosen else 1.0, alpha=1.0 if chosen else 0.45, marker="o",
                     ms=5 if chosen else 3, ls="-" if d == 1 else "--", label=f"λ = {lam_:g}, D = {d}")
        ax1.plot(temps, [table[(lam_, d, t)]["all"]["acceptance"] for t in temps], **style)
        ax2.plot(temps, [predicted_speedup(table[(lam_, d, t)]["all"]["tokens_per_forward"], d, costs)
                         for t in temps], **style)
    for ax in (ax1, ax2):
        ax.axvline(temperature, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("sampling temperature (0 = greedy)")
    ax1.set(ylabel="2nd-token acceptance", ylim=(0, 1.02))
    ax1.set_title("how often the main model keeps the first draft", fontsize=10)
    ax2.axhline(1, color="grey", lw=0.8)
    ax2.set(ylabel="predicted tokens/s vs plain decoding")
    ax2.set_title("tokens per forward / cost of a step", fontsize=10)
    ax1.legend(fontsize=7, ncols=2)
    return numbers, fig


def speculation_controls(table: dict) -> dict:
    """Dropdowns for λ and D and a slider over the temperatures the sweep ran, at λ = 0.3, D = 1, greedy."""
    import ipywidgets as W

    lams = sorted({lam for lam, _, _ in table})
    depths = sorted({d for _, d, _ in table})
    temps = sorted({t for _, _, t in table})
    return {
        "lam": W.Dropdown(options=lams, value=0.3 if 0.3 in lams else lams[0], description="λ"),
        "depth": W.Dropdown(options=depths, value=depths[0], description="D (drafts)"),
        "temperature": W.SelectionSlider(options=temps, value=temps[0], description="temperature"),
    }


def speculation_widget(table: dict, costs: dict, losses: dict):
    """The explorer over a finished sweep; headless, the static default figure."""
    from dslab.widgets import explore

    fn = functools.partial(speculation, table, costs, losses)
    functools.update_wrapper(fn, speculation)
    return explore(fn, speculation_controls(table))


def is_complete(table: dict) -> bool:
    """Whether the sweep has every (λ, D, T) combination of the values it contains (what the controls offer)."""
    lams, depths, temps = ({k[i] for k in table} for i in range(3))
    return all((a, b, c) in table and not math.isnan(table[(a, b, c)]["all"]["tokens_per_forward"])
               for a in lams for b in depths for c in temps)
