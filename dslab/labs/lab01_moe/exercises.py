"""Exercises of lab 01 "DeepSeekMoE", in the notebook's order: the V3 gate (1.1), the MoE forward (1.2), MaxVio (1.3),
the MaxVio of a collapsed router (1.4, predict), the aux-loss-free bias update (1.5, find the bug) and the
sequence-wise balance loss (1.6).

Hidden cases are drawn from the grader's rng: random sizes, softmax and sigmoid, group-limited routing, route_scale
≠ 1, and biases negative enough that masking dropped groups with 0 instead of −inf picks an expert the official
code never would. Routing is compared per token as a *set* of experts (top-k order is not part of the answer) with
the weight that goes with each expert. Each known wrong answer is a ``Mistake`` with its own hint.
"""

from __future__ import annotations

import random

import torch

from dslab import dispatch, moe
from dslab.course.exercises import Case, Exercise, Mistake, compare_close
from dslab.labs.lab01_moe.experiments import collapsed_max_vio, moe_forward_reference, swiglu


# ------------------------------------------------------------------------------------------------- 1.1 routing
def compare_routing(expected, got) -> str | None:
    """(weights [T, k], indices [T, k]): the same experts per token, each with the same weight (order free)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (weights, indices), got {type(got).__name__}"
    (ew, ei), (gw, gi) = expected, got
    for name, t in (("weights", gw), ("indices", gi)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a tensor, got {type(t).__name__}"
        if t.shape != ei.shape:
            return f"{name}: expected shape {tuple(ei.shape)}, got {tuple(t.shape)}"
    gi = gi.long()
    e_sorted, e_order = ei.sort(-1)
    g_sorted, g_order = gi.sort(-1)
    bad = (e_sorted != g_sorted).any(-1)
    if bool(bad.any()):
        t = int(bad.nonzero()[0])
        return f"token {t}: expected experts {e_sorted[t].tolist()}, got {g_sorted[t].tolist()}"
    msg = compare_close(ew.gather(-1, e_order), gw.float().gather(-1, g_order), rtol=1e-4, atol=1e-5)
    return None if msg is None else f"weights: {msg}"


def _route_case(gen: torch.Generator, tokens: int, experts: int, top_k: int, n_groups: int, topk_groups: int,
                score_func: str, route_scale: float, bias: str) -> tuple:
    """Logits [tokens, experts] and a bias: "none", "small" (±0.1) or "negative" (all in [-2, -1])."""
    logits = torch.randn(tokens, experts, generator=gen)
    b = {"none": None,
         "small": 0.2 * torch.rand(experts, generator=gen) - 0.1,
         "negative": -1.0 - torch.rand(experts, generator=gen)}[bias]
    return logits, b, top_k, n_groups, topk_groups, score_func, route_scale


def _route_public() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    return [
        Case(_route_case(gen, 4, 8, 2, 1, 1, "sigmoid", 1.0, "none"), "8 experts, top-2, sigmoid, no bias"),
        Case(_route_case(gen, 4, 8, 2, 1, 1, "sigmoid", 1.0, "small"), "8 experts, top-2, sigmoid, small bias"),
        Case(_route_case(gen, 6, 16, 4, 4, 2, "sigmoid", 1.0, "negative"),
             "16 experts in 4 groups (2 kept), top-4, negative biased scores"),
        Case(_route_case(gen, 5, 16, 3, 4, 2, "softmax", 16.0, "none"),
             "V2-style: softmax, 4 groups (2 kept), top-3, route_scale 16"),
        Case(_route_case(gen, 3, 256, 8, 8, 4, "sigmoid", 2.5, "small"),
             "V3-shaped: 256 experts, 8 groups (4 kept), top-8, route_scale 2.5"),
    ]


def _route_hidden(rng: random.Random) -> list[Case]:
    cases = []
    kinds = [("sigmoid", "negative", True), ("sigmoid", "negative", True), ("sigmoid", "small", True),
             ("softmax", "none", True), ("sigmoid", "none", False), ("softmax", "small", False),
             ("sigmoid", "small", False)]
    for i, (score_func, bias, grouped) in enumerate(kinds):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        n_groups = rng.choice([2, 4, 8]) if grouped else 1
        per_group = rng.choice([2, 4, 8])
        topk_groups = rng.randint(1, n_groups - 1) if grouped else 1
        top_k = rng.randint(1, min(8, topk_groups * per_group))
        scale = rng.choice([1.0, 2.5, 16.0, rng.uniform(0.5, 4.0)])
        args = _route_case(gen, rng.randint(1, 12), n_groups * per_group, top_k, n_groups, topk_groups, score_func,
                           scale, bias)
        groups = "group-limited" if grouped else "no groups"
        cases.append(Case(args, f"hidden #{i}: {score_func}, {groups}, bias {bias}"))  # same labels for every rng
    return cases

# Known wrong answers to 1.1: each computes what that mistake returns.
def _route_zero_mask(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """Dropped groups masked with 0 instead of −inf (the bug DeepSeek fixed in commit 1398800e)."""
    s = moe.affinities(scores, score_func)
    biased = s if bias is None else s + bias.float()
    if n_groups > 1:
        grouped = biased.unflatten(-1, (n_groups, -1))
        group_scores = grouped.topk(2, -1).values.sum(-1) if bias is not None else grouped.amax(-1)
        drop = torch.ones_like(group_scores, dtype=torch.bool).scatter(-1, group_scores.topk(topk_groups, -1).indices,
                                                                         False)
        biased = grouped.masked_fill(drop.unsqueeze(-1), 0.0).flatten(-2)
    return _weights_of(s, biased.topk(top_k, -1).indices, score_func, route_scale)


def _weights_of(s, indices, score_func, route_scale):
    w = s.gather(-1, indices)
    return (w / w.sum(-1, keepdim=True) if score_func == "sigmoid" else w) * route_scale, indices


def _route_biased_weights(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """The bias leaks into the gating weights (it should only pick)."""
    _, idx = moe.route(scores, bias, top_k, n_groups, topk_groups, score_func, route_scale)
    s = moe.affinities(scores, score_func)
    return _weights_of(s if bias is None else s + bias, idx, score_func, route_scale)


def _route_no_scale(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """route_scale forgotten."""
    return moe.route(scores, bias, top_k, n_groups, topk_groups, score_func, 1.0)


def _route_softmax_always(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """Softmax where V3 means sigmoid."""
    return moe.route(scores, bias, top_k, n_groups, topk_groups, "softmax", route_scale)


def _route_renormalized_softmax(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid",
                                route_scale=1.0):
    """V2's softmax weights renormalised over the chosen experts, as V3 does for sigmoid."""
    w, idx = moe.route(scores, bias, top_k, n_groups, topk_groups, score_func, 1.0)
    return w / w.sum(-1, keepdim=True) * route_scale, idx


ROUTE_MISTAKES = (
    Mistake("zero mask", _route_zero_mask, "dropped groups must be masked with -inf, not 0: biased scores can be "
            "negative, and a 0 then outranks every expert of the kept groups"),
    Mistake("bias in the weights", _route_biased_weights, "the bias only decides which experts are picked; the "
            "weights come from the unbiased affinities s (eq. 16)"),
    Mistake("no route_scale", _route_no_scale, "multiply the weights by route_scale at the end (2.5 in V3)"),
    Mistake("softmax for sigmoid", _route_softmax_always, "score_func='sigmoid' means s = sigmoid(logits) per "
            "expert (eq. 15), not a softmax over experts"),
    Mistake("renormalised softmax", _route_renormalized_softmax, "only sigmoid weights are renormalised over the "
            "chosen experts (eq. 13); V2's softmax weights are used as they are"),
)


# ---------------------------------------------------------------------------------------------- 1.2 MoE forward
def _moe_case(gen: torch.Generator, tokens: int, dim: int, inter: int, experts: int, top_k: int,
              shared: bool) -> tuple:
    x = torch.randn(tokens, dim, generator=gen)
    weights, indices = moe.route(torch.randn(tokens, experts, generator=gen), None, top_k, route_scale=1.0)
    ws = [torch.randn(experts, inter, dim, generator=gen) / dim**0.5, torch.randn(experts, dim, inter, generator=gen)
          / inter**0.5, torch.randn(experts, inter, dim, generator=gen) / dim**0.5]
    sw = ([torch.randn(inter, dim, generator=gen) / dim**0.5, torch.randn(dim, inter, generator=gen) / inter**0.5,
           torch.randn(inter, dim, generator=gen) / dim**0.5] if shared else [None, None, None])
    return (x, weights, indices, *ws, *sw)


def _moe_public() -> list[Case]:
    gen = torch.Generator().manual_seed(11)
    return [Case(_moe_case(gen, 5, 8, 4, 4, 2, True), "5 tokens, 4 experts, top-2, one shared expert"),
            Case(_moe_case(gen, 7, 6, 3, 8, 3, False), "7 tokens, 8 experts, top-3, no shared expert"),
            Case(_moe_case(gen, 1, 4, 2, 2, 2, True), "1 token routed to both of 2 experts")]


def _moe_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        experts = rng.choice([2, 4, 8, 16])
        shape = (rng.randint(1, 24), rng.choice([4, 8, 16]), rng.choice([2, 4, 8]), experts,
                 rng.randint(1, min(4, experts)), i != 1)
        cases.append(Case(_moe_case(gen, *shape), f"hidden #{i}: random sizes, " +
                          ("no shared expert" if i == 1 else "one shared expert")))
    return cases


def _moe_no_shared(x, weights, indices, w1, w2, w3, shared_w1=None, shared_w2=None, shared_w3=None):
    """The shared expert left out."""
    return dispatch.loop_dispatch(x, weights, indices, w1, w2, w3)


def _moe_weight_inside(x, weights, indices, w1, w2, w3, shared_w1=None, shared_w2=None, shared_w3=None):
    """The gate weight applied to the expert's input instead of its output."""
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(indices.shape[1]):
            e = int(indices[t, k])
            y[t] += swiglu(weights[t, k] * x[t], w1[e], w2[e], w3[e])
    return y if shared_w1 is None else y + swiglu(x, shared_w1, shared_w2, shared_w3)


def _moe_unweighted(x, weights, indices, w1, w2, w3, shared_w1=None, shared_w2=None, shared_w3=None):
    """Every chosen expert counted with weight 1."""
    return moe_forward_reference(x, torch.ones_like(weights), indices, w1, w2, w3, shared_w1, shared_w2, shared_w3)


def _moe_overwrite(x, weights, indices, w1, w2, w3, shared_w1=None, shared_w2=None, shared_w3=None):
    """Each expert's rows assigned into the output (``y[rows] = ...``) instead of added: only the last expert of each
    token survives."""
    y = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        token, slot = torch.where(indices == e)
        if token.numel():
            y[token] = swiglu(x[token], w1[e], w2[e], w3[e]) * weights[token, slot, None]
    return y if shared_w1 is None else y + swiglu(x, shared_w1, shared_w2, shared_w3)


MOE_MISTAKES = (
    Mistake("no shared expert", _moe_no_shared, "every token also runs the shared expert(s); add its output (eq. 12)"),
    Mistake("weight inside", _moe_weight_inside, "the gate weight multiplies the expert's output, g·FFN(x), not its "
            "input: FFN is not linear"),
    Mistake("unweighted", _moe_unweighted, "each routed expert's output is multiplied by its gate weight g_{i,t}"),
    Mistake("overwrite", _moe_overwrite, "a token visits top_k experts: accumulate their outputs (index_add_ or +=), "
            "do not assign"),
)


# ----------------------------------------------------------------------------------------------- 1.3 MaxVio
def compare_number(expected, got) -> str | None:
    """A float (a 0-d tensor is accepted too) within 1e-6 relative."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = float(got)
    return compare_close(expected, got, rtol=1e-6, atol=1e-9)


def _vio_public() -> list[Case]:
    return [Case((torch.tensor([4, 4, 4, 4]),), "perfect balance"),
            Case((torch.tensor([8, 0, 0, 0]),), "everything on one expert of 4"),
            Case((torch.tensor([3, 5, 4, 4]),), "one expert 25% over the mean"),
            Case((torch.tensor([10.0, 2.5, 0.5]),), "float loads")]


def _vio_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(6):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        n = rng.choice([2, 8, 16, 256])
        if i == 0:
            load = torch.full((n,), rng.randint(1, 50))
        elif i == 1:
            load = torch.zeros(n, dtype=torch.long)
            load[rng.randrange(n)] = rng.randint(1, 100)
        else:
            load = torch.randint(0, 1000, (n,), generator=gen)
            load[0] += 1  # never all zero
        kind = {0: "equal loads", 1: "one expert takes everything"}.get(i, "random loads")
        cases.append(Case((load,), f"hidden #{i}: {kind}"))
    return cases




def _vio_over_max(load):
    """Excess divided by the maximum instead of the mean."""
    load = load.double()
    return float((load.max() - load.mean()) / load.max())


def _vio_max_over_mean(load):
    """max / mean, without subtracting 1 (the mean itself)."""
    load = load.double()
    return float(load.max() / load.mean())


# ------------------------------------------------------------------------------------ 1.4 a collapsed router
def _collapsed_public() -> list[Case]:
    return [Case((16, 4), "tiny-moe: 16 experts, top-4"), Case((256, 8), "DeepSeek-V3: 256 experts, top-8"),
            Case((8, 8), "every expert chosen by every token")]


def _collapsed_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        experts = rng.choice([4, 8, 16, 32, 64, 160, 256])
        cases.append(Case((experts, rng.randint(1, min(8, experts))), f"hidden #{i}: random experts and top-k"))
    return cases



# ------------------------------------------------------------------------------------- 1.5 the bias update
def _bias_public() -> list[Case]:
    return [
        Case((torch.zeros(4), torch.tensor([4, 2, 6, 4]), 0.001), "loads 4, 2, 6, 4 (two at the mean), γ = 0.001"),
        Case((torch.tensor([0.1, -0.2, 0.0]), torch.tensor([0, 9, 0]), 0.01), "one overloaded expert, γ = 0.01"),
        Case((torch.tensor([0.5, 0.5]), torch.tensor([3, 3]), 0.1), "perfect balance: nothing moves"),
    ]


def _bias_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(6):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        n = rng.choice([4, 8, 16, 64])
        if i % 2 == 0:  # ties: loads symmetric around an integer mean, a quarter of them exactly on it
            dev = torch.randint(-5, 6, (n // 2,), generator=gen)
            dev[: n // 8 + 1] = 0
            load = rng.randint(5, 20) + torch.cat([dev, -dev])[torch.randperm(n, generator=gen)]
        else:
            load = torch.randint(0, 20, (n,), generator=gen)
        bias = 0.01 * torch.randn(n, generator=gen)
        kind = "loads with ties at the mean" if i % 2 == 0 else "random loads"
        cases.append(Case((bias, load, rng.choice([0.001, 0.01, 0.05, 0.0])), f"hidden #{i}: {kind}"))
    return cases




def _bias_inverted(bias, load, gamma=0.001):
    """The sign turned around: overloaded experts get *more* attractive."""
    load = load.float()
    return bias.float() + gamma * torch.sign(load - load.mean())


def _bias_magnitude(bias, load, gamma=0.001):
    """The step proportional to the violation instead of its sign."""
    load = load.float()
    return bias.float() + gamma * (load.mean() - load)


def _bias_ignoring_ties(bias, load, gamma=0.001):
    """An expert exactly at the mean moved anyway."""
    load = load.float()
    return bias.float() + gamma * torch.where(load <= load.mean(), 1.0, -1.0)



# ------------------------------------------------------------------------------------ 1.6 sequence balance loss
def _loss_case(gen: torch.Generator, lead: tuple, tokens: int, experts: int, top_k: int, alpha: float,
               skew: float) -> tuple:
    logits = torch.randn(*lead, tokens, experts, generator=gen)
    logits[..., : experts // 4] += skew  # some imbalance, so f and P are not all 1
    scores = logits.sigmoid()
    return scores, scores.topk(top_k, dim=-1).indices, alpha


def _loss_public() -> list[Case]:
    gen = torch.Generator().manual_seed(12)
    return [Case(_loss_case(gen, (), 6, 8, 2, 0.01, 0.0), "one sequence of 6 tokens, 8 experts, top-2"),
            Case(_loss_case(gen, (3,), 5, 8, 2, 0.1, 1.5), "3 sequences, a skewed router"),
            Case(_loss_case(gen, (2,), 4, 16, 4, 1e-4, 0.5), "V3's alpha = 1e-4")]


def _loss_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        experts = rng.choice([4, 8, 16, 32])
        lead = () if i == 0 else (rng.randint(2, 4),)
        cases.append(Case(_loss_case(gen, lead, rng.randint(2, 12), experts, rng.randint(1, min(4, experts)),
                                     rng.choice([1e-4, 0.01, 0.1, 1.0]), rng.choice([0.0, 1.0, 2.0])),
                          f"hidden #{i}: " + ("one sequence" if i == 0 else "a batch of sequences")))
    return cases


def _loss_unnormalized(scores, indices, alpha=1e-4):
    """P_i from the raw sigmoid affinities, not normalised over experts (eq. 19)."""
    n_experts, (tokens, top_k) = scores.shape[-1], indices.shape[-2:]
    counts = torch.zeros(*indices.shape[:-2], n_experts).scatter_add_(-1, indices.flatten(-2),
                                                                        torch.ones(indices.flatten(-2).shape))
    f = counts * n_experts / (top_k * tokens)
    return alpha * (f * scores.float().mean(-2)).sum(-1).mean()


def _loss_plain_fraction(scores, indices, alpha=1e-4):
    """f_i as the plain fraction of routing slots, without the N_r/(K_r·T) scaling that makes perfect balance 1."""
    n_experts, top_k = scores.shape[-1], indices.shape[-1]
    return moe.sequence_balance_loss(scores, indices, alpha) * top_k / n_experts


def _loss_whole_batch(scores, indices, alpha=1e-4):
    """f and P over all tokens of the batch at once (V2's expert-level loss), not per sequence."""
    return moe.expert_balance_loss(scores, indices, alpha)


LOSS_MISTAKES = (
    Mistake("unnormalised P", _loss_unnormalized, "normalise each token's affinities over all routed experts "
            "before averaging (eq. 19): sigmoids do not sum to 1"),
    Mistake("plain fraction", _loss_plain_fraction, "f_i = N_r/(K_r·T) · #tokens choosing i (eq. 18), so that "
            "perfect balance gives f_i = 1 and the loss equals α"),
    Mistake("whole batch", _loss_whole_batch, "f and P are computed per sequence (the second-to-last axis), "
            "then the losses of the sequences are averaged"),
)


EXERCISES = [
    Exercise(
        id="01.route", number="1.1", target="route", points=2,
        task="return (weights, indices) of the top_k experts V3's gate picks for each token (eqs. 13-16 and the "
             "three details)",
        reference=moe.route, public_cases=_route_public, hidden_cases=_route_hidden, compare=compare_routing,
        hint="compare with eqs. 13-16 step by step: affinities, biased selection, group limit, weights",
        mistakes=ROUTE_MISTAKES, forbidden=("dslab.moe.route", "dslab.moe.Gate.forward", "dslab.moe.Gate.select"),
        giveaways=("s.gather(-1, indices)", "grouped.topk(2, dim=-1).values.sum(-1)",  # eqs. 13-16 as code
                   'masked_fill(mask.unsqueeze(-1), float("-inf"))', "weights / weights.sum(-1, keepdim=True)"),
    ),
    Exercise(
        id="01.moe_forward", number="1.2", target="moe_forward", points=2,
        task="return the MoE layer's output: the shared expert plus each token's routed experts weighted by the gate",
        reference=moe_forward_reference, public_cases=_moe_public, hidden_cases=_moe_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=1e-5),
        hint="for each expert: the rows routed to it, its SwiGLU, times their weights, added back at those rows",
        mistakes=MOE_MISTAKES,
        forbidden=("dslab.dispatch.loop_dispatch", "dslab.dispatch.grouped_dispatch", "dslab.moe.Experts.forward",
                   "dslab.moe.MoE.forward", "dslab.labs.lab01_moe.experiments.moe_forward_reference"),
        giveaways=("torch.where(indices == e)", "index_add_(0, token", "weights[token, slot, None]",
                   "add the weighted results back"),
    ),
    Exercise(
        id="01.max_vio", number="1.3", target="max_vio", points=1,
        task="return the MaxVio of one batch's expert loads as a Python float",
        reference=moe.max_vio, public_cases=_vio_public, hidden_cases=_vio_hidden, compare=compare_number,
        hint="convert the load to float before taking the mean; return float(...)",
        mistakes=(Mistake("over max", _vio_over_max, "divide the excess by the mean load, not the maximum"),
                  Mistake("max over mean", _vio_max_over_mean, "MaxVio is the *excess* over the mean: subtract 1 "
                          "(or the mean before dividing)")),
        forbidden=("dslab.moe.max_vio",),
        giveaways=("(max load - mean load) / mean load", "(max_i load_i − mean load) / mean load",
                   r"\frac{\max_i \mathrm{load}_i - \overline{\mathrm{load}}}{\overline{\mathrm{load}}}",
                   "(load.max() - mean) / mean"),
    ),
    Exercise(
        id="01.collapsed", number="1.4", target="collapsed_max_vio", points=1, kind="predict",
        task="return the MaxVio of a router that sends every token to the same top_k of n_experts experts",
        reference=collapsed_max_vio, public_cases=_collapsed_public, hidden_cases=_collapsed_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-9, atol=1e-9),
        hint="each of the top_k busy experts gets every token; the mean load is the total slots / n_experts",
        mistakes=(Mistake("ratio", lambda n, k: n / k, "that is max/mean; MaxVio is (max - mean)/mean"),),
        forbidden=("dslab.labs.lab01_moe.experiments.collapsed_max_vio",),
        giveaways=("n_experts / top_k - 1", "n_experts/top_k − 1", "N_r/K_r - 1", "T·top_k/n_experts"),
    ),
    Exercise(
        id="01.bias_update", number="1.5", target="bias_update", points=2, kind="debug",
        task="find and fix the bug(s) in bias_update: one aux-loss-free update of the biases (V3 §2.1.2), "
             "returned as a new float tensor",
        reference=moe.bias_update, public_cases=_bias_public, hidden_cases=_bias_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-7),
        hint="loads are token counts (integers); overloaded experts must become less attractive",
        mistakes=(Mistake("inverted sign", _bias_inverted, "an overloaded expert (load > mean) must get a *lower* "
                          "bias: sign(mean - load), not sign(load - mean)"),
                  Mistake("magnitude", _bias_magnitude, "the step is gamma times the *sign* of the violation; the "
                          "aux-loss-free paper found the sign rule better than a step proportional to it"),
                  Mistake("ties", _bias_ignoring_ties, "an expert exactly at the mean keeps its bias: sign(0) = 0")),
        forbidden=("dslab.moe.bias_update", "dslab.moe.MoE.update_bias"),
        giveaways=("sign(mean", "γ·sign", r"\gamma\,\mathrm{sign}", r"\mathrm{sign}(\overline{\mathrm{load}}",
                   "torch.sign(load.mean() - load)"),
    ),
    Exercise(
        id="01.balance_loss", number="1.6", target="sequence_balance_loss", points=2,
        task="return the complementary sequence-wise balance loss alpha * sum_i f_i P_i, averaged over sequences",
        reference=moe.sequence_balance_loss, public_cases=_loss_public, hidden_cases=_loss_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-9),
        hint="eqs. 17-20: f_i counts the tokens of one sequence that chose expert i, scaled by N_r/(K_r T); P_i "
             "averages the normalised affinities over the same tokens",
        mistakes=LOSS_MISTAKES,
        forbidden=("dslab.moe.sequence_balance_loss", "dslab.moe.expert_balance_loss", "dslab.moe.MoE.forward"),
        giveaways=("n_experts / (top_k * seq_len)", "(s / s.sum(-1, keepdim=True)).mean(-2)",  # eqs. 17-20 as code
                   "alpha * (f * p).sum(-1).mean()"),
    ),
]
