"""Lab 02's experiment harnesses: the number lines, quantization error per scaling granularity, accumulation error
with and without promotion, what ``torch._scaled_mm`` does on this machine, FP8 gradients of one linear, the tiny
model trained three ways, and the memory table. Everything is seeded and CPU-sized; figures are built with
``dslab.plots.figure`` (pure, nothing drawn as a side effect).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from dslab import fp8, plots
from dslab.configs import ModelArgs
from dslab.model import Transformer
from dslab.train import TrainConfig, train_lm

GRANULARITIES = {"tensor": "per tensor", "row": "per token (row)", "tile": "1×128 tiles", "block": "128×128 blocks"}
COLORS = {"e4m3": "#c0392b", "e5m2": "#2471a3", "bf16": "#7d7d7d", "fp32": "#222222", "fp8": "#c0392b"}


# ----------------------------------------------------------------------------------------------- 1 the formats
def format_table() -> list[dict]:
    """One row per format: bits, max, smallest normal and subnormal, step at 1, finite values (counted)."""
    rows = []
    for name in ("e4m3", "e5m2", "bf16"):
        f = fp8.get_format(name)
        rows.append({"format": name.upper(), "bits (s/e/m)": f"1/{f.exponent_bits}/{f.mantissa_bits}",
                     "max": f.max, "min normal": f.min_normal, "min subnormal": f.min_subnormal,
                     "step at 1": f.epsilon, "finite values": len(fp8.representable_values(name)),
                     "infinity": "yes" if f.ieee_specials else "no (saturates)"})
    return rows


def number_lines_figure():
    """Left: every positive E4M3 and E5M2 value on a log axis, BF16 as its density. Right: relative precision
    (step / |x|) against |x| for the three formats: a sawtooth between 2^-(M+1) and 2^-M, rising in the subnormals."""
    fig, (ax1, ax2) = plots.figure(2, width=5.6, height=3.4)
    for row, name in enumerate(("e4m3", "e5m2")):
        v = fp8.representable_values(name)
        v = v[v > 0].numpy()
        ax1.vlines(np.log2(v), row - 0.35, row + 0.35, color=COLORS[name], lw=0.6)
        ax1.text(math.log2(v[-1]) + 0.4, row, f"{len(v)} > 0", va="center", fontsize=7, color=COLORS[name])
    binades = np.arange(-133, 128)
    ax1.fill_between(binades, 1.65, 2.35, color=COLORS["bf16"], alpha=0.35, lw=0)
    ax1.text(-19.5, 2.0, "BF16: 128 values in every binade, from 2^-133 to 2^127", va="center", fontsize=7)
    ax1.set(yticks=[0, 1, 2], yticklabels=["E4M3", "E5M2", "BF16"], xlim=(-20, 20), ylim=(-0.6, 2.6),
            xlabel="log2 |x|")
    ax1.set_title("Positive representable values (one tick each)", fontsize=10)
    x = torch.exp2(torch.linspace(-20, 17, 4000))
    for name in ("e4m3", "e5m2", "bf16"):
        f = fp8.get_format(name)
        keep = x <= f.max
        ax2.plot(x[keep].numpy(), fp8.relative_precision(x[keep], name).numpy(), color=COLORS[name],
                 label=name.upper(), lw=1.0)
        if f.max < 2**17:
            ax2.axvline(f.max, color=COLORS[name], ls=":", lw=0.8)
    ax2.set(xscale="log", yscale="log", xlabel="|x|", ylabel="step / |x|", ylim=(1e-3, 1.5), xlim=(2**-20, 2**17))
    ax2.legend(fontsize=8, loc="upper right")
    ax2.set_title("Relative precision (dotted: the max; BF16's is 3.4e38)", fontsize=10)
    return fig


# --------------------------------------------------------------------------------- 2 scaling granularity
def outlier_activations(tokens: int = 512, channels: int = 1024, outlier: float = 100.0, n_channels: int = 4,
                        n_tokens: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations as LLMs produce them: N(0, 1) times a log-normal scale per channel, plus ``n_channels`` outlier
    channels and ``n_tokens`` outlier tokens ``outlier`` times larger. Returns (x [tokens, channels], bulk mask:
    True outside the outlier rows and columns)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, channels, generator=gen) * torch.exp(0.5 * torch.randn(channels, generator=gen))
    cols = torch.randperm(channels, generator=gen)[:n_channels]
    rows = torch.randperm(tokens, generator=gen)[:n_tokens]
    gain = torch.ones_like(x)
    gain[:, cols] = outlier
    gain[rows] = outlier  # where an outlier token meets an outlier channel: the same gain, not its square
    x = x * gain
    bulk = torch.ones_like(x, dtype=torch.bool)
    bulk[:, cols] = False
    bulk[rows] = False
    return x, bulk


def _snr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    noise = float((xq - x).double().pow(2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float(x.double().pow(2).sum()) / noise)


def quantization_report(x: torch.Tensor, bulk: torch.Tensor, fmt: str = "e4m3", block: int = 128,
                        tiles: Callable | None = None) -> dict[str, dict]:
    """Quantize x with each granularity of ``GRANULARITIES`` and measure: relative error ||x̂ − x|| / ||x||, SNR of
    the whole tensor and of the bulk (outliers excluded), and the share of the bulk's nonzero elements flushed to 0.

    tiles: a function (x, block) -> (values, scales) used for the "tile" granularity (the learner's
    ``quantize_tiles``); None uses ``dslab.fp8.quantize``. Each entry also holds the dequantized tensor ``xq``.
    """
    out = {}
    for gran in GRANULARITIES:
        if gran == "tile" and tiles is not None:
            values, scales = tiles(x, block)
            xq = fp8.dequantize(values.float(), scales, "tile", block)
        else:
            xq = fp8.fake_quantize(x, gran, block, fmt)
        out[gran] = {"xq": xq, "relative error": float((xq - x).norm() / x.norm()), "SNR dB": _snr_db(x, xq),
                     "bulk SNR dB": _snr_db(x[bulk], xq[bulk]),
                     "bulk flushed to 0": float(((xq[bulk] == 0) & (x[bulk] != 0)).float().mean())}
    return out


def error_histograms_figure(x: torch.Tensor, bulk: torch.Tensor, report: dict[str, dict], title: str = ""):
    """Per granularity, the distribution of the bulk's element-wise relative error |x̂ − x| / |x|; elements flushed
    to zero sit at 100%. Right: bulk SNR per granularity."""
    fig, (ax1, ax2) = plots.figure(2, width=5.4, height=3.4)
    bins = np.logspace(-5, 0.3, 60)
    for gran, r in report.items():
        rel = ((r["xq"][bulk] - x[bulk]).abs() / x[bulk].abs()).clamp(1e-5, 1.0).numpy()
        ax1.hist(rel, bins=bins, histtype="step", lw=1.3, label=GRANULARITIES[gran], density=False)
    ax1.set(xscale="log", xlabel="|x̂ − x| / |x| (bulk elements)", ylabel="elements")
    ax1.axvline(2**-4, color="0.5", ls=":", lw=0.8)
    ax1.text(2**-4 * 1.1, ax1.get_ylim()[1] * 0.9, "half a step\nof E4M3", fontsize=7, color="0.4", va="top")
    ax1.legend(fontsize=7, loc="upper left")
    ax1.set_title(title or "Relative error per element", fontsize=10)
    plots.grouped_bars(ax2, [GRANULARITIES[g] for g in report], {"bulk SNR (dB)": [r["bulk SNR dB"]
                                                                                    for r in report.values()]},
                       ylabel="SNR of the non-outlier elements (dB)", fmt="{:.1f}")
    ax2.set_title("Signal-to-noise ratio, outliers excluded", fontsize=10)
    return fig


# -------------------------------------------------------------------------------------------- 3 accumulation
def fp8_operands(m: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """a [m, k] and b [n, k]: N(0, 1) rounded to E4M3, so that every product is exact in FP32 and only the
    accumulation can err."""
    gen = torch.Generator().manual_seed(seed)
    return (fp8.round_to_format(torch.randn(m, k, generator=gen)),
            fp8.round_to_format(torch.randn(n, k, generator=gen)))


def accumulation_error(m: int, k: int, n: int, promote_every: int | None, seed: int = 0,
                       matmul: Callable | None = None, acc_bits: int = fp8.ACC_BITS,
                       group: int = fp8.ACC_GROUP) -> float:
    """max |C − C_exact| / max |C_exact| of a limited accumulator on FP8 operands [m, k] · [n, k]ᵀ.

    matmul(a, b, promote_every, acc_bits, group): the learner's ``promoted_matmul``; None uses the package's.
    promote_every None (or >= k): never promoted."""
    a, b = fp8_operands(m, k, n, seed)
    exact = a.double() @ b.double().t()
    if matmul is None:
        c = fp8.accumulate_mm(a, b, acc_bits, promote_every, group)
    else:
        c = matmul(a, b, promote_every or k, acc_bits, group)
    return fp8.max_relative_error(c, exact)


def accumulation_sweep(ks: list[int], m: int = 64, n: int = 64, seed: int = 0,
                       intervals: tuple = (None, 128)) -> dict[str, list[float]]:
    """Error against K for each promotion interval (None: never promoted)."""
    return {("never promoted" if p is None else f"promoted every {p}"):
            [accumulation_error(m, k, n, p, seed) for k in ks] for p in intervals}


def accumulation_figure(ks: list[int], by_k: dict[str, list[float]], intervals: list[int],
                        by_interval: list[float], k_interval: int):
    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.4)
    for label, errs in by_k.items():
        ax1.plot(ks, [100 * e for e in errs], "o-", label=label, ms=4)
    ax1.axhline(2.0, color="0.5", ls=":", lw=0.8)
    ax1.text(ks[0], 2.1, "V3: \"nearly 2%\" at K = 4096", fontsize=7, color="0.4")
    ax1.set(xscale="log", yscale="log", xlabel="K (inner dimension)", ylabel="max relative error (%)")
    ax1.set_xticks(ks, [str(k) for k in ks], minor=False)
    ax1.set_xticks([], minor=True)
    ax1.legend(fontsize=8)
    ax1.set_title("A 14-bit accumulator, with and without promotion", fontsize=10)
    ax2.plot(intervals, [100 * e for e in by_interval], "o-", color="#2471a3", ms=4)
    ax2.axvline(fp8.N_C, color="0.5", ls=":", lw=0.8)
    ax2.set(xscale="log", yscale="log", xlabel="promotion interval N_C", ylabel="max relative error (%)")
    ax2.set_xticks(intervals, [str(i) for i in intervals], minor=False)
    ax2.set_xticks([], minor=True)
    ax2.set_title(f"K = {k_interval}: error against N_C (V3: 128)", fontsize=10)
    return fig


def calibration_table(groups: list[int], m: int = 256, k: int = 4096, n: int = 256,
                      seed: int = 0) -> list[tuple[int, float, float]]:
    """How the emulated accumulation error depends on how often the 14-bit accumulator is truncated: for each
    ``group`` (exact products added between two truncations), (group, error never promoted, error promoted every
    N_C) at [m, k] · [n, k]ᵀ. V3 §3.5.2 describes steps of 32 products; ``fp8.ACC_GROUP`` is the group that lands
    on the paper's "nearly 2%", a calibration of the emulation, not a derivation."""
    return [(g, accumulation_error(m, k, n, None, seed, group=g), accumulation_error(m, k, n, fp8.N_C, seed, group=g))
            for g in groups]


def accumulator_step(value: float, bits: int) -> float:
    """The gap between neighbouring values of a register with ``bits`` significant bits at ``value`` (> 0): a sum
    that large cannot grow by less."""
    return 2.0 ** (math.floor(math.log2(value)) - (bits - 1))


def scaled_mm_support() -> str | None:
    """None when ``torch._scaled_mm`` runs on this machine's CPU with per-tensor and row-wise scales, as section 3
    calls it; otherwise one line saying why not and what to do (older torch builds have no CPU kernel, or only
    per-tensor scales)."""
    a = torch.ones(16, 32).to(torch.float8_e4m3fn)
    b = torch.ones(16, 32).to(torch.float8_e4m3fn)
    try:
        for scale_a, scale_b in ((torch.tensor(1.0), torch.tensor(1.0)), (torch.ones(16, 1), torch.ones(1, 16))):
            torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32)
    except (AttributeError, NotImplementedError, RuntimeError, TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        return (f"torch {torch.__version__} cannot run torch._scaled_mm on the CPU with row-wise scales ({reason}); "
                "the cells that call it are skipped. The course's pinned torch (2.13.0, `make setup`) runs them.")
    return None


def scaled_mm_probe(k: int = 4096) -> dict[str, float]:
    """What ``torch._scaled_mm`` accumulates in, measured: one dot product of 256·256 = 65536 followed by k − 1
    products of 2^-9·2^-9 = 2^-18. An exact sum is 65536 + (k−1)·2^-18; an FP32 accumulator loses some of the small
    products (its step at 65536 is 2^-7), 14 bits or BF16 lose all of them (their steps at 65536 are 8 and 512).

    Returns the kernel's result and, for the same inputs: the exact sum rounded to FP32 at the end, an FP32 GEMM of
    the dequantized values (``torch.mm``), a 14-bit accumulator promoted every 128 and one never promoted."""
    a = torch.full((1, k), 2.0**-9)
    a[0, 0] = 256.0
    qa = a.to(torch.float8_e4m3fn)
    one = torch.tensor(1.0)
    scaled = torch._scaled_mm(qa, qa.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    a32 = qa.float()
    return {"torch._scaled_mm": float(scaled), "exact, rounded to FP32": float(torch.tensor(
                float((a32.double() @ a32.double().t()).item())).float()),
            "FP32 GEMM (torch.mm)": float(a32 @ a32.t()),
            "14-bit, promoted every 128": float(fp8.accumulate_mm(a32, a32, promote_every=128)),
            "14-bit, never promoted": float(fp8.accumulate_mm(a32, a32, promote_every=None))}


def compare_with_scaled_mm(m: int = 128, k: int = 1024, n: int = 256, seed: int = 0,
                           dequantize_blocks: Callable | None = None) -> dict[str, dict[str, float]]:
    """Emulation vs ``torch._scaled_mm`` on the same quantized operands, for three scalings of (a, b): per tensor,
    per row, and 1×128 tiles with 128×128 blocks (``_scaled_mm`` then runs once per 128-wide chunk of K, chunks
    summed in FP32). Each entry: max relative difference of the kernel from the FP32 emulation, and of the 14-bit
    emulation (promoted every 128) from the kernel. dequantize_blocks: the learner's (q, scales, block) -> weight
    for the block-scaled operand of the emulation."""
    gen = torch.Generator().manual_seed(seed)
    a, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * 0.05
    out = {}
    for label, (ga, gb) in {"per tensor": ("tensor", "tensor"), "per row": ("row", "row"),
                            "1×128 tiles · 128×128 blocks": ("tile", "block")}.items():
        qa, qb = fp8.quantize(a, ga), fp8.quantize(w, gb)
        kernel = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, impl="torch")
        if gb == "block" and dequantize_blocks is not None:
            emulated = fp8.dequantize(qa.values, qa.scales, ga) @ dequantize_blocks(qb.values.float(), qb.scales,
                                                                                    fp8.BLOCK).t()
        else:
            emulated = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales)
        limited = fp8.scaled_mm(qa.values, qa.scales, qb.values, qb.scales, acc_bits=fp8.ACC_BITS)
        out[label] = {"kernel vs FP32 emulation": fp8.max_relative_error(kernel, emulated),
                      "14-bit emulation vs kernel": fp8.max_relative_error(limited, kernel),
                      "FP8 vs unquantized FP32": fp8.max_relative_error(kernel, a @ w.t())}
    return out


# ------------------------------------------------------------------------------------------------ 4 training
def linear_gradient_errors(tokens: int = 512, d_in: int = 512, d_out: int = 256, block: int = 128,
                           seed: int = 0) -> dict[str, dict[str, float]]:
    """Relative errors ||g − g_fp32|| / ||g_fp32|| of y, dL/dx and dL/dW of one linear layer, for V3's FP8
    recipe, the hybrid recipe (E5M2 gradients) and BF16 GEMM inputs, on one seeded batch."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=gen)
    w = torch.randn(d_out, d_in, generator=gen) * d_in**-0.5
    gy = torch.randn(tokens, d_out, generator=gen) / tokens
    ref_y = x @ w.t()
    ref = {"y": ref_y, "dL/dx": gy @ w, "dL/dW": gy.t() @ x}
    out = {}
    for label, recipe in {"FP8 E4M3 (V3)": fp8.Recipe(block), "FP8 E4M3 / E5M2 grads": fp8.Recipe(block, "e4m3",
                                                                                                    "e5m2"),
                          "BF16": fp8.Recipe(block, "bf16", "bf16")}.items():
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fp8.fp8_linear(xr, wr, recipe)
        y.backward(gy)
        got = {"y": y.detach(), "dL/dx": xr.grad, "dL/dW": wr.grad}
        out[label] = {k: float((got[k] - ref[k]).norm() / ref[k].norm()) for k in ref}
    return out


EMULATED = {"fp32": None, "bf16": {"fmt": "bf16", "grad_fmt": "bf16"}, "fp8": {"fmt": "e4m3", "grad_fmt": "e4m3"}}


@dataclass
class PrecisionRun:
    """One training run: its precision, the per-step training losses, the history rows, the last validation loss."""

    precision: str
    losses: torch.Tensor
    history: list[dict]
    val_loss: float
    seconds: float
    converted: list[str] = field(default_factory=list)


def precision_model(args: ModelArgs, precision: str, block: int = 32, seed: int = 0) -> tuple[Transformer, list[str]]:
    """A freshly initialised Transformer (the same weights for every precision at the same seed), switched to
    ``precision``: "fp32" as is, "bf16" / "fp8" through ``dslab.fp8.enable_training``."""
    if precision not in EMULATED:
        raise ValueError(f"precision must be one of {tuple(EMULATED)}, got {precision!r}")
    torch.manual_seed(seed)
    model = Transformer(args)
    setup = EMULATED[precision]
    converted = [] if setup is None else fp8.enable_training(model, block=block, **setup)
    return model, converted


def train_precision(precision: str, args: ModelArgs, train_ids: torch.Tensor, val_ids: torch.Tensor,
                    cfg: TrainConfig, block: int = 32, seed: int = 0) -> PrecisionRun:
    """Train the tiny model with the GEMM inputs in ``precision``; same data order and initial weights for all."""
    model, converted = precision_model(args, precision, block, seed)
    start = time.perf_counter()
    history = train_lm(model, train_ids, val_ids, cfg)
    seconds = time.perf_counter() - start
    val = [r["val_loss"] for r in history if "val_loss" in r][-1]
    return PrecisionRun(precision, torch.tensor([r["loss"] for r in history]), history, val, seconds, converted)


def smoothed(losses: torch.Tensor, window: int = 20) -> torch.Tensor:
    """``plots.smooth`` of a loss curve as a tensor: [steps] -> [steps]."""
    return torch.from_numpy(plots.smooth(losses.tolist(), window)).float()


def relative_gap(run: PrecisionRun, baseline: PrecisionRun, window: int = 20) -> torch.Tensor:
    """(L_run − L_baseline) / L_baseline of the smoothed training losses, per step: what V3 reports (< 0.25%)."""
    a, b = smoothed(run.losses, window), smoothed(baseline.losses, window)
    return (a - b) / b


def precision_verdict(runs: dict[tuple[str, int], PrecisionRun], seeds: list[int],
                      window: int = 20) -> dict:
    """What the runs say about FP8 against BF16, by the test section 4 states. Runs of one seed share their initial
    weights and batches, so they are compared seed by seed: FP8's gap from BF16 on each seed, and the mean of those
    gaps, against a floor set by a change that should cost nothing visible, rounding the GEMM inputs to BF16 instead
    of keeping FP32: the largest BF16-vs-FP32 gap of any one seed.

    runs: {(precision, seed): PrecisionRun} for "fp32", "bf16", "fp8" and every seed. Returns the mean validation
    loss per precision, the paired gaps (relative, per seed) of FP8 from BF16 and of BF16 from FP32, their means, the
    floor, the seed spread (the widest range of one precision's loss over the seeds, relative to its mean: what
    pairing the runs takes out), FP8's smoothed training-loss gap from BF16 averaged over the seeds in the second
    quarter and the last quarter of training (is it growing?), and the verdict in words.
    """
    precisions = ("fp32", "bf16", "fp8")
    val = {p: [runs[p, s].val_loss for s in seeds] for p in precisions}
    mean = {p: sum(v) / len(v) for p, v in val.items()}
    paired = [(f - b) / b for f, b in zip(val["fp8"], val["bf16"])]
    reference = [(b - f) / f for b, f in zip(val["bf16"], val["fp32"])]
    gap, floor = sum(paired) / len(paired), max(abs(r) for r in reference)
    gaps = torch.stack([relative_gap(runs["fp8", s], runs["bf16", s], window) for s in seeds]).mean(0)
    steps = len(gaps)
    early, late = gaps[steps // 4:steps // 2].mean().item(), gaps[3 * steps // 4:].mean().item()
    if abs(gap) <= floor:
        verdict = "FP8 and BF16 do not differ beyond the floor: no cost of FP8 measurable at this size"
    elif gap < 0:
        verdict = "FP8 below BF16 by more than the floor: read it as chance, since rounding has no reason to help"
    elif gap < 3 * floor:
        verdict = "FP8 above BF16 by more than the floor, though not several times it: a small cost at this size"
    else:
        verdict = "FP8 several times the floor above BF16" + (", and growing: look for a broken recipe"
                                                              if late > early else "")
    return {"mean": mean, "paired": paired, "gap": gap, "reference": reference,
            "bf16_vs_fp32": sum(reference) / len(reference), "floor": floor,
            "spread": max((max(v) - min(v)) / mean[p] for p, v in val.items()), "train_gap": (early, late),
            "verdict": verdict}


def training_figure(runs: dict[str, PrecisionRun], other_seed: PrecisionRun | None = None, window: int = 20):
    """Left: smoothed training losses. Right: each run's relative difference from the BF16 run of the same seed,
    and (``other_seed``, a BF16 run with another seed) how far the same precision moves when only the seed
    changes: the noise floor a tiny run has to be read against."""
    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.4)
    for name, r in runs.items():
        ax1.plot(smoothed(r.losses, window).numpy(), label=name.upper(), color=COLORS[name], lw=1.1)
    ax1.set(xlabel="training step", ylabel=f"training loss ({window}-step mean)")
    ax1.legend(fontsize=8)
    ax1.set_title("Training loss", fontsize=10)
    base = runs["bf16"]
    if other_seed is not None:
        ax2.plot(100 * relative_gap(other_seed, base, window).numpy(), color="0.6", lw=1.0, ls="--",
                 label="BF16, another seed")
    for name, r in runs.items():
        if name != "bf16":
            ax2.plot(100 * relative_gap(r, base, window).numpy(), label=f"{name.upper()}", color=COLORS[name],
                     lw=1.1)
    ax2.axhspan(-0.25, 0.25, color="#f5d5a0", alpha=0.6, lw=0, label="V3: within ±0.25%")
    ax2.axhline(0, color="0.3", lw=0.6)
    ax2.set(xlabel="training step", ylabel="relative loss difference (%)")
    ax2.legend(fontsize=8)
    ax2.set_title("Relative difference from the BF16 run", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------- 5 memory
def memory_table(args: ModelArgs, tokens: int) -> dict[str, dict[str, float]]:
    """Row -> {precision: bytes} from ``dslab.fp8.memory_breakdown``, plus a "total" row."""
    cols = {p: fp8.memory_breakdown(args, p, tokens) for p in fp8.MEMORY_PRECISIONS}
    rows = {row: {p: cols[p][row] for p in cols} for row in cols["fp8"]}
    rows["total"] = {p: sum(c.values()) for p, c in cols.items()}
    return rows


def print_memory_table(args: ModelArgs, tokens: int, unit: str = "GiB") -> dict[str, dict[str, float]]:
    """Print ``memory_table`` in ``unit`` with the FP8/BF16 ratio of each row; returns the table."""
    scale = {"GiB": 2**30, "MiB": 2**20}[unit]
    table = memory_table(args, tokens)
    print(f"{'':<28}{'FP32':>11}{'BF16 mixed':>12}{'FP8 (V3)':>11}{'FP8 / BF16':>12}   ({unit}, {tokens:,} tokens)")
    for row, v in table.items():
        ratio = f"{v['fp8'] / v['bf16']:.2f}" if v["bf16"] else "–"
        print(f"{row:<28}{v['fp32'] / scale:>11,.1f}{v['bf16'] / scale:>12,.1f}{v['fp8'] / scale:>11,.1f}{ratio:>12}")
    return table


__all__ = ["EMULATED", "GRANULARITIES", "PrecisionRun", "accumulation_error", "accumulation_figure",
           "accumulation_sweep", "accumulator_step", "calibration_table", "compare_with_scaled_mm",
           "error_histograms_figure", "format_table", "fp8_operands", "linear_gradient_errors", "memory_table",
           "number_lines_figure", "outlier_activations", "precision_model", "precision_verdict", "print_memory_table",
           "quantization_report", "relative_gap", "scaled_mm_probe", "scaled_mm_support", "smoothed",
           "train_precision", "training_figure"]
