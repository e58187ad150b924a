"""Group Relative Policy Optimization (DeepSeekMath §4.1, R1 §2.2.1) for a small causal LM, on a CPU.

For each question q the policy samples a group of G completions o_1..o_G; each gets a rule-based reward r_i
(``dslab.rewards``). GRPO needs no value model: the baseline is the group itself,

    Â_{i,t} = (r_i − mean(r)) / (std(r) + eps)                                  (DeepSeekMath §4.1.2; TRL eps 1e-4)

and the policy maximizes, token by token, the clipped objective minus a KL penalty towards a frozen reference,

    J = E[ agg_{i,t} { min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_i) − β D_KL } ]     (DeepSeekMath eq. 3)
    ρ_{i,t} = π_θ(o_{i,t}|q, o_{i,<t}) / π_old(o_{i,t}|q, o_{i,<t})
    D_KL    = π_ref/π_θ − log(π_ref/π_θ) − 1        (the k3 estimator, eq. 4: >= 0, 0 when π_θ = π_ref)

``agg`` is how per-token terms become one number (TRL's ``loss_type``): ``grpo`` averages each sequence over its
tokens and then over sequences (eq. 3's 1/|o_i|), ``bnpo``/``dapo`` average over every token of the batch, and
``dr_grpo`` sums and divides by B × max_completion_length (Dr. GRPO).

The module holds: rollouts (``generate``: the G completions of a prompt as one KV-cached batch, each row stopping
on its own at a stop string; ``rollout``: many prompts, batched by prompt length so no padding is ever needed),
per-token log-probs, advantages, the loss (``policy_loss``, term by term as TRL's ``_compute_loss``), the trainer
(``train_grpo``: μ inner iterations on stored old log-probs, frozen reference, metrics, checkpoints and resume),
supervised fine-tuning on (prompt, completion) pairs (``train_sft``) and evaluation (greedy, pass@1 over k samples,
pass@k, cons@k).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.data import ANSWER_CLOSE, CharTokenizer, Task
from dslab.rewards import parse_answer, reward_components, weighted_reward
from dslab.runtime import progress

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
EPS = 1e-4  # TRL adds it to the std, outside the square root (veRL/TinyZero: 1e-6)


# ----------------------------------------------------------------------------------------------------- sampling
def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep, per row, the most probable tokens whose cumulative probability first reaches top_p
    (the top token always stays); the rest get -inf. logits [B, V] -> [B, V]."""
    validate.real("top_p", top_p, 0.0, 1.0, lo_open=True)
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already reaches top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax when temperature == 0, else softmax(logits / T) after top-p."""
    validate.real("temperature", temperature, 0.0)
    if temperature == 0:
        return logits.argmax(-1)
    probs = top_p_filter(logits.float() / temperature, top_p).softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


# ------------------------------------------------------------------------------------------------------ rollouts
@dataclass
class Rollout:
    """Completions of one batch of prompts. ids [R, T] (pad after each row's end), mask [R, T] (1 on generated tokens,
    stop string included), stopped [R] (True when the row ended on the stop string, False when it hit the length)."""

    ids: torch.Tensor
    mask: torch.Tensor
    stopped: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def cache_rows(model: nn.Module) -> int:
    """How many rows the model's attention caches hold (``Transformer(args, max_batch_size=...)``)."""
    return min(block.attn.max_batch_size for block in model.layers)


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, num_generations: int, max_new_tokens: int,
             stop_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, pad_id: int = 0) -> Rollout:
    """Sample ``num_generations`` completions of each prompt in one batch from the KV cache.

    prompt_ids [P, L]: P prompts of the same length L (same length, so no padding). Rows are prompt-major: rows
    p·G .. p·G + G − 1 continue prompt p. Each row stops on its own once it has written ``stop_ids`` (a multi-token
    stop string) or after ``max_new_tokens``; later positions hold ``pad_id`` with mask 0. The model decodes in eval
    mode through ``model(tokens, start_pos)``, as ``Transformer.generate`` does for one row.
    """
    validate.tensor("prompt_ids", prompt_ids, 2, floating=False)
    validate.integer("num_generations", num_generations, 1)
    validate.integer("max_new_tokens", max_new_tokens, 1)
    rows, length = prompt_ids.shape[0] * num_generations, prompt_ids.shape[1]
    if length == 0 or rows == 0:
        raise ValueError(f"prompt_ids must be [P >= 1, L >= 1], got {tuple(prompt_ids.shape)}")
    if rows > cache_rows(model):
        raise ValueError(f"P × num_generations = {rows} rows exceed the model's cache of {cache_rows(model)} rows "
                         "(build it with Transformer(args, max_batch_size=...))")
    if length + max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"prompt length + max_new_tokens = {length + max_new_tokens} exceeds max_seq_len "
                         f"{model.args.max_seq_len}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    logits = model(prompt_ids.to(device).repeat_interleave(num_generations, 0), 0)[:, -1]
    for t in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, generator)
        ids[:, t] = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        if len(stop) and t + 1 >= len(stop):
            hit = (ids[:, t + 1 - len(stop):t + 1] == stop).all(-1) & ~done
            stopped |= hit
            done |= hit
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = model(nxt.unsqueeze(1), length + t)[:, -1]
    steps = torch.arange(max_new_tokens, device=device)
    end = torch.where(stopped, _first_stop_end(ids, stop), torch.full_like(stopped, max_new_tokens, dtype=torch.long))
    mask = (steps < end.unsqueeze(1)).long()
    model.train(was_training)
    return Rollout(ids * mask + pad_id * (1 - mask), mask, stopped)


def _first_stop_end(ids: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Per row, the position just after the first occurrence of ``stop`` (rows without one: anything)."""
    n = len(stop)
    if n == 0 or ids.shape[1] < n:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    hits = (ids.unfold(1, n, 1) == stop).all(-1)  # [R, T - n + 1]
    return hits.float().argmax(-1) + n


def rollout(model: nn.Module, prompts: Sequence[Sequence[int]], num_generations: int, max_new_tokens: int,
            stop_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0,
            generator: torch.Generator | None = None, pad_id: int = 0, max_rows: int | None = None) -> Rollout:
    """``generate`` for prompts of any lengths: prompts of equal length share a batch (up to ``max_rows`` rows, at
    most the model's cache), so nothing is ever padded on the left. Rows come back in prompt order, G per prompt,
    each right-padded to the longest completion."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    limit = min(max_rows or cache_rows(model), cache_rows(model))
    per_batch = max(1, limit // num_generations)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    parts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for length in sorted(by_length):
        idx = by_length[length]
        for s in range(0, len(idx), per_batch):
            chunk = idx[s:s + per_batch]
            batch = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long)
            r = generate(model, batch, num_generations, max_new_tokens, stop_ids, temperature, top_p, generator, pad_id)
            for j, i in enumerate(chunk):
                rows = slice(j * num_generations, (j + 1) * num_generations)
                parts[i] = (r.ids[rows], r.mask[rows], r.stopped[rows])
    width = max(int(p[1].sum(-1).max()) for p in parts.values()) or 1
    ids = torch.cat([parts[i][0][:, :width] for i in range(len(prompts))])
    mask = torch.cat([parts[i][1][:, :width] for i in range(len(prompts))])
    return Rollout(ids, mask, torch.cat([parts[i][2] for i in range(len(prompts))]))


# ------------------------------------------------------------------------------------------------- log-probs
def join(prompts: Sequence[Sequence[int]], rollout_: Rollout, num_generations: int,
         pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + completion per row, right-padded -> (ids [R, S], loss mask [R, S − 1] over next-token targets: 1 where
    the target is a generated token)."""
    lengths = [len(p) for p in prompts for _ in range(num_generations)]
    comp = rollout_.lengths.tolist()
    width = max(p + c for p, c in zip(lengths, comp))
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width - 1)
    for r, (p_len, c_len) in enumerate(zip(lengths, comp)):
        ids[r, :p_len] = torch.tensor(list(prompts[r // num_generations]))
        ids[r, p_len:p_len + c_len] = rollout_.ids[r, :c_len]
        mask[r, p_len - 1:p_len - 1 + c_len] = 1.0
    return ids, mask


def token_logps(model: nn.Module, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(ids[:, t+1] | ids[:, :t+1]) for every position: ids [B, S] -> [B, S − 1] (float32).

    The logits are divided by the sampling temperature first, as TRL does, so that the ratio and the KL refer to the
    distribution the completions were sampled from. Runs the model in whatever mode it is in (train: full sequence).
    """
    validate.tensor("ids", ids, 2, floating=False)
    validate.real("temperature", temperature, 0.0, lo_open=True)
    logits = model(ids)[:, :-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     eps: float = EPS) -> torch.Tensor:
    """Group-relative advantages. rewards [B] (B = N·G, the G rewards of a prompt next to each other) -> [B].

    A = r − mean of its group; scale_rewards "group" divides by the group's std (Bessel, n − 1) + eps, "batch" by the
    std of all B rewards + eps, "none" (Dr. GRPO) not at all. A group whose rewards are all equal gets A = 0. With
    G = 1 there is no group to compare with: every advantage is 0 (with a warning).
    """
    validate.tensor("rewards", rewards, 1, floating=True, finite=True)
    validate.integer("num_generations", num_generations, 1)
    validate.choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    validate.real("eps", eps, 0.0, lo_open=True)
    if rewards.numel() == 0 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must hold N · num_generations values (N >= 1), got {rewards.numel()} for "
                         f"num_generations={num_generations}")
    if num_generations == 1:
        warnings.warn("a group of size 1 has no baseline to compare with: every advantage is 0", stacklevel=2)
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, num_generations)
    adv = (grouped - grouped.mean(-1, keepdim=True)).flatten()
    if scale_rewards == "group":
        adv = adv / (grouped.std(-1).repeat_interleave(num_generations) + eps)
    elif scale_rewards == "batch":
        adv = adv / (rewards.std() + eps)
    return adv


def zero_variance_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """[N] bool: True for the groups whose G rewards are all equal (no learning signal). rewards [N·G]."""
    validate.tensor("rewards", rewards, 1, floating=True)
    validate.integer("num_generations", num_generations, 1)
    if rewards.numel() % num_generations:
        raise ValueError(f"rewards must hold N · num_generations values, got {rewards.numel()}")
    g = rewards.view(-1, num_generations)
    return (g == g[:, :1]).all(-1)


# ------------------------------------------------------------------------------------------------------- loss
def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ‖π_ref) per token (DeepSeekMath eq. 4): exp(ref − logp) − (ref − logp) − 1 >= 0."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def clipped_objective(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      epsilon_low: float = 0.2, epsilon_high: float = 0.2) -> torch.Tensor:
    """min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) per token, ρ = exp(logp − old_logp). [B, T], advantages [B]."""
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(-1)
    return torch.min(ratio * a, ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * a)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> torch.Tensor:
    """Per-token values [B, T] -> scalar, over the tokens where mask [B, T] is 1 (TRL's loss_type):

    grpo: each sequence's masked mean, then the mean over the B sequences; bnpo, dapo: sum over the batch's masked
    tokens / their count (one process, no accumulation: the two coincide); dr_grpo: masked sum / (B ·
    max_completion_length). Empty sequences count as 0 (their token count is clamped to 1).
    """
    validate.choice("loss_type", loss_type, LOSS_TYPES)
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / mask.sum().clamp(min=1)
    if max_completion_length is None:
        raise ValueError("max_completion_length is required for loss_type='dr_grpo'")
    validate.integer("max_completion_length", max_completion_length, 1)
    return masked.sum() / (per_token.shape[0] * max_completion_length)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.0, epsilon_low: float = 0.2,
                epsilon_high: float = 0.2, loss_type: str = "grpo",
                max_completion_length: int | None = None) -> torch.Tensor:
    """The GRPO loss (to minimize), term by term as TRL's ``_compute_loss`` with token-level importance sampling.

    logps, old_logps, ref_logps, mask: [B, T] (log-probs of the sampled tokens under π_θ, π_old, π_ref; mask 1 on
    completion tokens); advantages [B]. Per token: −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) + β·k3, then
    ``aggregate`` by loss_type. ref_logps may be None when beta == 0. Returns a scalar.
    """
    validate.tensor("logps", logps, 2, floating=True)
    for name, t in (("old_logps", old_logps), ("mask", mask)):
        validate.tensor(name, t, 2)
        if t.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}")
    validate.tensor("advantages", advantages, 1, floating=True)
    if advantages.shape[0] != logps.shape[0]:
        raise ValueError(f"advantages must be [B] = [{logps.shape[0]}], got {tuple(advantages.shape)}")
    validate.real("beta", beta, 0.0)
    validate.real("epsilon_low", epsilon_low, 0.0)
    validate.real("epsilon_high", epsilon_high, 0.0)
    validate.choice("loss_type", loss_type, LOSS_TYPES)
    loss = -clipped_objective(logps, old_logps, advantages, epsilon_low, epsilon_high)
    if beta != 0.0:
        if ref_logps is None or ref_logps.shape != logps.shape:
            raise ValueError(f"ref_logps must have the shape of logps {tuple(logps.shape)} when beta > 0")
        loss = loss + beta * per_token_kl(logps, ref_logps)
    return aggregate(loss, mask.to(loss.dtype), loss_type, max_completion_length)


def clip_fraction(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  epsilon_low: float = 0.2, epsilon_high: float = 0.2) -> float:
    """Share of masked tokens where the clip is active (ρ > 1 + ε_high with A > 0, or ρ < 1 − ε_low with A < 0): the
    tokens whose gradient the clip sets to zero."""
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(-1)
    active = ((ratio > 1 + epsilon_high) & (a > 0)) | ((ratio < 1 - epsilon_low) & (a < 0))
    return float((active.float() * mask).sum() / mask.sum().clamp(min=1))


# --------------------------------------------------------------------------------------------------- evaluation
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
def greedy_accuracy(model: nn.Module, task_list: Sequence[Task], max_new_tokens: int = 64,
                    max_rows: int | None = None) -> tuple[float, float]:
    """(exact-match accuracy, format rate) of greedy completions over ``task_list``."""
    texts = sample_answers(model, task_list, 1, max_new_tokens, 0.0, 1.0, 0, None, max_rows)
    comps = [reward_components(s[0], t.answer) for s, t in zip(texts, task_list)]
    return (sum(c["accuracy"] for c in comps) / len(comps), sum(c["format"] for c in comps) / len(comps))


# ------------------------------------------------------------------------------------------------------ trainer
@dataclass
class GRPOConfig:
    """One GRPO run. Names follow TRL's GRPOConfig where one exists (num_generations = G, num_iterations = μ,
    epsilon/epsilon_high, beta, loss_type, scale_rewards, max_completion_length, temperature, top_p).

    reward_weights: weight of each rule-based reward (``dslab.rewards.reward_components``: accuracy, format,
    consistency); drop_zero_variance: leave groups whose rewards are all equal out of the update (their advantage
    is 0, so with beta = 0 they would only cost time). Times in the history are CPU seconds of this process
    (``time.process_time``) and wall seconds, rollout and update only, evaluation excluded.
    """

    steps: int = 60
    prompts_per_step: int = 32
    num_generations: int = 16
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    drop_zero_variance: bool = True
    reward_weights: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.1})
    target_notation: str = "digits"
    micro_batch_rows: int = 128
    max_rows: int = 256
    eval_every: int = 10
    eval_tasks: int = 200
    kl_rows: int = 32
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 10
    metrics: str | None = None

    def __post_init__(self):
        for k in ("steps", "prompts_per_step", "num_generations", "max_completion_length", "num_iterations",
                  "micro_batch_rows", "max_rows", "eval_every", "checkpoint_every"):
            validate.integer(f"GRPOConfig.{k}", getattr(self, k), 1)
        for k in ("eval_tasks", "kl_rows", "warmup", "seed"):
            validate.integer(f"GRPOConfig.{k}", getattr(self, k), 0)
        validate.real("GRPOConfig.lr", self.lr, 0.0, lo_open=True)
        validate.real("GRPOConfig.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        validate.real("GRPOConfig.temperature", self.temperature, 0.0, lo_open=True)
        validate.real("GRPOConfig.top_p", self.top_p, 0.0, 1.0, lo_open=True)
        validate.real("GRPOConfig.beta", self.beta, 0.0)
        validate.real("GRPOConfig.epsilon", self.epsilon, 0.0)
        if self.epsilon_high is not None:
            validate.real("GRPOConfig.epsilon_high", self.epsilon_high, 0.0)
        validate.real("GRPOConfig.weight_decay", self.weight_decay, 0.0)
        validate.real("GRPOConfig.grad_clip", self.grad_clip, 0.0, lo_open=True)
        validate.choice("GRPOConfig.loss_type", self.loss_type, LOSS_TYPES)
        validate.choice("GRPOConfig.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        if not isinstance(self.reward_weights, dict) or not self.reward_weights:
            raise ValueError(f"GRPOConfig.reward_weights must be a non-empty dict, got {self.reward_weights!r}")
        for name, w in self.reward_weights.items():
            validate.real(f"GRPOConfig.reward_weights[{name!r}]", w, 0.0)

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def cosine_lr(step: int, steps: int, lr: float, warmup: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up to lr over ``warmup`` steps, then cosine decay to lr·min_lr_ratio at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


Scorer = Callable[[str, Task], dict]


def default_scorer(target_notation: str = "digits") -> Scorer:
    """completion, task -> every rule-based reward (``dslab.rewards.reward_components``)."""
    return lambda completion, task: reward_components(completion, task.answer, target_notation)


def _micro_batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


@torch.no_grad()
def _logps_no_grad(model: nn.Module, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    was = model.training
    model.train()  # the full-sequence path (nothing is updated; no dropout in these models)
    out = token_logps(model, ids, temperature)
    model.train(was)
    return out


def _length_batches(ids: torch.Tensor, mask: torch.Tensor, size: int) -> list[tuple[slice, int]]:
    """Micro-batches of rows sorted by length, each with the width that holds its longest sequence."""
    out = []
    for mb in _micro_batches(len(ids), size):
        last = int(mask[mb].sum(0).nonzero().max()) + 2 if bool(mask[mb].any()) else 2  # +1 target shift, +1 slice
        out.append((mb, min(ids.shape[1], last)))
    return out


def _monitor_kl(policy: nn.Module, ref: nn.Module | None, ids: torch.Tensor, mask: torch.Tensor,
                cfg: GRPOConfig) -> float:
    """k3 KL to the reference, per completion token, on ``cfg.kl_rows`` rows spread over the batch (β = 0: logged
    only, never in the loss)."""
    if ref is None or cfg.kl_rows == 0:
        return 0.0
    rows = torch.linspace(0, len(ids) - 1, min(cfg.kl_rows, len(ids))).round().long().unique()
    logps = _logps_no_grad(policy, ids[rows], cfg.temperature)
    kl = per_token_kl(logps, _logps_no_grad(ref, ids[rows], cfg.temperature))
    return float((kl * mask[rows]).sum() / mask[rows].sum().clamp(min=1))


def _weight(loss_type: str, mask_mb: torch.Tensor, mask: torch.Tensor) -> float:
    """Factor that makes Σ over micro-batches of aggregate(micro-batch) equal aggregate(whole batch)."""
    if loss_type in ("bnpo", "dapo"):
        return float(mask_mb.sum().clamp(min=1) / mask.sum().clamp(min=1))
    return mask_mb.shape[0] / mask.shape[0]  # grpo: mean over sequences; dr_grpo: divides by rows


@dataclass
class _State:
    step: int
    history: list
    rng: random.Random
    gen: torch.Generator


def _load_or_start(policy: nn.Module, ref: nn.Module, opt: torch.optim.Optimizer, cfg: GRPOConfig) -> _State:
    state = _State(0, [], random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed))
    if cfg.checkpoint and Path(cfg.checkpoint).exists():
        saved = torch.load(cfg.checkpoint, weights_only=False)
        if saved["config"] != asdict(cfg):
            raise ValueError(f"checkpoint {cfg.checkpoint} was written with another GRPOConfig; delete it to restart")
        policy.load_state_dict(saved["policy"])
        ref.load_state_dict(saved["ref"])
        opt.load_state_dict(saved["optimizer"])
        state.rng.setstate(saved["rng"])
        state.gen.set_state(saved["generator"])
        state.step, state.history = saved["step"], saved["history"]
    if cfg.metrics:
        Path(cfg.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.metrics).write_text("".join(json.dumps(r) + "\n" for r in state.history), encoding="utf-8")
    return state


def _save(cfg: GRPOConfig, policy: nn.Module, ref: nn.Module, opt, state: _State) -> None:
    tmp = f"{cfg.checkpoint}.tmp"
    torch.save({"policy": policy.state_dict(), "ref": ref.state_dict(), "optimizer": opt.state_dict(),
                "step": state.step, "history": state.history, "rng": state.rng.getstate(),
                "generator": state.gen.get_state(), "config": asdict(cfg)}, tmp)
    os.replace(tmp, cfg.checkpoint)


def _log(cfg: GRPOConfig, state: _State, row: dict) -> None:
    state.history.append(row)
    if cfg.metrics:
        with open(cfg.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _eval_row(policy: nn.Module, eval_tasks: Sequence[Task], cfg: GRPOConfig) -> dict:
    acc, fmt = greedy_accuracy(policy, eval_tasks, cfg.max_completion_length, cfg.max_rows)
    return {"val_accuracy": acc, "val_format": fmt}


def grpo_step(policy: nn.Module, ref: nn.Module | None, opt: torch.optim.Optimizer, batch: Sequence[Task],
              cfg: GRPOConfig, score: Scorer, gen: torch.Generator, tok: CharTokenizer) -> dict:
    """One GRPO step: sample G completions per task, score them, compute advantages, then μ optimizer updates on the
    same samples (old log-probs stored before the first). Returns the step's metrics."""
    G, prompts = cfg.num_generations, encode_prompts(batch, tok)
    r = rollout(policy, prompts, G, cfg.max_completion_length, tok.encode(ANSWER_CLOSE), cfg.temperature,
                cfg.top_p, gen, tok.pad_id, cfg.max_rows)
    texts = [tok.decode(row[:n]) for row, n in zip(r.ids.tolist(), r.lengths.tolist())]
    comps = [score(text, batch[i // G]) for i, text in enumerate(texts)]
    rewards = torch.tensor([weighted_reward(c, cfg.reward_weights) for c in comps])
    adv = group_advantages(rewards, G, cfg.scale_rewards) if G > 1 else torch.zeros_like(rewards)
    zero_var = zero_variance_groups(rewards, G)
    row = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
           **{name: sum(c[name] for c in comps) / len(comps) for name in comps[0]},
           "completion_length": float(r.lengths.float().mean()), "stopped": float(r.stopped.float().mean()),
           "zero_variance": float(zero_var.float().mean())}
    keep_groups = [g for g in range(len(batch)) if not (cfg.drop_zero_variance and bool(zero_var[g]))]
    row["kept_rows"] = len(keep_groups) * G
    if not keep_groups:
        return {**row, "loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0}
    rows = torch.tensor([g * G + j for g in keep_groups for j in range(G)])
    kept = Rollout(r.ids[rows], r.mask[rows], r.stopped[rows])
    ids, mask = join([prompts[g] for g in keep_groups], kept, G, tok.pad_id)
    adv = adv[rows]
    order = (mask.sum(-1) + torch.tensor([len(prompts[g]) for g in keep_groups for _ in range(G)])).argsort()
    ids, mask, adv = ids[order], mask[order], adv[order]  # similar lengths share a micro-batch: little padding
    mbs = _length_batches(ids, mask, cfg.micro_batch_rows)
    old = [_logps_no_grad(policy, ids[mb, :w], cfg.temperature) for mb, w in mbs] if cfg.num_iterations > 1 \
        else None
    ref_logps = [_logps_no_grad(ref, ids[mb, :w], cfg.temperature) for mb, w in mbs] if cfg.beta > 0 else None
    stats = {"loss": 0.0, "kl": _monitor_kl(policy, ref, ids, mask, cfg) if cfg.beta == 0 else 0.0,
             "clip_fraction": 0.0, "grad_norm": 0.0}
    policy.train()  # whole sequences, no KV cache: the decoding path would write its caches into the graph
    for _ in range(cfg.num_iterations):
        opt.zero_grad(set_to_none=True)
        kl_num = clip_num = 0.0
        for i, (mb, w) in enumerate(mbs):
            logps, m = token_logps(policy, ids[mb, :w], cfg.temperature), mask[mb, : w - 1]
            old_mb = logps.detach() if old is None else old[i]
            ref_mb = ref_logps[i] if ref_logps is not None else None
            loss = policy_loss(logps, old_mb, ref_mb, adv[mb], m, beta=cfg.beta, epsilon_low=cfg.epsilon,
                               epsilon_high=cfg.eps_high, loss_type=cfg.loss_type,
                               max_completion_length=cfg.max_completion_length) * _weight(cfg.loss_type, m, mask)
            loss.backward()
            stats["loss"] += float(loss.detach()) / cfg.num_iterations
            clip_num += clip_fraction(logps.detach(), old_mb, adv[mb], m, cfg.epsilon, cfg.eps_high) * float(m.sum())
            if ref_mb is not None:
                kl_num += float((per_token_kl(logps.detach(), ref_mb) * m).sum())
        stats["grad_norm"] += float(nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)) / cfg.num_iterations
        opt.step()
        tokens = float(mask.sum().clamp(min=1))
        stats["clip_fraction"] += clip_num / tokens / cfg.num_iterations
        if cfg.beta > 0:
            stats["kl"] += kl_num / tokens / cfg.num_iterations
    return {**row, **stats}


def train_grpo(policy: nn.Module, train_tasks: Sequence[Task], cfg: GRPOConfig,
               eval_tasks: Sequence[Task] | None = None, score: Scorer | None = None,
               ref: nn.Module | None = None, desc: str = "GRPO") -> list[dict]:
    """Train ``policy`` with GRPO on prompts drawn from ``train_tasks``; returns the history (one row per step).

    The first row (step 0) holds the evaluation of the starting policy; row k holds step k's training metrics and,
    every ``cfg.eval_every`` steps and at the end, the greedy accuracy and format rate on ``eval_tasks``
    (``cfg.eval_tasks`` of them). ``ref`` is the frozen reference (a copy of the starting policy when None).
    ``score(completion, task)`` returns the reward components (default: ``dslab.rewards.reward_components``).
    With ``cfg.checkpoint`` the run saves itself every ``cfg.checkpoint_every`` steps and resumes from the file.
    """
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if len(train_tasks) < cfg.prompts_per_step:
        raise ValueError(f"train_tasks holds {len(train_tasks)} tasks, fewer than prompts_per_step "
                         f"{cfg.prompts_per_step}")
    if cache_rows(policy) < cfg.num_generations:
        raise ValueError(f"the policy's cache holds {cache_rows(policy)} rows < num_generations "
                         f"{cfg.num_generations}: build it with Transformer(args, max_batch_size=...)")
    score = score or default_scorer(cfg.target_notation)
    tok, eval_tasks = CharTokenizer(), list(eval_tasks or [])[: cfg.eval_tasks]
    ref = ref if ref is not None else copy.deepcopy(policy)
    ref.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    state = _load_or_start(policy, ref, opt, cfg)
    if state.step == 0:
        _log(cfg, state, {"step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0,
                          **(_eval_row(policy, eval_tasks, cfg) if eval_tasks else {})})
    cpu, wall = state.history[-1]["cpu_seconds"], state.history[-1]["wall_seconds"]
    for step in progress(range(state.step, cfg.steps), desc=desc, initial=state.step, total=cfg.steps):
        c0, w0 = time.process_time(), time.perf_counter()
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = state.rng.sample(list(train_tasks), cfg.prompts_per_step)
        row = grpo_step(policy, ref, opt, batch, cfg, score, state.gen, tok)
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        row = {"step": step + 1, "lr": lr, **row, "cpu_seconds": cpu, "wall_seconds": wall}
        if eval_tasks and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            row.update(_eval_row(policy, eval_tasks, cfg))
        state.step = step + 1
        _log(cfg, state, row)
        if cfg.checkpoint and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
            _save(cfg, policy, ref, opt, state)
    policy.eval()
    return state.history


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics file (JSON lines) that ``train_grpo`` or ``train_sft`` wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- supervised fine-tuning
def sft_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where loss_mask is 1 (the completion tokens): the prompt
    tokens are context only. logits [B, S, V], targets [B, S], loss_mask [B, S] -> scalar."""
    validate.tensor("logits", logits, 3, floating=True)
    validate.tensor("targets", targets, 2, floating=False)
    validate.tensor("loss_mask", loss_mask, 2)
    if logits.shape[:2] != targets.shape or targets.shape != loss_mask.shape:
        raise ValueError(f"logits [B, S, V], targets and loss_mask [B, S] must agree, got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(loss_mask.shape)}")
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    m = loss_mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1)


def sft_batch(pairs: Sequence[tuple[str, str]], tok: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, completion) pairs -> inputs [B, S], next-token targets [B, S], loss mask [B, S] (1 on completion
    targets), right-padded."""
    seqs = [(tok.encode(p), tok.encode(c)) for p, c in pairs]
    if any(not p or not c for p, c in seqs):
        raise ValueError("every pair needs a non-empty prompt and a non-empty completion")
    width = max(len(p) + len(c) for p, c in seqs) - 1
    x = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
    y = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
    m = torch.zeros(len(seqs), width)
    for i, (p, c) in enumerate(seqs):
        full = torch.tensor(p + c)
        x[i, : len(full) - 1], y[i, : len(full) - 1] = full[:-1], full[1:]
        m[i, len(p) - 1: len(full) - 1] = 1.0
    return x, y, m


@dataclass
class SFTConfig:
    """Supervised fine-tuning on (prompt, completion) pairs: the cold start and distillation (R1 §2.3.1, §4.1)."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 20
    eval_tasks: int = 200
    max_completion_length: int = 64
    seed: int = 0
    metrics: str | None = None

    def __post_init__(self):
        for k in ("steps", "batch_size", "eval_every", "max_completion_length"):
            validate.integer(f"SFTConfig.{k}", getattr(self, k), 1)
        validate.integer("SFTConfig.eval_tasks", self.eval_tasks, 0)
        validate.integer("SFTConfig.warmup", self.warmup, 0)
        validate.real("SFTConfig.lr", self.lr, 0.0, lo_open=True)
        validate.real("SFTConfig.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        validate.real("SFTConfig.grad_clip", self.grad_clip, 0.0, lo_open=True)


def train_sft(model: nn.Module, pairs: Sequence[tuple[str, str]], cfg: SFTConfig,
              eval_tasks: Sequence[Task] | None = None, desc: str = "SFT") -> list[dict]:
    """Fine-tune ``model`` on ``pairs`` with the loss on completion tokens only; one row per step (loss, lr, CPU and
    wall seconds, evaluation excluded). With ``eval_tasks``, row 0 and every ``cfg.eval_every`` steps (and the last)
    add the greedy accuracy and format rate on ``cfg.eval_tasks`` of them, as ``train_grpo`` does."""
    if not pairs:
        raise ValueError("pairs must hold at least one (prompt, completion) pair")
    tok, rng = CharTokenizer(), random.Random(cfg.seed)
    eval_tasks = list(eval_tasks or [])[: cfg.eval_tasks]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    history, cpu, wall = [], 0.0, 0.0
    if cfg.metrics:
        Path(cfg.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.metrics).write_text("", encoding="utf-8")

    def log(row):
        history.append(row)
        if cfg.metrics:
            with open(cfg.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def evaluated(row):
        if eval_tasks:
            acc, fmt = greedy_accuracy(model, eval_tasks, cfg.max_completion_length)
            row.update(val_accuracy=acc, val_format=fmt)
        return row

    log(evaluated({"step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0}))
    model.train()
    for step in progress(range(cfg.steps), desc=desc):
        c0, w0 = time.process_time(), time.perf_counter()
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y, m = sft_batch([pairs[rng.randrange(len(pairs))] for _ in range(cfg.batch_size)], tok)
        loss = sft_loss(model(x), y, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
        row = {"step": step + 1, "lr": lr, "loss": float(loss.detach()), "cpu_seconds": cpu, "wall_seconds": wall}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluated(row)
            model.train()
        log(row)
    model.eval()
    return history
