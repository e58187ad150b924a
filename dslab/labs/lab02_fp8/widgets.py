"""Lab 02's quantization explorer: format, scaling granularity and outlier magnitude -> the error of every element
of a realistic activation tensor (a histogram) and the signal-to-noise ratio of the ordinary elements."""

from __future__ import annotations

import ipywidgets as W
import numpy as np

from dslab import fp8, plots
from dslab.labs.lab02_fp8.experiments import GRANULARITIES, outlier_activations, quantization_report
from dslab.widgets import explore


def quant_explorer(fmt: str = "e4m3", granularity: str = "tile", outlier: float = 1000.0, block: int = 128,
                   seed: int = 0):
    """Quantize 256 tokens × 1024 channels (4 outlier channels, 2 outlier tokens ``outlier`` times larger) with
    ``fmt`` at every granularity -> (numbers for ``granularity``, figure).

    Numbers: bulk SNR (dB, outliers excluded), relative error of the whole tensor, share of the bulk flushed to 0,
    and how many dB the chosen granularity gains over per-tensor scaling. Figure: histogram of the bulk's relative
    errors (the chosen granularity against per-tensor scaling) and the bulk SNR of every granularity.
    """
    fp8.get_format(fmt, fp8.FP8_FORMATS)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {tuple(GRANULARITIES)}, got {granularity!r}")
    x, bulk = outlier_activations(256, 1024, outlier, seed=seed)
    report = quantization_report(x, bulk, fmt, block)
    r = report[granularity]
    numbers = {f"bulk SNR, {GRANULARITIES[granularity]} (dB)": round(r["bulk SNR dB"], 1),
               "relative error, whole tensor": round(r["relative error"], 5),
               "bulk flushed to 0": f"{r['bulk flushed to 0']:.2%}",
               "bulk flushed to 0 with per-tensor scaling": f"{report['tensor']['bulk flushed to 0']:.2%}",
               "gain over per-tensor scaling (dB)": round(r["bulk SNR dB"] - report["tensor"]["bulk SNR dB"], 1)}
    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.4)
    bins = np.logspace(-5, 0.3, 60)
    for gran, color in (("tensor", "0.6"), (granularity, "#c0392b")):
        rel = ((report[gran]["xq"][bulk] - x[bulk]).abs() / x[bulk].abs()).clamp(1e-5, 1.0).numpy()
        ax1.hist(rel, bins=bins, histtype="step", lw=1.4, color=color, label=GRANULARITIES[gran])
    ax1.set(xscale="log", xlabel="|x̂ − x| / |x| of the bulk (100%: flushed to 0)", ylabel="elements")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title(f"{fmt.upper()}, outliers ×{outlier:g}", fontsize=10)
    snr = [report[g]["bulk SNR dB"] for g in GRANULARITIES]
    bars = ax2.bar(range(len(snr)), snr, color=["#c0392b" if g == granularity else "0.7" for g in GRANULARITIES])
    ax2.bar_label(bars, labels=[f"{v:.1f}" for v in snr], fontsize=8, padding=1)
    ax2.set_xticks(range(len(snr)), list(GRANULARITIES.values()), rotation=20, ha="right")
    ax2.set(ylabel="bulk SNR (dB)", ylim=(min(0.0, min(snr)) - 1, max(snr) * 1.15 + 1))
    ax2.set_title("Every granularity, same tensor", fontsize=10)
    return numbers, fig


def quant_controls() -> dict:
    """The explorer's controls, one per keyword of ``quant_explorer``, set to its defaults."""
    return {
        "fmt": W.Dropdown(options=[("E4M3", "e4m3"), ("E5M2", "e5m2")], value="e4m3", description="format"),
        "granularity": W.Dropdown(options=[(v, k) for k, v in GRANULARITIES.items()], value="tile",
                                  description="scaling"),
        "outlier": W.FloatLogSlider(1000.0, base=10, min=0, max=5, step=0.25, description="outlier ×"),
    }


def quant_explorer_widget():
    """Controls for ``quant_explorer``; headless, the static default figure."""
    return explore(quant_explorer, quant_controls())
