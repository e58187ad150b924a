"""Lab 01's experiment harnesses: train the tiny MoE language model three ways and measure expert load.

The three ways (DeepSeek-V3 §2.1.2):

- ``none``: plain top-k routing, nothing pulls the load towards balance;
- ``aux``: the sequence-wise balance loss α Σ_i f_i P_i (eqs. 17–20) added to the LM loss;
- ``aux_free``: no loss term; after each step every gate bias moves by γ·sign(mean load − load_i) and only changes
  which experts are selected (eq. 16), never the gating weights.

Also: the seed-to-seed spread (``seed_sweep``), a router-only simulation fast enough for a widget
(``simulate_router``), which experts each character class lands on (``routing_by_class``) and a dispatch timing
helper (``time_dispatch``). Everything is seeded and CPU-sized.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from dslab import plots, validate
from dslab.accounting import V3_PRETRAIN_TOKENS
from dslab.configs import ModelArgs
from dslab.data import CharTokenizer, get_batch
from dslab.dispatch import loop_dispatch
from dslab.model import Transformer
from dslab.moe import MoE, bias_update, expert_load, max_vio, sequence_balance_loss
from dslab.train import TrainConfig, train_lm

CHAR_CLASSES = ("digit", "letter", "space", "punct")


@dataclass(frozen=True)
class Method:
    """One way to balance: ``balance_loss`` ("sequence"/"expert"/None) with ``alpha``, and/or bias updates γ."""

    name: str
    balance_loss: str | None = None
    alpha: float = 0.0
    gamma: float = 0.0  # 0: the gate bias stays at zero (no aux-loss-free balancing)


@dataclass
class RunResult:
    """What one training run leaves behind.

    loads: [steps, layers, E] tokens per expert of each training batch; vio: [steps, layers] their MaxVio;
    history: ``train_lm``'s rows; val_loss: the last validation loss; model: the trained model (eval mode).
    """

    method: Method
    loads: torch.Tensor
    vio: torch.Tensor
    history: list[dict]
    val_loss: float
    seconds: float
    model: Transformer = field(repr=False)

    def final_max_vio(self, last_fraction: float = 0.25) -> float:
        """MaxVio averaged over layers and over the last ``last_fraction`` of the steps (the "settled" value)."""
        n = max(1, round(self.vio.shape[0] * last_fraction))
        return float(self.vio[-n:].mean())


def balanced_model(args: ModelArgs, method: Method, dispatch: str = "grouped", seed: int = 0) -> Transformer:
    """A freshly initialised ``Transformer(args)`` (same weights for every method at the same seed) whose MoE layers
    use ``dispatch`` and ``method``'s balance loss and α."""
    torch.manual_seed(seed)
    options = {"dispatch": dispatch, "balance_loss": method.balance_loss}
    if method.balance_loss:
        options["alpha"] = method.alpha
    return Transformer(args, moe_options=options)


def train_method(method: Method, args: ModelArgs, train_ids: torch.Tensor, val_ids: torch.Tensor,
                 cfg: TrainConfig, dispatch: str = "grouped", seed: int = 0) -> RunResult:
    """Train the tiny MoE LM with ``method``; record every training batch's expert load per MoE layer.

    The bias update (``Transformer.update_bias``) uses the load of the step's whole training batch, as V3 monitors
    "the expert load on the whole batch of each training step"; evaluation batches never count.
    """
    model = balanced_model(args, method, dispatch, seed)
    layers: list[MoE] = model.moe_layers()
    loads: list[torch.Tensor] = []

    def after_step(m: Transformer, step: int) -> dict:
        load = torch.stack([moe.last_load.clone() for moe in layers])  # [layers, E], this step's batch
        loads.append(load)
        m.update_bias(method.gamma)  # γ = 0: the bias stays at zero
        return {"max_vio": sum(max_vio(x) for x in load) / len(layers)}

    extra = Transformer.aux_loss if method.balance_loss else None
    start = time.perf_counter()
    history = train_lm(model, train_ids, val_ids, cfg, extra_loss=extra, after_step=after_step)
    seconds = time.perf_counter() - start
    model.eval()
    load_t = torch.stack(loads)  # [steps, layers, E]
    vio = torch.tensor([[max_vio(x) for x in step] for step in load_t])
    val = [r["val_loss"] for r in history if "val_loss" in r][-1]
    return RunResult(method, load_t, vio, history, val, seconds, model)


def seed_sweep(methods: list[Method], args: ModelArgs, train_ids: torch.Tensor, val_ids: torch.Tensor,
               cfg: TrainConfig, seeds: list[int], dispatch: str = "grouped") -> dict[str, list[RunResult]]:
    """Train every method once per seed -> {method name: [RunResult per seed]}, to see the seed-to-seed spread.

    A seed sets both the initial weights and the batch order (``cfg.seed``), as ``train_method(..., seed=s)`` with
    ``cfg.seed = s`` does for the main runs.
    """
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    return {m.name: [train_method(m, args, train_ids, val_ids, replace(cfg, seed=s), dispatch, s) for s in seeds]
            for m in methods}


def char_class(ch: str) -> str:
    """The class of one character: digit, letter, space (any whitespace) or punct (everything else)."""
    if ch.isdigit():
        return "digit"
    if ch.isalpha():
        return "letter"
    return "space" if ch.isspace() else "punct"


@torch.no_grad()
def routing_by_class(model: Transformer, tok: CharTokenizer, ids: torch.Tensor, layer: int = -1,
                     n_seqs: int = 16, block_size: int = 64, seed: int = 0) -> torch.Tensor:
    """Share of each character class's routing slots that go to each expert, in MoE layer ``layer``.

    ids: [N] token ids; n_seqs windows of block_size are drawn with ``seed``. Returns [len(CHAR_CLASSES), E]; each
    row sums to 1 (a row of NaN when the sample holds no character of that class). The class is that of the input
    character at each position.
    """
    moe = model.moe_layers()[layer]
    seen: list[torch.Tensor] = []
    hook = moe.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    x, _ = get_batch(ids, n_seqs, block_size, torch.Generator().manual_seed(seed))
    was_training = model.training
    model.train()  # the training path runs whole sequences; nothing is updated (no optimizer, no bias step)
    try:
        model(x)
    finally:
        hook.remove()
        model.train(was_training)
    _, indices = moe.gate(seen[0].reshape(-1, moe.dim))  # [B*S, k]
    classes = torch.tensor([CHAR_CLASSES.index(char_class(tok.decode([int(i)], skip_special=False) or " "))
                            for i in x.flatten()])
    share = torch.zeros(len(CHAR_CLASSES), moe.n_routed_experts)
    for c in range(len(CHAR_CLASSES)):
        load = expert_load(indices[classes == c], moe.n_routed_experts).float()
        share[c] = load / load.sum() if load.sum() > 0 else float("nan")
    return share


def time_dispatch(args: ModelArgs, dispatch: str, batch_size: int = 16, block_size: int = 64,
                  repeats: int = 3, seed: int = 0) -> float:
    """Median milliseconds of one forward + backward of the whole tiny model with ``dispatch``, [B, S] tokens."""
    torch.manual_seed(seed)
    model = balanced_model(args, Method("timing"), dispatch, seed)
    x = torch.randint(args.vocab_size, (batch_size, block_size), generator=torch.Generator().manual_seed(seed))
    times = []
    for _ in range(repeats + 1):  # the first call warms up allocators and kernels
        start = time.perf_counter()
        model(x).float().logsumexp(-1).mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2]


# ----------------------------------------------------------------------------------- references for the exercises
def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """One SwiGLU FFN w2(silu(w1 x) * w3 x): x [n, dim], w1, w3 [inter, dim], w2 [dim, inter] -> [n, dim]."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def moe_forward_reference(x, weights, indices, w1, w2, w3, shared_w1=None, shared_w2=None, shared_w3=None):
    """The MoE layer's output (V3 eq. 12 without the residual u_t, as the official ``MoE.forward``): the shared expert
    plus Σ_k weights[t, k] · FFN_{indices[t, k]}(x_t). Built on ``dslab.dispatch.loop_dispatch``."""
    y = loop_dispatch(x, weights, indices, w1, w2, w3)
    return y if shared_w1 is None else y + swiglu(x, shared_w1, shared_w2, shared_w3)


def collapsed_max_vio(n_experts: int, top_k: int) -> float:
    """MaxVio when the same top_k of n_experts experts take every token: each of them gets all T tokens, the mean is
    T·top_k/n_experts, so MaxVio = n_experts/top_k − 1."""
    return n_experts / top_k - 1


# ------------------------------------------------------------------------------------- router-only simulation
@dataclass
class RouterSim:
    """Per-step results of ``simulate_router`` for each method ("none", "aux", "aux_free").

    loads [steps, E]: tokens per expert. vio [steps]: MaxVio of each batch. kept [steps]: how much of its preferred
    affinity each token keeps, Σ_{chosen} s0 / Σ_{top-k of s0} s0 averaged over tokens, where s0 are the affinities
    of the router before any balancing pressure (1 = every token got the experts it prefers). drift [steps]: how far
    the affinities themselves moved, mean |s − s0| (the bias never moves them; the aux loss trains them).
    """

    loads: dict[str, torch.Tensor]
    vio: dict[str, torch.Tensor]
    kept: dict[str, torch.Tensor]
    drift: dict[str, torch.Tensor]

    def settled(self, field: str, method: str, last_fraction: float = 0.25) -> float:
        """``field`` ("vio", "kept" or "drift") of ``method`` averaged over the last ``last_fraction`` of the steps."""
        values = getattr(self, field)[method]
        return float(values[-max(1, round(len(values) * last_fraction)):].mean())


def _sim_tokens(n_tokens: int, dim: int, n_experts: int, skew: float, gen: torch.Generator):
    """Tokens from a few clusters and a router whose centroids favour the first experts (a skewed starting point).

    Returns x [T, dim] and the router weights W0 [E, dim].
    """
    centers = torch.randn(4, dim, generator=gen)
    x = centers[torch.randint(4, (n_tokens,), generator=gen)] + 0.5 * torch.randn(n_tokens, dim, generator=gen)
    w0 = 0.3 * torch.randn(n_experts, dim, generator=gen)
    w0[: n_experts // 4] += skew * centers.mean(0)  # a quarter of the experts attract most tokens
    return x / dim**0.5, w0


def simulate_router(gamma: float = 0.01, alpha: float = 1.0, steps: int = 60, n_tokens: int = 256,
                    n_experts: int = 16, top_k: int = 4, dim: int = 16, skew: float = 0.2,
                    lr: float = 1.0, seed: int = 0, update: Callable = bias_update) -> RouterSim:
    """A linear sigmoid router alone, with a fresh batch of tokens each step, balanced three ways.

    none: weights W0 fixed, no bias. aux_free: W0 fixed, b updated by ``update`` (``bias_update`` by default, or the
    learner's own; rate γ) after each batch and
    used for selection only (eq. 16). aux: W trained by SGD (rate ``lr``) on α·L_Bal (eqs. 17–20, the batch as one
    sequence), the gradient reaching the router through the affinities, as in training. No language model pulls back
    on W here, so this shows what each mechanism does to the routing, not how it interferes with the model's own
    objective. Runs in a fraction of a second.
    """
    validate.integer("steps", steps, 1)
    validate.integer("top_k", top_k, 1, n_experts)
    gen = torch.Generator().manual_seed(seed)
    x, w0 = _sim_tokens(n_tokens * steps, dim, n_experts, skew, gen)
    bias, w = torch.zeros(n_experts), w0.clone().requires_grad_(True)
    rows: dict[str, dict[str, list]] = {m: {"loads": [], "vio": [], "kept": [], "drift": []}
                                        for m in ("none", "aux", "aux_free")}
    for xb in x.view(steps, n_tokens, dim):
        s0 = (xb @ w0.T).sigmoid()  # [T, E] the router's own preferences
        best = s0.topk(top_k).values.sum(-1)
        s = (xb @ w.T).sigmoid()
        picks = {"none": s0.topk(top_k).indices, "aux_free": (s0 + bias).topk(top_k).indices,
                 "aux": s.detach().topk(top_k).indices}
        for method, idx in picks.items():
            load = expert_load(idx, n_experts)
            row = rows[method]
            row["loads"].append(load)
            row["vio"].append(max_vio(load))
            row["kept"].append(float((s0.gather(-1, idx).sum(-1) / best).mean()))
            row["drift"].append(float((s.detach() - s0).abs().mean()) if method == "aux" else 0.0)
        bias = update(bias, rows["aux_free"]["loads"][-1], gamma)
        (grad,) = torch.autograd.grad(sequence_balance_loss(s, picks["aux"], alpha), w)
        with torch.no_grad():
            w -= lr * grad
    return RouterSim(*({m: (torch.stack(r[f]) if f == "loads" else torch.tensor(r[f])) for m, r in rows.items()}
                       for f in ("loads", "vio", "kept", "drift")))


def balance_tradeoff(alphas: list[float], gammas: list[float], steps: int = 60, seed: int = 0) -> dict[str, list]:
    """Settled (MaxVio, preference kept) of the aux loss at each α and of the bias at each γ, from ``simulate_router``.

    Returns {"aux": [(α, vio, kept), ...], "aux_free": [(γ, vio, kept), ...]}: where each mechanism lands between
    balance and the experts the tokens prefer.
    """
    aux = [(a, (sim := simulate_router(alpha=a, gamma=0.0, steps=steps, seed=seed)).settled("vio", "aux"),
            sim.settled("kept", "aux")) for a in alphas]
    free = [(g, (sim := simulate_router(alpha=0.0, gamma=g, steps=steps, seed=seed)).settled("vio", "aux_free"),
             sim.settled("kept", "aux_free")) for g in gammas]
    return {"aux": aux, "aux_free": free}


V3_BIAS_TOKENS = 14.3e12  # V3 §4.2: γ = 0.001 for the first 14.3T tokens, then 0 for the remaining 500B


def v3_training_steps() -> dict[str, float]:
    """Optimizer steps of V3's pre-training from its batch schedule (V3 §4.2): sequences of 4096 tokens, the batch
    raised from 3072 to 15360 sequences over the first 469B tokens, then 15360 until 14.8T. The paper does not give
    the ramp's shape; the batch is taken to grow linearly with the step. bias_steps: the steps during which the gate
    bias moves (γ > 0, the first 14.3T tokens).
    """
    seq, start, end, ramp, total = 4096, 3072, 15360, 469e9, V3_PRETRAIN_TOKENS
    ramp_steps = ramp / (seq * (start + end) / 2)  # a batch growing linearly per step averages its two ends
    rest_steps = (total - ramp) / (seq * end)
    bias_steps = ramp_steps + (V3_BIAS_TOKENS - ramp) / (seq * end)
    return {"ramp_steps": ramp_steps, "rest_steps": rest_steps, "steps": ramp_steps + rest_steps,
            "bias_steps": bias_steps, "tokens_per_step_at_full_batch": seq * end}


def sweep_figure(sweep: dict[str, list[RunResult]], title: str = ""):
    """Validation loss against settled MaxVio, one point per run and seed, one colour per method, the mean of each
    method's seeds as a larger marker: where each balancing setting lands between balance and language-model
    quality, with the seed-to-seed scatter in view."""
    fig, (ax,) = plots.figure(1, width=6.4, height=3.8)
    for i, (name, results) in enumerate(sweep.items()):
        vio = [r.final_max_vio() for r in results]
        val = [r.val_loss for r in results]
        color = "0.45" if name == "none" else f"C{i}"
        ax.scatter(vio, val, s=18, color=color, alpha=0.55, lw=0)
        ax.scatter([sum(vio) / len(vio)], [sum(val) / len(val)], s=70, color=color, marker="D", label=name,
                   edgecolor="k", lw=0.6)
    ax.set(xscale="log", xlabel="MaxVio, last quarter of training (log scale; lower is more balanced)",
           ylabel="validation loss (nats)")
    ax.legend(fontsize=8, title="diamonds: mean of the seeds", title_fontsize=7)
    ax.set_title(title or "Balance against language-model quality, every seed", fontsize=10)
    return fig


__all__ = ["CHAR_CLASSES", "Method", "RouterSim", "RunResult", "balance_tradeoff", "balanced_model", "char_class",
           "collapsed_max_vio", "moe_forward_reference", "swiglu",
           "routing_by_class", "seed_sweep", "simulate_router", "sweep_figure", "time_dispatch", "train_method",
           "v3_training_steps"]
