"""Evaluation of a policy on arithmetic tasks as R1 reports it (R1 §3): greedy accuracy, pass@1 as the mean
correctness of k samples at temperature 0.6 and top-p 0.95, pass@k (the unbiased estimator of Chen et al. 2021) and
cons@k (the majority vote over the k parsed answers), plus the format rate of the samples.

Completions are sampled with ``dslab.sampling.rollout`` and scored with the rule-based rewards of ``dslab.rewards``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from dslab import validate
from dslab.data import ANSWER_CLOSE, CharTokenizer, Task
from dslab.rewards import parse_answer, reward_components
from dslab.sampling import rollout


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 − C(n − c, k) / C(n, k)."""
    validate.integer("n", n, 1)
    validate.integer("c", c, 0, n)
    validate.integer("k", k, 1, n)
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[int | None]) -> int | None:
    """The most frequent parsed answer (None entries, unparseable answers, do not vote).

    Tie rule: among answers with the same top count, the one that appears first in ``answers`` wins, so the vote
    is deterministic given the order of the samples. None when no sample has an answer.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def cons_at_k(answers: Sequence[int | None], truth: int) -> float:
    """cons@k: 1.0 when the majority vote over the k samples' answers (``majority_vote``, first-seen wins ties)
    equals the truth, else 0.0."""
    return 1.0 if majority_vote(answers) == truth else 0.0


def encode_prompts(task_list: Sequence[Task], tok: CharTokenizer) -> list[list[int]]:
    """Each task's prompt as token ids."""
    return [tok.encode(t.prompt) for t in task_list]


@torch.no_grad()
def sample_answers(model: nn.Module, task_list: Sequence[Task], k: int, max_new_tokens: int,
                   temperature: float = 0.6, top_p: float = 0.95, seed: int = 0,
                   tok: CharTokenizer | None = None, max_rows: int | None = None) -> list[list[str]]:
    """k completions (text) per task; temperature 0 gives the greedy completion (k must then be 1)."""
    if temperature == 0 and k != 1:
        raise ValueError("greedy decoding (temperature 0) gives one completion: use k=1")
    tok = tok or CharTokenizer()
    g = torch.Generator().manual_seed(seed)
    r = rollout(model, encode_prompts(task_list, tok), k, max_new_tokens, tok.encode(ANSWER_CLOSE), temperature,
                top_p, g, tok.pad_id, max_rows)
    texts = [tok.decode(row[:n]) for row, n in zip(r.ids.tolist(), r.lengths.tolist())]
    return [texts[i * k:(i + 1) * k] for i in range(len(task_list))]


def evaluate(model: nn.Module, task_list: Sequence[Task], k: int = 16, max_new_tokens: int = 64,
             temperature: float = 0.6, top_p: float = 0.95, seed: int = 0, greedy: bool = True,
             max_rows: int | None = None) -> dict:
    """Greedy accuracy, pass@1 (mean correctness of k samples at ``temperature``, as R1 §3 reports it), pass@k and
    cons@k (majority vote over the k answers), plus the format rate of the samples, over ``task_list``.

    Also returns "per_task": for each task the number of correct samples (for a pass@k curve at any k <= k).
    """
    validate.integer("k", k, 1)
    tok = CharTokenizer()
    out: dict = {}
    if greedy:
        texts = sample_answers(model, task_list, 1, max_new_tokens, 0.0, 1.0, seed, tok, max_rows)
        out["greedy"] = sum(parse_answer(s[0]) == t.answer for s, t in zip(texts, task_list)) / len(task_list)
    samples = sample_answers(model, task_list, k, max_new_tokens, temperature, top_p, seed, tok, max_rows)
    correct = [[parse_answer(s) == t.answer for s in ss] for ss, t in zip(samples, task_list)]
    n = len(task_list)
    out["pass@1"] = sum(sum(c) / k for c in correct) / n
    out[f"pass@{k}"] = sum(pass_at_k(k, sum(c), k) for c in correct) / n
    out[f"cons@{k}"] = sum(cons_at_k([parse_answer(s) for s in ss], t.answer) for ss, t in zip(samples, task_list)) / n
    out["format"] = sum(reward_components(s, t.answer)["format"] for ss, t in zip(samples, task_list)
                        for s in ss) / (n * k)
    out["per_task"] = [sum(c) for c in correct]
    out["samples"] = samples
    return out


@torch.no_grad()
def greedy_scores(model: nn.Module, task_list: Sequence[Task], max_new_tokens: int = 64,
                  max_rows: int | None = None) -> list[dict]:
    """The reward components (accuracy, format, ...) of each task's greedy completion, in ``task_list``'s order."""
    texts = sample_answers(model, task_list, 1, max_new_tokens, 0.0, 1.0, 0, None, max_rows)
    return [reward_components(s[0], t.answer) for s, t in zip(texts, task_list)]


def greedy_accuracy(model: nn.Module, task_list: Sequence[Task], max_new_tokens: int = 64,
                    max_rows: int | None = None) -> tuple[float, float]:
    """(exact-match accuracy, format rate) of greedy completions over ``task_list``."""
    comps = greedy_scores(model, task_list, max_new_tokens, max_rows)
    return (sum(c["accuracy"] for c in comps) / len(comps), sum(c["format"] for c in comps) / len(comps))
