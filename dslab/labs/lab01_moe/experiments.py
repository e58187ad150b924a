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
from dataclasses import dataclass, field, replace

import torch

from dslab.configs import ModelArgs
from dslab.data import CharTokenizer, get_batch
from dslab.model import Transformer
from dslab.moe import MoE, expert_load, max_vio, sequence_balance_loss
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


def build_model(args: ModelArgs, method: Method, dispatch: str = "grouped", seed: int = 0) -> Transformer:
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
    model = build_model(args, method, dispatch, seed)
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
    model = build_model(args, Method("timing"), dispatch, seed)
    x = torch.randint(args.vocab_size, (batch_size, block_size), generator=torch.Generator().manual_seed(seed))
    times = []
    for _ in range(repeats + 1):  # the first call warms up allocators and kernels
        start = time.perf_counter()
        model(x).float().logsumexp(-1).mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2]


# ------------------------------------------------------------------------------------- router-only simulation
@dataclass
class RouterSim:
    """Per-step results of ``simulate_router`` for the three methods (each [steps] or [steps, E])."""

    loads: dict[str, torch.Tensor]  # method -> [steps, E] tokens per expert
    vio: dict[str, torch.Tensor]  # method -> [steps] MaxVio of each batch
    drift: float  # relative change of the router weights the aux loss caused, ‖W − W0‖ / ‖W0‖


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
                    lr: float = 0.5, seed: int = 0) -> RouterSim:
    """A linear sigmoid router alone, with a fresh batch of tokens each step, balanced three ways.

    none: W0 fixed, no bias. aux_free: W0 fixed, bias += γ·sign(mean − load) each step. aux: W trained by SGD (rate
    ``lr``) on α·L_Bal (eqs. 17–20, all tokens as one sequence) plus a pull ½‖W − W0‖² that stands in for what the
    language model wants from the router, so the aux loss has something to fight. Runs in a few ms per 100 steps.
    """
    gen = torch.Generator().manual_seed(seed)
    x, w0 = _sim_tokens(n_tokens * steps, dim, n_experts, skew, gen)
    batches = x.view(steps, n_tokens, dim)
    bias = torch.zeros(n_experts)
    w = w0.clone().requires_grad_(True)
    loads: dict[str, list[torch.Tensor]] = {"none": [], "aux": [], "aux_free": []}
    for xb in batches:
        logits = xb @ w0.T  # [T, E]; sigmoid is monotone, so top-k of logits = top-k of affinities
        loads["none"].append(torch.bincount(logits.topk(top_k).indices.flatten(), minlength=n_experts))
        biased = logits.sigmoid() + bias  # eq. 16: the bias steers selection only
        loads["aux_free"].append(torch.bincount(biased.topk(top_k).indices.flatten(), minlength=n_experts))
        bias = bias + gamma * torch.sign(loads["aux_free"][-1].float().mean() - loads["aux_free"][-1])
        scores = torch.sigmoid(xb @ w.T)
        idx = scores.detach().topk(top_k).indices
        loads["aux"].append(torch.bincount(idx.flatten(), minlength=n_experts))
        loss = sequence_balance_loss(scores, idx, alpha) + 0.5 * ((w - w0) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= lr * grad
    stacked = {k: torch.stack(v) for k, v in loads.items()}
    vio = {k: torch.tensor([max_vio(row) for row in v]) for k, v in stacked.items()}
    drift = float((w.detach() - w0).norm() / w0.norm())
    return RouterSim(stacked, vio, drift)


__all__ = ["CHAR_CLASSES", "Method", "RouterSim", "RunResult", "build_model", "char_class", "routing_by_class",
           "simulate_router", "time_dispatch", "train_method"]
