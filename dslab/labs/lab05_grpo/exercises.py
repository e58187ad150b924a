"""Exercises of lab 05 "GRPO", in the notebook's order: 5.1 the accuracy reward, 5.2 the format reward (find the
bugs), 5.3 group-relative advantages, 5.4 the advantage of a lone success (predicted, then measured on the base
model's groups), 5.5 the clipped per-token objective with the k3 KL, 5.6 the aggregations of TRL's loss types, 5.7
cons@k. Hidden cases are drawn from the grader's rng: completions a model could write (right and wrong answers,
several answer blocks, garbage, traps for substring matching and for ``int``), reward vectors with zero-variance
groups, random log-probs with the clip active on many tokens, masks with empty rows, votes with ties. Each common
wrong answer is a ``Mistake`` whose hint the feedback shows.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import torch

from dslab import evals, grpo, rewards
from dslab.course.exercises import Case, Exercise, Mistake, compare_close

FORBIDDEN_REWARDS = ("dslab.rewards.accuracy_reward", "dslab.rewards.parse_answer", "dslab.rewards.format_reward",
                     "dslab.rewards.reward_components", "dslab.evals.evaluate", "dslab.evals.greedy_accuracy",
                     "dslab.grpo.evaluate", "dslab.grpo.greedy_accuracy")


def compare_reward(expected, got) -> str | None:
    """A reward in {0.0, 1.0}: a float, an int or a bool with that value is accepted."""
    got = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
    if not isinstance(got, (int, float)):
        return f"expected a float reward, got {type(got).__name__}"
    return None if float(got) == float(expected) else f"expected {float(expected)}, got {float(got)}"


def _think(rng: random.Random) -> str:
    a, b = rng.randrange(10), rng.randrange(10)
    return f"{a}+{b}={a + b}"


# ------------------------------------------------------------------------------------------- 5.1 accuracy reward
def _accuracy_public() -> list[Case]:
    return [Case(("<think>5+8=13 4+7+1=12 3+2+1=6</think> <answer>623</answer>", 623), "a right answer"),
            Case(("<think>5+8=13</think> <answer>622</answer>", 623), "a wrong answer"),
            Case(("<think>8<12 12-8=4</think> <answer> -4 </answer>", -4), "negative, spaces inside the tags"),
            Case(("<think>3+3=6</think> 5 <answer>6</answer> 7", 6), "numbers outside the answer block"),
            Case(("<think>6+6=12</think> 12", 12), "the right number without answer tags"),
            Case(("<answer>1</answer> <answer>7</answer>", 7), "two answer blocks: the last one counts"),
            Case(("<think>x</think> <answer>1_000</answer>", 1000), "'1_000' is not a plain integer")]


def _accuracy_hidden(rng: random.Random) -> list[Case]:
    n, big = rng.randrange(-999, 2000), rng.randrange(1000, 100_000)
    other = n + rng.choice([-10, -1, 1, 10, 100])
    wrap = lambda s: f"<think>{_think(rng)}</think> <answer>{s}</answer>"  # noqa: E731
    digits = str(abs(n)) if abs(n) >= 10 else f"{abs(n)}0"
    arabic = "".join(chr(ord("٠") + int(d)) for d in digits)  # Arabic-Indic digits: \d and int() accept them
    return [
        Case((wrap(n), n), "right answer"),
        Case((wrap(other), n), "wrong answer"),
        Case((wrap(f"  {n}\n"), n), "right answer with whitespace"),
        Case((wrap(int(digits + "7")), int(digits)), "the truth is a substring of the answer"),
        Case((f"<think>{n}</think> <answer>{other}</answer>", n), "the truth appears only in the working"),
        Case((f"<answer>{n}</answer> <answer>{other}</answer>", n), "right first block, wrong last block"),
        Case((f"<answer>{other}</answer> <answer>{n}</answer>", n), "wrong first block, right last block"),
        Case((wrap(f"{big:_}"), big), "a number written with an underscore"),
        Case((wrap(f"{n}.0"), n), "a decimal point"),
        Case((wrap(f"+{abs(n)}"), abs(n)), "a leading plus sign"),
        Case((f"<think>{_think(rng)}</think> {n}", n), "no answer tags"),
        Case((f"<think>{_think(rng)}</think> <answer>{n}</answer> {other}", n), "a number after the answer block"),
        Case((f"<think>{_think(rng)}</think> <answer>{n}", n), "answer never closed (cut at the length limit)"),
        Case((rng.choice(["", "</answer>", "<answer><answer></answer>", "\x00<>" * 5]), 0), "garbage"),
        Case((wrap(arabic), int(digits)), "non-ASCII digits (Arabic-Indic), which \\d and int() accept"),
    ]


def _last_int_anywhere(completion: str, answer: int) -> float:
    found = re.findall(r"-?[0-9]+", completion)
    return float(bool(found) and int(found[-1]) == answer)


def _first_block(completion: str, answer: int) -> float:
    m = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL)
    return float(bool(m) and re.fullmatch(r"\s*-?[0-9]+\s*", m[1]) is not None and int(m[1]) == answer)


def _python_int(completion: str, answer: int) -> float:
    blocks = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
    try:
        return float(bool(blocks) and int(blocks[-1]) == answer)
    except ValueError:
        return 0.0


ACCURACY_MISTAKES = (
    Mistake("substring", lambda c, a: float(str(a) in c),
            "never look for the truth as a substring: '623' is inside '6230' and inside the working"),
    Mistake("last integer anywhere", _last_int_anywhere,
            "only the answer block counts: a number after </think> without <answer> tags is not an answer"),
    Mistake("first block", _first_block, "several answer blocks: the last one is the answer, as the issue's rule says"),
    Mistake("int() on the block", _python_int,
            "int() accepts '1_000', '+5' and '٣'; match a plain integer (-?[0-9]+: \\d takes any script's digits)"),
)


# ---------------------------------------------------------------------------------------- 5.2 format reward, debug
def format_reward_draft(completion: str) -> float:
    """The notebook's first attempt at the format reward (the buggy version the lab shows)."""
    m = re.search(r"<think>(.*)</think>\s*<answer>(.*)</answer>", completion)
    return 1.0 if m else 0.0


def _format_with(completion: str, start: bool = True, end: bool = True, dotall: bool = True,
                 nested: bool = True) -> float:
    """The format reward with one of its checks switched off: the partial repairs of 5.2."""
    pattern = r"<think>(.*?)</think>\s*<answer>(.*?)</answer>"
    pattern = (r"\s*" if start else r"(?s:.*?)") + pattern + (r"\s*" if end else r"(?s:.*)")
    m = re.fullmatch(pattern, completion, re.DOTALL if dotall else 0)
    if m is None:
        return 0.0
    if nested and any(t in part for part in m.groups() for t in rewards.TAGS):
        return 0.0
    return 1.0


def _format_public() -> list[Case]:
    return [Case(("so <think>5+8=13</think> <answer>13</answer> ok",), "text before and after the blocks"),
            Case(("<think>5+8=13</think> <answer>13</answer>",), "well formed"),
            Case(("<think>5+8=13\n4+7=11</think>\n<answer>113</answer>",), "well formed, over two lines"),
            Case(("<think>5+8=13</think> <answer>13</answer> and more text",), "text after the answer"),
            Case(("I guess <think>5+8=13</think> <answer>13</answer>",), "text before the think block"),
            Case(("<think>5+8=13 <answer>13</think> <answer>13</answer>",), "an answer tag inside the working"),
            Case(("<think>5+8=13</think> 13",), "no answer tags"),
            Case(("<think>5+8=13</think> <answer>13</answer> <answer>14</answer>",), "two answer blocks")]


def _format_hidden(rng: random.Random) -> list[Case]:
    w = " ".join(_think(rng) for _ in range(rng.randint(1, 3)))
    n = rng.randrange(-99, 999)
    good = f"<think>{w}</think> <answer>{n}</answer>"
    return [
        Case((good,), "well formed"),
        Case((f"  <think>{w}</think>\n<answer> {n} </answer>\n",), "whitespace around and inside"),
        Case((f"<think>{w}\n{_think(rng)}</think> <answer>{n}</answer>",), "working over several lines"),
        Case((good + rng.choice([" ok", "\n\nUser: 1+1", "</answer>"]),), "something after the answer"),
        Case((rng.choice(["so ", "User: ", "x"]) + good,), "something before the think block"),
        Case((good + f" <answer>{n + 1}</answer>",), "a second answer block"),
        Case((f"<think>{w} <think>{w}</think> <answer>{n}</answer>",), "a nested think tag"),
        Case((f"<think>{w}</think> <answer>{n}",), "answer never closed"),
        Case((f"<answer>{n}</answer>",), "no think block"),
        Case((f"<think>{w}</think>\n<answer>{n}</answer>\n<think>{w}</think>",), "think after the answer"),
        Case((f"<think>{w} <answer>{n}</think> <answer>{n}</answer>",), "an answer tag inside the working"),
        Case((f"ok <think>{w}</think> <answer>{n}</answer> ok",), "text before and after"),
    ]


FORMAT_MISTAKES = (  # specific ones first: a reward is 0 or 1, so the first mistake that matches names the hint
    Mistake("start not anchored", lambda c: _format_with(c, start=False),
            "text before <think> must fail: anchor the start (re.fullmatch, or ^ with \\s* allowed)"),
    Mistake("end not anchored", lambda c: _format_with(c, end=False),
            "nothing may follow </answer> but whitespace: anchor the end"),
    Mistake("no DOTALL", lambda c: _format_with(c, dotall=False),
            "the working may span several lines: '.' must match newlines too (re.DOTALL)"),
    Mistake("tags inside blocks allowed", lambda c: _format_with(c, nested=False),
            "a block that contains another think/answer tag means repeated or nested blocks: reject it"),
    Mistake("the draft as given", format_reward_draft,
            "re.search finds the pattern anywhere (anchor both ends), greedy .* swallows extra blocks, '.' stops "
            "at newlines"),
)


# ----------------------------------------------------------------------------------------- 5.3 group advantages
def _rewards_case(gen: torch.Generator, n_groups: int, G: int, kind: str) -> tuple:
    if kind == "binary":
        r = (torch.rand(n_groups, G, generator=gen) < torch.rand(n_groups, 1, generator=gen)).float()
        r[0] = 1.0  # an all-correct group: zero variance
    elif kind == "weighted":  # accuracy + 0.1 · format
        r = (torch.rand(n_groups, G, generator=gen) < 0.5).float() + 0.1 * (torch.rand(n_groups, G, generator=gen)
                                                                              < 0.8).float()
        r[-1] = 0.1
    else:
        r = torch.randn(n_groups, G, generator=gen)
    return r.flatten(), G


def _adv_public() -> list[Case]:
    return [Case((torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), "one group, one success of four"),
            Case((torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]), 4), "two groups, the second all equal"),
            Case((torch.tensor([0.0, 1.1, 0.1, 1.0, 0.1, 1.1]), 2), "three groups of two (accuracy + 0.1 format)")]


def _adv_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i, kind in enumerate(["binary", "binary", "weighted", "normal", "binary"]):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        cases.append(Case(_rewards_case(gen, rng.randint(1, 8), rng.choice([2, 3, 4, 8, 16]), kind),
                          f"hidden #{i}: {kind} rewards"))
    return cases


def _adv_population_std(r, G):
    g = r.view(-1, G)
    return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, unbiased=False, keepdim=True) + grpo.EPS)).flatten()


def _adv_eps_inside(r, G):
    g = r.view(-1, G)
    return ((g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + grpo.EPS).sqrt()).flatten()


def _adv_batch_mean(r, G):
    g = r.view(-1, G)
    return ((g - r.mean()) / (g.std(-1, keepdim=True) + grpo.EPS)).flatten()


def _adv_no_eps(r, G):
    g = r.view(-1, G)
    return ((g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True)).flatten()


ADV_MISTAKES = (
    Mistake("population std", _adv_population_std,
            "use the Bessel-corrected std of each group (n − 1, torch's default), as TRL's nanstd does"),
    Mistake("eps inside the square root", _adv_eps_inside, "eps = 1e-4 is added to the std, outside the square root"),
    Mistake("batch mean", _adv_batch_mean, "subtract each group's own mean, not the mean of the whole batch"),
    Mistake("no eps", _adv_no_eps,
            "a group whose rewards are all equal has std 0: add eps so its advantages are 0, not NaN"),
)


# -------------------------------------------------------------------------------------- 5.4 lone success, predict
def lone_success_reference(G: int) -> tuple[float, float]:
    """(advantage of the one completion with reward 1, advantage of each of the G − 1 with reward 0)."""
    r = torch.zeros(G, dtype=torch.float64)
    r[0] = 1.0
    adv = grpo.group_advantages(r, G)
    return float(adv[0]), float(adv[1])


def _lone_population(G: int) -> tuple[float, float]:
    std = math.sqrt(G - 1) / G
    return (1 - 1 / G) / (std + grpo.EPS), (-1 / G) / (std + grpo.EPS)


def _lone_no_eps(G: int) -> tuple[float, float]:
    return (1 - 1 / G) * math.sqrt(G), -math.sqrt(G) / G


LONE_MISTAKES = (
    Mistake("population std", _lone_population, "Bessel's std of one 1 and G − 1 zeros is exactly 1/sqrt(G)"),
    Mistake("eps left out", _lone_no_eps, "keep the eps = 1e-4 added to the std: it shifts the 4th digit"),
    Mistake("unscaled", lambda G: (1 - 1 / G, -1 / G), "this is Dr. GRPO's advantage; GRPO divides by std + eps"),
)


# ----------------------------------------------------------------------------- 5.5 clipped per-token objective + KL
def per_token_loss_reference(logps, old_logps, ref_logps, advantages, beta, epsilon_low, epsilon_high):
    """−min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) + β·k3 per token. [B, T] each, advantages [B] -> [B, T]."""
    return (-grpo.clipped_objective(logps, old_logps, advantages, epsilon_low, epsilon_high)
            + beta * grpo.per_token_kl(logps, ref_logps))


def _loss_case(gen: torch.Generator, B: int, T: int, spread: float, beta: float, lo: float, hi: float) -> tuple:
    logps = -torch.rand(B, T, generator=gen) * 4
    old = logps + spread * torch.randn(B, T, generator=gen)
    ref = logps + spread * torch.randn(B, T, generator=gen)
    adv = torch.randn(B, generator=gen)
    return logps, old, ref, adv, beta, lo, hi


def _loss_public() -> list[Case]:
    gen = torch.Generator().manual_seed(5)
    return [Case(_loss_case(gen, 2, 3, 0.0, 0.0, 0.2, 0.2), "on-policy (ρ = 1), no KL"),
            Case(_loss_case(gen, 3, 4, 0.5, 0.0, 0.2, 0.2), "ρ far from 1: the clip is active, no KL"),
            Case(_loss_case(gen, 4, 6, 0.5, 0.04, 0.2, 0.28), "β = 0.04, ε_low 0.2, ε_high 0.28")]


def _loss_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        beta = [0.0, 0.04, rng.uniform(0.001, 1.0), 0.0, 0.1][i]
        lo = rng.choice([0.1, 0.2, 0.3])
        hi = lo if i % 2 == 0 else rng.choice([0.28, 0.4, 10.0])
        cases.append(Case(_loss_case(gen, rng.randint(1, 6), rng.randint(1, 12), rng.uniform(0.3, 1.0), beta, lo, hi),
                          f"hidden #{i}: random log-probs, {'symmetric' if i % 2 == 0 else 'asymmetric'} clip"))
    return cases


def _kl_reversed(logps, old, ref, adv, beta, lo, hi):
    d = logps - ref
    return -grpo.clipped_objective(logps, old, adv, lo, hi) + beta * (torch.exp(d) - d - 1)


def _max_not_min(logps, old, ref, adv, beta, lo, hi):
    ratio, a = torch.exp(logps - old), adv[:, None]
    return -torch.max(ratio * a, ratio.clamp(1 - lo, 1 + hi) * a) + beta * grpo.per_token_kl(logps, ref)


def _clip_only(logps, old, ref, adv, beta, lo, hi):
    ratio = torch.exp(logps - old)
    return -ratio.clamp(1 - lo, 1 + hi) * adv[:, None] + beta * grpo.per_token_kl(logps, ref)


LOSS_MISTAKES = (
    Mistake("KL in the other direction", _kl_reversed,
            "k3 uses the log-ratio ref − logp: exp(ref − logp) − (ref − logp) − 1 (DeepSeekMath eq. 4)"),
    Mistake("max instead of min", _max_not_min,
            "the objective takes the min of the unclipped and clipped terms: the pessimistic bound"),
    Mistake("clipped term only", _clip_only,
            "keep both terms and take their min; the clipped term alone lets a ratio below 1 − ε escape the bound"),
    Mistake("ε_high ignored", lambda lp, o, rf, a, b, lo, hi: per_token_loss_reference(lp, o, rf, a, b, lo, lo),
            "clip to [1 − epsilon_low, 1 + epsilon_high]; the two may differ"),
    Mistake("objective, not loss",
            lambda lp, o, rf, a, b, lo, hi: grpo.clipped_objective(lp, o, a, lo, hi) - b * grpo.per_token_kl(lp, rf),
            "return the per-token loss to minimize: minus the clipped objective, plus β times the KL"),
)


# ---------------------------------------------------------------------------------------------- 5.6 aggregations
def _agg_case(gen: torch.Generator, B: int, T: int, loss_type: str, empty_row: bool) -> tuple:
    per_token = torch.randn(B, T, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    if empty_row:
        lengths[0] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return per_token, mask, loss_type, T + int(torch.randint(0, 5, (1,), generator=gen))


def _agg_public() -> list[Case]:
    gen = torch.Generator().manual_seed(6)
    return [Case(_agg_case(gen, 3, 5, t, False), f"loss_type {t!r}, 3 rows of different lengths")
            for t in grpo.LOSS_TYPES]


def _agg_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i, t in enumerate(["grpo", "bnpo", "dapo", "dr_grpo", "grpo", "dr_grpo"]):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        cases.append(Case(_agg_case(gen, rng.randint(2, 8), rng.randint(2, 16), t, i >= 4),
                          f"hidden #{i}: {t}" + (", one empty row" if i >= 4 else "")))
    return cases


def _agg_with(per_token, mask, loss_type, max_len, grpo_as="seq", dr="max", use_mask=True):
    m = mask if use_mask else torch.ones_like(mask)
    masked = per_token * m
    if loss_type == "grpo":
        if grpo_as == "tokens":
            return masked.sum() / m.sum().clamp(min=1)
        if grpo_as == "width":
            return (masked.sum(-1) / per_token.shape[1]).mean()
        return (masked.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / m.sum().clamp(min=1)
    return masked.sum() / (per_token.shape[0] * max_len if dr == "max" else m.sum().clamp(min=1))


AGG_MISTAKES = (
    Mistake("grpo as a token mean", lambda *a: _agg_with(*a, grpo_as="tokens"),
            "grpo first averages each sequence over its own tokens, then averages the B sequences"),
    Mistake("grpo over the padded width", lambda *a: _agg_with(*a, grpo_as="width"),
            "divide each sequence's sum by its own number of masked tokens, not by the padded width T"),
    Mistake("dr_grpo by the token count", lambda *a: _agg_with(*a, dr="count"),
            "dr_grpo divides the masked sum by a constant, B × max_completion_length"),
    Mistake("mask ignored", lambda *a: _agg_with(*a, use_mask=False),
            "only masked tokens count: padding after a completion's end is not part of it"),
)


# ---------------------------------------------------------------------------------------------------- 5.7 cons@k
def _cons_public() -> list[Case]:
    return [Case(([623, 623, 622, 623], 623), "a clear majority, right"),
            Case(([5, 5, 5, 623], 623), "one right sample among wrong ones"),
            Case(([7, 7, 1, 2, 3], 7), "a plurality below half of the votes"),
            Case(([622, 623, 622, 623], 623), "a tie: the first seen wins (622)"),
            Case(([None, None, 7, None], 7), "unparseable samples (None) do not vote"),
            Case(([None, None], 0), "no sample has an answer")]


def _cons_hidden(rng: random.Random) -> list[Case]:
    t = rng.randrange(-500, 1000)
    w1 = t + rng.choice([-10, -1, 1, 9])
    k = rng.choice([4, 8, 16])
    rows = {
        "right majority": [t] * (k // 2 + 1) + [w1] * (k // 2 - 1),
        "wrong majority": [w1] * (k // 2 + 1) + [t] * (k // 2 - 1),
        "tie, right first": [t, w1] * (k // 2),
        "tie, wrong first": [w1, t] * (k // 2),
        "plurality below half": [t, t] + [t + 1000 + j for j in range(max(k, 8) - 2)],
        "Nones are the most common": [None] * (max(k, 8) - 3) + [t, t, w1],
        "one right sample among wrong ones": [w1] * (k - 1) + [t],
    }
    cases = []
    for label, votes in rows.items():
        if label.startswith(("right", "wrong", "one")):
            rng.shuffle(votes)
        cases.append(Case((votes, t), label))
    return cases


def _cons_last_wins(answers, truth):
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    return float([a for a in answers if a is not None and votes[a] == top][-1] == truth)


CONS_MISTAKES = (
    Mistake("ties to the last seen", _cons_last_wins, "on a tie the answer seen first among the tied ones wins"),
    Mistake("None votes", lambda votes, truth: float(bool(votes) and Counter(votes).most_common(1)[0][0] == truth),
            "a sample without a parsed answer (None) casts no vote"),
    Mistake("strict majority", lambda answers, truth: float(sum(a == truth for a in answers) > len(answers) / 2),
            "cons@k takes the most frequent answer (a plurality), even below half of the votes"),
    Mistake("pass@k", lambda answers, truth: float(truth in answers),
            "that is pass@k (any sample right); cons@k asks whether the majority vote is right"),
)


EXERCISES = [
    Exercise(
        id="05.accuracy_reward", number="5.1", target="accuracy_reward", points=2, kind="implement",
        task="return 1.0 when the plain integer in the last <answer>...</answer> block equals answer, else 0.0",
        reference=rewards.accuracy_reward, public_cases=_accuracy_public, hidden_cases=_accuracy_hidden,
        compare=compare_reward,
        hint="find every <answer>(.*?)</answer> block (re.DOTALL), take the last, accept it only if it fullmatches "
             "\\s*-?[0-9]+\\s*, then compare int(...) with the truth; never eval()",
        mistakes=ACCURACY_MISTAKES, forbidden=FORBIDDEN_REWARDS,
        giveaways=("-?[0-9]+", "<answer>(.*?)</answer>", "re.fullmatch"),
    ),
    Exercise(
        id="05.format_reward", number="5.2", target="format_reward", points=2, kind="debug",
        task="repair the draft: 1.0 only for exactly <think>...</think> <answer>...</answer> (whitespace around the "
             "blocks allowed), else 0.0",
        reference=rewards.format_reward, public_cases=_format_public, hidden_cases=_format_hidden,
        compare=compare_reward,
        hint="anchor both ends (re.fullmatch), use lazy .*? with re.DOTALL, and reject blocks that contain a tag",
        mistakes=FORMAT_MISTAKES, forbidden=FORBIDDEN_REWARDS,
        giveaways=("re.fullmatch", "re.DOTALL", "(.*?)</think>", "anchor both ends"),
    ),
    Exercise(
        id="05.group_advantages", number="5.3", target="group_advantages", points=2, kind="implement",
        task="return the group-relative advantages of the equation above for rewards [N·G] in groups of G",
        reference=lambda r, G: grpo.group_advantages(r, G, "group"), public_cases=_adv_public,
        hidden_cases=_adv_hidden, compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-6),
        hint="view the rewards as [N, G]; subtract each row's mean; divide by each row's std (n − 1) plus 1e-4",
        mistakes=ADV_MISTAKES, forbidden=("dslab.grpo.group_advantages",),
        giveaways=("view(-1, num_generations)", "mean(-1, keepdim=True)", "std(-1, keepdim=True)",
                   "outside the square root"),
    ),
    Exercise(
        id="05.lone_success", number="5.4", target="lone_success_advantages", points=1, kind="predict",
        task="return (advantage of the one success, advantage of each failure) in a group of G with one reward 1 "
             "and G − 1 rewards 0",
        reference=lone_success_reference,
        public_cases=lambda: [Case((2,), "G = 2"), Case((4,), "G = 4"), Case((16,), "G = 16 (the lab's)")],
        hidden_cases=lambda rng: [Case((rng.randint(3, 12),), "a small group"), Case((rng.randint(17, 64),),
                                                                                      "a larger group"),
                                  Case((rng.choice([128, 256, 512]),), "a very large group")],
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-9),
        hint="mean 1/G; Bessel variance of one 1 and G − 1 zeros is 1/G; A = (r − 1/G) / (1/sqrt(G) + 1e-4)",
        mistakes=LONE_MISTAKES, forbidden=("dslab.grpo.group_advantages",
                                           "dslab.labs.lab05_grpo.exercises.lone_success_reference"),
        giveaways=("G ** -0.5", "1/sqrt(G)", "√G", "(1 - 1 / G) / (std + 1e-4)"),
    ),
    Exercise(
        id="05.per_token_loss", number="5.5", target="grpo_per_token_loss", points=3, kind="implement",
        task="return the per-token loss to minimize for DeepSeekMath's objective (eq. 3, k3 KL of eq. 4), shape [B, T]",
        reference=per_token_loss_reference, public_cases=_loss_public, hidden_cases=_loss_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-6),
        hint="ρ = exp(logps − old_logps); A broadcast over tokens as advantages[:, None]; "
             "k3 = exp(ref − logp) − (ref − logp) − 1",
        mistakes=LOSS_MISTAKES,
        forbidden=("dslab.grpo.policy_loss", "dslab.grpo.clipped_objective", "dslab.grpo.per_token_kl",
                   "dslab.labs.lab05_grpo.exercises.per_token_loss_reference"),
        giveaways=("−min(ρA", "+ β·k3", "torch.exp(logps - old_logps)", "ref_logps - logps", "torch.exp(d) - d - 1"),
    ),
    Exercise(
        id="05.aggregate", number="5.6", target="aggregate_loss", points=2, kind="implement",
        task="reduce the per-token loss [B, T] over mask to a scalar for loss_type grpo, bnpo, dapo or dr_grpo",
        reference=grpo.aggregate, public_cases=_agg_public, hidden_cases=_agg_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-6),
        hint="grpo: mean over sequences of (masked sum / own token count); bnpo, dapo: masked sum / all masked "
             "tokens; dr_grpo: masked sum / (B × max_completion_length); clamp counts at 1",
        mistakes=AGG_MISTAKES, forbidden=("dslab.grpo.aggregate", "dslab.grpo.policy_loss"),
        giveaways=("masked.sum(-1) / mask.sum(-1)", "mask.sum(-1).clamp(min=1)", "not by the padded width"),
    ),
    Exercise(
        id="05.cons_at_k", number="5.7", target="cons_at_k", points=2, kind="implement",
        task="return 1.0 when the majority vote over the answers (None does not vote; a tie goes to the answer seen "
             "first) equals truth, else 0.0",
        reference=evals.cons_at_k, public_cases=_cons_public, hidden_cases=_cons_hidden, compare=compare_reward,
        hint="count the non-None answers; the winner has the top count, and among tied answers the one that "
             "appears first in the list",
        mistakes=CONS_MISTAKES, forbidden=("dslab.evals.cons_at_k", "dslab.evals.majority_vote",
                                            "dslab.grpo.cons_at_k", "dslab.grpo.majority_vote"),
        giveaways=("max(votes.values())", "votes[a] == top", "most_common(1)"),
    ),
]
