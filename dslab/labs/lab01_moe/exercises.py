"""Exercises of lab 01 "MoE": DeepSeek-V3 routing, the aux-loss-free bias update and MaxVio.

Hidden cases are drawn from the grader's rng: random sizes, softmax and sigmoid, group-limited routing, route_scale
≠ 1, and biases negative enough that masking dropped groups with 0 instead of −inf picks an expert the official
code never would. Routing is compared per token as a *set* of experts (top-k order is not part of the answer) with
the weight that goes with each expert.
"""

from __future__ import annotations

import random

import torch

from dslab import moe
from dslab.course.exercises import Case, Exercise, compare_close


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


# ------------------------------------------------------------------------------------------ 1.2 bias update
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


EXERCISES = [
    Exercise(
        id="01.route", number="1.1", target="route", points=2,
        task="pick top_k experts per token from sigmoid/softmax affinities plus bias (groups masked with -inf) and "
             "return (weights from the unbiased affinities, renormalised for sigmoid, times route_scale, indices)",
        reference=moe.route, public_cases=_route_public, hidden_cases=_route_hidden, compare=compare_routing,
        hint="the bias only decides which experts are picked; weights come from the unbiased affinities; mask "
             "dropped groups with -inf, not 0 (biased scores can be negative); group score = top-2 sum with a bias",
    ),
    Exercise(
        id="01.bias_update", number="1.2", target="bias_update", points=2,
        task="return bias + gamma * sign(mean load - load) as a new float tensor",
        reference=moe.bias_update, public_cases=_bias_public, hidden_cases=_bias_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-7),
        hint="compare each load with the mean over experts (as floats); an expert exactly at the mean keeps its bias",
    ),
    Exercise(
        id="01.max_vio", number="1.3", target="max_vio", points=2,
        task="return MaxVio = (max load - mean load) / mean load as a Python float",
        reference=moe.max_vio, public_cases=_vio_public, hidden_cases=_vio_hidden, compare=compare_number,
        hint="convert the load to float before taking the mean; return float(...)",
    ),
]
