"""DeepSeekMoE: shared plus fine-grained routed SwiGLU experts, V3 routing and auxiliary-loss-free load balancing.

Equation numbers are those of the DeepSeek-V3 report (arXiv 2412.19437, §2.1.2):

    h'_t = u_t + Σ_{i≤N_s} FFN^(s)_i(u_t) + Σ_{i≤N_r} g_{i,t} FFN^(r)_i(u_t)          (12)
    g_{i,t} = g'_{i,t} / Σ_j g'_{j,t}                                                 (13)
    g'_{i,t} = s_{i,t} if s_{i,t} + b_i ∈ Topk({s_{j,t} + b_j}, K_r) else 0            (16; 14 is the bias-free form)
    s_{i,t} = Sigmoid(u_t^T e_i)                                                      (15)
    L_Bal = α Σ_i f_i P_i                                                             (17–20)

Names follow DeepSeek-V3's ``inference/model.py`` (``Gate``, ``MoE``, ``w1``/``w2``/``w3``, ``topk``, ``n_groups``,
``topk_groups``, ``route_scale``). Routing follows that code's ``Gate.forward``: affinities in fp32, the bias only
changes *which* experts are picked, groups that are not kept are masked with −inf (not 0: biased scores can be
negative), and the weights come from the unbiased scores, renormalised for sigmoid (not softmax), times route_scale.

How the routed sum is computed (which tokens go through which expert's matmuls) is ``dslab.dispatch``'s business:
``loop_dispatch``, one masked gather per expert, or ``grouped_dispatch``, sorted rows and ragged GEMMs. Both keep every
token: V3 drops none. MaxVio, the load measure, is defined in the aux-loss-free balancing paper (Wang et al. 2024,
arXiv 2408.15664, eq. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.configs import SCORE_FUNCS, ModelArgs
from dslab.dispatch import DISPATCHES, grouped_dispatch, grouped_mm, loop_dispatch
from dslab.dispatch import dispatch as dispatch_fn
from dslab.nn import MLP

BALANCE_LOSSES = (None, "sequence", "expert")
SEQUENCE_ALPHA = 1e-4  # V3 §4.2: "just to avoid extreme imbalance within any single sequence"
EXPERT_ALPHA = 0.003  # V2 §3.1.2, α1 of the expert-level auxiliary loss
BIAS_GAMMA = 0.001  # V3 §4.2 bias update speed (0.0 for the last 500B tokens)


# --------------------------------------------------------------------------------------------------------- checks
def _check_indices(indices: torch.Tensor, n_experts: int) -> None:
    validate.tensor("indices", indices, floating=False)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts}), got [{int(indices.min())}, {int(indices.max())}]")


def _check_route(scores: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_groups: int, topk_groups: int,
                 score_func: str, route_scale: float) -> None:
    validate.tensor("scores_or_logits", scores, floating=True, finite=True)
    if scores.dim() < 1:
        raise ValueError("scores_or_logits must be [..., n_experts], got a 0-d tensor")
    n = scores.shape[-1]
    validate.choice("score_func", score_func, SCORE_FUNCS)
    validate.integer("top_k", top_k, 1, n)
    validate.integer("n_groups", n_groups, 1, n)
    if n % n_groups:
        raise ValueError(f"n_groups must divide the number of experts {n}, got {n_groups}")
    validate.integer("topk_groups", topk_groups, 1, n_groups)
    kept = topk_groups * (n // n_groups)
    if top_k > kept:
        raise ValueError(f"top_k must be <= topk_groups * experts per group = {kept}, got {top_k}")
    validate.real("route_scale", route_scale, 0, lo_open=True)
    if bias is not None and validate.tensor("bias", bias, 1, floating=True, finite=True).shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


# -------------------------------------------------------------------------------------------------------- routing
def affinities(logits: torch.Tensor, score_func: str) -> torch.Tensor:
    """Affinities s_{i,t} in fp32: sigmoid (V3 eq. 15) or softmax over experts (V2). logits [..., E] -> [..., E]."""
    validate.choice("score_func", score_func, SCORE_FUNCS)
    logits = validate.tensor("logits", logits, floating=True).float()
    return logits.sigmoid() if score_func == "sigmoid" else logits.softmax(dim=-1)


def _limit_groups(biased: torch.Tensor, n_groups: int, topk_groups: int, has_bias: bool,
                  group_topk: int | None = None) -> torch.Tensor:
    """Keep the ``topk_groups`` best of ``n_groups`` expert groups; mask the rest with −inf. [..., E] -> [..., E].

    Group score = sum of its top-2 biased scores when a bias exists (V3 node-limited routing, K_r/M = 8/4 = 2), else
    its max (V2); with ``group_topk`` set, the sum of its top-``group_topk`` (V3 §2.1.2's K_r/M for other K_r, M).
    −inf, not 0: biased sigmoid scores can be negative, and 0 would then outrank every kept expert.
    """
    grouped = biased.unflatten(-1, (n_groups, -1))  # [..., G, E/G]
    if group_topk is not None:
        group_scores = grouped.topk(group_topk, dim=-1).values.sum(-1)
    elif has_bias:
        group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
    else:
        group_scores = grouped.amax(dim=-1)
    keep = group_scores.topk(topk_groups, dim=-1).indices  # [..., topk_groups]
    dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(-1, keep, False)
    return grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(-2)


def route(scores_or_logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_groups: int = 1,
          topk_groups: int = 1, score_func: str = "sigmoid", route_scale: float = 1.0, *,
          from_logits: bool = True, group_topk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``top_k`` experts per token and their gating weights, as DeepSeek-V3's ``Gate.forward``.

    scores_or_logits: [..., E] router logits u_t^T e_i (``from_logits=True``) or affinities s_{i,t} already passed
    through ``score_func`` (``from_logits=False``). bias: [E] or None (the aux-loss-free b_i).
    Returns weights [..., top_k] (fp32; from the *unbiased* affinities, V3 eq. 16; renormalised over the chosen
    experts for sigmoid, eq. 13, not for softmax; times route_scale) and indices [..., top_k] (int64, the experts
    chosen by s + b). group_topk: None (the official code: a group scores its top-2 biased affinities with a bias,
    its max without) or how many of its highest biased affinities a group sums (V3 §2.1.2: K_r/M).
    Raises ValueError naming the parameter for bad sizes, group settings or non-finite inputs.
    """
    _check_route(scores_or_logits, bias, top_k, n_groups, topk_groups, score_func, route_scale)
    if group_topk is not None:
        validate.integer("group_topk", group_topk, 1, scores_or_logits.shape[-1] // n_groups)
    s = affinities(scores_or_logits, score_func) if from_logits else scores_or_logits.float()
    biased = s if bias is None else s + bias.float()  # the bias only steers selection
    if n_groups > 1:
        biased = _limit_groups(biased, n_groups, topk_groups, bias is not None, group_topk)
    indices = biased.topk(top_k, dim=-1).indices
    weights = s.gather(-1, indices)  # unbiased s_{i,t} (eq. 16)
    if score_func == "sigmoid":
        weights = weights / weights.sum(-1, keepdim=True)  # eq. 13; softmax weights are used as they are (V2)
    return weights * route_scale, indices


# ----------------------------------------------------------------------------------------- load and its balancing
def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: indices [..., k] -> load [n_experts] (int64)."""
    validate.integer("n_experts", n_experts, 1)
    _check_indices(indices, n_experts)
    return torch.bincount(indices.flatten(), minlength=n_experts)


def max_vio(load: torch.Tensor) -> float:
    """Maximal violation MaxVio = (max_i load_i − mean load) / mean load (0 = perfect balance). load: [E]."""
    if validate.tensor("load", load).dim() != 1 or load.numel() == 0:
        raise ValueError(f"load must be a non-empty 1-D tensor [n_experts], got shape {tuple(load.shape)}")
    load = load.double()
    mean = float(load.mean())
    if not mean > 0:
        raise ValueError(f"load must route at least one token (mean load {mean}); MaxVio is undefined")
    return (float(load.max()) - mean) / mean


def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float = BIAS_GAMMA) -> torch.Tensor:
    """One aux-loss-free step (V3 §2.1.2): b_i + γ·sign(mean load − load_i), in fp32. bias, load: [E] -> [E].

    Overloaded experts go down, underloaded ones up; an expert exactly at the mean keeps its bias (sign(0) = 0).
    Pure: returns a new tensor and never touches autograd (the bias is not trained by gradients).
    """
    if validate.tensor("bias", bias, 1).shape != validate.tensor("load", load).shape:
        raise ValueError(f"bias and load must both be [n_experts], got {tuple(bias.shape)} and {tuple(load.shape)}")
    validate.real("gamma", gamma, 0)
    load = load.detach().float()
    return bias.detach().float() + gamma * torch.sign(load.mean() - load)


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = SEQUENCE_ALPHA) -> torch.Tensor:
    """Complementary sequence-wise balance loss α Σ_i f_i P_i (V3 eqs. 17–20), averaged over sequences.

    scores: [..., T, E] affinities s_{i,t} of each sequence's T tokens; indices: [..., T, K] the experts actually
    selected, i.e. chosen with the bias (eq. 18 writes the bias-free Topk; we count what was dispatched).
    f_i = N_r/(K_r T) · #tokens choosing i (eq. 18, no gradient); P_i = mean_t of s normalised over all N_r experts
    (eqs. 19–20: sigmoids do not sum to 1). Perfect balance gives exactly α. Returns a scalar.
    """
    validate.tensor("scores", scores, floating=True, finite=True)
    if scores.dim() < 2 or validate.tensor("indices", indices).shape[:-1] != scores.shape[:-1]:
        raise ValueError(f"scores [..., T, E] and indices [..., T, K] must share leading dims, got "
                         f"{tuple(scores.shape)} and {tuple(indices.shape)}")
    validate.real("alpha", alpha, 0)
    n_experts, (seq_len, top_k) = scores.shape[-1], indices.shape[-2:]
    _check_indices(indices, n_experts)
    chosen = torch.zeros(*indices.shape[:-2], n_experts, device=scores.device)
    chosen.scatter_add_(-1, indices.flatten(-2), torch.ones(indices.flatten(-2).shape, device=scores.device))
    f = chosen * n_experts / (top_k * seq_len)  # eq. 18
    s = scores.float()
    p = (s / s.sum(-1, keepdim=True)).mean(-2)  # eqs. 19-20
    return alpha * (f * p).sum(-1).mean()  # eq. 17


def expert_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = EXPERT_ALPHA) -> torch.Tensor:
    """V2's expert-level auxiliary loss α1 Σ_i f_i P_i over all tokens of the batch (V2 §2.2.3), for comparison.

    scores: [..., E] affinities (softmax in V2; normalised over experts here, a no-op for softmax); indices: [..., K].
    The same f·P as ``sequence_balance_loss`` with T = every token in the batch. Returns a scalar.
    """
    validate.tensor("scores", scores)
    validate.tensor("indices", indices)
    return sequence_balance_loss(scores.reshape(-1, scores.shape[-1]), indices.reshape(-1, indices.shape[-1]), alpha)


# -------------------------------------------------------------------------------------------------------- modules
class Gate(nn.Module):
    """The router: weight [n_routed_experts, dim] (e_i of eq. 15) and, when ``args.gate_bias``, the fp32 bias b_i.

    forward(x [T, dim]) -> (weights [T, k] in x's dtype, indices [T, k]), as DeepSeek-V3's ``Gate``. The bias is a
    buffer: gradients never reach it, ``MoE.update_bias`` moves it, and it stays fp32 under ``.to(bfloat16)``.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dim, self.topk = args.dim, args.n_activated_experts
        self.n_groups, self.topk_groups = args.n_expert_groups, args.n_limited_groups
        self.score_func, self.route_scale = args.score_func, args.route_scale
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        nn.init.uniform_(self.weight, -args.dim**-0.5, args.dim**-0.5)  # nn.Linear's default
        bias = torch.zeros(args.n_routed_experts, dtype=torch.float32) if args.gate_bias else None
        self.register_buffer("bias", bias)

    def affinities(self, x: torch.Tensor) -> torch.Tensor:
        """s_{i,t} for x [T, dim] -> [T, E] fp32. The gate runs in fp32 even under autocast (V3 §3.3.1)."""
        if validate.tensor("x", x, floating=True).dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [tokens, {self.dim}], got shape {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())
        validate.tensor("router logits", logits, finite=True)
        return affinities(logits, self.score_func)

    def select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and indices [T, k] from affinities [T, E] with this gate's bias and settings (see ``route``)."""
        return route(scores, self.bias, self.topk, self.n_groups, self.topk_groups, self.score_func,
                     self.route_scale, from_logits=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, indices = self.select(self.affinities(x))
        return weights.type_as(x), indices

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_routed_experts={self.weight.shape[0]}, topk={self.topk}, n_groups={self.n_groups}, "
                f"topk_groups={self.topk_groups}, score_func={self.score_func!r}, route_scale={self.route_scale}, "
                f"bias={self.bias is not None}")

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) casts every float buffer; b_i must stay fp32 or γ = 1e-3 steps vanish in bf16.
        bias = self._buffers.pop("bias")
        super()._apply(fn, recurse)
        self._buffers["bias"] = None if bias is None else bias.to(self.weight.device)
        return self


class Experts(nn.Module):
    """The N_r routed SwiGLU experts, stored stacked: w1, w3 [E, inter, dim] and w2 [E, dim, inter].

    Expert e computes ``w2[e](silu(w1[e] x) * w3[e] x)``, the same function as ``dslab.nn.MLP``.
    forward(x [T, dim], weights [T, k], indices [T, k], dispatch) -> [T, dim].
    ``quant`` (None by default) is an optional operand quantizer for the grouped GEMMs, e.g.
    ``dslab.fp8.ExpertQuantizer`` (set by ``dslab.fp8.enable_training``); it needs the grouped dispatch.
    """

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        for w in (self.w1, self.w2, self.w3):  # nn.Linear's default U(±1/sqrt(fan_in)), per expert
            nn.init.uniform_(w, -w.shape[-1] ** -0.5, w.shape[-1] ** -0.5)
        self.quant = None

    def extra_repr(self) -> str:
        n_experts, inter_dim, dim = self.w1.shape
        return f"n_experts={n_experts}, dim={dim}, inter_dim={inter_dim}"

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                dispatch: str = "grouped") -> torch.Tensor:
        if self.quant is None:
            return dispatch_fn(dispatch)(x, weights, indices, self.w1, self.w2, self.w3)
        if dispatch != "grouped":
            raise ValueError(f"dispatch must be 'grouped' when Experts.quant is set, got {dispatch!r}")
        return grouped_dispatch(x, weights, indices, self.w1, self.w2, self.w3, quant=self.quant)


class MoE(nn.Module):
    """DeepSeekMoE layer (V3 eq. 12): shared experts every token uses plus top-k of the fine-grained routed experts.

    forward(x [..., dim]) -> [..., dim]. After each forward, ``last_load`` [E] holds tokens per expert; in training
    mode with gradients on (not under ``no_grad`` evaluation) the load also accumulates until ``update_bias(gamma)``,
    which a trainer calls after the optimizer step.
    dispatch: "grouped" (default) or "loop" (the reference). balance_loss: None, "sequence" (V3 eqs. 17–20, the
    sequence is x's second-to-last axis) or "expert" (V2); when set, forward stores the scalar in ``aux_loss``.
    """

    def __init__(self, args: ModelArgs, dispatch: str = "grouped", balance_loss: str | None = None,
                 alpha: float | None = None):
        super().__init__()
        if not args.is_moe:
            raise ValueError("MoE needs args.n_routed_experts > 0")
        validate.choice("dispatch", dispatch, DISPATCHES)
        validate.choice("balance_loss", balance_loss, BALANCE_LOSSES)
        self.dim, self.n_routed_experts = args.dim, args.n_routed_experts
        self.n_activated_experts = args.n_activated_experts
        self.dispatch, self.balance_loss = dispatch, balance_loss
        default_alpha = EXPERT_ALPHA if balance_loss == "expert" else SEQUENCE_ALPHA
        self.alpha = default_alpha if alpha is None else validate.real("alpha", alpha, 0)
        self.gate = Gate(args)
        self.experts = Experts(args.n_routed_experts, args.dim, args.moe_inter_dim)
        n_shared = args.n_shared_experts
        self.shared_experts = MLP(args.dim, n_shared * args.moe_inter_dim) if n_shared else None
        self.aux_loss: torch.Tensor | None = None
        self.register_buffer("last_load", torch.zeros(args.n_routed_experts, dtype=torch.long), persistent=False)
        self.register_buffer("step_load", torch.zeros(args.n_routed_experts, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"dispatch={self.dispatch!r}, balance_loss={self.balance_loss!r}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if validate.tensor("x", x, floating=True).dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [..., tokens, {self.dim}], got shape {tuple(x.shape)}")
        shape, x = x.shape, x.reshape(-1, self.dim)
        scores = self.gate.affinities(x)  # [T, E]
        weights, indices = self.gate.select(scores)
        self._record_load(indices)
        y = self.experts(x, weights.type_as(x), indices, self.dispatch)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        self.aux_loss = self._balance_loss(scores, indices, shape)
        return y.view(shape)

    def _record_load(self, indices: torch.Tensor) -> None:
        self.last_load = expert_load(indices, self.n_routed_experts)
        if self.training and torch.is_grad_enabled():  # only training batches steer the bias, not evaluation
            self.step_load = self.step_load + self.last_load

    def _balance_loss(self, scores: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
        if self.balance_loss is None:
            return None
        if self.balance_loss == "expert":
            return expert_balance_loss(scores, indices, self.alpha)
        lead = shape[:-1]  # [..., S]: each slice along the second-to-last axis of x is one sequence
        return sequence_balance_loss(scores.view(*lead, -1), indices.view(*lead, -1), self.alpha)

    @torch.no_grad()
    def update_bias(self, gamma: float = BIAS_GAMMA) -> None:
        """b_i += γ·sign(mean − load_i) over the load of all training forwards since the last update (V3 §2.1.2).

        Does nothing in eval mode. Raises ValueError when the gate has no bias (``args.gate_bias`` is False).
        """
        if self.gate.bias is None:
            raise ValueError("this MoE's gate has no bias: build it with ModelArgs(gate_bias=True)")
        if not self.training:
            return
        self.gate.bias.copy_(bias_update(self.gate.bias, self.step_load, gamma))
        self.step_load.zero_()


__all__ = [
    "BIAS_GAMMA", "DISPATCHES", "EXPERT_ALPHA", "SCORE_FUNCS", "SEQUENCE_ALPHA", "Experts", "Gate", "MoE", "ModelArgs",
    "affinities", "bias_update", "expert_balance_loss", "expert_load", "grouped_dispatch", "grouped_mm",
    "loop_dispatch", "max_vio", "route", "sequence_balance_loss",
]
