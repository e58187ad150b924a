"""Exercises of lab 04 "MTP", in the notebook's order: 4.1 the target shift of depth k, 4.2 the MTP loss (V3 eqs.
24-25), 4.3 repair a greedy verification step, 4.4 the sampled acceptance test and its residual, 4.5 predict the
speedup of speculative decoding from the acceptance rate and the cost of each forward.

Hidden cases vary batch, lengths, depth, vocabulary, λ, drafts and probabilities, with small T so that 1/T and
1/(T - k) differ visibly. Tensor inputs are seeded from the grader's rng. Each common wrong answer is a ``Mistake``
whose hint feedback shows.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from dslab import mtp
from dslab.course.exercises import Case, Exercise, Mistake, compare_close


def _seeded(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


# ------------------------------------------------------------------------------------------------ 4.1 the shift
def _window(gen: torch.Generator, batch: int, length: int, vocab: int = 100) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=gen)


def _shift_public() -> list[Case]:
    gen = torch.Generator().manual_seed(41)
    return [Case((torch.arange(10).view(1, 10), 1), "t_0..t_9 (T = 9), depth 1"),
            Case((_window(gen, 2, 7), 2), "2 windows of 7 tokens, depth 2"),
            Case((_window(gen, 1, 5), 0), "depth 0 is the main model"),
            Case((_window(gen, 3, 4), 2), "the shortest window depth 2 allows (k + 2 tokens)")]


def _shift_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(6):
        k = rng.choice([1, 1, 2, 3, 4, 0])
        cases.append(Case((_window(_seeded(rng), rng.randint(1, 3), rng.randint(k + 2, 14)), k),
                          f"random window #{i} (batch, length and depth drawn at random)"))
    return cases


def _shift_behind(tokens, k):
    return (tokens[:, k - 1:-2], tokens[:, k:-1]) if k else mtp.mtp_shift(tokens, 0)


SHIFT_MISTAKES = (
    Mistake("one position behind", _shift_behind,
            "depth k at position i embeds t_{i+k}, the token k places ahead, not t_{i+k-1}: depth 1 already reads "
            "the token the main model predicts"),
    Mistake("predicts the token it reads", lambda t, k: (t[:, k:-1], t[:, k:-1]),
            "the target is the token after the embedded one: t_{i+k+1}"),
    Mistake("embeds the main model's inputs", lambda t, k: (t[:, :t.shape[1] - 1 - k], t[:, k + 1:]),
            "only the targets moved: position i must also embed the shifted token t_{i+k}, not its own t_i"),
)


# ------------------------------------------------------------------------------------------------- 4.2 the loss
def mtp_loss_reference(logits: list[torch.Tensor], tokens: torch.Tensor, lam: float) -> float:
    """``dslab.mtp.mtp_loss`` as a float (an answer may return a float or a 0-dim tensor)."""
    return float(mtp.mtp_loss(logits, tokens, lam))


def _loss_case(gen: torch.Generator, batch: int, t: int, depth: int, vocab: int, lam: float) -> tuple:
    tokens = torch.randint(0, vocab, (batch, t + 1), generator=gen)
    logits = [2 * torch.randn(batch, t - k, vocab, generator=gen) for k in range(1, depth + 1)]
    return logits, tokens, lam


def _loss_public() -> list[Case]:
    gen = torch.Generator().manual_seed(42)
    return [Case(_loss_case(gen, 1, 4, 1, 5, 0.3), "D = 1, one window of T = 4, λ = 0.3"),
            Case(_loss_case(gen, 2, 6, 2, 7, 0.3), "D = 2, batch 2, T = 6"),
            Case(_loss_case(gen, 1, 5, 3, 4, 0.1), "D = 3, T = 5, λ = 0.1")]


def _loss_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i, depth in enumerate([1, 2, 3, 2, 1, 3]):
        shape = (rng.randint(1, 3), rng.randint(depth + 1, 8), depth, rng.randint(3, 9),
                 rng.choice([0.1, 0.3, 0.5, 2.0]))
        cases.append(Case(_loss_case(_seeded(rng), *shape), f"random #{i} (B, T, V, λ drawn at random; D = {depth})"))
    return cases


def _loss_mean_per_depth(logits, tokens, lam):
    ce = [F.cross_entropy(lg.flatten(0, 1), mtp.mtp_shift(tokens, k)[1].flatten())
          for k, lg in enumerate(logits, start=1)]
    return lam / len(logits) * float(sum(ce))


def _loss_unshifted(logits, tokens, lam):
    t = tokens.shape[1] - 1
    ce = [F.cross_entropy(lg.flatten(0, 1), tokens[:, 1:1 + t - k].flatten(), reduction="sum") / lg.shape[0] / t
          for k, lg in enumerate(logits, start=1)]
    return lam / len(logits) * float(sum(ce))


LOSS_MISTAKES = (
    Mistake("mean over the T - k positions", _loss_mean_per_depth,
            "eq. 24 divides each depth's summed cross-entropy by T, the sequence length, not by the T - k "
            "positions that depth predicts"),
    Mistake("sum over depths without 1/D", lambda lg, t, lam: len(lg) * mtp_loss_reference(lg, t, lam),
            "eq. 25 averages the depths: λ/D times the sum of the L^k"),
    Mistake("λ left out", lambda lg, t, lam: mtp_loss_reference(lg, t, 1.0),
            "eq. 25 weights the average over depths by λ"),
    Mistake("targets not shifted by k", _loss_unshifted,
            "depth k's logits at position i predict t_{i+k+1}: take the targets from your mtp_shift(tokens, k)"),
)


# ------------------------------------------------------------------------------------------ 4.3 greedy verify
def greedy_verify_draft(draft: list[int], logits: torch.Tensor) -> list[int]:
    """The lab's first attempt at 4.3, bugs included (kept here so a test can check the lab shows this code)."""
    best = logits.argmax(-1).tolist()
    return [d for d, b in zip(draft, best) if d == b]


def _verify_case(gen: torch.Generator, n: int, vocab: int, wrong: list[int]) -> tuple:
    logits = torch.randn(n + 1, vocab, generator=gen)
    best = logits.argmax(-1).tolist()
    draft = [(best[i] + 1) % vocab if i in wrong else best[i] for i in range(n)]
    return draft, logits


def _verify_public() -> list[Case]:
    gen = torch.Generator().manual_seed(43)
    return [Case(_verify_case(gen, 3, 10, [1]), "3 drafts, the middle one wrong, the last right"),
            Case(_verify_case(gen, 2, 8, []), "2 drafts, both right"),
            Case(_verify_case(gen, 2, 8, [0]), "2 drafts, the first wrong"),
            Case(_verify_case(gen, 0, 6, []), "no draft (the last token of a generation)")]


def _verify_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(8):
        n = 0 if i == 0 else rng.randint(2, 5) if i in (1, 2) else rng.randint(1, 5)
        wrong = [rng.randrange(n - 1)] if i in (1, 2) else [j for j in range(n) if rng.random() < 0.35]
        label = "no draft" if i == 0 else "drafts, one wrong then one right" if i in (1, 2) else "drafts"
        cases.append(Case(_verify_case(_seeded(rng), n, rng.randint(4, 30), wrong),
                          f"random #{i} ({label}: number, vocabulary and wrong drafts drawn at random)"))
    return cases


def _verify_no_own_token(draft, logits):
    return mtp.greedy_verify(draft, logits)[:-1]


def _verify_keeps_later_matches(draft, logits):
    best = logits.argmax(-1).tolist()
    kept = [d for d, b in zip(draft, best) if d == b]
    return kept + [best[len(kept)]]


def _verify_appends_the_draft(draft, logits):
    out = mtp.greedy_verify(draft, logits)
    a = len(out) - 1
    return out if a == len(draft) else out[:-1] + [int(draft[a])]


VERIFY_MISTAKES = (
    Mistake("the buggy version as given", greedy_verify_draft,
            "two things: stop at the first draft the main model disagrees with, and always end with one token of "
            "the main model's own"),
    Mistake("no token of the main model's own", _verify_no_own_token,
            "every verification also yields the main model's token after the accepted drafts (its argmax there): "
            "that is why a step never produces fewer tokens than plain decoding"),
    Mistake("keeps matches after a mismatch", _verify_keeps_later_matches,
            "after the first rejected draft, the later drafts were conditioned on a wrong token: discard them"),
    Mistake("keeps the rejected draft", _verify_appends_the_draft,
            "at the first disagreement append the main model's argmax, not the draft"),
)


def _compare_tokens(expected: list[int], got) -> str | None:
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in got):
        return f"expected a list of token ids, got {type(got).__name__}"
    return None if list(got) == list(expected) else f"expected {list(expected)}, got {list(got)}"


# ------------------------------------------------------------------------------------ 4.4 accept or resample
def accept_and_residual_reference(p: torch.Tensor, q: torch.Tensor, token: int) -> tuple[float, torch.Tensor]:
    """(``dslab.mtp.accept_probability``, ``dslab.mtp.residual``): the two halves of the sampled rule."""
    return mtp.accept_probability(p, q, token), mtp.residual(p, q)


def _dist(gen: torch.Generator, vocab: int) -> torch.Tensor:
    x = torch.rand(vocab, generator=gen).pow(3) + 1e-3
    return x / x.sum()


def _accept_case(gen: torch.Generator, vocab: int, higher: bool | None) -> tuple:
    p, q = _dist(gen, vocab), _dist(gen, vocab)
    candidates = [x for x in range(vocab) if higher is None or (bool(p[x] > q[x]) == higher)] or list(range(vocab))
    token = candidates[int(torch.randint(len(candidates), (), generator=gen))]
    return p, q, token


def _accept_public() -> list[Case]:
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    gen = torch.Generator().manual_seed(44)
    return [Case((p, q, 1), "draft 1: the drafter overrates it (q > p)"),
            Case((p, q, 0), "draft 0: the main model likes it more (p > q)"),
            Case(_accept_case(gen, 6, None), "6 tokens, random p and q"),
            Case((p, p.clone(), 2), "p equals q: nothing is ever rejected, return p as the residual")]


def _accept_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i, higher in enumerate([False, True, False, None, False, True]):
        gen = _seeded(rng)
        cases.append(Case(_accept_case(gen, rng.randint(3, 12), higher),
                          f"random #{i} (vocabulary, p, q and the drafted token drawn at random)"))
    return cases


ACCEPT_MISTAKES = (
    Mistake("p/q not capped at 1", lambda p, q, x: (float(p[x] / q[x]), mtp.residual(p, q)),
            "a probability: min(1, p(x)/q(x))"),
    Mistake("q/p instead of p/q", lambda p, q, x: (min(1.0, float(q[x] / p[x])), mtp.residual(p, q)),
            "accept more often when the main model likes the draft more: min(1, p(x)/q(x))"),
    Mistake("residual max(0, q - p)", lambda p, q, x: (mtp.accept_probability(p, q, x), mtp.residual(q, p)),
            "resample where the main model has more mass than the drafter: max(0, p - q)"),
    Mistake("residual not normalized",
            lambda p, q, x: (mtp.accept_probability(p, q, x), (p - q).clamp_min(0)),
            "divide max(0, p - q) by its sum so the residual is a distribution"),
    Mistake("resample from p", lambda p, q, x: (mtp.accept_probability(p, q, x), p.clone()),
            "p would count the draft's share twice: after a rejection sample from norm(max(0, p - q))"),
)


# ----------------------------------------------------------------------------------------- 4.5 predict speedup
def _speedup_public() -> list[Case]:
    return [Case((0.85, 1, 1.0, 0.0), "V3: 85% acceptance, one draft, free drafts"),
            Case((0.8, 1, 1.0, 0.33), "80% acceptance, a draft costing a third of a forward"),
            Case((0.8, 2, 1.2, 0.3), "two drafts, a 3-token forward costing 1.2 one-token forwards"),
            Case((1.0, 3, 1.5, 0.25), "every draft accepted")]


def _speedup_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(7):
        alpha = [0.0, 1.0][i] if i < 2 else round(rng.uniform(0.05, 0.98), 3)
        n = rng.randint(2, 4) if i == 2 else rng.randint(1, 4)
        cases.append(Case((alpha, n, round(rng.uniform(0.9, 2.5), 3), round(rng.uniform(0.05, 0.6), 3)),
                          f"random #{i} (acceptance, drafts and costs drawn at random)"))
    return cases


def _speedup_with(tokens_fn, cost_fn):
    def answer(alpha, n, verify, draft):
        tokens = tokens_fn(alpha, n)
        return tokens, tokens / cost_fn(n, verify, draft)
    return answer


def _geometric(alpha, n):
    return sum(alpha**i for i in range(n + 1))


SPEEDUP_MISTAKES = (
    Mistake("1 + n·α tokens", _speedup_with(lambda a, n: 1 + n * a, lambda n, v, d: v + n * d),
            "draft i counts only if drafts 1..i-1 were accepted too: 1 + α + α² + ... + α^n"),
    Mistake("the main model's own token not counted",
            _speedup_with(lambda a, n: _geometric(a, n) - 1, lambda n, v, d: v + n * d),
            "each verification also yields one token of the main model's own (correction or bonus): start at 1"),
    Mistake("drafting is free", _speedup_with(_geometric, lambda n, v, d: v),
            "each of the n drafts costs one MTP step: divide by verify_cost + n·draft_cost"),
    Mistake("verifying costs one plain forward", _speedup_with(_geometric, lambda n, v, d: 1 + n * d),
            "checking n drafts takes an (n + 1)-token forward, which costs verify_cost, not 1"),
)


EXERCISES = [
    Exercise(
        id="04.shift", number="4.1", target="mtp_shift", points=2, kind="implement",
        task="return (the tokens depth k embeds, the tokens it predicts), each [B, T - k], for a window [B, T + 1]",
        reference=mtp.mtp_shift,
        public_cases=_shift_public,
        hidden_cases=_shift_hidden,
        compare=compare_close,
        hint="position i of depth k embeds t_{i+k} and predicts t_{i+k+1}, for i = 0..T-k-1",
        mistakes=SHIFT_MISTAKES,
        forbidden=("dslab.mtp.mtp_shift",),
        giveaways=("tokens[:, k:-1]", "tokens[:, k + 1:]"),
    ),
    Exercise(
        id="04.loss", number="4.2", target="mtp_loss", points=2, kind="implement",
        task="return L_MTP = λ/D · Σ_k L^k, L^k = -(1/T) Σ_{i=2+k}^{T+1} log P^k_i[t_i] (V3 eqs. 24-25), averaged "
             "over the batch",
        reference=mtp_loss_reference,
        public_cases=_loss_public,
        hidden_cases=_loss_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-6),
        hint="for each depth k: cross-entropy summed over its T - k positions, divided by B·T; then λ/D times the sum",
        mistakes=LOSS_MISTAKES,
        forbidden=("dslab.mtp.mtp_loss", "dslab.mtp.depth_losses",
                   "dslab.labs.lab04_mtp.exercises.mtp_loss_reference"),
        giveaways=("/ (batch * t)", "B·T", "B\\cdot T", "(B * T)", "divided by $T$"),
    ),
    Exercise(
        id="04.greedy_verify", number="4.3", target="greedy_verify", points=2, kind="debug",
        task="repair greedy_verify: the tokens one greedy verification step appends",
        reference=mtp.greedy_verify,
        public_cases=_verify_public,
        hidden_cases=_verify_hidden,
        compare=_compare_tokens,
        hint="keep the drafts up to the first one that differs from the main model's argmax, then add the main "
             "model's argmax at that row",
        mistakes=VERIFY_MISTAKES,
        forbidden=("dslab.mtp.greedy_verify", "dslab.mtp.speculative_generate"),
        giveaways=("best[len(out)]", "first disagreement", "one token of the main model's own",
                   "between 1 and len(draft) + 1"),
    ),
    Exercise(
        id="04.accept", number="4.4", target="accept_and_residual", points=3, kind="implement",
        task="return (the probability of keeping the drafted token, the distribution to resample from after a "
             "rejection) that make the output distributed exactly as p; p as the residual when p = q",
        reference=accept_and_residual_reference,
        public_cases=_accept_public,
        hidden_cases=_accept_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-5, atol=1e-7),
        hint="accept x with probability min(1, p(x)/q(x)); on rejection sample from max(0, p - q) / its sum",
        mistakes=ACCEPT_MISTAKES,
        forbidden=("dslab.mtp.accept_probability", "dslab.mtp.residual",
                   "dslab.labs.lab04_mtp.exercises.accept_and_residual_reference"),
        giveaways=("min(1, p(x)/q(x))", "min(1, p/q)", "max(0, p - q)", "(p - q).clamp_min(0)", "min(q(y), p(y))"),
    ),
    Exercise(
        id="04.speedup", number="4.5", target="expected_speedup", points=2, kind="predict",
        task="return (tokens per main-model forward, tokens/s speedup) for n drafts each accepted with probability α",
        reference=mtp.expected_speedup,
        public_cases=_speedup_public,
        hidden_cases=_speedup_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=1e-9),
        hint="expected tokens per verification: 1 + α + ... + α^n; time per verification: verify_cost + n·draft_cost "
             "(in one-token forwards)",
        mistakes=SPEEDUP_MISTAKES,
        forbidden=("dslab.mtp.expected_speedup",),
        giveaways=("1 + α + ... + α^n", "alpha**i for i in range(n_draft + 1)", "verify_cost + n_draft * draft_cost",
                   "(1 - α^{n+1}) / (1 - α)", "1.85"),
    ),
]
